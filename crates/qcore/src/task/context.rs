//! The context a bound task receives: its request, progress reporting,
//! retries and the soft time limit signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::Notify;

use super::{Retry, TaskError};
use crate::app::App;
use crate::error::Error;
use crate::result::{ExceptionInfo, ResultMeta};
use crate::state::State;

/// What the worker knows about the message being run (Celery's `self.request`).
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// Task id.
    pub id: String,
    /// Task name.
    pub task: String,
    /// Retries so far.
    pub retries: u32,
    /// First task of the workflow.
    pub root_id: Option<String>,
    /// Task that sent this one.
    pub parent_id: Option<String>,
    /// Group id.
    pub group: Option<String>,
    /// Position in the group.
    pub group_index: Option<u64>,
    /// ETA of this run.
    pub eta: Option<DateTime<Utc>>,
    /// Expiry.
    pub expires: Option<DateTime<Utc>>,
    /// Node name of the worker running it.
    pub hostname: String,
    /// Queue (routing key) it came from.
    pub queue: String,
    /// Positional args (for `result_extended`).
    pub args: Vec<Value>,
    /// Keyword args (for `result_extended`).
    pub kwargs: Map<String, Value>,
    /// Whether results are ignored for this call.
    pub ignore_result: bool,
    /// Whether the message was delivered before.
    pub redelivered: bool,
    /// The sender's reply queue (the message's `reply_to` property): where
    /// an `rpc://` backend sends this task's states.
    pub reply_to: Option<String>,
}

/// The soft time limit signal shared between the worker and a running task.
#[derive(Debug, Default)]
pub struct SoftLimit {
    hit: AtomicBool,
    notify: Notify,
}

impl SoftLimit {
    /// Raise the signal (called by the worker).
    pub fn trigger(&self) {
        self.hit.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether the soft limit has passed.
    pub fn is_exceeded(&self) -> bool {
        self.hit.load(Ordering::SeqCst)
    }

    /// Resolves when the soft limit passes.
    pub async fn exceeded(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_exceeded() {
                return;
            }
            notified.await;
        }
    }
}

/// Handed to every task run: the request, the app, and the soft limit.
#[derive(Clone)]
pub struct TaskContext {
    request: Arc<RequestInfo>,
    app: App,
    soft: Arc<SoftLimit>,
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext").field("request", &self.request).finish()
    }
}

impl TaskContext {
    /// A context for one run (used by the worker and eager mode).
    pub fn new(request: Arc<RequestInfo>, app: App, soft: Arc<SoftLimit>) -> Self {
        TaskContext { request, app, soft }
    }

    /// The request (Celery's `self.request`).
    pub fn request(&self) -> &RequestInfo {
        &self.request
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.request.id
    }

    /// Retries so far.
    pub fn retries(&self) -> u32 {
        self.request.retries
    }

    /// The app, to send more tasks.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Store a custom state with `meta`, e.g. PROGRESS `{"current": 3, "total": 10}`.
    pub async fn update_state(&self, state: State, meta: Value) -> Result<(), Error> {
        let Some(backend) = self.app.backend() else {
            return Ok(());
        };
        let mut doc = ResultMeta::new(self.request.id.clone(), state, meta);
        doc.group_id = self.request.group.clone();
        doc.parent_id = self.request.parent_id.clone();
        if self.app.config().result_extended {
            self.app.extend_meta(&mut doc, &self.request);
        }
        backend.store_for(&doc, Some(self.app.config().result_expires), self.request.reply_to.as_deref()).await?;
        Ok(())
    }

    /// Report PROGRESS with `{"current": current, "total": total}`.
    pub async fn progress(&self, current: u64, total: u64) -> Result<(), Error> {
        self.update_state(State::progress(), serde_json::json!({"current": current, "total": total})).await
    }

    /// Start building a retry: `return Err(ctx.retry().countdown(d).into())`.
    pub fn retry(&self) -> RetryBuilder {
        RetryBuilder(Retry::default())
    }

    /// Whether the soft time limit has passed; the task should clean up and return.
    pub fn soft_limit_exceeded(&self) -> bool {
        self.soft.is_exceeded()
    }

    /// Resolves when the soft time limit passes (use in `tokio::select!`).
    pub async fn soft_limit(&self) {
        self.soft.exceeded().await
    }
}

/// Builds a [`TaskError::Retry`].
#[derive(Debug, Clone)]
pub struct RetryBuilder(Retry);

impl RetryBuilder {
    /// Wait this long before the next try.
    pub fn countdown(mut self, d: Duration) -> Self {
        self.0.countdown = Some(d);
        self
    }

    /// Run the next try at this time.
    pub fn eta(mut self, eta: DateTime<Utc>) -> Self {
        self.0.eta = Some(eta);
        self
    }

    /// Override `max_retries` for this call.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.0.max_retries = Some(n);
        self
    }

    /// Record the error that caused the retry.
    pub fn exc(mut self, exc: ExceptionInfo) -> Self {
        self.0.exc = Some(exc);
        self
    }

    /// Record a Rust error as the cause.
    pub fn error<E: std::error::Error + ?Sized>(mut self, e: &E) -> Self {
        if let TaskError::Failure { exc, .. } = TaskError::from_error(e) {
            self.0.exc = Some(exc);
        }
        self
    }
}

impl From<RetryBuilder> for TaskError {
    fn from(b: RetryBuilder) -> Self {
        TaskError::Retry(b.0)
    }
}
