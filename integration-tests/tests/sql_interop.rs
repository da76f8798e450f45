//! Results shared with Python Celery through Celery's database result
//! backend on PostgreSQL: qtask stores SUCCESS / FAILURE / PROGRESS and
//! `AsyncResult(id, backend=DatabaseBackend(url))` reads them; Python
//! stores and qtask reads; Python and qtask workers (Redis broker) with the
//! other side's producer and the `qtask` CLI, JSON and msgpack results.
//! Each test owns a schema; Python reaches it through
//! `?options=-csearch_path%3D<schema>` because Celery's SQLAlchemy backend
//! uses the connection's default schema.

mod sql_common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use integration_tests::cli::{cli, lines, run};
use integration_tests::interop::T;
use integration_tests::{
    interop_worker_bin, py_producer, python, python_dir, redis_cmd, redis_url, spawn_python_worker, unique, wait_for,
    Interop, WorkerOpts,
};
use qtask::{chord, task, Config, ContentType, Error, SendOptions, Signature, State, TaskContext, TaskError, Worker};
use serde_json::{json, Value};
use sql_common::PgSchema;
use tokio::sync::Notify;

#[task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[task(name = "tasks.fail")]
async fn fail(message: String) -> Result<Value, TaskError> {
    Err(TaskError::value_error(message))
}

fn release() -> &'static Notify {
    static N: OnceLock<Notify> = OnceLock::new();
    N.get_or_init(Notify::new)
}

/// Report PROGRESS 3/10, then wait until the test releases it.
#[task(name = "tasks.held_progress")]
async fn held_progress(ctx: TaskContext) -> Result<u64, TaskError> {
    ctx.progress(3, 10).await.map_err(|e| TaskError::fail("BackendError", e.to_string()))?;
    release().notified().await;
    Ok(10)
}

/// Run `sql_results.py MODE URL IDS` and return the JSON it printed.
fn sql_results(mode: &str, url: &str, ids: &Value) -> Result<Value> {
    let mut cmd = Command::new(python());
    cmd.current_dir(python_dir()).env("PYTHONDONTWRITEBYTECODE", "1").args([
        "sql_results.py",
        mode,
        url,
        &ids.to_string(),
    ]);
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("sql_results.py {mode} failed ({}):\n{stdout}\n{stderr}", out.status);
    }
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("sql_results.py printed:\n{stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reads_results_qtask_stored_in_postgres() -> Result<()> {
    let schema = PgSchema::new("pyread");
    let queue = unique("q");
    let mut cfg = Config::default();
    cfg.broker_url = Some("memory://".into());
    cfg.result_backend = Some(format!("db+{}", schema.url()));
    cfg.task_default_queue = queue.clone();
    let app = qtask::app_from_config(cfg).await?;
    app.register(add).register(fail).register(held_progress);
    let worker = Worker::builder(app.clone()).concurrency(3).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());

    let ok = app.delay(add::s(20, 22)).await?;
    assert_eq!(ok.get(Duration::from_secs(20)).await?, 42);
    let failed = app.delay(fail::s("boom from rust".to_string())).await?;
    assert!(matches!(failed.get(Duration::from_secs(20)).await, Err(Error::TaskFailed { .. })));
    let held = app.delay(held_progress::s()).await?;
    wait_for("PROGRESS stored", Duration::from_secs(20), || async {
        Ok(held.state().await? == State::Custom("PROGRESS".into()))
    })
    .await?;

    let ids = json!({"success": ok.id(), "failure": failed.id(), "progress": held.id()});
    let seen = sql_results("read", &schema.sqlalchemy_url(), &ids)?;
    assert_eq!(seen["success"], json!({"state": "SUCCESS", "value": 42}), "{seen}");
    assert_eq!(
        seen["failure"],
        json!({"state": "FAILURE", "exc_type": "ValueError", "exc_message": "boom from rust", "exc_module": "builtins"}),
        "{seen}"
    );
    assert_eq!(seen["progress"], json!({"state": "PROGRESS", "info": {"current": 3, "total": 10}}), "{seen}");

    release().notify_one();
    assert_eq!(held.get(Duration::from_secs(20)).await?, 10);
    let seen = sql_results("read", &schema.sqlalchemy_url(), &json!({"progress": held.id()}))?;
    assert_eq!(seen["progress"], json!({"state": "SUCCESS", "value": 10}), "{seen}");
    stop.shutdown();
    running.await??;
    Ok(())
}

