//! The [`Task`] trait, task options, typed outcomes and the task context.

mod args;
mod context;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

pub use args::Args;
pub use context::{RequestInfo, RetryBuilder, SoftLimit, TaskContext};

use crate::result::ExceptionInfo;

/// A rate limit such as `"10/s"`, `"100/m"` or `"5/h"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tasks allowed per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl RateLimit {
    /// Parse Celery's spelling: `"10/s"`, `"100/m"`, `"5/h"`, or a number
    /// (per second). `"0"` means no limit (`None`).
    pub fn parse(s: &str) -> Result<Option<RateLimit>, String> {
        let s = s.trim();
        let (n, unit) = s.split_once('/').unwrap_or((s, "s"));
        let count: f64 = n.trim().parse().map_err(|_| format!("invalid rate limit {s:?}: expected like \"10/s\""))?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            other => return Err(format!("invalid rate limit unit {other:?} in {s:?}: use s, m or h")),
        };
        if count < 0.0 || !count.is_finite() {
            return Err(format!("invalid rate limit {s:?}"));
        }
        if count == 0.0 {
            return Ok(None);
        }
        Ok(Some(RateLimit { count: count.ceil() as u32, per }))
    }
}

/// How many times a task may be retried (Celery's `max_retries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaxRetries {
    /// The app's `task_max_retries` setting (default 3, as Celery's tasks).
    #[default]
    Setting,
    /// At most this many retries.
    Limit(u32),
    /// Retry forever (Celery's `max_retries=None`).
    Unlimited,
}

impl MaxRetries {
    /// The limit, given the app's `task_max_retries` (`None`: no limit).
    pub fn resolve(self, setting: Option<u32>) -> Option<u32> {
        match self {
            MaxRetries::Setting => setting,
            MaxRetries::Limit(n) => Some(n),
            MaxRetries::Unlimited => None,
        }
    }
}

impl From<u32> for MaxRetries {
    fn from(n: u32) -> Self {
        MaxRetries::Limit(n)
    }
}

impl From<Option<u32>> for MaxRetries {
    /// `None` is Celery's `max_retries=None`: retry forever.
    fn from(n: Option<u32>) -> Self {
        n.map_or(MaxRetries::Unlimited, MaxRetries::Limit)
    }
}

/// Per-task options, with Celery's names and defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOptions {
    /// Maximum retries (default: the app's `task_max_retries`, 3).
    pub max_retries: MaxRetries,
    /// Countdown used by `retry()` when none is given (`None`: the app's
    /// `task_default_retry_delay`, 180 s).
    pub default_retry_delay: Option<Duration>,
    /// Exponential backoff for autoretries: `None` off, else the factor in seconds.
    pub retry_backoff: Option<Duration>,
    /// Upper bound of the backoff (Celery: 600 s).
    pub retry_backoff_max: Duration,
    /// Randomize the backoff in `[0, delay]` (Celery default: true).
    pub retry_jitter: bool,
    /// Error type names (`exc_type`) that trigger an automatic retry.
    pub autoretry_for: Vec<String>,
    /// Ack after the task ran instead of before (`None`: the app setting).
    pub acks_late: Option<bool>,
    /// Hard time limit (`None`: the app setting).
    pub time_limit: Option<Duration>,
    /// Soft time limit (`None`: the app setting).
    pub soft_time_limit: Option<Duration>,
    /// Per-worker rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Default queue for this task.
    pub queue: Option<String>,
    /// Do not store results.
    pub ignore_result: bool,
    /// Store STARTED when the task starts (`None`: the app setting).
    pub track_started: Option<bool>,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            max_retries: MaxRetries::Setting,
            default_retry_delay: None,
            retry_backoff: None,
            retry_backoff_max: Duration::from_secs(600),
            retry_jitter: true,
            autoretry_for: Vec::new(),
            acks_late: None,
            time_limit: None,
            soft_time_limit: None,
            rate_limit: None,
            queue: None,
            ignore_result: false,
            track_started: None,
        }
    }
}

