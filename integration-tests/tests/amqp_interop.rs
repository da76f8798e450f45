//! Python Celery 5.7 and qtask on one RabbitMQ, both directions: a Python
//! producer with the qtask `interop-worker`, and a qtask producer with a
//! Python Celery worker (`pyapp.py`). Results go to Redis (as in most
//! Celery + RabbitMQ deployments), except in the `rpc://` tests, where they
//! travel back over RabbitMQ to the caller's reply queue.
//!
//! Every test owns its queue names (random suffix) on the shared RabbitMQ
//! (`QTASK_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`)
//! and results are read from the other side.

use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use integration_tests::{
    amqp_url, interop_worker_bin, py_producer, redis_cmd, redis_url, spawn_interop_worker, spawn_python_worker, unique,
    PyEnv, WorkerOpts,
};
use qtask::{
    chain, chord, group, task, App, Config, ContentType, Error, ExceptionInfo, SendOptions, Signature, State,
    TaskContext, TaskError, Worker,
};
use serde_json::{json, Map, Value};

const T: Duration = Duration::from_secs(30);

// Producer-side declarations of the shared task names (the bodies run only
// in the in-process worker of the retry test).

#[task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[task(name = "tasks.mul")]
async fn mul(x: i64, y: i64) -> i64 {
    x * y
}

#[task(name = "tasks.xsum")]
async fn xsum(numbers: Vec<i64>) -> i64 {
    numbers.iter().sum()
}

#[task(name = "tasks.fail")]
async fn fail(message: String) -> Result<Value, TaskError> {
    Err(TaskError::value_error(message))
}

#[task(name = "tasks.progress")]
async fn progress(steps: u64) -> u64 {
    steps
}

/// Retries (100 ms countdown, at most 10 times) until retried `times` times.
#[task(name = "tasks.retry_until")]
async fn retry_until(ctx: TaskContext, times: u32) -> Result<u32, TaskError> {
    if ctx.retries() < times {
        return Err(ctx
            .retry()
            .countdown(Duration::from_millis(100))
            .max_retries(10)
            .exc(ExceptionInfo::new("RuntimeError", "not yet"))
            .into());
    }
    Ok(ctx.retries())
}

/// A qtask app on RabbitMQ with results in `backend`.
async fn rust_app_with(queue: &str, serializer: ContentType, backend: &str, max_priority: Option<u8>) -> Result<App> {
    let mut cfg = Config::default();
    cfg.broker_url = Some(amqp_url());
    cfg.result_backend = Some(backend.to_string());
    cfg.task_default_queue = queue.to_string();
    cfg.task_serializer = serializer;
    if let Some(p) = max_priority {
        cfg.merge_vars([("QTASK_TASK_QUEUE_MAX_PRIORITY".to_string(), p.to_string())])?;
    }
    Ok(qtask::app_from_config(cfg).await?)
}

async fn rust_app(queue: &str, serializer: ContentType) -> Result<App> {
    rust_app_with(queue, serializer, &redis_url(), None).await
}

fn py_env(queue: &str) -> PyEnv {
    PyEnv::with_backend(&amqp_url(), &redis_url(), queue)
}

/// The worker on a current-thread runtime, as `cargo xtask bench amqp` runs
/// it (the fault tests use the default multi-thread runtime).
fn worker_opts() -> WorkerOpts {
    WorkerOpts { backend: Some(redis_url()), threads: Some(1), ..Default::default() }
}

fn serializer_name(ct: ContentType) -> &'static str {
    match ct {
        ContentType::Json => "json",
        _ => "msgpack",
    }
}

fn failed(r: Result<Value, Error>) -> Result<(String, ExceptionInfo)> {
    match r {
        Err(Error::TaskFailed { state, exc, .. }) => Ok((state, exc)),
        other => anyhow::bail!("expected a failed task, got {other:?}"),
    }
}

