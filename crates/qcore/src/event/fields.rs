//! The fields of each event type, in the order Celery writes them.

use std::time::Duration;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::EventKind;
use crate::message::TaskMessage;
use crate::result::ExceptionInfo;

/// Defines the fields of one event type: a struct whose fields are written in
/// declaration order (Celery's), and the list of its field names.
macro_rules! event_fields {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
        }

        impl $name {
            const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];

            fn write_fields<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
                $(m.serialize_entry(stringify!($field), &self.$field)?;)*
                Ok(())
            }
        }
    };
}

event_fields! {
    /// The fields of `worker-online`, `worker-heartbeat` and `worker-offline`.
    WorkerInfo {
        /// Seconds between heartbeats (Celery: 2.0). A monitor takes the worker
        /// for offline after `2 × freq` seconds without one.
        freq: f64,
        /// Tasks running now.
        active: u64,
        /// Tasks finished since the worker started.
        processed: u64,
        /// The 1, 5 and 15 minute load averages.
        loadavg: Vec<f64>,
        /// The software (`py-celery` for Celery).
        sw_ident: String,
        /// Its version.
        sw_ver: String,
        /// The operating system as Python's `platform.system()` names it (`Linux`).
        sw_sys: String,
    }
}

event_fields! {
    /// The fields of `task-sent`.
    TaskSent {
        /// Task id.
        uuid: String,
        /// First task of the workflow (not sent by Celery before 4.0).
        #[serde(default)]
        root_id: Option<String>,
        /// Task that sent this one (not sent by Celery before 4.0).
        #[serde(default)]
        parent_id: Option<String>,
        /// Task name.
        name: String,
        /// `repr()` of the positional args (the `argsrepr` header).
        args: String,
        /// `repr()` of the keyword args (the `kwargsrepr` header).
        kwargs: String,
        /// Retries so far.
        retries: u32,
        /// The `eta` header as sent (ISO-8601, possibly naive), if any.
        eta: Option<String>,
        /// The `expires` header as sent, if any.
        expires: Option<String>,
        /// The queue it was sent to.
        queue: String,
        /// The exchange it was published to (`""` for the default exchange).
        exchange: String,
        /// The routing key it was published with.
        routing_key: String,
    }
}

event_fields! {
    /// The fields of `task-received`.
    TaskReceived {
        /// Task id.
        uuid: String,
        /// Task name.
        name: String,
        /// `repr()` of the positional args.
        args: String,
        /// `repr()` of the keyword args.
        kwargs: String,
        /// First task of the workflow (not sent by Celery before 4.0).
        #[serde(default)]
        root_id: Option<String>,
        /// Task that sent this one (not sent by Celery before 4.0).
        #[serde(default)]
        parent_id: Option<String>,
        /// Retries so far.
        retries: u32,
        /// ETA (ISO-8601), if any.
        eta: Option<String>,
        /// Expiry (ISO-8601), if any.
        expires: Option<String>,
    }
}

event_fields! {
    /// The fields of `task-started`.
    TaskStarted {
        /// Task id.
        uuid: String,
    }
}

event_fields! {
    /// The fields of `task-succeeded`.
    TaskSucceeded {
        /// Task id.
        uuid: String,
        /// `repr()` of the return value (a string, not the value: `"5"`).
        result: String,
        /// Run time in seconds.
        runtime: f64,
    }
}

event_fields! {
    /// The fields of `task-failed` and `task-retried`.
    TaskFailure {
        /// Task id.
        uuid: String,
        /// `repr()` of the exception, e.g. `ValueError('boom')` (see [`exception_repr`]).
        exception: String,
        /// Traceback text.
        traceback: Option<String>,
    }
}

event_fields! {
    /// The fields of `task-revoked`.
    TaskRevoked {
        /// Task id.
        uuid: String,
        /// It was running and was terminated.
        terminated: bool,
        /// The signal it was terminated with, if terminated (15 for SIGTERM).
        signum: Option<i32>,
        /// It expired before it started.
        expired: bool,
    }
}

