//! Operations of a worker process (`ops-worker`, a binary over
//! `qtask::cli`): `--metrics-addr` (`/metrics`, `/healthz`, `/readyz`),
//! `--log-format json`, and the warm shutdown the deploy files promise
//! (SIGTERM during a long acks_late task) on Redis and RabbitMQ.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use integration_tests::{amqp_url, free_port, redis_cmd, redis_url, unique, wait_for, Proc, RedisServer};
use qtask::{task, App, Config, State, TaskError};
use serde_json::Value;

/// Producer-side declarations of the tasks of `ops-worker`.
mod ops {
    use super::*;

    #[task(name = "ops.add")]
    pub(super) async fn add(x: i64, y: i64) -> i64 {
        x + y
    }

    #[task(name = "ops.fail")]
    pub(super) async fn fail(message: String) -> Result<Value, TaskError> {
        Err(TaskError::value_error(message))
    }

    #[task(name = "ops.flaky")]
    pub(super) async fn flaky() -> String {
        "ok".into()
    }

    #[task(name = "ops.sleep")]
    pub(super) async fn sleep(seconds: f64) -> f64 {
        seconds
    }
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ops-worker"))
}

/// A producer on `broker` (results in `backend`) whose default queue is `queue`.
async fn producer(broker: &str, backend: &str, queue: &str) -> Result<App> {
    let mut cfg = Config::default();
    cfg.broker_url = Some(broker.to_string());
    cfg.result_backend = Some(backend.to_string());
    cfg.task_default_queue = queue.to_string();
    Ok(qtask::app_from_config(cfg).await?)
}

/// Start `ops-worker` on `broker` consuming `queue` with `extra` flags; wait until it is online.
fn spawn_worker(broker: &str, backend: &str, queue: &str, extra: &[&str]) -> Result<Proc> {
    let mut cmd = Command::new(bin());
    cmd.args(["--broker", broker, "--backend", backend, "--queues", queue, "--without-heartbeat"]).args(extra);
    cmd.env("QTASK_LOG", "info").env("QTASK_TASK_DEFAULT_QUEUE", queue);
    let mut p = Proc::spawn("ops-worker", cmd)?;
    p.wait_log("worker online", Duration::from_secs(30))?;
    Ok(p)
}