fn kwargs(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Python producer → qtask worker

fn python_to_qtask_messages(serializer: &str) -> Result<()> {
    let queue = unique("amqp_py2rs_msg");
    let other = format!("{queue}_other");
    let _worker = spawn_interop_worker(interop_worker_bin!(), &amqp_url(), &[&queue, &other], &worker_opts())?;
    let out = py_producer(&py_env(&queue).serializer(serializer), "messages", &[])?;

    assert_eq!(out["args"], json!(5));
    assert_eq!(out["kwargs"], json!(9));
    assert_eq!(out["mixed"], json!(3));
    assert_eq!(out["list_arg"], json!(10));
    assert_eq!(out["big_int"], json!(1_099_511_627_777_i64));
    assert_eq!(out["send_task"], json!(42));
    assert_eq!(out["other_queue"], json!(30));
    assert_eq!(out["failure"], json!({"type": "ValueError", "args": ["boom \u{fc}"]}));
    assert_eq!(out["failure_state"], json!({"state": "FAILURE", "type": "ValueError", "args": ["again"]}));
    assert_eq!(out["countdown"], json!(2));
    assert!(out["countdown_delay"].as_f64().unwrap_or(0.0) >= 0.5, "ran before its countdown: {out}");
    assert_eq!(out["eta"], json!(4));
    assert!(out["eta_delay"].as_f64().unwrap_or(-1.0) >= 0.0, "ran before its eta: {out}");
    assert_eq!(out["naive_eta"], json!(6));
    assert!(out["naive_eta_delay"].as_f64().unwrap_or(-1.0) >= 0.0, "ran before its naive eta: {out}");
    assert_eq!(out["expired"], json!({"state": "REVOKED", "type": "TaskRevokedError", "args": ["expired"]}));
    assert_eq!(out["not_expired"], json!(3));
    let p = &out["progress_meta"];
    assert_eq!(p["total"], json!(40), "PROGRESS meta seen by Python: {p}");
    assert!((1..=40).contains(&p["current"].as_i64().unwrap_or(0)), "PROGRESS meta seen by Python: {p}");
    assert_eq!(out["progress"], json!(40));
    Ok(())
}

#[test]
fn amqp_python_producer_to_qtask_worker_json() -> Result<()> {
    python_to_qtask_messages("json")
}

#[test]
fn amqp_python_producer_to_qtask_worker_msgpack() -> Result<()> {
    python_to_qtask_messages("msgpack")
}

#[test]
fn amqp_python_canvas_on_qtask_worker() -> Result<()> {
    let queue = unique("amqp_py2rs_canvas");
    let _worker = spawn_interop_worker(interop_worker_bin!(), &amqp_url(), &[&queue], &worker_opts())?;
    let out = py_producer(&py_env(&queue), "canvas", &[])?;

    assert_eq!(out["chain"], json!(60));
    assert_eq!(out["group"], json!([0, 2, 4, 6, 8]));
    assert_eq!(out["chord"], json!(90));
    assert_eq!(out["chain_group_chain"], json!(7));
    assert_eq!(out["chain_immutable"], json!(10));
    assert_eq!(out["link_parent"], json!(4));
    assert_eq!(out["link"], json!(40));
    assert_eq!(out["link_error_parent"], json!({"state": "FAILURE", "type": "ValueError", "args": ["first"]}));
    let parent = out["link_error_parent_id"].clone();
    assert_eq!(out["link_error"], json!({"state": "FAILURE", "type": "ValueError", "args": [parent]}));
    Ok(())
}

/// A retrying task on a qtask worker (in this process: the interop worker's
/// task set has none), sent and read by Python.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_python_producer_sees_qtask_retries() -> Result<()> {
    let queue = unique("amqp_py2rs_retry");
    let app = rust_app(&queue, ContentType::Json).await?;
    app.register(retry_until).register(fail);
    let worker = Worker::builder(app.clone()).queues([queue.clone()]).concurrency(2).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());
    let env = py_env(&queue);
    let out = tokio::task::spawn_blocking(move || py_producer(&env, "retry", &[])).await??;
    assert_eq!(out["result"], json!(2), "{out}");
    assert_eq!(out["exhausted"], json!({"type": "RuntimeError", "args": ["not yet"]}), "{out}");
    stop.shutdown();
    running.await??;
    Ok(())
}

/// Sort task ids by the `date_done` of their results.
async fn run_order(app: &App, ids: &[String]) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for id in ids {
        let r = app.result::<Value>(id.clone());
        r.get(T).await?;
        let meta = r.meta().await?;
        done.push((meta.date_done.ok_or_else(|| anyhow::anyhow!("no date_done for {id}"))?, id.clone()));
    }
    done.sort();
    Ok(done.into_iter().map(|(_, id)| id).collect())
}