event_fields! {
    /// The fields of `task-rejected`.
    TaskRejected {
        /// Task id.
        uuid: String,
        /// Whether the message was put back in the queue.
        requeue: bool,
    }
}

impl WorkerInfo {
    /// Worker fields for qtask's own worker: heartbeat interval, tasks
    /// running and finished, load averages (Celery rounds them up to two
    /// decimals); the software fields name qtask (`sw_ident` `qtask`, this
    /// crate's version, the OS as Python's `platform.system()` names it).
    pub fn new(freq: Duration, active: u64, processed: u64, loadavg: [f64; 3]) -> Self {
        WorkerInfo {
            freq: freq.as_secs_f64(),
            active,
            processed,
            loadavg: loadavg.to_vec(),
            sw_ident: "qtask".into(),
            sw_ver: env!("CARGO_PKG_VERSION").into(),
            sw_sys: platform_system().into(),
        }
    }
}

/// The OS name as Python's `platform.system()` spells it.
fn platform_system() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Darwin",
        "windows" => "Windows",
        "freebsd" => "FreeBSD",
        "netbsd" => "NetBSD",
        "openbsd" => "OpenBSD",
        other => other,
    }
}

/// The eta/expires header as received, else the parsed date in isoformat.
fn header_date(tm: &TaskMessage, key: &str, parsed: Option<&chrono::DateTime<chrono::Utc>>) -> Option<String> {
    match tm.headers.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => parsed.map(crate::time::format_iso),
    }
}

/// The `argsrepr`/`kwargsrepr` header as received, else computed.
fn header_repr(tm: &TaskMessage, key: &str, computed: impl FnOnce() -> String) -> String {
    tm.headers.get(key).and_then(Value::as_str).map_or_else(computed, str::to_owned)
}

impl TaskReceived {
    /// The `task-received` fields of a received task, as Celery's worker
    /// fills them: the `argsrepr`/`kwargsrepr` headers (computed when the
    /// message has none), and `eta`/`expires` as the headers spell them.
    pub fn from_task(tm: &TaskMessage) -> Self {
        TaskReceived {
            uuid: tm.id.clone(),
            name: tm.task.clone(),
            args: header_repr(tm, "argsrepr", || crate::repr::args_repr(&tm.args)),
            kwargs: header_repr(tm, "kwargsrepr", || crate::repr::kwargs_repr(&tm.kwargs)),
            root_id: tm.root_id.clone(),
            parent_id: tm.parent_id.clone(),
            retries: tm.retries,
            eta: header_date(tm, "eta", tm.eta.as_ref()),
            expires: header_date(tm, "expires", tm.expires.as_ref()),
        }
    }
}

impl TaskSent {
    /// The `task-sent` fields of a task message sent to `queue` through
    /// `exchange` with `routing_key`.
    pub fn from_task(tm: &TaskMessage, queue: &str, exchange: &str, routing_key: &str) -> Self {
        TaskSent {
            uuid: tm.id.clone(),
            root_id: tm.root_id.clone(),
            parent_id: tm.parent_id.clone(),
            name: tm.task.clone(),
            args: header_repr(tm, "argsrepr", || crate::repr::args_repr(&tm.args)),
            kwargs: header_repr(tm, "kwargsrepr", || crate::repr::kwargs_repr(&tm.kwargs)),
            retries: tm.retries,
            eta: header_date(tm, "eta", tm.eta.as_ref()),
            expires: header_date(tm, "expires", tm.expires.as_ref()),
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        }
    }
}

/// Python's `repr()` of an exception, as events carry it:
/// `ValueError('boom')`, `CaptureError('custom failure', 42)`, `KeyError()`.
pub fn exception_repr(exc: &ExceptionInfo) -> String {
    let args: Vec<String> = exc.exc_message.iter().map(crate::repr::repr).collect();
    format!("{}({})", exc.exc_type, args.join(", "))
}