/// `GET path` on 127.0.0.1:`port`: (status, body).
fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connect :{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no HTTP header end in {raw:?}"))?;
    let status =
        head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| anyhow!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The value of the sample `name{labels}` in a Prometheus exposition (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn wait_status(port: u16, path: &str, want: u16, limit: Duration) -> Result<()> {
    wait_for(&format!("GET {path} → {want}"), limit, || async move { Ok(http_get(port, path)?.0 == want) }).await
}

/// Tasks that succeed, fail and retry show in `/metrics` by task name, with
/// the run-time histogram and the queue latency of the retried (ETA)
/// message; `/healthz` and `/readyz` answer 200 while it consumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_tasks_by_name() -> Result<()> {
    let url = redis_url();
    let queue = unique("ops_metrics");
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let app = producer(&url, &url, &queue).await?;
    let _worker = spawn_worker(&url, &url, &queue, &["--metrics-addr", &addr])?;
    wait_status(port, "/readyz", 200, Duration::from_secs(20)).await?;
    assert_eq!(http_get(port, "/healthz")?.0, 200);

    let sum = app.delay(ops::add::s(2, 3)).await?;
    let failed = app.delay(ops::fail::s("boom".to_string())).await?;
    let flaky = app.delay(ops::flaky::s()).await?;
    assert_eq!(sum.get(Duration::from_secs(30)).await?, 5);
    assert!(failed.get(Duration::from_secs(30)).await.is_err());
    assert_eq!(flaky.get(Duration::from_secs(30)).await?, "ok");

    // The results are stored before the events that count them are read.
    let want = [
        ("qtask_task_received_total{task=\"ops.add\"}", 1.0),
        ("qtask_task_succeeded_total{task=\"ops.add\"}", 1.0),
        ("qtask_task_runtime_seconds_count{task=\"ops.add\"}", 1.0),
        ("qtask_task_received_total{task=\"ops.fail\"}", 1.0),
        ("qtask_task_failed_total{task=\"ops.fail\"}", 1.0),
        ("qtask_task_retried_total{task=\"ops.flaky\"}", 1.0),
        ("qtask_task_succeeded_total{task=\"ops.flaky\"}", 1.0),
        ("qtask_task_queue_latency_seconds_count{task=\"ops.flaky\"}", 1.0),
    ];
    let mut text = String::new();
    let r = wait_for("the metrics of the 3 tasks", Duration::from_secs(20), || {
        let (status, body) = match http_get(port, "/metrics") {
            Ok(x) => x,
            Err(e) => return std::future::ready(Err(e)),
        };
        // The retried message is received once more when the broker
        // defers it to its ETA (2 or 3 receipts, by timing).
        let done = status == 200
            && want.iter().all(|(s, v)| sample(&body, s) == *v)
            && sample(&body, "qtask_task_received_total{task=\"ops.flaky\"}") >= 2.0;
        text = body;
        std::future::ready(Ok(done))
    })
    .await;
    r.with_context(|| format!("/metrics:\n{text}"))?;
    assert_eq!(sample(&text, "qtask_task_succeeded_total{task=\"ops.fail\"}"), 0.0, "{text}");
    assert_eq!(sample(&text, "qtask_task_failed_total{task=\"ops.add\"}"), 0.0, "{text}");
    assert_eq!(sample(&text, "qtask_worker_ready"), 1.0, "{text}");
    assert!(text.contains("# TYPE qtask_worker_active_tasks gauge"), "{text}");
    assert!(text.contains("# TYPE qtask_worker_prefetched_tasks gauge"), "{text}");
    assert!(text.contains("# TYPE qtask_broker_reconnects counter"), "{text}");
    assert_eq!(sample(&text, &format!("qtask_queue_messages{{queue=\"{queue}\"}}")), 0.0, "{text}");
    assert!(text.contains(&format!("qtask_queue_messages{{queue=\"{queue}\"}} 0")), "{text}");
    assert_eq!(http_get(port, "/nothing")?.0, 404);
    Ok(())
}

/// `/readyz` is 503 while the broker is gone (a private redis-server,
/// killed) while `/healthz` stays 200; once the server is back it is 200
/// again without a task to deliver (the worker's queue is idle), the
/// reconnect is counted, and the worker takes tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_broker() -> Result<()> {
    let mut server = RedisServer::start(false)?;
    let url = server.url();
    let queue = unique("ops_ready");
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let _worker = spawn_worker(&url, &url, &queue, &["--metrics-addr", &addr])?;
    wait_status(port, "/readyz", 200, Duration::from_secs(20)).await?;

    server.kill();
    wait_status(port, "/readyz", 503, Duration::from_secs(30)).await?;
    assert_eq!(http_get(port, "/healthz")?.0, 200, "alive while the broker is gone");
    let (_, body) = http_get(port, "/readyz")?;
    assert!(body.contains("broker"), "{body}");
    let (_, text) = http_get(port, "/metrics")?;
    assert_eq!(sample(&text, "qtask_worker_ready"), 0.0, "{text}");

    server.restart()?;
    wait_status(port, "/readyz", 200, Duration::from_secs(30)).await?;
    let (_, text) = http_get(port, "/metrics")?;
    assert!(sample(&text, "qtask_broker_reconnects_total") >= 1.0, "{text}");
    let app = producer(&url, &url, &queue).await?;
    let r = app.delay(ops::add::s(1, 1)).await?;
    assert_eq!(r.get(Duration::from_secs(60)).await?, 2);
    Ok(())
}

