//! Monitoring events (`worker-heartbeat`, `task-succeeded`, ...) as Celery
//! sends them on the `celeryev` exchange, for the worker that publishes them
//! and for the monitors that read them.
//!
//! An event is one JSON map. Its fields come in the order Celery writes them:
//! `hostname`, `utcoffset`, `pid`, `clock`, then the fields of its type (see
//! [`EventData`]), then `timestamp` and `type` last. [`Event`] keeps that
//! order when it writes, and fields qtask does not know are kept, in the order
//! they came, and written back after the fields of the type. A type qtask does
//! not know is kept too ([`EventData::Other`], all its fields in
//! [`Event::extra`]), never refused.
//!
//! On the wire an event is a message ([`Event::to_message`]) with
//! `delivery_mode` 1, priority 0, JSON and a `hostname` header, published with
//! the routing key [`EventKind::routing_key`] (the type with `-` → `.`).
//! Celery's worker does not send its task events one by one: it buffers them
//! and publishes a JSON **list** of event maps under [`TASK_MULTI`]
//! ([`Event::batch_to_message`]); `worker-*` events and the producer's
//! `task-sent` go alone on their own keys ([`EventKind::is_batched`]). A
//! reader accepts both shapes: [`Event::from_message`] returns every event of
//! a map or a list body. A body that is not a map or a list of maps, or an
//! event missing one of the fields Celery always sends, is a
//! [`ProtocolError`], never a panic.
//!
//! An [`EventSender`] stamps the common fields: the node name, the process
//! id, the UTC offset (read at each event, as Celery does) and a Lamport
//! clock. The clock is an [`AtomicU64`](std::sync::atomic::AtomicU64) inside
//! the sender, so one sender can be shared (`Arc<EventSender>`) by everything
//! in a process that stamps clocks (events, control replies), as Celery
//! shares its app's clock.
//!
//! ```
//! use std::time::Duration;
//! use qcore::event::{Event, EventData, EventKind, EventSender, TASK_MULTI};
//!
//! let sender = EventSender::new("w1@example").with_pid(42).with_utcoffset(0.0);
//! let started = sender.event(EventData::task_started("f00d"));
//! let done = sender.event(EventData::task_succeeded("f00d", "5", Duration::from_millis(12)));
//! assert_eq!((started.clock, done.clock), (Some(1), Some(2)));
//! assert!(done.kind().is_batched());
//!
//! // The worker sends task events as one list under `task.multi`.
//! let msg = Event::batch_to_message(&[started, done]).unwrap();
//! assert!(msg.body.starts_with(br#"[{"hostname": "w1@example", "utcoffset": 0.0, "pid": 42, "clock": 1, "uuid": "f00d""#));
//! let back = Event::from_message(&msg).unwrap();
//! assert_eq!(back[1].kind(), EventKind::TaskSucceeded);
//! assert_eq!(back[1].task_id(), Some("f00d"));
//! assert_eq!(TASK_MULTI, "task.multi");
//! ```

use std::fmt;

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::ProtocolError;
use crate::message::{Message, Properties};

mod fields;
mod sender;

use fields::known_fields;
pub use fields::{
    exception_repr, EventData, TaskFailure, TaskReceived, TaskRejected, TaskRevoked, TaskSent, TaskStarted,
    TaskSucceeded, WorkerInfo,
};
pub use sender::{utcoffset, EventSender};

/// The topic exchange events are published on.
pub const EVENT_EXCHANGE: &str = "celeryev";

/// The routing key of a batch of task events (Celery's `<group>.multi` for
/// the `task` group, the only group its worker buffers).
pub const TASK_MULTI: &str = "task.multi";

/// The common fields every event has, in the order Celery writes them
/// (`timestamp` and `type` come last, after the fields of the type).
const COMMON: [&str; 6] = ["hostname", "utcoffset", "pid", "clock", "timestamp", "type"];

