//! `interop-worker`: a qtask worker with the tasks the Python interop tests
//! call, a thin binary over [`qtask::cli`]. Its command line is a stable
//! interface used by external tooling:
//!
//! ```text
//! interop-worker --broker URL [--backend URL] [--queues a,b] [--concurrency N]
//!                [--prefetch-multiplier N] [--acks-late] [--threads N]
//!                [-B|--beat [--schedule FILE]]
//! ```
//!
//! With no command name the arguments are `worker`'s, so every flag of
//! `qtask::cli`'s `worker` works too (`-n`, `-l`, `-P`, `--autoscale`, ...),
//! and the other commands are there by name (`interop-worker inspect ping
//! --broker URL`). URLs come from the flags only, never from the settings
//! file or the environment: `--broker` is required and without `--backend`
//! results are not stored; the default queue is `celery`. `--threads` sets
//! the tokio runtime's worker threads: 1 runs the worker on a current-thread
//! runtime (no wake-ups across threads; the benchmarks use it), the default
//! is a multi-thread runtime with one thread per core. SIGTERM or SIGINT
//! gives a warm shutdown (a second one, a cold shutdown). It logs no line per
//! task (the benchmarks run it at info level and measure the worker).

use std::process::ExitCode;
use std::time::Duration;

use qtask::{task, TaskContext, TaskError};
use serde_json::Value;

/// x + y
#[task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

/// x * y
#[task(name = "tasks.mul")]
async fn mul(x: i64, y: i64) -> i64 {
    x * y
}

/// Sum of a list.
#[task(name = "tasks.xsum")]
async fn xsum(numbers: Vec<i64>) -> i64 {
    numbers.iter().sum()
}

/// Sleep asynchronously, return the seconds.
#[task(name = "tasks.sleep")]
async fn sleep(seconds: f64) -> Result<f64, TaskError> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(TaskError::value_error(format!("invalid seconds {seconds}")));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    Ok(seconds)
}

/// Fail with `ValueError(message)`.
#[task(name = "tasks.fail")]
async fn fail(message: String) -> Result<Value, TaskError> {
    Err(TaskError::value_error(message))
}

/// `steps` steps of 10 ms, reporting PROGRESS `{"current": i, "total": steps}` after each.
#[task(name = "tasks.progress")]
async fn progress(ctx: TaskContext, steps: u64) -> Result<u64, TaskError> {
    for i in 1..=steps {
        tokio::time::sleep(Duration::from_millis(10)).await;
        ctx.progress(i, steps).await.map_err(|e| TaskError::fail("BackendError", e.to_string()))?;
    }
    Ok(steps)
}

/// Do nothing.
#[task(name = "tasks.noop")]
async fn noop() -> Value {
    Value::Null
}

/// The worker allocates a little per task from several threads (frames,
/// headers, results); mimalloc does that with less work than the system
/// allocator. The choice belongs to the binary, not to the qtask crates.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    qtask::cli::Cli::new("interop-worker")
        .tasks(|app| {
            app.register(add)
                .register(mul)
                .register(xsum)
                .register(sleep)
                .register(fail)
                .register(progress)
                .register(noop);
        })
        .default_command("worker")
        .urls_from_flags_only(true)
        // Its output as before: no line per task (the benchmarks measure the worker, not its log).
        .task_log(false)
        .run()
}