/// `--log-format json`: every line the worker prints is a JSON object, and
/// the task lines carry the task's id and name as fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_task_id_and_name() -> Result<()> {
    let url = redis_url();
    let queue = unique("ops_json");
    let app = producer(&url, &url, &queue).await?;
    let mut worker = spawn_worker(&url, &url, &queue, &["--log-format", "json"])?;
    let r = app.delay(ops::add::s(20, 22)).await?;
    assert_eq!(r.get(Duration::from_secs(30)).await?, 42);
    worker.wait_log("succeeded in", Duration::from_secs(20))?;
    let status = worker.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "{status}");

    let log = worker.log();
    let mut task_lines = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line:?}\nlog:\n{log}"))?;
        for field in ["timestamp", "level", "target", "message"] {
            assert!(v.get(field).is_some(), "no {field} in {line}");
        }
        if v["target"] == "qtask::worker::task" {
            task_lines.push(v);
        }
    }
    let id = r.id();
    let messages: Vec<&str> = task_lines.iter().filter_map(|v| v["message"].as_str()).collect();
    assert_eq!(task_lines.len(), 2, "received and succeeded: {messages:?}");
    for v in &task_lines {
        assert_eq!(v["task_id"], id, "{v}");
        assert_eq!(v["task_name"], "ops.add", "{v}");
    }
    assert!(messages[0].ends_with("received"), "{messages:?}");
    assert!(messages[1].contains("succeeded in"), "{messages:?}");
    Ok(())
}

/// SIGTERM while an acks_late task runs: the task finishes and is acked
/// (SUCCESS, nothing unacked), the task queued behind it is not taken (it
/// stays in the queue), `/readyz` says 503 meanwhile, and the process exits 0.
async fn warm_shutdown(broker: &str, backend: &str, unacked: impl Fn() -> Result<i64>) -> Result<()> {
    let queue = unique("ops_warm");
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let app = producer(broker, backend, &queue).await?;
    let flags = ["--acks-late", "-c", "1", "--prefetch-multiplier", "1", "--metrics-addr", &addr];
    let mut worker = spawn_worker(broker, backend, &queue, &flags)?;
    let long = app.delay(ops::sleep::s(3.0)).await?;
    worker.wait_log(&format!("ops.sleep[{}] received", long.id()), Duration::from_secs(20))?;
    let next = app.delay(ops::add::s(1, 2)).await?;
    wait_status(port, "/readyz", 200, Duration::from_secs(10)).await?;
    // The queue depth the autoscaler reads: the task waiting behind the long one.
    let series = format!("qtask_queue_messages{{queue=\"{queue}\"}}");
    wait_for("the queue depth in /metrics", Duration::from_secs(10), || {
        let r = http_get(port, "/metrics").map(|(_, text)| sample(&text, &series) == 1.0);
        std::future::ready(r)
    })
    .await?;

    worker.signal("TERM")?;
    wait_for("/readyz 503 or the worker gone", Duration::from_secs(20), || async {
        Ok(http_get(port, "/readyz").map(|(s, _)| s == 503).unwrap_or(true))
    })
    .await?;
    let status = worker.wait_exit(Duration::from_secs(30))?;
    assert_eq!(status.code(), Some(0), "log:\n{}", worker.log());
    assert_eq!(long.state().await?, State::Success, "log:\n{}", worker.log());
    assert_eq!(long.get(Duration::from_secs(5)).await?, 3.0);
    assert_eq!(next.state().await?, State::Pending, "taken after the signal; log:\n{}", worker.log());
    assert_eq!(app.broker().queue_len(&queue).await?, 1, "the queued task stays; log:\n{}", worker.log());
    assert_eq!(unacked()?, 0, "nothing left unacked");
    if worker.log().contains(&format!("ops.add[{}]", next.id())) {
        bail!("the task queued behind was received after the signal:\n{}", worker.log());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_shutdown_on_redis_finishes_the_running_task_and_takes_nothing_new() -> Result<()> {
    let server = RedisServer::start(false)?;
    let url = server.url();
    let u = url.clone();
    warm_shutdown(&url, &url, move || Ok(redis_cmd(&u, &["HLEN", "unacked"])?.int())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_shutdown_on_rabbitmq_finishes_the_running_task_and_takes_nothing_new() -> Result<()> {
    // On RabbitMQ an unacked message goes back to the queue when the
    // worker's channel closes: the queue length (1) is the check.
    warm_shutdown(&amqp_url(), &redis_url(), || Ok(0)).await
}