/// The type of an event (its `type` field).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `worker-online`: the worker started.
    WorkerOnline,
    /// `worker-heartbeat`: the worker is alive (every `freq` seconds).
    WorkerHeartbeat,
    /// `worker-offline`: the worker stopped.
    WorkerOffline,
    /// `task-sent`: a producer sent a task (with `task_send_sent_event`).
    TaskSent,
    /// `task-received`: a worker received a task message.
    TaskReceived,
    /// `task-started`: the task started running.
    TaskStarted,
    /// `task-succeeded`: the task returned.
    TaskSucceeded,
    /// `task-failed`: the task raised.
    TaskFailed,
    /// `task-retried`: the task will be retried.
    TaskRetried,
    /// `task-revoked`: the task was revoked, terminated or expired.
    TaskRevoked,
    /// `task-rejected`: the message was rejected.
    TaskRejected,
    /// A type qtask does not know, as it was written.
    Other(String),
}

impl EventKind {
    const KNOWN: [(EventKind, &'static str); 11] = [
        (EventKind::WorkerOnline, "worker-online"),
        (EventKind::WorkerHeartbeat, "worker-heartbeat"),
        (EventKind::WorkerOffline, "worker-offline"),
        (EventKind::TaskSent, "task-sent"),
        (EventKind::TaskReceived, "task-received"),
        (EventKind::TaskStarted, "task-started"),
        (EventKind::TaskSucceeded, "task-succeeded"),
        (EventKind::TaskFailed, "task-failed"),
        (EventKind::TaskRetried, "task-retried"),
        (EventKind::TaskRevoked, "task-revoked"),
        (EventKind::TaskRejected, "task-rejected"),
    ];

    /// The kind of the type name `t` (`Other` for a type qtask does not know).
    pub fn from_type(t: &str) -> Self {
        Self::KNOWN.iter().find(|(_, name)| *name == t).map(|(k, _)| k.clone()).unwrap_or(EventKind::Other(t.into()))
    }

    /// The type name as written in the `type` field.
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::Other(t) => t,
            known => known.known_name(),
        }
    }

    /// The name of a known kind (`""` for `Other`).
    fn known_name(&self) -> &'static str {
        Self::KNOWN.iter().find(|(k, _)| k == self).map_or("", |(_, name)| name)
    }

    /// The group: the part of the type before the first `-` (`task`, `worker`).
    pub fn group(&self) -> &str {
        let t = self.as_str();
        t.split_once('-').map_or(t, |(g, _)| g)
    }

    /// The routing key of this event sent on its own: the type with `-`
    /// replaced by `.` (`worker.heartbeat`, `task.sent`).
    pub fn routing_key(&self) -> String {
        self.as_str().replace('-', ".")
    }

    /// Whether a worker sends it in a batch under [`TASK_MULTI`] rather than
    /// on its own: every event of the `task` group except `task-sent`, which
    /// producers send alone.
    pub fn is_batched(&self) -> bool {
        self.group() == "task" && *self != EventKind::TaskSent
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for EventKind {
    fn from(t: &str) -> Self {
        EventKind::from_type(t)
    }
}

/// One monitoring event: the common fields, the fields of its type, and the
/// fields qtask does not know.
///
/// Serialized (with [`crate::json`]) it gives the bytes Celery sends:
/// `hostname, utcoffset, pid, clock`, the fields of [`EventData`], the
/// [`extra`](Self::extra) fields, then `timestamp` and `type`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The sender's node name (`w1@host`; `gen<pid>@host` for a producer).
    pub hostname: String,
    /// The sender's offset from UTC in hours, **positive west** of UTC
    /// (`-5.5` in India, `4.0` in New York in summer, `0.0` on UTC).
    pub utcoffset: f64,
    /// The sender's process id.
    pub pid: u32,
    /// The sender's Lamport clock; `None` (`null`) when sent without one.
    pub clock: Option<u64>,
    /// The type and its fields.
    pub data: EventData,
    /// Fields qtask does not know, in the order they came. (A common field
    /// or a field of the type put here would be written twice.)
    pub extra: Map<String, Value>,
    /// When it happened: UNIX time in seconds, in the sender's clock.
    pub timestamp: f64,
}

impl Event {
    /// The type.
    pub fn kind(&self) -> EventKind {
        self.data.kind()
    }

    /// The type name as written in the `type` field.
    pub fn type_name(&self) -> &str {
        self.data.type_name()
    }

    /// The routing key of this event sent on its own (see [`EventKind::routing_key`]).
    pub fn routing_key(&self) -> String {
        self.kind().routing_key()
    }

