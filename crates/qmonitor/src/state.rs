//! Task and worker state merged from events, as `celery.events.state`
//! merges them (and so as Flower shows them).

use std::collections::BTreeMap;

use qcore::event::{Event, EventKind, WorkerInfo};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Celery's state precedence (`celery.states.PRECEDENCE`): a lower index is
/// a later state. A custom state sits where `None` is.
const PRECEDENCE: &[&str] =
    &["SUCCESS", "FAILURE", "", "REVOKED", "STARTED", "RECEIVED", "REJECTED", "RETRY", "PENDING"];

fn precedence(state: &str) -> usize {
    PRECEDENCE.iter().position(|s| *s == state).unwrap_or(2)
}

/// The fields a `task-received` arriving after a later state still brings
/// (`Task.merge_rules`).
const RECEIVED_KEEPS: &[&str] = &["name", "args", "kwargs", "parent_id", "root_id", "retries", "eta", "expires"];

/// One task as Flower's API shows it (`celery.events.state.Task`): the
/// fields in Flower's order, so the JSON written is Flower's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Task id.
    pub uuid: String,
    /// Task name (from `task-sent`/`task-received`).
    pub name: Option<String>,
    /// `PENDING`, `RECEIVED`, `STARTED`, `SUCCESS`, `FAILURE`, `RETRY`,
    /// `REVOKED`, `REJECTED`, or a custom state.
    pub state: String,
    /// When each event came (the sender's timestamps).
    pub received: Option<f64>,
    /// `task-sent`.
    pub sent: Option<f64>,
    /// `task-started`.
    pub started: Option<f64>,
    /// `task-rejected`.
    pub rejected: Option<f64>,
    /// `task-succeeded`.
    pub succeeded: Option<f64>,
    /// `task-failed`.
    pub failed: Option<f64>,
    /// `task-retried`.
    pub retried: Option<f64>,
    /// `task-revoked`.
    pub revoked: Option<f64>,
    /// `repr()` of the positional arguments.
    pub args: Option<String>,
    /// `repr()` of the keyword arguments.
    pub kwargs: Option<String>,
    /// ETA as sent.
    pub eta: Option<String>,
    /// Expiry as sent.
    pub expires: Option<String>,
    /// Retries so far.
    pub retries: Option<u64>,
    /// `repr()` of the return value.
    pub result: Option<String>,
    /// `repr()` of the exception.
    pub exception: Option<String>,
    /// The timestamp of the event that set the state.
    pub timestamp: Option<f64>,
    /// Run time in seconds.
    pub runtime: Option<f64>,
    /// Traceback text.
    pub traceback: Option<String>,
    /// Exchange it was sent to.
    pub exchange: Option<String>,
    /// Routing key it was sent with.
    pub routing_key: Option<String>,
    /// Lamport clock of the last event merged.
    pub clock: Option<u64>,
    /// The node that sent it (`task-sent`'s hostname).
    pub client: Option<String>,
    /// The workflow's first task.
    pub root: Option<String>,
    /// Same as `root`.
    pub root_id: Option<String>,
    /// The task that sent this one.
    pub parent: Option<String>,
    /// Same as `parent`.
    pub parent_id: Option<String>,
    /// Tasks this one sent (filled when read, from the stored tasks).
    pub children: Vec<String>,
    /// The worker that received it.
    pub worker: Option<String>,
}

impl Task {
    /// A task known by its id only (`PENDING`).
    pub fn new(uuid: impl Into<String>) -> Self {
        Task {
            uuid: uuid.into(),
            name: None,
            state: "PENDING".into(),
            received: None,
            sent: None,
            started: None,
            rejected: None,
            succeeded: None,
            failed: None,
            retried: None,
            revoked: None,
            args: None,
            kwargs: None,
            eta: None,
            expires: None,
            retries: None,
            result: None,
            exception: None,
            timestamp: None,
            runtime: None,
            traceback: None,
            exchange: None,
            routing_key: None,
            clock: None,
            client: None,
            root: None,
            root_id: None,
            parent: None,
            parent_id: None,
            children: Vec::new(),
            worker: None,
        }
    }