#[tokio::test]
async fn qtask_reads_results_python_stored_in_postgres() -> Result<()> {
    let schema = PgSchema::new("pystore");
    // qtask creates the schema and tables first; Python then writes rows as a Celery worker does.
    let backend = qtask::connect_backend(&schema.url()).await?;
    let ids = json!({"success": unique("s"), "failure": unique("f"), "progress": unique("p")});
    let stored = sql_results("store", &schema.sqlalchemy_url(), &ids)?;
    assert_eq!(stored, json!({"stored": true}));

    let app = qtask::App::builder().broker(qtask::connect("memory://").await?).backend(backend).build()?;
    let id = |k: &str| ids[k].as_str().unwrap_or_default().to_string();
    assert_eq!(app.result::<i64>(id("success")).get(Duration::from_secs(5)).await?, 42);
    match app.result::<Value>(id("failure")).get(Duration::from_secs(5)).await {
        Err(Error::TaskFailed { state, exc, .. }) => {
            assert_eq!(state, "FAILURE");
            assert_eq!(exc.exc_type, "ValueError");
            assert_eq!(exc.exc_message, vec![json!("boom from python")]);
        }
        other => panic!("expected the Python ValueError, got {other:?}"),
    }
    let progress = app.result::<Value>(id("progress")).meta().await?;
    assert_eq!(progress.status, State::Custom("PROGRESS".into()));
    assert_eq!(progress.result, json!({"current": 2, "total": 4}));
    Ok(())
}

// ---------------------------------------------------------------------------
// Workers and producers of both sides on Celery's database backend

/// Redis broker, results in `schema` (Celery's `db+postgresql` URL for
/// Python, qsql's for qtask); both sides store results with `serializer`.
async fn pg_interop(schema: &PgSchema, serializer: &str) -> Result<Interop> {
    // qtask creates the schema and Celery's tables; Python then finds them.
    qtask::connect_backend(&schema.url()).await?;
    Ok(Interop {
        broker: redis_url(),
        results: format!("db+{}", schema.sqlalchemy_url()),
        prefix: "pg_",
        worker_bin: interop_worker_bin!().to_path_buf(),
        worker: WorkerOpts { backend: Some(schema.url()), ..Default::default() },
        py_vars: Vec::new(),
        qtask_results: Some(schema.url()),
    }
    .python_results(serializer)
    .qtask_worker_results(serializer))
}

/// A qtask producer (its `result_serializer` left at JSON) reads what a
/// Python worker stores in `celery_taskmeta` — values, failures, PROGRESS,
/// retries, the extended columns — although Python sends no notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qtask_producer_reads_python_worker_results_in_postgres() -> Result<()> {
    for serializer in ["json", "msgpack"] {
        let schema = PgSchema::new("rs2py");
        pg_interop(&schema, serializer).await?.qtask_to_python_messages(ContentType::Json).await?;
    }
    Ok(())
}

/// A Python producer reads what the `interop-worker` stores in
/// `celery_taskmeta`, JSON or msgpack (Celery decodes with its own
/// `result_serializer` only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_producer_reads_qtask_worker_results_in_postgres() -> Result<()> {
    for serializer in ["json", "msgpack"] {
        let schema = PgSchema::new("py2rs");
        let interop = pg_interop(&schema, serializer).await?;
        tokio::task::spawn_blocking(move || interop.python_to_qtask_messages("json")).await??;
    }
    Ok(())
}