/// The fields of an event that depend on its type.
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    /// `worker-online`.
    WorkerOnline(WorkerInfo),
    /// `worker-heartbeat`.
    WorkerHeartbeat(WorkerInfo),
    /// `worker-offline`.
    WorkerOffline(WorkerInfo),
    /// `task-sent`.
    TaskSent(TaskSent),
    /// `task-received`.
    TaskReceived(TaskReceived),
    /// `task-started`.
    TaskStarted(TaskStarted),
    /// `task-succeeded`.
    TaskSucceeded(TaskSucceeded),
    /// `task-failed`.
    TaskFailed(TaskFailure),
    /// `task-retried`.
    TaskRetried(TaskFailure),
    /// `task-revoked`.
    TaskRevoked(TaskRevoked),
    /// `task-rejected`.
    TaskRejected(TaskRejected),
    /// A type qtask does not know (the type name); its fields are all in
    /// [`Event::extra`](super::Event::extra).
    Other(String),
}

impl EventData {
    /// `task-started` for task `uuid`.
    pub fn task_started(uuid: impl Into<String>) -> Self {
        EventData::TaskStarted(TaskStarted { uuid: uuid.into() })
    }

    /// `task-succeeded`: `result` is the `repr()` of the return value.
    pub fn task_succeeded(uuid: impl Into<String>, result: impl Into<String>, runtime: Duration) -> Self {
        EventData::TaskSucceeded(TaskSucceeded {
            uuid: uuid.into(),
            result: result.into(),
            runtime: runtime.as_secs_f64(),
        })
    }

    /// `task-failed`: `exception` is its `repr()` (see [`exception_repr`]).
    pub fn task_failed(uuid: impl Into<String>, exception: impl Into<String>, traceback: Option<String>) -> Self {
        EventData::TaskFailed(TaskFailure { uuid: uuid.into(), exception: exception.into(), traceback })
    }

    /// `task-retried`: `exception` is the `repr()` of the cause.
    pub fn task_retried(uuid: impl Into<String>, exception: impl Into<String>, traceback: Option<String>) -> Self {
        EventData::TaskRetried(TaskFailure { uuid: uuid.into(), exception: exception.into(), traceback })
    }

    /// `task-revoked`: terminated (with `signum`) while running, expired
    /// before starting, or neither (revoked before starting).
    pub fn task_revoked(uuid: impl Into<String>, terminated: bool, signum: Option<i32>, expired: bool) -> Self {
        EventData::TaskRevoked(TaskRevoked { uuid: uuid.into(), terminated, signum, expired })
    }

    /// `task-rejected`, put back in the queue or not.
    pub fn task_rejected(uuid: impl Into<String>, requeue: bool) -> Self {
        EventData::TaskRejected(TaskRejected { uuid: uuid.into(), requeue })
    }

    /// The event type.
    pub fn kind(&self) -> EventKind {
        match self {
            EventData::WorkerOnline(_) => EventKind::WorkerOnline,
            EventData::WorkerHeartbeat(_) => EventKind::WorkerHeartbeat,
            EventData::WorkerOffline(_) => EventKind::WorkerOffline,
            EventData::TaskSent(_) => EventKind::TaskSent,
            EventData::TaskReceived(_) => EventKind::TaskReceived,
            EventData::TaskStarted(_) => EventKind::TaskStarted,
            EventData::TaskSucceeded(_) => EventKind::TaskSucceeded,
            EventData::TaskFailed(_) => EventKind::TaskFailed,
            EventData::TaskRetried(_) => EventKind::TaskRetried,
            EventData::TaskRevoked(_) => EventKind::TaskRevoked,
            EventData::TaskRejected(_) => EventKind::TaskRejected,
            EventData::Other(t) => EventKind::Other(t.clone()),
        }
    }

