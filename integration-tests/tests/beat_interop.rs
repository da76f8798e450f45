//! qtask's beat (`qtask::beat`) on Redis with a Python Celery 5.7 worker:
//! a TOML `beat_schedule` in Celery's names, messages as Celery beat sends
//! them (compared with a message Celery 5.7's beat sent for the same entry,
//! with queue, priority and expires options, captured from Redis in
//! `integration-tests/fixtures/celery-beat-options.json`), and the Python
//! worker running what the beat sends.
//!
//! The test owns its queue names (random suffix) on the shared Redis
//! (`QTASK_TEST_REDIS_URL`, default db 0).

use std::time::Duration;

use anyhow::{Context, Result};
use integration_tests::{interop_worker_bin, redis_url, spawn_python_worker, unique, wait_for, Proc, PyEnv};
use qtask::beat::{entries_from_config, Beat};
use qtask::{Config, ConsumeOptions};
use serde_json::{json, Value};

/// The message Celery 5.7's beat sent for `add(4, 4)` every second with
/// `options = {queue, priority = 3, expires = 120}`.
fn celery_beat_message() -> Result<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/celery-beat-options.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_runs_what_qtask_beat_sends() -> Result<()> {
    let url = redis_url();
    let inspect = unique("beat_inspect");
    let work = unique("beat_work");
    let settings = format!(
        r#"
        broker_url = "{url}"
        result_backend = "{url}"
        timezone = "Europe/Paris"

        [beat_schedule.look]
        task = "tasks.add"
        schedule = 1.0
        args = [4, 4]
        options = {{ queue = "{inspect}", priority = 3, expires = 120 }}

        [beat_schedule.add-every-second]
        task = "tasks.add"
        schedule = "timedelta(seconds=1)"
        args = [4, 4]
        options = {{ queue = "{work}" }}
        "#
    );
    let cfg = Config::from_toml_str(&settings)?;
    let entries = entries_from_config(&cfg, None)?;
    assert_eq!(entries.len(), 2);
    let app = qtask::app_from_config(cfg).await?;
    let mut worker = spawn_python_worker(&PyEnv::new(&url, &work), &[&work], None)?;
    let beat = Beat::builder(app.clone()).schedule(entries).spawn().await?;

    // The message, header by header, as Celery beat's.
    let mut consumer = app.broker().consume(std::slice::from_ref(&inspect), ConsumeOptions::new(1)).await?;
    let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .context("no beat message within 30 s")??
        .context("the consumer ended")?;
    delivery.acker.ack().await?;
    let msg = &delivery.message;
    let capture = celery_beat_message()?;
    let celery = capture["headers"].as_object().context("headers")?;
    let ours: Vec<&String> = msg.headers.keys().collect();
    let theirs: Vec<&String> = celery.keys().collect();
    assert_eq!(ours, theirs, "header names and order");
    for (k, v) in celery {
        match k.as_str() {
            // Per message, or set by this entry's options.
            "id" | "root_id" | "origin" | "expires" => {}
            "task" => assert_eq!(msg.headers[k], json!("tasks.add")),
            _ => assert_eq!(&msg.headers[k], v, "header {k}"),
        }
    }
    assert_eq!(msg.headers["celery_beat_task"], json!(true));
    assert_eq!(msg.headers["argsrepr"], json!("[4, 4]"));
    assert_eq!(msg.headers["root_id"], msg.headers["id"]);
    let expires = msg.headers["expires"].as_str().context("expires is a date")?;
    let expires = chrono::DateTime::parse_from_rfc3339(expires)?;
    let left = expires.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(left > chrono::TimeDelta::zero() && left <= chrono::TimeDelta::seconds(120), "expires {expires}");
    assert_eq!(msg.properties.priority, 3);
    assert_eq!(capture["properties"]["priority"], json!(3));
    assert_eq!(String::from_utf8_lossy(&msg.body), capture["body"].as_str().context("body")?);
    // Celery writes the expiry in milliseconds as the AMQP `expiration` too.
    let expiration: i64 = msg.properties.expiration.as_deref().context("expiration")?.parse()?;
    assert!(expiration > 100_000 && expiration <= 120_000, "expiration {expiration}");
    assert_eq!(capture["properties"]["expiration"], json!("120000"));

    // The Python worker runs the every-second entry, again and again.
    wait_for("three runs of tasks.add by the Python worker", Duration::from_secs(60), || {
        let runs = worker.log().matches("succeeded in").count();
        async move { Ok(runs >= 3) }
    })
    .await?;
    assert!(worker.log().contains(": 8"), "the worker computed 4 + 4:\n{}", worker.log());
    let status = beat.status();
    assert!(status.sent >= 4, "{status:?}");
    assert_eq!(status.failed, 0, "{status:?}");
    beat.stop().await?;
    worker.terminate(Duration::from_secs(20))?;
    for q in [&inspect, &work] {
        app.broker().purge(q).await?;
    }
    Ok(())
}

/// `interop-worker -B --schedule FILE`: the beat runs inside the qtask
/// worker (Celery's `worker -B`), and the worker runs what it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_worker_with_an_embedded_beat() -> Result<()> {
    let url = redis_url();
    let queue = unique("beat_embedded");
    let dir = std::env::temp_dir().join(unique("qbeat_schedule"));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("schedule.toml");
    std::fs::write(
        &file,
        format!(
            "[beat_schedule.add-every-second]\ntask = \"tasks.add\"\nschedule = 1.0\nargs = [4, 4]\n\
             options = {{ queue = \"{queue}\" }}\n"
        ),
    )?;
    let mut cmd = std::process::Command::new(interop_worker_bin!());
    cmd.args(["--broker", &url, "--backend", &url, "--queues", &queue, "-B", "--schedule"]).arg(&file);
    cmd.env("QTASK_LOG", "info");
    let mut worker = Proc::spawn("interop-worker -B", cmd)?;
    worker.wait_log("worker online", Duration::from_secs(30))?;
    wait_for("two sends of the embedded beat", Duration::from_secs(30), || {
        let sent = worker.log().matches("beat: sent").count();
        async move { Ok(sent >= 2) }
    })
    .await?;
    // The beat logs the id of each message; the worker stored their results.
    let ids: Vec<String> = worker
        .log()
        .lines()
        .filter(|l| l.contains("beat: sent"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("id=")).map(str::to_owned))
        .take(2)
        .collect();
    assert_eq!(ids.len(), 2, "{}", worker.log());
    let mut cfg = Config::default();
    cfg.broker_url = Some(url.clone());
    cfg.result_backend = Some(url.clone());
    let app = qtask::app_from_config(cfg).await?;
    for id in &ids {
        let v: Value = app.result::<Value>(id.clone()).get(Duration::from_secs(30)).await?;
        assert_eq!(v, json!(8), "task {id}");
    }
    worker.terminate(Duration::from_secs(20))?;
    app.broker().purge(&queue).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