    /// The task id of a task event (`uuid`; for a type qtask does not know,
    /// its `uuid` field if it is a string).
    pub fn task_id(&self) -> Option<&str> {
        match &self.data {
            EventData::TaskSent(f) => Some(&f.uuid),
            EventData::TaskReceived(f) => Some(&f.uuid),
            EventData::TaskStarted(f) => Some(&f.uuid),
            EventData::TaskSucceeded(f) => Some(&f.uuid),
            EventData::TaskFailed(f) | EventData::TaskRetried(f) => Some(&f.uuid),
            EventData::TaskRevoked(f) => Some(&f.uuid),
            EventData::TaskRejected(f) => Some(&f.uuid),
            EventData::Other(_) => self.extra.get("uuid").and_then(Value::as_str),
            EventData::WorkerOnline(_) | EventData::WorkerHeartbeat(_) | EventData::WorkerOffline(_) => None,
        }
    }

    /// The worker fields of a `worker-*` event.
    pub fn worker_info(&self) -> Option<&WorkerInfo> {
        match &self.data {
            EventData::WorkerOnline(w) | EventData::WorkerHeartbeat(w) | EventData::WorkerOffline(w) => Some(w),
            _ => None,
        }
    }

    /// The event as a JSON map, in Celery's field order.
    pub fn to_map(&self) -> Map<String, Value> {
        // Serializing plain data into a map cannot fail.
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }

    /// The event as JSON bytes, as Python's `json.dumps` writes it.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail.
        crate::json::to_vec(self).unwrap_or_default()
    }

    /// Read an event from its JSON map.
    ///
    /// The common fields are required (`clock` may be `null` or missing), and
    /// so are the fields of a known type, except `root_id`/`parent_id`, which
    /// Celery before 4.0 did not send. A type qtask does not know only needs
    /// the common fields.
    pub fn from_map(map: Map<String, Value>) -> Result<Self, ProtocolError> {
        let kind = match map.get("type") {
            Some(Value::String(t)) => EventKind::from_type(t),
            Some(other) => return Err(invalid("", format!("`type` must be a string, got {other}"))),
            None => return Err(invalid("", "missing `type`")),
        };
        let mut fields = Map::new();
        let mut extra = Map::new();
        let (mut hostname, mut utcoffset, mut pid, mut clock, mut timestamp) = (None, None, None, None, None);
        let known = known_fields(&kind);
        for (key, value) in map {
            match key.as_str() {
                "type" => {}
                "hostname" => hostname = Some(value),
                "utcoffset" => utcoffset = Some(value),
                "pid" => pid = Some(value),
                "clock" => clock = Some(value),
                "timestamp" => timestamp = Some(value),
                k if known.contains(&k) => {
                    fields.insert(key, value);
                }
                _ => {
                    extra.insert(key, value);
                }
            }
        }
        let t = kind.as_str().to_owned();
        let hostname = match hostname {
            Some(Value::String(s)) => s,
            other => return Err(field_error(&t, "hostname", "a string", other.as_ref())),
        };
        let utcoffset = match utcoffset.as_ref().and_then(Value::as_f64) {
            Some(h) => h,
            None => return Err(field_error(&t, "utcoffset", "a number", utcoffset.as_ref())),
        };
        let pid = match pid.as_ref().and_then(Value::as_u64).and_then(|p| u32::try_from(p).ok()) {
            Some(p) => p,
            None => return Err(field_error(&t, "pid", "a process id", pid.as_ref())),
        };
        let clock = match clock {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(c) => Some(c),
                None => return Err(field_error(&t, "clock", "an unsigned integer or null", Some(&v))),
            },
        };
        let timestamp = match timestamp.as_ref().and_then(Value::as_f64) {
            Some(ts) => ts,
            None => return Err(field_error(&t, "timestamp", "a number", timestamp.as_ref())),
        };
        let data = EventData::from_fields(kind, fields).map_err(|e| invalid(&t, e))?;
        Ok(Event { hostname, utcoffset, pid, clock, data, extra, timestamp })
    }

    /// Encode as a message carrying this one event (a JSON map), as Celery
    /// sends `worker-*` and `task-sent`: `delivery_mode` 1, priority 0,
    /// JSON, header `hostname`. Publish it on [`EVENT_EXCHANGE`] with
    /// [`routing_key`](Self::routing_key).
    pub fn to_message(&self) -> Result<Message, ProtocolError> {
        let body = crate::json::to_vec(self).map_err(|e| ProtocolError::encode("event", e))?;
        Ok(event_message(&self.hostname, body))
    }

    /// Encode a batch as one message whose body is a JSON list, as Celery's
    /// worker sends its task events; publish it on [`EVENT_EXCHANGE`] with
    /// [`TASK_MULTI`]. The `hostname` header is the first event's; an empty
    /// batch has no sender and is an error.
    pub fn batch_to_message(events: &[Event]) -> Result<Message, ProtocolError> {
        let first = events.first().ok_or_else(|| ProtocolError::encode("event batch", "the batch is empty"))?;
        let body = crate::json::to_vec(events).map_err(|e| ProtocolError::encode("event batch", e))?;
        Ok(event_message(&first.hostname, body))
    }

    /// Decode every event of a message: its body is one event map or a list
    /// of them (`task.multi`; an empty list gives no event).
    pub fn from_message(msg: &Message) -> Result<Vec<Event>, ProtocolError> {
        let body: Value = msg.content_type()?.decode(&msg.body)?;
        match body {
            Value::Object(m) => Ok(vec![Event::from_map(m)?]),
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Object(m) => Event::from_map(m),
                    other => Err(ProtocolError::Invalid(format!(
                        "event batch item {i} must be a map, got {}",
                        json_kind(&other)
                    ))),
                })
                .collect(),
            other => Err(ProtocolError::Invalid(format!(
                "an event body must be a map or a list of maps, got {}",
                json_kind(&other)
            ))),
        }
    }
}