/// On RabbitMQ the highest number goes first, in a queue declared with
/// `x-max-priority` (Celery's `task_queue_max_priority` = 10 on both
/// sides, so the declarations agree): tasks queued with priorities 0, 3, 6,
/// 9 (in that order, no worker running) run 9, 6, 3, 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_python_priorities_on_qtask_worker() -> Result<()> {
    let queue = unique("amqp_py2rs_prio");
    let env = py_env(&queue).var("PYAPP_MAX_PRIORITY", "10");
    let mut ids = Vec::new();
    for p in [0, 3, 6, 9] {
        let opts = json!({"args": [p, 0], "options": {"priority": p}}).to_string();
        let out = py_producer(&env, "send", &["tasks.add", &opts])?;
        ids.push(out["id"].as_str().unwrap_or_default().to_string());
    }
    let opts = WorkerOpts {
        concurrency: Some(1),
        prefetch_multiplier: Some(1),
        env: vec![("QTASK_TASK_QUEUE_MAX_PRIORITY".into(), "10".into())],
        ..worker_opts()
    };
    let _worker = spawn_interop_worker(interop_worker_bin!(), &amqp_url(), &[&queue], &opts)?;
    let app = rust_app_with(&queue, ContentType::Json, &redis_url(), Some(10)).await?;
    let order = run_order(&app, &ids).await?;
    let expected: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(order, expected, "ids by priority 0, 3, 6, 9: {ids:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// qtask producer → Python worker

async fn qtask_to_python_messages(ct: ContentType) -> Result<()> {
    let queue = unique("amqp_rs2py_msg");
    let other = format!("{queue}_other");
    let env = py_env(&queue).serializer(serializer_name(ct));
    let _worker = spawn_python_worker(&env, &[&queue, &other], None)?;
    let app = rust_app(&queue, ct).await?;

    assert_eq!(app.delay(add::s(2, 3)).await?.get(T).await?, 5);
    let r = app.send_task("tasks.add", vec![], kwargs(json!({"x": 4, "y": 5})), SendOptions::new()).await?;
    assert_eq!(r.get(T).await?, json!(9));
    let r = app.send_task("tasks.add", vec![json!(1)], kwargs(json!({"y": 2})), SendOptions::new()).await?;
    assert_eq!(r.get(T).await?, json!(3));
    assert_eq!(app.delay(xsum::s(vec![1, 2, 3, 4])).await?.get(T).await?, 10);
    assert_eq!(app.delay(add::s(1_099_511_627_776, 1)).await?.get(T).await?, 1_099_511_627_777);
    let r = app.apply_async(add::s(10, 20), SendOptions::new().queue(other.clone())).await?;
    assert_eq!(r.get(T).await?, 30);
    let meta = r.meta().await?;
    assert_eq!(meta.queue.as_deref(), Some(other.as_str()), "Python's extended result names the queue");

    // Failure: Error::TaskFailed with the Python exception.
    let (state, exc) = failed(app.delay(fail::s("boom \u{fc}".to_string())).await?.get(T).await)?;
    assert_eq!(state, "FAILURE");
    assert_eq!(exc.exc_type, "ValueError");
    assert_eq!(exc.exc_message, vec![json!("boom \u{fc}")]);
    assert_eq!(exc.exc_module, "builtins");

    // Countdown and eta: not run before the due time.
    let sent = Utc::now();
    let r = app.apply_async(add::s(1, 1), SendOptions::new().countdown(Duration::from_millis(500))).await?;
    assert_eq!(r.get(T).await?, 2);
    let done = r.meta().await?.date_done.unwrap_or(sent);
    assert!(done >= sent + chrono::Duration::milliseconds(500), "ran at {done}, sent at {sent} with countdown 0.5 s");
    let eta = Utc::now() + chrono::Duration::milliseconds(400);
    let r = app.apply_async(add::s(2, 2), SendOptions::new().eta(eta)).await?;
    assert_eq!(r.get(T).await?, 4);
    let done = r.meta().await?.date_done.unwrap_or(eta);
    assert!(done >= eta, "ran at {done} before its eta {eta}");

    // Expiry: already expired → REVOKED; not yet expired → runs.
    let past = Utc::now() - chrono::Duration::seconds(30);
    let r =
        app.send_task("tasks.add", vec![json!(1), json!(2)], Map::new(), SendOptions::new().expires_at(past)).await?;
    let (state, exc) = failed(r.get(T).await)?;
    assert_eq!(state, "REVOKED");
    assert_eq!(exc.exc_type, "TaskRevokedError");
    assert_eq!(exc.exc_message, vec![json!("expired")]);
    let r = app.apply_async(add::s(1, 2), SendOptions::new().expires_in(Duration::from_secs(60))).await?;
    assert_eq!(r.get(T).await?, 3);

    // PROGRESS meta written by update_state, read from Rust.
    let r = app.delay(progress::s(40)).await?;
    let deadline = std::time::Instant::now() + T;
    let mut seen = None;
    while std::time::Instant::now() < deadline {
        let meta = r.meta().await?;
        if meta.status == State::progress() {
            seen = Some(meta.result);
            break;
        }
        if meta.status.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seen = seen.ok_or_else(|| anyhow::anyhow!("task finished before a PROGRESS state was seen"))?;
    assert_eq!(seen["total"], json!(40), "{seen}");
    assert!((1..=40).contains(&seen["current"].as_i64().unwrap_or(0)), "{seen}");
    assert_eq!(r.get(T).await?, 40);

    // A Python task that retries, seen from Rust.
    let r = app.send_task("tasks.retry_until", vec![json!(2)], Map::new(), SendOptions::new()).await?;
    assert_eq!(r.get(T).await?, json!(2));
    assert_eq!(r.meta().await?.retries, Some(2));
    let r = app.send_task("tasks.retry_until", vec![json!(20)], Map::new(), SendOptions::new()).await?;
    let (state, exc) = failed(r.get(T).await)?;
    assert_eq!((state.as_str(), exc.exc_type.as_str()), ("FAILURE", "RuntimeError"), "{exc:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_qtask_producer_to_python_worker_json() -> Result<()> {
    qtask_to_python_messages(ContentType::Json).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_qtask_producer_to_python_worker_msgpack() -> Result<()> {
    qtask_to_python_messages(ContentType::Msgpack).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_qtask_canvas_on_python_worker() -> Result<()> {
    let queue = unique("amqp_rs2py_canvas");
    let _worker = spawn_python_worker(&py_env(&queue), &[&queue], None)?;
    let app = rust_app(&queue, ContentType::Json).await?;

    let r = app.delay(chain([add::s(1, 2).into(), add::sig().arg(3), mul::sig().arg(10)])).await?;
    assert_eq!(r.get(T).await?, json!(60));
    let r = app.delay(group((0..5).map(|i| add::s(i, i).into()))).await?;
    assert_eq!(r.get(T).await?, json!([0, 2, 4, 6, 8]));
    let r = app.delay(chord((0..10).map(|i| add::s(i, i).into()), xsum::sig())).await?;
    assert_eq!(r.get(T).await?, json!(90));
    let r = app.delay(chain([add::s(1, 1).into(), group([add::sig().arg(1), add::sig().arg(2)]), xsum::sig()])).await?;
    assert_eq!(r.get(T).await?, json!(7));
    let r = app.delay(chain([add::s(1, 1).into(), Signature::from(add::s(5, 5)).immutable()])).await?;
    assert_eq!(r.get(T).await?, json!(10));

    let cb = unique("cb");
    let r = app.apply_async(add::s(2, 2), SendOptions::new().link(mul::sig().arg(10).task_id(cb.clone()))).await?;
    assert_eq!(r.get(T).await?, 4);
    assert_eq!(app.result::<i64>(cb).get(T).await?, 40);

    // link_error: the errback (tasks.fail, one argument: an old-style
    // errback for Celery) is called with the failed task's id.
    let eb = unique("eb");
    let r = app
        .apply_async(fail::s("first".to_string()), SendOptions::new().link_error(fail::sig().task_id(eb.clone())))
        .await?;
    let (_, exc) = failed(r.get(T).await)?;
    assert_eq!(exc.exc_message, vec![json!("first")]);
    let (state, exc) = failed(app.result::<Value>(eb).get(T).await)?;
    assert_eq!(state, "FAILURE");
    assert_eq!(exc.exc_type, "ValueError");
    assert_eq!(exc.exc_message, vec![json!(r.id())]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_qtask_priorities_on_python_worker() -> Result<()> {
    let queue = unique("amqp_rs2py_prio");
    let app = rust_app_with(&queue, ContentType::Json, &redis_url(), Some(10)).await?;
    let mut ids = Vec::new();
    for p in [0u8, 3, 6, 9] {
        let r = app.apply_async(add::s(i64::from(p), 0), SendOptions::new().priority(p)).await?;
        ids.push(r.id().to_string());
    }
    let _worker = spawn_python_worker(&py_env(&queue).var("PYAPP_MAX_PRIORITY", "10"), &[&queue], None)?;
    let order = run_order(&app, &ids).await?;
    let expected: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(order, expected, "ids by priority 0, 3, 6, 9: {ids:?}");
    Ok(())
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
    let app = rust_app_with(&queue, ContentType::Json, "rpc://", None).await?;
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
    let app = rust_app_with(&queue, ContentType::Json, "rpc://", None).await?;
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
    let shared = unique("amqp_mixed");
    let (q_py, q_rs) = (format!("{shared}_py"), format!("{shared}_rs"));
    let redis = redis_url();
    let env = py_env(&shared);
    let _py = spawn_python_worker(&env, &[&shared, &q_py], None)?;
    let opts = WorkerOpts { concurrency: Some(1), prefetch_multiplier: Some(1), ..worker_opts() };
    let _rs = spawn_interop_worker(interop_worker_bin!(), &amqp_url(), &[&shared, &q_rs], &opts)?;
    let app = rust_app(&shared, ContentType::Json).await?;

    for python_last in [true, false] {
        let counter = unique("amqp_chord_body_runs");
        let slow = |q: &str| Signature::new("tasks.sleep").arg(0.25).queue(q);
        let quick = |q: &str, i: i64| Signature::from(add::s(i, i)).queue(q);
        let mut header = Vec::new();
        let mut expected = 0.0;
        for i in 0..3 {
            if python_last {
                header.push(slow(&q_py));
                header.push(quick(&q_rs, i));
            } else {
                header.push(quick(&q_py, i));
                header.push(slow(&q_rs));
            }
            expected += 0.25 + 2.0 * i as f64;
        }
        for i in 0..4 {
            header.push(quick(&shared, i));
            expected += 2.0 * i as f64;
        }
        let header_ids: Vec<String> = (0..header.len()).map(|_| unique("h")).collect();
        let header: Vec<Signature> = header.into_iter().zip(&header_ids).map(|(s, id)| s.task_id(id.clone())).collect();
        let body = Signature::new("tasks.count_sum").kwarg("counter", counter.clone()).queue(&q_py);
        let r = app.delay(chord(header, body)).await?;
        let sum = r.get(T).await?.as_f64().unwrap_or(f64::NAN);
        assert!((sum - expected).abs() < 1e-9, "chord result {sum}, expected {expected}");

        let mut workers = Vec::new();
        for id in &header_ids {
            let meta = app.result::<Value>(id.clone()).meta().await?;
            assert_eq!(meta.status, State::Success, "{id}");
            workers.push(meta.worker.unwrap_or_default());
        }
        anyhow::ensure!(workers.iter().any(|w| w.starts_with("py_")), "no header task ran on Python: {workers:?}");
        anyhow::ensure!(workers.iter().any(|w| w.starts_with("qtask")), "no header task ran on qtask: {workers:?}");

        // Exactly once: every header result is stored (so a second dispatch
        // would already be queued ahead), then a marker task on the body's
        // queue has run (the Python worker is solo and its prefetch is 1).
        let marker = app.apply_async(add::s(0, 0), SendOptions::new().queue(q_py.clone())).await?;
        marker.get(T).await?;
        assert_eq!(redis_cmd(&redis, &["GET", &counter])?.int(), 1, "chord body runs (python_last={python_last})");
        redis_cmd(&redis, &["DEL", &counter])?;
    }
    Ok(())
}
