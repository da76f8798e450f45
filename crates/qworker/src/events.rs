//! The worker's internal event stream. A later layer publishes these as
//! Celery events (`task-*`, `worker-*`) on the `celeryev` exchange.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use qcore::ExceptionInfo;

/// Something that happened in a worker.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// The worker started consuming.
    WorkerOnline,
    /// Periodic liveness (every 2 s).
    WorkerHeartbeat {
        /// Tasks running now.
        active: usize,
        /// Tasks finished since start.
        processed: u64,
    },
    /// The worker stopped.
    WorkerOffline,
    /// A task message was received.
    TaskReceived {
        /// Task name.
        name: String,
        /// Positional args.
        args: Vec<Value>,
        /// Keyword args.
        kwargs: Map<String, Value>,
        /// Retries so far.
        retries: u32,
        /// ETA, if any.
        eta: Option<DateTime<Utc>>,
        /// Expiry, if any.
        expires: Option<DateTime<Utc>>,
        /// Root of the workflow.
        root_id: Option<String>,
        /// Parent task.
        parent_id: Option<String>,
    },
    /// The task started running.
    TaskStarted,
    /// The task returned.
    TaskSucceeded {
        /// The return value.
        result: Value,
        /// How long it ran.
        runtime: Duration,
    },
    /// The task failed.
    TaskFailed {
        /// The exception.
        exception: ExceptionInfo,
        /// Traceback text.
        traceback: Option<String>,
    },
    /// The task will be retried.
    TaskRetried {
        /// The cause.
        exception: ExceptionInfo,
    },
    /// The task was revoked, terminated or expired.
    TaskRevoked {
        /// It was running and was aborted.
        terminated: bool,
        /// It expired before starting.
        expired: bool,
    },
    /// The message was refused (unknown task, malformed, rejected by the task).
    TaskRejected {
        /// Why.
        reason: String,
    },
}

/// An event with its time, node and task id (for task events).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerEvent {
    /// What happened.
    pub kind: EventKind,
    /// The task id, for task events.
    pub task_id: Option<String>,
    /// The worker's node name.
    pub hostname: String,
    /// When.
    pub timestamp: DateTime<Utc>,
}
