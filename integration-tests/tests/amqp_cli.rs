//! The `qtask` CLI against RabbitMQ with the `interop-worker` running:
//! results in Redis, and over `rpc://` (the CLI's own reply queue).

use anyhow::Result;
use integration_tests::cli::{cli, lines, run};
use integration_tests::{amqp_url, interop_worker_bin, redis_url, spawn_interop_worker, unique, WorkerOpts};
use serde_json::{json, Value};

/// `call --wait` prints the id, then the result read from `backend`.
fn call_and_wait(backend: &str) -> Result<()> {
    let queue = unique("amqp_cli");
    let opts = WorkerOpts { backend: Some(backend.to_string()), ..Default::default() };
    let _worker = spawn_interop_worker(interop_worker_bin!(), &amqp_url(), &[&queue], &opts)?;
    let out = run(cli()?.args(["--broker", &amqp_url(), "--backend", backend]).args([
        "call",
        "tasks.add",
        "--args",
        "[20, 22]",
        "--queue",
        &queue,
        "--wait",
        "30",
    ]))?;
    assert!(out.status.success());
    let printed = lines(&out);
    assert_eq!(printed.first().map(String::len), Some(36), "first line is the task id: {printed:?}");
    let result: Value = serde_json::from_str(printed.get(1).map(String::as_str).unwrap_or(""))?;
    assert_eq!(result, json!(42));
    Ok(())
}

#[test]
fn amqp_cli_call_wait_with_redis_results() -> Result<()> {
    call_and_wait(&redis_url())
}

#[test]
fn amqp_cli_call_wait_with_rpc_results() -> Result<()> {
    call_and_wait("rpc://")
}

/// `rpc://` with a broker that is not RabbitMQ is refused with a clear error.
#[test]
fn amqp_cli_rpc_needs_an_amqp_broker() -> Result<()> {
    let out = run(cli()?.args(["--broker", &redis_url(), "--backend", "rpc://"]).args(["call", "tasks.add"]))?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rpc://") && err.contains("amqp://"), "{err}");
    Ok(())
}

#[test]
fn amqp_cli_events_dump_shows_a_python_worker() -> Result<()> {
    integration_tests::cli::events_dump_shows_a_python_worker(&amqp_url())
}

#[test]
fn amqp_cli_inspect_and_control_a_python_worker() -> Result<()> {
    integration_tests::cli::remote_control_of_a_python_worker(&amqp_url())
}