/// A request to run the task again later (Celery's `self.retry()`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Retry {
    /// Wait this long (default: the task's `default_retry_delay`).
    pub countdown: Option<Duration>,
    /// Or run at this time.
    pub eta: Option<DateTime<Utc>>,
    /// Override `max_retries` for this call.
    pub max_retries: Option<u32>,
    /// The error that caused the retry (stored with the RETRY state).
    pub exc: Option<ExceptionInfo>,
}

/// How a task run ended when it did not return a value.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskError {
    /// The task failed with this exception (FAILURE, or RETRY if it matches `autoretry_for`).
    Failure {
        /// The exception as Celery stores it.
        exc: ExceptionInfo,
        /// Traceback text, if any.
        traceback: Option<String>,
    },
    /// Run again later (RETRY).
    Retry(Retry),
    /// Refuse the message (Celery's `Reject`): requeue or drop/dead-letter it.
    Reject {
        /// Put it back in the queue.
        requeue: bool,
        /// Why.
        reason: String,
    },
    /// Do not record any state (Celery's `Ignore`).
    Ignore,
}

impl TaskError {
    /// A failure with an exception type and message, like `raise ValueError(msg)`.
    pub fn fail(exc_type: &str, message: impl Into<String>) -> Self {
        TaskError::Failure { exc: ExceptionInfo::new(exc_type, message), traceback: None }
    }

    /// `TypeError(msg)`: wrong arguments.
    pub fn type_error(message: impl Into<String>) -> Self {
        Self::fail("TypeError", message)
    }

    /// `ValueError(msg)`.
    pub fn value_error(message: impl Into<String>) -> Self {
        Self::fail("ValueError", message)
    }

    /// A failure from any Rust error; `exc_type` is the error's type name.
    pub fn from_error<E: std::error::Error + ?Sized>(e: &E) -> Self {
        let full = std::any::type_name_of_val(e);
        let short = short_type_name(full);
        let mut tb = String::new();
        let mut src = e.source();
        while let Some(s) = src {
            tb.push_str(&format!("caused by: {s}\n"));
            src = s.source();
        }
        TaskError::Failure {
            exc: ExceptionInfo::new(short, e.to_string()).module("rust"),
            traceback: if tb.is_empty() { None } else { Some(tb) },
        }
    }

    /// The exception, for failures and retries that carry one.
    pub fn exception(&self) -> Option<&ExceptionInfo> {
        match self {
            TaskError::Failure { exc, .. } => Some(exc),
            TaskError::Retry(r) => r.exc.as_ref(),
            _ => None,
        }
    }
}

fn short_type_name(full: &str) -> &str {
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Failure { exc, .. } => write!(f, "{exc}"),
            TaskError::Retry(r) => match &r.exc {
                Some(e) => write!(f, "retry: {e}"),
                None => f.write_str("retry"),
            },
            TaskError::Reject { requeue, reason } => write!(f, "reject (requeue={requeue}): {reason}"),
            TaskError::Ignore => f.write_str("ignore"),
        }
    }
}

/// Any error converts into a failure, so `?` works in task bodies.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(e: E) -> Self {
        TaskError::from_error(&e)
    }
}

/// What a task run produced.
pub type TaskResult = Result<Value, TaskError>;

/// A task a worker can run. Usually generated by `#[task]`.
#[async_trait]
pub trait Task: Send + Sync + 'static {
    /// The registered name, e.g. `tasks.add`.
    fn name(&self) -> &str;

    /// Options (retries, limits, queue...).
    fn options(&self) -> TaskOptions {
        TaskOptions::default()
    }

    /// Run with the decoded arguments. Wrong arguments end as a `TypeError`
    /// failure, never a panic.
    async fn run(&self, ctx: TaskContext, args: Vec<Value>, kwargs: Map<String, Value>) -> TaskResult;
}
