//! Python Celery 5.7 and qtask on one RabbitMQ, both directions: a Python
//! producer with the qtask `interop-worker`, and a qtask producer with a
//! Python Celery worker (`pyapp.py`). Results go to Redis (as in most
//! Celery + RabbitMQ deployments), except in the `rpc://` tests, where they
//! travel back over RabbitMQ to the caller's reply queue. The checks with
//! Redis results are the ones of `redis_interop`
//! ([`integration_tests::interop`]).
//!
//! Every test owns its queue names (random suffix) on the shared RabbitMQ
//! (`QTASK_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`)
//! and results are read from the other side.

use std::time::Duration;

use anyhow::Result;
use integration_tests::interop::{failed, kwargs, rust_app, T};
use integration_tests::tasks::{add, fail, mul, progress};
use integration_tests::{
    amqp_url, interop_worker_bin, py_producer, redis_url, spawn_interop_worker, spawn_python_worker, unique, Interop,
    PyEnv, WorkerOpts,
};
use qtask::{chain, ContentType, SendOptions, State};
use serde_json::{json, Map};

/// RabbitMQ with results in the shared Redis; the worker on a
/// current-thread runtime, as `cargo xtask bench amqp` runs it (the fault
/// tests use the default multi-thread runtime).
fn amqp() -> Interop {
    Interop {
        broker: amqp_url(),
        results: redis_url(),
        prefix: "amqp_",
        worker_bin: interop_worker_bin!().to_path_buf(),
        worker: WorkerOpts { backend: Some(redis_url()), threads: Some(1), ..Default::default() },
        py_vars: Vec::new(),
        qtask_results: None,
    }
}

// ---------------------------------------------------------------------------
// Python producer → qtask worker

#[test]
fn amqp_python_producer_to_qtask_worker_json() -> Result<()> {
    amqp().python_to_qtask_messages("json")
}

#[test]
fn amqp_python_producer_to_qtask_worker_msgpack() -> Result<()> {
    amqp().python_to_qtask_messages("msgpack")
}

#[test]
fn amqp_python_canvas_on_qtask_worker() -> Result<()> {
    amqp().python_canvas_on_qtask("json")
}

/// A retrying task on a qtask worker (in this process: the interop worker's
/// task set has none), sent and read by Python.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_python_producer_sees_qtask_retries() -> Result<()> {
    amqp().python_sees_qtask_retries("json").await
}

/// On RabbitMQ the highest number goes first, in a queue declared with
/// `x-max-priority` (Celery's `task_queue_max_priority` = 10 on both
/// sides, so the declarations agree): tasks queued with priorities 0, 3, 6,
/// 9 (in that order, no worker running) run 9, 6, 3, 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_python_priorities_on_qtask_worker() -> Result<()> {
    amqp().python_priorities_on_qtask([0, 3, 6, 9], Some(10)).await
}