    /// Merge a task event (Celery's `Task.event`): the state moves only
    /// forward in Celery's precedence (except `RETRY`); an earlier event
    /// arriving late brings its timestamp and, for `task-received`, only the
    /// fields of the merge rule.
    pub fn apply(&mut self, ev: &Event) {
        let type_name = ev.type_name();
        let subject = type_name.strip_prefix("task-").unwrap_or(type_name);
        let state = match subject {
            "sent" => "PENDING".to_string(),
            "received" => "RECEIVED".to_string(),
            "started" => "STARTED".to_string(),
            "succeeded" => "SUCCESS".to_string(),
            "failed" => "FAILURE".to_string(),
            "retried" => "RETRY".to_string(),
            "revoked" => "REVOKED".to_string(),
            "rejected" => "REJECTED".to_string(),
            other => other.to_uppercase(),
        };
        let ts = Some(ev.timestamp);
        match subject {
            "sent" => self.sent = ts,
            "received" => self.received = ts,
            "started" => self.started = ts,
            "succeeded" => self.succeeded = ts,
            "failed" => self.failed = ts,
            "retried" => self.retried = ts,
            "revoked" => self.revoked = ts,
            "rejected" => self.rejected = ts,
            _ => {}
        }
        if ev.kind() == EventKind::TaskSent {
            self.client = Some(ev.hostname.clone());
        } else if !ev.hostname.is_empty() {
            self.worker = Some(ev.hostname.clone());
        }
        let fields = ev.to_map();
        let earlier = state != "RETRY" && self.state != "RETRY" && precedence(&state) > precedence(&self.state);
        if earlier {
            if state == "RECEIVED" {
                for (k, v) in fields.iter().filter(|(k, _)| RECEIVED_KEEPS.contains(&k.as_str())) {
                    self.set(k, v);
                }
            } else {
                for (k, v) in &fields {
                    self.set(k, v);
                }
            }
        } else {
            for (k, v) in &fields {
                self.set(k, v);
            }
            self.state = state;
            self.timestamp = ts;
        }
        self.root.clone_from(&self.root_id);
        self.parent.clone_from(&self.parent_id);
    }

    fn set(&mut self, key: &str, v: &Value) {
        let s = || v.as_str().map(str::to_owned);
        match key {
            "name" => self.name = s().or(self.name.take()),
            "args" => self.args = s(),
            "kwargs" => self.kwargs = s(),
            "eta" => self.eta = s(),
            "expires" => self.expires = s(),
            "retries" => self.retries = v.as_u64(),
            "result" => self.result = Some(v.as_str().map_or_else(|| v.to_string(), str::to_owned)),
            "exception" => self.exception = s(),
            "runtime" => self.runtime = v.as_f64(),
            "traceback" => self.traceback = s(),
            "exchange" => self.exchange = s(),
            "routing_key" => self.routing_key = s(),
            "clock" => self.clock = v.as_u64(),
            "root_id" => self.root_id = s().or(self.root_id.take()),
            "parent_id" => self.parent_id = s().or(self.parent_id.take()),
            _ => {}
        }
    }

    /// The task as Flower's JSON map.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Whether it finished (`SUCCESS`, `FAILURE`, `REVOKED`, `REJECTED`).
    pub fn is_ready(&self) -> bool {
        matches!(self.state.as_str(), "SUCCESS" | "FAILURE" | "REVOKED" | "REJECTED")
    }
}

/// One worker: from its heartbeats and task events, and from `inspect`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    /// Node name (`celery@host`).
    pub hostname: String,
    /// Heartbeat interval in seconds (0 before the first heartbeat).
    pub freq: f64,
    /// When the last `worker-*` event was sent (0 if none).
    pub last_heartbeat: f64,
    /// It said `worker-offline` after its last heartbeat.
    pub offline: bool,
    /// Tasks running at its last heartbeat.
    pub active: u64,
    /// Tasks finished since it started, at its last heartbeat.
    pub processed: u64,
    /// Load averages at its last heartbeat.
    pub loadavg: Vec<f64>,
    /// Software and version (`py-celery 5.7.0`, `qtask 0.1.0`).
    pub sw_ident: String,
    /// Software version.
    pub sw_ver: String,
    /// Operating system.
    pub sw_sys: String,
    /// Process id.
    pub pid: u32,
    /// Task events seen, by state name (`SUCCESS` → n; `RECEIVED` is
    /// Flower's "Processed").
    pub counts: BTreeMap<String, u64>,
    /// The replies to `inspect` (`stats`, `active_queues`, `registered`,
    /// `conf`), by command.
    pub inspect: Map<String, Value>,
    /// When `inspect` last answered.
    pub inspected_at: Option<f64>,
}

impl Worker {
    /// A worker known by name only.
    pub fn new(hostname: impl Into<String>) -> Self {
        Worker { hostname: hostname.into(), ..Worker::default() }
    }

    /// Celery's liveness rule: alive while a heartbeat came within
    /// `freq × 2` seconds and no `worker-offline` followed it.
    pub fn alive(&self, now: f64) -> bool {
        !self.offline && self.last_heartbeat > 0.0 && now < self.last_heartbeat + self.freq.max(0.0) * 2.0
    }

    /// Merge a worker or task event sent by this worker.
    pub fn apply(&mut self, ev: &Event) {
        if let Some(info) = ev.worker_info() {
            if ev.timestamp >= self.last_heartbeat {
                self.heartbeat(info, ev.timestamp);
                self.offline = ev.kind() == EventKind::WorkerOffline;
                self.pid = ev.pid;
            }
            return;
        }
        let state = match ev.kind() {
            EventKind::TaskReceived => "RECEIVED",
            EventKind::TaskStarted => "STARTED",
            EventKind::TaskSucceeded => "SUCCESS",
            EventKind::TaskFailed => "FAILURE",
            EventKind::TaskRetried => "RETRY",
            EventKind::TaskRevoked => "REVOKED",
            EventKind::TaskRejected => "REJECTED",
            _ => return,
        };
        *self.counts.entry(state.to_string()).or_default() += 1;
    }

