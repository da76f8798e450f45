//! The qtask facade over TLS with Celery's `broker_use_ssl`: an app and an
//! in-process worker on a private RabbitMQ node that requires client
//! certificates from a throwaway CA, results through `rpc://` on the same
//! connections.

#[path = "../../crates/qamqp/tests/common/pki.rs"]
mod pki;
#[path = "../../crates/qamqp/tests/common/rabbit_node.rs"]
mod rabbit_node;

use std::time::Duration;

use anyhow::Result;
use integration_tests::unique;
use qtask::{task, Config, Worker};

#[task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_and_worker_over_mutual_tls_with_broker_use_ssl() -> Result<()> {
    let pki = pki::Pki::new()?;
    let node = rabbit_node::RabbitNode::start_with(Some(pki.listener(true)))?;
    let queue = unique("tls_e2e");
    let mut cfg = Config::from_toml_str(&format!(
        "broker_use_ssl = {{ ca_certs = {:?}, certfile = {:?}, keyfile = {:?}, cert_reqs = \"CERT_REQUIRED\" }}\n\
         result_backend = \"rpc://\"\n",
        pki.path("ca.pem").display().to_string(),
        pki.path("client.pem").display().to_string(),
        pki.path("client.key").display().to_string(),
    ))?;
    // An amqp:// URL with broker_use_ssl connects with TLS, as kombu does.
    cfg.broker_url = Some(format!("amqp://guest:guest@localhost:{}/%2f", node.tls_port.unwrap_or(0)));
    cfg.task_default_queue = queue.clone();
    let app = qtask::app_from_config(cfg).await?;
    assert!(app.broker().describe().starts_with("amqps://"), "{}", app.broker().describe());
    app.register(add);
    let worker = Worker::builder(app.clone()).queues([queue]).concurrency(2).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());
    assert_eq!(app.delay(add::s(2, 3)).await?.get(Duration::from_secs(30)).await?, 5);
    // Every connection RabbitMQ has is a TLS one (there is no plain one to use).
    let listed = node.ctl(&["--no-table-headers", "list_connections", "ssl"])?;
    assert!(!listed.trim().is_empty() && listed.lines().all(|l| l.trim() == "true"), "{listed}");
    stop.shutdown();
    running.await??;
    Ok(())
}
