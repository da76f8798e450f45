//! Results shared with Python Celery through Celery's database result
//! backend on PostgreSQL: qtask stores SUCCESS / FAILURE / PROGRESS and
//! `AsyncResult(id, backend=DatabaseBackend(url))` reads them; Python
//! stores and qtask reads; Python and qtask workers (Redis broker) with the
//! other side's producer and the `qtask` CLI, JSON and msgpack results.
//! Each test owns a schema; Python reaches it through
//! `?options=-csearch_path%3D<schema>` because Celery's SQLAlchemy backend
//! uses the connection's default schema.

mod sql_common;

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use integration_tests::cli::{cli, lines, run};
use integration_tests::{
    interop_worker_bin, python, python_dir, redis_url, spawn_python_worker, unique, wait_for, Interop, WorkerOpts,
};
use qtask::{task, Config, ContentType, Error, State, TaskContext, TaskError, Worker};
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