    fn heartbeat(&mut self, info: &WorkerInfo, ts: f64) {
        self.freq = info.freq;
        self.active = info.active;
        self.processed = info.processed;
        self.loadavg.clone_from(&info.loadavg);
        self.sw_ident.clone_from(&info.sw_ident);
        self.sw_ver.clone_from(&info.sw_ver);
        self.sw_sys.clone_from(&info.sw_sys);
        self.last_heartbeat = ts;
    }

    /// Count of task events in `state` seen from this worker.
    pub fn count(&self, state: &str) -> u64 {
        self.counts.get(state).copied().unwrap_or(0)
    }

    /// Flower's `/api/workers` entry: the `inspect` replies and when they came.
    pub fn to_flower_json(&self) -> Value {
        let mut m = Map::new();
        for key in ["active_queues", "conf", "registered", "stats"] {
            let empty =
                if key == "conf" || key == "stats" { Value::Object(Map::new()) } else { Value::Array(Vec::new()) };
            m.insert(key.into(), self.inspect.get(key).cloned().unwrap_or(empty));
        }
        m.insert("timestamp".into(), self.inspected_at.map_or(Value::Null, Value::from));
        for key in ["scheduled", "active", "reserved", "revoked"] {
            if let Some(v) = self.inspect.get(key) {
                m.insert(key.into(), v.clone());
            }
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qcore::event::{EventData, EventSender, TaskReceived};
    use std::time::Duration;

    fn received(uuid: &str) -> EventData {
        EventData::TaskReceived(TaskReceived {
            uuid: uuid.into(),
            name: "tasks.add".into(),
            args: "(2, 3)".into(),
            kwargs: "{}".into(),
            root_id: Some(uuid.into()),
            parent_id: None,
            retries: 0,
            eta: None,
            expires: None,
        })
    }

    #[test]
    fn events_merge_in_order() {
        let s = EventSender::new("w1@h").with_pid(1).with_utcoffset(0.0);
        let mut t = Task::new("a");
        t.apply(&s.event(received("a")));
        t.apply(&s.event(EventData::task_started("a")));
        t.apply(&s.event(EventData::task_succeeded("a", "5", Duration::from_millis(12))));
        assert_eq!(t.state, "SUCCESS");
        assert_eq!(t.name.as_deref(), Some("tasks.add"));
        assert_eq!(t.args.as_deref(), Some("(2, 3)"));
        assert_eq!(t.result.as_deref(), Some("5"));
        assert_eq!(t.worker.as_deref(), Some("w1@h"));
        assert_eq!(t.root.as_deref(), Some("a"));
        assert!(t.received.is_some() && t.started.is_some() && t.succeeded.is_some());
        assert!((t.runtime.unwrap_or_default() - 0.012).abs() < 1e-9);
    }

    #[test]
    fn a_late_received_keeps_the_later_state_but_brings_its_fields() {
        let s = EventSender::new("w1@h").with_pid(1).with_utcoffset(0.0);
        let mut t = Task::new("a");
        t.apply(&s.event(EventData::task_succeeded("a", "5", Duration::from_millis(1))));
        t.apply(&s.event(EventData::task_started("a")));
        t.apply(&s.event(received("a")));
        assert_eq!(t.state, "SUCCESS");
        assert_eq!(t.name.as_deref(), Some("tasks.add"));
        assert!(t.started.is_some() && t.received.is_some());
    }

    #[test]
    fn a_worker_is_alive_within_twice_its_heartbeat_interval() {
        let s = EventSender::new("w1@h").with_pid(1).with_utcoffset(0.0);
        let hb = s.event(EventData::WorkerHeartbeat(WorkerInfo::new(Duration::from_secs(2), 1, 7, [0.5; 3])));
        let mut w = Worker::new("w1@h");
        assert!(!w.alive(hb.timestamp));
        w.apply(&hb);
        assert!(w.alive(hb.timestamp + 3.9));
        assert!(!w.alive(hb.timestamp + 4.1));
        assert_eq!((w.active, w.processed), (1, 7));
        let off = s.event(EventData::WorkerOffline(WorkerInfo::new(Duration::from_secs(2), 0, 7, [0.5; 3])));
        w.apply(&off);
        assert!(!w.alive(off.timestamp));
    }

    #[test]
    fn the_json_has_flowers_keys_in_flowers_order() {
        let t = Task::new("a").to_json();
        let keys: Vec<&str> = t.as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default();
        let flower: Value = serde_json::from_str(include_str!("../tests/data/api-tasks.json")).unwrap_or_default();
        let first = flower.as_object().and_then(|m| m.values().next()).and_then(Value::as_object);
        let expected: Vec<&str> = first.map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default();
        assert!(!expected.is_empty());
        assert_eq!(keys, expected);
    }
}
