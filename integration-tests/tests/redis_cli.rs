//! The `qtask` CLI against Redis with the `interop-worker` running.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use integration_tests::cli::{cli, lines, run};
use integration_tests::{interop_worker_bin, redis_cmd, redis_url, spawn_interop_worker, unique, WorkerOpts};
use serde_json::{json, Value};

fn is_task_id(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[test]
fn cli_call_wait_result_purge_on_redis() -> Result<()> {
    let url = redis_url();
    let queue = unique("cli");
    let opts = WorkerOpts { backend: Some(url.clone()), ..Default::default() };
    let mut worker = spawn_interop_worker(interop_worker_bin!(), &url, &[&queue], &opts)?;
    let flags = ["--broker", url.as_str(), "--backend", url.as_str()];

    // call: prints the id; `result ID` reads the result once it is stored.
    let out = run(cli()?.args(flags).args(["call", "tasks.add", "--args", "[2, 3]", "--queue", &queue]))?;
    assert!(out.status.success());
    let id = lines(&out).first().cloned().unwrap_or_default();
    assert!(is_task_id(&id), "call printed {id:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(cli()?.args(flags).args(["result", &id]))?;
        assert!(out.status.success());
        let printed: Value = serde_json::from_str(lines(&out).first().map(String::as_str).unwrap_or(""))?;
        if printed == json!(5) {
            break;
        }
        assert_eq!(printed["status"], json!("PENDING"), "not ready yet, so pending: {printed}");
        if Instant::now() > deadline {
            bail!("result {id} never became 5");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // call --wait: id, then the result as JSON; kwargs and countdown.
    let out = run(cli()?.args(flags).args([
        "call",
        "tasks.add",
        "--kwargs",
        r#"{"x": 4, "y": 5}"#,
        "--queue",
        &queue,
        "--countdown",
        "0.2",
        "--wait",
        "30",
    ]))?;
    assert!(out.status.success());
    let l = lines(&out);
    assert_eq!(l.len(), 2, "{l:?}");
    assert!(is_task_id(&l[0]), "{l:?}");
    assert_eq!(l[1], "9");
    let out = run(cli()?.args(flags).args([
        "call",
        "tasks.xsum",
        "--args",
        "[[1, 2, 3]]",
        "--queue",
        &queue,
        "--wait",
        "30",
    ]))?;
    assert_eq!(lines(&out).get(1).map(String::as_str), Some("6"));

    // FAILURE: exit 1, the remote error on stderr.
    let out = run(cli()?.args(flags).args([
        "call",
        "tasks.fail",
        "--args",
        r#"["boom"]"#,
        "--queue",
        &queue,
        "--wait",
        "30",
    ]))?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ValueError") && stderr.contains("boom"), "{stderr}");
    let failed_id = lines(&out).first().cloned().unwrap_or_default();
    let out = run(cli()?.args(flags).args(["result", &failed_id]))?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ValueError"));

    // URLs from QTASK_*, then CELERY_* variables.
    let out = run(cli()?.env("QTASK_BROKER_URL", &url).env("QTASK_RESULT_BACKEND", &url).args([
        "call",
        "tasks.mul",
        "--args",
        "[6, 7]",
        "--queue",
        &queue,
        "--wait",
        "30",
    ]))?;
    assert_eq!(lines(&out).get(1).map(String::as_str), Some("42"));
    let out = run(cli()?.env("CELERY_BROKER_URL", &url).env("CELERY_RESULT_BACKEND", &url).args([
        "call",
        "tasks.mul",
        "--args",
        "[3, 3]",
        "--queue",
        &queue,
        "--wait",
        "30",
    ]))?;
    assert_eq!(lines(&out).get(1).map(String::as_str), Some("9"));

    // purge: a queue nobody consumes.
    let idle = unique("cli_idle");
    for _ in 0..3 {
        assert!(run(cli()?.args(flags).args(["call", "tasks.noop", "--queue", &idle]))?.status.success());
    }
    assert_eq!(redis_cmd(&url, &["LLEN", &idle])?.int(), 3);
    let out = run(cli()?.args(["--broker", &url, "purge", "--queue", &idle]))?;
    assert!(out.status.success());
    assert_eq!(lines(&out), vec![format!("purged 3 message(s) from {idle}")]);
    assert_eq!(redis_cmd(&url, &["LLEN", &idle])?.int(), 0);

    // An unknown scheme is a clear error (exit 2).
    let out = run(cli()?.args(["--broker", "nats://h", "purge"]))?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported broker URL"));

    // The interop worker exits cleanly on SIGTERM (warm shutdown).
    let status = worker.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "interop-worker exited with {status}:\n{}", worker.log());
    Ok(())
}

#[test]
fn cli_events_dump_shows_a_python_worker_on_redis() -> Result<()> {
    integration_tests::cli::events_dump_shows_a_python_worker(&redis_url())
}

#[test]
fn cli_inspect_and_control_a_python_worker_on_redis() -> Result<()> {
    integration_tests::cli::remote_control_of_a_python_worker(&redis_url())
}

#[test]
fn cli_interop_worker_takes_celery_worker_flags_on_redis() -> Result<()> {
    integration_tests::cli::interop_worker_takes_celery_worker_flags(interop_worker_bin!(), &redis_url())
}