// ---------------------------------------------------------------------------
// qtask producer → Python worker

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_qtask_producer_to_python_worker_json() -> Result<()> {
    amqp().qtask_to_python_messages(ContentType::Json).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_qtask_producer_to_python_worker_msgpack() -> Result<()> {
    amqp().qtask_to_python_messages(ContentType::Msgpack).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_qtask_canvas_on_python_worker() -> Result<()> {
    amqp().qtask_canvas_on_python(ContentType::Json).await
}

/// Priorities 0, 3, 6, 9 queued by qtask in a queue declared with
/// `x-max-priority` 10 (no worker running) run 9, 6, 3, 0 on a Python
/// worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_qtask_priorities_on_python_worker() -> Result<()> {
    amqp().qtask_priorities_on_python([0, 3, 6, 9], Some(10)).await
}

// ---------------------------------------------------------------------------
// rpc:// both ways

/// A Python caller with `result_backend = "rpc://"` gets the results of
/// tasks a qtask worker ran: they come back as messages to its reply queue.
#[test]
fn amqp_rpc_python_caller_gets_qtask_worker_results() -> Result<()> {
    let queue = unique("amqp_rpc_py2rs");
    let opts = WorkerOpts { backend: Some("rpc://".into()), ..Default::default() };
    let _worker = spawn_interop_worker(interop_worker_bin!(), &amqp_url(), &[&queue], &opts)?;
    let env = PyEnv::with_backend(&amqp_url(), "rpc://", &queue);
    let out = py_producer(&env, "rpc", &[])?;
    assert_eq!(out["args"], json!(5));
    assert_eq!(out["kwargs"], json!(9));
    assert_eq!(out["send_task"], json!(42));
    assert_eq!(out["countdown"], json!(2));
    assert_eq!(out["failure_state"], json!({"state": "FAILURE", "type": "ValueError", "args": ["rpc boom"]}));
    assert_eq!(out["expired"], json!({"state": "REVOKED", "type": "TaskRevokedError", "args": ["expired"]}));
    assert_eq!(out["chain"], json!(60));
    assert!(out["progress_states"].as_array().is_some_and(|s| s.contains(&json!("PROGRESS"))), "{out}");
    assert_eq!(out["progress"], json!(30));
    assert_eq!(out["many"], json!((0..20).map(|i| i * 2).collect::<Vec<i64>>()));
    Ok(())
}

/// A qtask caller with `result_backend = "rpc://"` gets the results of
/// tasks a Python Celery worker ran (Celery's rpc backend on the worker
/// side publishes to the `reply_to` qtask sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_rpc_qtask_caller_gets_python_worker_results() -> Result<()> {
    let queue = unique("amqp_rpc_rs2py");
    let env = PyEnv::with_backend(&amqp_url(), "rpc://", &queue);
    let _worker = spawn_python_worker(&env, &[&queue], None)?;
    let app = rust_app(&amqp_url(), "rpc://", &queue, ContentType::Json, None).await?;
    assert!(app.backend().is_some_and(|b| b.describe().starts_with("rpc://")));

    assert_eq!(app.delay(add::s(2, 3)).await?.get(T).await?, 5);
    let r = app.send_task("tasks.add", vec![], kwargs(json!({"x": 4, "y": 5})), SendOptions::new()).await?;
    assert_eq!(r.get(T).await?, json!(9));
    let r = app.apply_async(add::s(1, 1), SendOptions::new().countdown(Duration::from_millis(300))).await?;
    assert_eq!(r.get(T).await?, 2);
    let (state, exc) = failed(app.delay(fail::s("rpc boom".to_string())).await?.get(T).await)?;
    assert_eq!((state.as_str(), exc.exc_type.as_str()), ("FAILURE", "ValueError"));
    assert_eq!(exc.exc_message, vec![json!("rpc boom")]);
    let r = app.send_task("tasks.retry_until", vec![json!(2)], Map::new(), SendOptions::new()).await?;
    assert_eq!(r.get(T).await?, json!(2));
    let r = app.delay(chain([add::s(1, 2).into(), add::sig().arg(3), mul::sig().arg(10)])).await?;
    assert_eq!(r.get(T).await?, json!(60));

    // PROGRESS arrives as a message too.
    let r = app.delay(progress::s(30)).await?;
    let deadline = std::time::Instant::now() + T;
    let mut saw_progress = false;
    while std::time::Instant::now() < deadline {
        let meta = r.meta().await?;
        saw_progress |= meta.status == State::progress();
        if meta.status.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(saw_progress, "no PROGRESS state came back over rpc://");
    assert_eq!(r.get(T).await?, 30);

    let mut many = Vec::new();
    for i in 0..20 {
        many.push(app.delay(add::s(i, i)).await?);
    }
    for (i, r) in many.into_iter().enumerate() {
        assert_eq!(r.get(T).await?, 2 * i as i64);
    }
    Ok(())
}

/// `rpc://` with a qtask worker and a qtask caller, and the caller's
/// reply queue is the `reply_to` of what it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_rpc_qtask_caller_gets_qtask_worker_results() -> Result<()> {
    let queue = unique("amqp_rpc_rs2rs");
    let opts = WorkerOpts { backend: Some("rpc://".into()), ..Default::default() };
    let _worker = spawn_interop_worker(interop_worker_bin!(), &amqp_url(), &[&queue], &opts)?;
    let app = rust_app(&amqp_url(), "rpc://", &queue, ContentType::Json, None).await?;
    assert!(app.backend().and_then(|b| b.reply_to()).is_some_and(|q| q == app.reply_to()));
    assert_eq!(app.delay(add::s(20, 22)).await?.get(T).await?, 42);
    let (state, exc) = failed(app.delay(fail::s("x".to_string())).await?.get(T).await)?;
    assert_eq!((state.as_str(), exc.exc_type.as_str()), ("FAILURE", "ValueError"));
    Ok(())
}

// ---------------------------------------------------------------------------
// Both workers on one RabbitMQ queue

/// A chord whose header runs partly on a Python worker and partly on the
/// qtask worker (some header tasks pinned to each, the rest on a queue both
/// consume), results in Redis, completes exactly once — twice over: once
/// where a Python task finishes the header last (Celery's join dispatches
/// the body over RabbitMQ) and once where a qtask task does (qredis's join,
/// qamqp's publish). The body (`tasks.count_sum`, Python) counts its runs in
/// a Redis key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_chord_split_between_python_and_qtask_workers_completes_once() -> Result<()> {
    amqp().chord_split_between_python_and_qtask_completes_once().await
}