/// `qtask call --wait` and `qtask result` with a Python worker storing its
/// results in PostgreSQL (JSON, then msgpack); a pickled result fails at
/// once with the setting to change, not with a time-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_call_wait_and_result_with_python_worker_on_postgres() -> Result<()> {
    for serializer in ["json", "msgpack", "pickle"] {
        let schema = PgSchema::new("cli");
        let interop = pg_interop(&schema, serializer).await?;
        let queue = unique("pg_cli");
        let _worker = spawn_python_worker(&interop.py_env(&queue), &[&queue], None)?;
        let backend = schema.url();
        let flags = ["--broker", interop.broker.as_str(), "--backend", backend.as_str()];
        let call = |args: &[&str]| -> Result<std::process::Output> {
            run(cli()?.args(flags).arg("call").args(args).args(["--queue", &queue, "--wait", "30"]))
        };

        let out = call(&["tasks.add", "--args", "[2, 3]"])?;
        let l = lines(&out);
        if serializer == "pickle" {
            assert!(!out.status.success(), "{serializer}: {l:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("pickle") && stderr.contains("result_serializer = 'json'"),
                "the error names the setting: {stderr}"
            );
            assert!(!stderr.contains("timed out"), "failed by time-out: {stderr}");
            let out = run(cli()?.args(flags).args(["result", &l[0]]))?;
            assert!(!out.status.success());
            assert!(String::from_utf8_lossy(&out.stderr).contains("pickle"));
            continue;
        }
        assert!(out.status.success(), "{serializer}: {l:?}");
        assert_eq!(l.get(1).map(String::as_str), Some("5"), "{serializer}: {l:?}");
        let out = run(cli()?.args(flags).args(["result", &l[0]]))?;
        assert!(out.status.success());
        assert_eq!(lines(&out), vec!["5".to_string()], "{serializer}");

        let out = call(&["tasks.xsum", "--args", "[[1, 2, 3]]"])?;
        assert_eq!(lines(&out).get(1).map(String::as_str), Some("6"), "{serializer}");

        let out = call(&["tasks.fail", "--args", r#"["boom"]"#])?;
        assert_eq!(out.status.code(), Some(1), "{serializer}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("ValueError") && stderr.contains("boom"), "{serializer}: {stderr}");
        let failed_id = lines(&out).first().cloned().unwrap_or_default();
        let out = run(cli()?.args(flags).args(["result", &failed_id]))?;
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("ValueError"), "{serializer}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Chords on the database backend: no native join, `celery.chord_unlock`

/// Python's `chord(...)` with the database backend, every task on the
/// `interop-worker`: the `celery.chord_unlock` task Celery sends is run by
/// qtask (and the rest of the canvas checks).
#[test]
fn python_canvas_on_qtask_worker_on_postgres() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let schema = PgSchema::new("pycanvas");
    let interop = rt.block_on(pg_interop(&schema, "json"))?;
    interop.python_canvas_on_qtask("json")
}

/// qtask's chords (and the rest of the canvas checks) on a Python worker
/// with the database backend: qtask sends `celery.chord_unlock` as Celery
/// does, and the Python worker joins the chord with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qtask_canvas_on_python_worker_on_postgres() -> Result<()> {
    let schema = PgSchema::new("rscanvas");
    pg_interop(&schema, "json").await?.qtask_canvas_on_python(ContentType::Json).await
}

#[task(name = "tasks.sleep")]
async fn sleep(seconds: f64) -> f64 {
    // The workload of a slow header task, not a synchronisation.
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    seconds
}

fn body_runs() -> &'static Mutex<HashMap<String, u64>> {
    static RUNS: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    RUNS.get_or_init(Default::default)
}

/// Chord body run by qtask: counts its runs under `counter`, returns the sum.
#[task(name = "tasks.count_body")]
async fn count_body(numbers: Vec<f64>, counter: String) -> f64 {
    *body_runs().lock().unwrap_or_else(|p| p.into_inner()).entry(counter).or_default() += 1;
    numbers.iter().sum()
}

/// A chord whose header runs partly on a Python worker and partly on a
/// qtask worker, with the database backend, completes exactly once — sent
/// by Python and by qtask, with the body (and so `celery.chord_unlock`,
/// which goes to the body's queue) on each side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chords_on_postgres_split_between_python_and_qtask_complete_once() -> Result<()> {
    let schema = PgSchema::new("mixchord");
    let interop = pg_interop(&schema, "json").await?;
    let shared = unique("pg_mixed");
    let (q_py, q_rs) = (format!("{shared}_py"), format!("{shared}_rs"));
    let env = interop.py_env(&shared);
    let _py = spawn_python_worker(&env, &[&shared, &q_py], None)?;
    let mut cfg = Config::default();
    cfg.broker_url = Some(interop.broker.clone());
    cfg.result_backend = Some(schema.url());
    cfg.task_default_queue = shared.clone();
    cfg.result_extended = true;
    let app = qtask::app_from_config(cfg).await?;
    app.register(add).register(sleep).register(count_body);
    // One at a time, in queue order, like the solo Python worker: a second
    // dispatch of a body would run before the marker task sent after it.
    let worker = Worker::builder(app.clone()).queues([shared.clone(), q_rs.clone()]).concurrency(1).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());

    let mut header = Vec::new();
    let mut expected = 0.0;
    for i in 0..3 {
        header.push(json!({"task": "tasks.sleep", "args": [0.1], "queue": q_py}));
        header.push(json!({"task": "tasks.add", "args": [i, i], "queue": q_rs}));
        expected += 0.1 + 2.0 * f64::from(i);
    }
    for i in 0..4 {
        header.push(json!({"task": "tasks.add", "args": [i, i], "queue": shared}));
        expected += 2.0 * f64::from(i);
    }
    for python_sends in [true, false] {
        for python_body in [true, false] {
            let case = format!("python_sends={python_sends} python_body={python_body}");
            let counter = unique("chord_body_runs");
            let (body_task, body_queue) =
                if python_body { ("tasks.count_sum", &q_py) } else { ("tasks.count_body", &q_rs) };
            let body = json!({"task": body_task, "kwargs": {"counter": counter}, "queue": body_queue});
            let (result, header_ids) = if python_sends {
                let spec = json!({"header": header, "body": body}).to_string();
                let env = env.clone();
                let out = tokio::task::spawn_blocking(move || py_producer(&env, "chord", &[&spec])).await??;
                let ids = out["header_ids"].as_array().cloned().unwrap_or_default();
                (out["result"].clone(), ids.iter().filter_map(Value::as_str).map(str::to_owned).collect::<Vec<_>>())
            } else {
                let ids: Vec<String> = header.iter().map(|_| unique("h")).collect();
                let sigs = header
                    .iter()
                    .zip(&ids)
                    .map(|(h, id)| {
                        let mut s = Signature::new(h["task"].as_str().unwrap_or_default())
                            .queue(h["queue"].as_str().unwrap_or_default());
                        s.args = h["args"].as_array().cloned().unwrap_or_default();
                        s.task_id(id.clone())
                    })
                    .collect::<Vec<_>>();
                let body = Signature::new(body_task).kwarg("counter", counter.clone()).queue(body_queue);
                (app.delay(chord(sigs, body)).await?.get(T).await?, ids)
            };
            let sum = result.as_f64().unwrap_or(f64::NAN);
            assert!((sum - expected).abs() < 1e-9, "{case}: chord result {result}, expected {expected}");

            let mut workers = Vec::new();
            for id in &header_ids {
                let meta = app.result::<Value>(id.clone()).meta().await?;
                assert_eq!(meta.status, State::Success, "{case}: {id}");
                workers.push(meta.worker.unwrap_or_default());
            }
            assert!(workers.iter().any(|w| w.starts_with("py_")), "{case}: no header task ran on Python: {workers:?}");
            assert!(workers.iter().any(|w| w.starts_with("qtask")), "{case}: no header task ran on qtask: {workers:?}");

            // Exactly once: a marker task queued behind any second dispatch of
            // the body has run (each worker takes its queue in order).
            let marker = app.apply_async(add::s(0, 0), SendOptions::new().queue(body_queue.clone())).await?;
            marker.get(T).await?;
            let runs = if python_body {
                redis_cmd(&interop.broker, &["GET", &counter])?.int()
            } else {
                body_runs().lock().unwrap_or_else(|p| p.into_inner()).get(&counter).copied().unwrap_or(0) as i64
            };
            assert_eq!(runs, 1, "{case}: chord body runs");
        }
    }
    stop.shutdown();
    running.await??;
    Ok(())
}
