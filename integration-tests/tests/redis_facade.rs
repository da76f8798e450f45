//! `qtask::connect` / `connect_backend` / `app_from_config` with the `redis`
//! feature: URLs map to qredis, settings reach it, bad URLs are clear errors.

use std::time::Duration;

use anyhow::Result;
use integration_tests::{redis_cmd, redis_url, unique};
use qtask::{task, Config, Error, ErrorKind, SendOptions, Worker};

#[task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[tokio::test]
async fn redis_urls_give_a_working_app() -> Result<()> {
    let queue = unique("facade");
    let mut cfg = Config::default();
    cfg.broker_url = Some(redis_url());
    cfg.result_backend = Some(redis_url());
    cfg.task_default_queue = queue.clone();
    let app = qtask::app_from_config(cfg).await?;
    assert!(app.broker().describe().contains("redis://"), "{}", app.broker().describe());
    app.register(add);
    let worker = Worker::builder(app.clone()).queues([queue]).concurrency(2).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());
    assert_eq!(app.delay(add::s(2, 3)).await?.get(Duration::from_secs(20)).await?, 5);
    stop.shutdown();
    running.await??;

    // The lower-level constructors.
    let broker = qtask::connect(&redis_url()).await?;
    assert!(broker.describe().starts_with("redis://"));
    let backend = qtask::connect_backend(&redis_url()).await?;
    assert!(backend.get(&unique("missing")).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn broker_transport_options_reach_the_redis_broker() -> Result<()> {
    let queue = unique("facade_prefix");
    let prefix = unique("pfx") + ":";
    let mut cfg = Config::from_toml_str(&format!("[broker_transport_options]\nglobal_keyprefix = \"{prefix}\"\n"))?;
    cfg.broker_url = Some(redis_url());
    let app = qtask::app_from_config(cfg).await?;
    app.apply_async(add::s(1, 1), SendOptions::new().queue(queue.clone())).await?;
    let key = format!("{prefix}{queue}");
    assert_eq!(redis_cmd(&redis_url(), &["LLEN", &key])?.int(), 1, "the message is under the prefixed key");
    assert_eq!(redis_cmd(&redis_url(), &["LLEN", &queue])?.int(), 0);
    app.broker().purge(&queue).await?;
    assert_eq!(redis_cmd(&redis_url(), &["LLEN", &key])?.int(), 0);
    Ok(())
}

#[tokio::test]
async fn redis_url_errors_are_clear() -> Result<()> {
    // Bad redis URL: a configuration error, the password not echoed.
    let e =
        qtask::connect("redis://:hunter2@127.0.0.1:notaport/0").await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("invalid port"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    // Nothing listening: a connection error.
    let port = integration_tests::free_port()?;
    match qtask::connect(&format!("redis://127.0.0.1:{port}/0")).await {
        Err(Error::Broker(e)) => assert_eq!(e.kind(), ErrorKind::Connection, "{e}"),
        Err(other) => panic!("expected a connection error, got {other}"),
        Ok(b) => panic!("connected to nothing: {}", b.describe()),
    }
    match qtask::connect_backend(&format!("redis://127.0.0.1:{port}/0")).await {
        Err(Error::Backend(e)) => assert_eq!(e.kind(), ErrorKind::Connection, "{e}"),
        Err(other) => panic!("expected a connection error, got {other}"),
        Ok(b) => panic!("connected to nothing: {}", b.describe()),
    }
    // rediss:// is understood (TLS): against a plain-text server the
    // handshake fails, which is not an "unsupported URL" error.
    let e = qtask::connect(&redis_url().replacen("redis://", "rediss://", 1))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(!e.is_empty() && !e.contains("unsupported"), "{e}");
    // Unknown schemes list what this build supports.
    let e = qtask::connect("nats://h").await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("unsupported broker URL") && e.contains("redis://") && e.contains("rediss://"), "{e}");
    let e = qtask::connect_backend("nats://h").await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("unsupported result backend URL"), "{e}");
    Ok(())
}