    pub(super) fn type_name(&self) -> &str {
        match self {
            EventData::Other(t) => t,
            known => known.kind().known_name(),
        }
    }

    pub(super) fn write_fields<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        match self {
            EventData::WorkerOnline(f) | EventData::WorkerHeartbeat(f) | EventData::WorkerOffline(f) => {
                f.write_fields(m)
            }
            EventData::TaskSent(f) => f.write_fields(m),
            EventData::TaskReceived(f) => f.write_fields(m),
            EventData::TaskStarted(f) => f.write_fields(m),
            EventData::TaskSucceeded(f) => f.write_fields(m),
            EventData::TaskFailed(f) | EventData::TaskRetried(f) => f.write_fields(m),
            EventData::TaskRevoked(f) => f.write_fields(m),
            EventData::TaskRejected(f) => f.write_fields(m),
            EventData::Other(_) => Ok(()),
        }
    }

    /// Read the fields of type `kind` from `fields` (only that type's names).
    pub(super) fn from_fields(kind: EventKind, fields: Map<String, Value>) -> Result<Self, serde_json::Error> {
        fn de<T: serde::de::DeserializeOwned>(fields: Map<String, Value>) -> Result<T, serde_json::Error> {
            serde_json::from_value(Value::Object(fields))
        }
        Ok(match kind {
            EventKind::WorkerOnline => EventData::WorkerOnline(de(fields)?),
            EventKind::WorkerHeartbeat => EventData::WorkerHeartbeat(de(fields)?),
            EventKind::WorkerOffline => EventData::WorkerOffline(de(fields)?),
            EventKind::TaskSent => EventData::TaskSent(de(fields)?),
            EventKind::TaskReceived => EventData::TaskReceived(de(fields)?),
            EventKind::TaskStarted => EventData::TaskStarted(de(fields)?),
            EventKind::TaskSucceeded => EventData::TaskSucceeded(de(fields)?),
            EventKind::TaskFailed => EventData::TaskFailed(de(fields)?),
            EventKind::TaskRetried => EventData::TaskRetried(de(fields)?),
            EventKind::TaskRevoked => EventData::TaskRevoked(de(fields)?),
            EventKind::TaskRejected => EventData::TaskRejected(de(fields)?),
            EventKind::Other(t) => EventData::Other(t),
        })
    }
}

/// The names of the fields of a type, in Celery's order (none for a type
/// qtask does not know).
pub(super) fn known_fields(kind: &EventKind) -> &'static [&'static str] {
    match kind {
        EventKind::WorkerOnline | EventKind::WorkerHeartbeat | EventKind::WorkerOffline => WorkerInfo::FIELDS,
        EventKind::TaskSent => TaskSent::FIELDS,
        EventKind::TaskReceived => TaskReceived::FIELDS,
        EventKind::TaskStarted => TaskStarted::FIELDS,
        EventKind::TaskSucceeded => TaskSucceeded::FIELDS,
        EventKind::TaskFailed | EventKind::TaskRetried => TaskFailure::FIELDS,
        EventKind::TaskRevoked => TaskRevoked::FIELDS,
        EventKind::TaskRejected => TaskRejected::FIELDS,
        EventKind::Other(_) => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_repr_matches_python() {
        assert_eq!(exception_repr(&ExceptionInfo::new("ValueError", "boom")), "ValueError('boom')");
        let many = ExceptionInfo {
            exc_type: "CaptureError".into(),
            exc_message: vec![Value::from("custom failure"), Value::from(42)],
            exc_module: "capapp".into(),
        };
        assert_eq!(exception_repr(&many), "CaptureError('custom failure', 42)");
        let none = ExceptionInfo { exc_type: "KeyError".into(), exc_message: vec![], exc_module: "builtins".into() };
        assert_eq!(exception_repr(&none), "KeyError()");
    }
}