fn event_message(hostname: &str, body: Vec<u8>) -> Message {
    let mut headers = Map::new();
    headers.insert("hostname".into(), Value::String(hostname.into()));
    Message { headers, properties: Properties { delivery_mode: 1, priority: 0, ..Properties::default() }, body }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

fn invalid(type_name: &str, reason: impl fmt::Display) -> ProtocolError {
    if type_name.is_empty() {
        ProtocolError::Invalid(format!("event: {reason}"))
    } else {
        ProtocolError::Invalid(format!("{type_name} event: {reason}"))
    }
}

fn field_error(type_name: &str, field: &str, expected: &str, got: Option<&Value>) -> ProtocolError {
    match got {
        None => invalid(type_name, format_args!("missing `{field}`")),
        Some(v) => invalid(type_name, format_args!("`{field}` must be {expected}, got {v}")),
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = COMMON.len() + known_fields(&self.kind()).len() + self.extra.len();
        let mut m = s.serialize_map(Some(len))?;
        m.serialize_entry("hostname", &self.hostname)?;
        m.serialize_entry("utcoffset", &self.utcoffset)?;
        m.serialize_entry("pid", &self.pid)?;
        m.serialize_entry("clock", &self.clock)?;
        self.data.write_fields(&mut m)?;
        for (k, v) in &self.extra {
            m.serialize_entry(k, v)?;
        }
        m.serialize_entry("timestamp", &self.timestamp)?;
        m.serialize_entry("type", self.type_name())?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(d)?;
        Event::from_map(map).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_know_their_names_groups_and_routing_keys() {
        for (kind, name) in EventKind::KNOWN {
            assert_eq!(EventKind::from_type(name), kind);
            assert_eq!(kind.as_str(), name);
            assert_eq!(kind.routing_key(), name.replace('-', "."));
        }
        assert_eq!(EventKind::from_type("task-custom"), EventKind::Other("task-custom".into()));
        assert_eq!(EventKind::Other("weird".into()).group(), "weird");
        assert!(EventKind::Other("task-custom".into()).is_batched());
        assert!(!EventKind::Other("worker-custom".into()).is_batched());
    }

    #[test]
    fn every_known_type_lists_its_fields() {
        for (kind, _) in EventKind::KNOWN {
            assert!(!known_fields(&kind).is_empty(), "{kind}");
            assert!(known_fields(&kind).iter().all(|f| !COMMON.contains(f)), "{kind}");
        }
    }
}
