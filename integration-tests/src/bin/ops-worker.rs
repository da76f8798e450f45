//! `ops-worker`: the worker of the operations tests (metrics and health
//! endpoints, JSON logs, warm shutdown), a thin binary over [`qtask::cli`]
//! with the task log on (Celery's line per task received and finished):
//!
//! ```text
//! ops-worker [worker] --broker URL [--backend URL] [--metrics-addr HOST:PORT]
//!            [--log-format json] [every other `worker` flag]
//! ```
//!
//! As `interop-worker`, URLs come from the flags only. Its tasks:
//! `ops.add(x, y)`, `ops.fail(message)` (ValueError), `ops.flaky()` (asks
//! for one retry after 10 ms, then returns `"ok"`) and `ops.sleep(seconds)`.

use std::process::ExitCode;
use std::time::Duration;

use qtask::{task, TaskContext, TaskError};
use serde_json::Value;

/// x + y
#[task(name = "ops.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

/// Fail with `ValueError(message)`.
#[task(name = "ops.fail")]
async fn fail(message: String) -> Result<Value, TaskError> {
    Err(TaskError::value_error(message))
}

/// Retry once (10 ms later), then succeed.
#[task(name = "ops.flaky")]
async fn flaky(ctx: TaskContext) -> Result<String, TaskError> {
    if ctx.retries() == 0 {
        return Err(ctx.retry().countdown(Duration::from_millis(10)).into());
    }
    Ok("ok".into())
}

/// Sleep, return the seconds.
#[task(name = "ops.sleep")]
async fn sleep(seconds: f64) -> Result<f64, TaskError> {
    if !seconds.is_finite() || !(0.0..=3600.0).contains(&seconds) {
        return Err(TaskError::value_error(format!("invalid seconds {seconds}")));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    Ok(seconds)
}

fn main() -> ExitCode {
    qtask::cli::Cli::new("ops-worker")
        .tasks(|app| {
            app.register(add).register(fail).register(flaky).register(sleep);
        })
        .default_command("worker")
        .urls_from_flags_only(true)
        .run()
}
