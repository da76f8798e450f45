//! Producer-side declarations of the task names the `interop-worker` and
//! `pyapp.py` register: the tests send them by type. Their bodies run only
//! where a test registers them with a worker of its own process (the retry
//! check of [`crate::interop`]).

use std::time::Duration;

use qtask::{task, ExceptionInfo, TaskContext, TaskError};
use serde_json::Value;

/// `x + y`.
#[task(name = "tasks.add")]
pub async fn add(x: i64, y: i64) -> i64 {
    x + y
}

/// `x * y`.
#[task(name = "tasks.mul")]
pub async fn mul(x: i64, y: i64) -> i64 {
    x * y
}

/// The sum of `numbers` (a chord body).
#[task(name = "tasks.xsum")]
pub async fn xsum(numbers: Vec<i64>) -> i64 {
    numbers.iter().sum()
}

/// On the workers: sleeps `seconds`, returns them (here: returns them).
#[task(name = "tasks.sleep")]
pub async fn sleep(seconds: f64) -> f64 {
    seconds
}

/// Fails with `ValueError(message)`.
#[task(name = "tasks.fail")]
pub async fn fail(message: String) -> Result<Value, TaskError> {
    Err(TaskError::value_error(message))
}

/// On the workers: reports PROGRESS `{"current": i, "total": steps}` for
/// `steps` steps, returns `steps` (here: returns it).
#[task(name = "tasks.progress")]
pub async fn progress(steps: u64) -> u64 {
    steps
}

/// Retries (100 ms countdown, at most 10 times) until retried `times` times.
#[task(name = "tasks.retry_until")]
pub async fn retry_until(ctx: TaskContext, times: u32) -> Result<u32, TaskError> {
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
