//! Result documents (`celery-task-meta-<id>`) and exceptions in Celery's format.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ProtocolError;
use crate::state::State;

/// An exception as Celery stores it: `{"exc_type", "exc_message": [args], "exc_module"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExceptionInfo {
    /// Class name, e.g. `ValueError`.
    pub exc_type: String,
    /// The exception's args as a list (Celery stores `exc.args`).
    #[serde(deserialize_with = "de_exc_message")]
    pub exc_message: Vec<Value>,
    /// Module, e.g. `builtins` or `celery.exceptions`.
    #[serde(default = "default_module")]
    pub exc_module: String,
}

fn default_module() -> String {
    "builtins".into()
}

fn de_exc_message<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
    // Older Celery stored a plain string; accept both.
    Ok(match Value::deserialize(d)? {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        other => vec![other],
    })
}

impl ExceptionInfo {
    /// An exception with one message argument, like `ValueError("boom")`.
    pub fn new(exc_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            exc_type: exc_type.into(),
            exc_message: vec![Value::String(message.into())],
            exc_module: "builtins".into(),
        }
    }

    /// Set the module (`builtins` by default).
    pub fn module(mut self, module: impl Into<String>) -> Self {
        self.exc_module = module.into();
        self
    }

    /// A `celery.exceptions` exception.
    pub fn celery(exc_type: &str, message: impl Into<String>) -> Self {
        Self::new(exc_type, message).module("celery.exceptions")
    }

    /// `TaskRevokedError(reason)` where reason is `revoked`, `terminated` or `expired`.
    pub fn revoked(reason: &str) -> Self {
        Self::celery("TaskRevokedError", reason)
    }

    /// `TimeLimitExceeded(seconds)`.
    pub fn time_limit_exceeded(seconds: f64) -> Self {
        Self {
            exc_type: "TimeLimitExceeded".into(),
            exc_message: vec![serde_json::json!(seconds)],
            exc_module: "billiard.einfo".into(),
        }
    }

    /// `NotRegistered(name)`.
    pub fn not_registered(name: &str) -> Self {
        Self::celery("NotRegistered", format!("'{name}'"))
    }

    /// The message as Python's `str(exc)` shows it: the one argument as
    /// `str()` prints it, or the tuple of arguments (`('custom failure', 42)`).
    pub fn message(&self) -> String {
        match self.exc_message.as_slice() {
            [] => String::new(),
            [Value::String(s)] => s.clone(),
            [one] => crate::repr::repr(one),
            many => crate::repr::args_repr(many),
        }
    }

    /// Parse an exception map stored in a result.
    pub fn from_value(v: &Value) -> Option<ExceptionInfo> {
        serde_json::from_value(v.clone()).ok()
    }

    /// The exception map as a JSON value.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("exc_type".into(), Value::String(self.exc_type.clone()));
        m.insert("exc_message".into(), Value::Array(self.exc_message.clone()));
        m.insert("exc_module".into(), Value::String(self.exc_module.clone()));
        Value::Object(m)
    }
}

impl std::fmt::Display for ExceptionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.exc_type, self.message())
    }
}

/// The result document stored for a task, in Celery's field order.
///
/// `date_done` is null for states that are not ready; `children` is null
/// only when a revoke handler wrote the state without a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMeta {
    /// The state.
    pub status: State,
    /// The return value, the exception map, or the custom state's meta.
    #[serde(default)]
    pub result: Value,
    /// Traceback text, if any.
    #[serde(default)]
    pub traceback: Option<String>,
    /// Result tuples of the tasks this task sent (`[[id, null], null]`).
    #[serde(default)]
    pub children: Option<Vec<Value>>,
    /// When the task finished (UTC), for ready states.
    #[serde(default, with = "crate::time::opt_iso")]
    pub date_done: Option<DateTime<Utc>>,
    /// The group this task belonged to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The task that sent this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// With `result_extended`: task name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// With `result_extended`: positional args.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// With `result_extended`: keyword args.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kwargs: Option<Value>,
    /// With `result_extended`: the worker's node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// With `result_extended`: retries so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// With `result_extended`: the queue (routing key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Unknown fields written by other versions, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// The task id.
    pub task_id: String,
}

impl ResultMeta {
    /// A document for `task_id` in `status` with `result`.
    pub fn new(task_id: impl Into<String>, status: State, result: Value) -> Self {
        let date_done = if status.is_ready() { Some(Utc::now()) } else { None };
        Self {
            status,
            result,
            traceback: None,
            children: Some(Vec::new()),
            date_done,
            group_id: None,
            parent_id: None,
            name: None,
            args: None,
            kwargs: None,
            worker: None,
            retries: None,
            queue: None,
            extra: Map::new(),
            task_id: task_id.into(),
        }
    }

    /// The PENDING document a reader reports when nothing is stored.
    pub fn pending(task_id: impl Into<String>) -> Self {
        Self::new(task_id, State::Pending, Value::Null)
    }

    /// The stored exception, for exception states.
    pub fn exception(&self) -> Option<ExceptionInfo> {
        if self.status.is_exception() {
            ExceptionInfo::from_value(&self.result)
        } else {
            None
        }
    }

    /// Encode as Celery's JSON (Python `json.dumps` bytes).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail.
        crate::json::to_vec(self).unwrap_or_default()
    }

    /// Decode a JSON result document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ProtocolError> {
        serde_json::from_slice(bytes).map_err(|e| ProtocolError::decode("result document", e))
    }
}
