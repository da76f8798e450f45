//! Configuration with Celery's setting names, from a TOML file and the
//! environment (`QTASK_<NAME>`, then `CELERY_<NAME>` as a fallback).
//!
//! ```toml
//! broker_url = "redis://127.0.0.1:6379/0"
//! result_backend = "redis://127.0.0.1:6379/0"
//! task_acks_late = true
//! worker_prefetch_multiplier = 1
//! result_expires = 3600          # seconds
//! broker_transport_options = { visibility_timeout = 60 }
//!
//! [task_routes]                  # first match wins, in this order
//! "emails.*" = "mail"
//! "reports.build" = { queue = "slow" }
//! ```
//!
//! Nothing is silently ignored:
//! * a name that is neither a qtask setting nor a Celery one is an error
//!   that names the closest known setting ("did you mean
//!   `task_acks_late`?"), in a file, in code and in `QTASK_*` variables;
//! * a Celery setting that qtask does not support is accepted, logged as a
//!   warning and listed by [`Config::unsupported`], so a settings file
//!   shared with a Python app loads;
//! * a table setting (`broker_transport_options`, a route) with an unknown
//!   key is an error in the same way.
//!
//! [`Config::from_env`] reads the file named by `QTASK_CONFIG` (if set),
//! then the environment. Reading that file is the one I/O qcore does.

mod celery_names;
mod value;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use value::Value;

use crate::error::Error;
use crate::message::ContentType;
use crate::task::RateLimit;
use celery_names::CELERY_SETTINGS;

/// A routing rule: task names matching `pattern` (glob with `*`) go to `queue`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Exact name or glob (`tasks.email.*`).
    pub pattern: String,
    /// Destination queue.
    pub queue: String,
}

impl Route {
    /// Whether `task` matches this rule.
    pub fn matches(&self, task: &str) -> bool {
        glob_match(&self.pattern, task)
    }
}

fn glob_match(pattern: &str, s: &str) -> bool {
    let p = pattern.as_bytes();
    let t = s.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Celery's `broker_use_ssl`: TLS to the broker, with the system's root
/// certificates (`broker_use_ssl = true`) or with files of one's own CA and
/// client certificate:
///
/// ```toml
/// broker_use_ssl = { ca_certs = "/etc/qtask/ca.pem", certfile = "/etc/qtask/client.pem", keyfile = "/etc/qtask/client.key", cert_reqs = "CERT_REQUIRED" }
/// ```
///
/// From the environment: `QTASK_BROKER_USE_SSL=true`, or
/// `QTASK_BROKER_USE_SSL=ca_certs=/etc/qtask/ca.pem,certfile=...,keyfile=...`.
/// `cert_reqs` may be `CERT_REQUIRED` (or `CERT_OPTIONAL`, which Python
/// treats the same way on a client); `CERT_NONE` is refused: the broker's
/// certificate is always verified. The files are read by the broker adapter
/// when it connects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct BrokerSsl {
    /// `ca_certs`: PEM file of the CA certificates the broker's certificate
    /// is checked against (besides the system's roots).
    pub ca_certs: Option<PathBuf>,
    /// `certfile`: PEM client certificate (chain) for brokers that require one.
    pub certfile: Option<PathBuf>,
    /// `keyfile`: unencrypted PEM private key of `certfile` (default: looked
    /// for in `certfile`).
    pub keyfile: Option<PathBuf>,
}

/// Celery's `broker_transport_options` / `result_backend_transport_options`:
/// the keys qtask's adapters honour. Other keys of kombu's transports are
/// reported as unsupported ([`Config::unsupported`]); unknown keys are errors.
///
/// From the environment: `QTASK_BROKER_TRANSPORT_OPTIONS=visibility_timeout=60,global_keyprefix=app1:`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TransportOptions {
    /// `visibility_timeout` (seconds): Redis/SQL brokers give a delivery to
    /// another worker when its consumer has not renewed it for this long.
    pub visibility_timeout: Option<Duration>,
    /// `global_keyprefix`: Redis key prefix (kombu's).
    pub global_keyprefix: Option<String>,
    /// `confirm_publish` (RabbitMQ): `true` or `"each"` makes every publish
    /// wait for its own publisher confirm (kombu's `confirm_publish=True`);
    /// `"pipelined"` (and `false`; qtask always asks for confirms) returns
    /// once the message is written and awaits its confirm in the background.
    /// Unset: pipelined.
    pub confirm_publish: Option<ConfirmPublish>,
}

/// How a RabbitMQ publish waits for the broker's publisher confirm
/// (`broker_transport_options.confirm_publish`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConfirmPublish {
    /// The publish returns once its frames are written; the confirm is
    /// awaited in the background, the message written again on a `basic.nack`
    /// or a lost connection, and [`Broker::flush`](crate::Broker::flush)
    /// waits for every outstanding confirm.
    #[default]
    Pipelined,
    /// Every publish waits for its own confirm (kombu's `confirm_publish=True`).
    Each,
}

/// Keys of kombu's transport options that qtask knows but does not use.
const KOMBU_TRANSPORT_OPTIONS: &[&str] = &[
    "ack_emulation",
    "client_name",
    "fanout_patterns",
    "fanout_prefix",
    "health_check_interval",
    "interval_max",
    "interval_start",
    "interval_step",
    "master_name",
    "max_connections",
    "max_retries",
    "polling_interval",
    "priority_steps",
    "queue_order_strategy",
    "retry_on_timeout",
    "sentinel_kwargs",
    "sep",
    "socket_connect_timeout",
    "socket_keepalive",
    "socket_timeout",
    "unacked_index_key",
    "unacked_key",
    "unacked_mutex_expire",
    "unacked_mutex_key",
    "unacked_restore_limit",
];

/// Celery's `task_default_queue_type`: the kind of queue a RabbitMQ broker
/// declares for tasks (other brokers have one kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// Classic durable queues, as Celery declares them by default.
    #[default]
    Classic,
    /// Quorum queues (`x-queue-type: quorum`, Celery 5.5's
    /// `task_default_queue_type = "quorum"`): replicated, with RabbitMQ's own
    /// `x-delivery-count`. They take no `x-max-priority` (the option is
    /// ignored with a warning) and no global QoS, so the prefetch applies per
    /// queue consumed, not per consumer (Celery turns global QoS off for
    /// them too).
    Quorum,
}

/// The kind of exchange a declared task queue is bound to (kombu's
/// `Exchange(type=...)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExchangeType {
    /// Routes by exact routing key (Celery's default).
    #[default]
    Direct,
    /// Routes by pattern (`a.*`, `a.#`).
    Topic,
    /// Routes to every bound queue.
    Fanout,
}

impl ExchangeType {
    /// The AMQP name: `direct`, `topic`, `fanout`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Topic => "topic",
            ExchangeType::Fanout => "fanout",
        }
    }
}

/// One entry of Celery's `task_queues`: a queue bound to an exchange with a
/// routing key (`Queue('high', Exchange('default'), routing_key='high')`).
///
/// Brokers with exchanges declare the exchange and the binding, so a
/// producer that publishes to `exchange` with `routing_key` (as a Python
/// one configured alike may) reaches the queue. qtask itself sends to a
/// queue on a direct exchange through the default exchange, routing key =
/// queue name, as Celery does; to a topic or fanout exchange it publishes
/// to the exchange with the queue's routing key. A worker started without
/// queues consumes every queue listed here, as Celery's does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskQueue {
    /// Queue name.
    pub name: String,
    /// Exchange the queue is bound to (default: the queue's name, as
    /// Celery's automatic queues).
    pub exchange: String,
    /// Kind of the exchange (default direct).
    pub exchange_type: ExchangeType,
    /// Binding routing key (default: the queue's name).
    pub routing_key: String,
}

impl TaskQueue {
    /// A queue bound to the exchange of its own name with its name as key.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        TaskQueue { exchange: name.clone(), routing_key: name.clone(), exchange_type: ExchangeType::Direct, name }
    }

    /// Bind to `exchange` instead.
    pub fn exchange(mut self, exchange: impl Into<String>, kind: ExchangeType) -> Self {
        self.exchange = exchange.into();
        self.exchange_type = kind;
        self
    }

    /// Bind with `routing_key` instead.
    pub fn routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = routing_key.into();
        self
    }
}

/// Keys of kombu's `Queue` that qtask knows but does not use.
const KOMBU_QUEUE_OPTIONS: &[&str] = &[
    "auto_delete",
    "consumer_arguments",
    "durable",
    "exclusive",
    "expires",
    "max_length",
    "max_length_bytes",
    "max_priority",
    "message_ttl",
    "no_ack",
    "queue_arguments",
];

/// Celery's `database_table_schemas` (database result backend): the
/// PostgreSQL schema of `celery_taskmeta` (`task`) and `celery_tasksetmeta`
/// (`group`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TableSchemas {
    /// Schema of the task results table.
    pub task: Option<String>,
    /// Schema of the group results table.
    pub group: Option<String>,
}

/// Settings, named as in Celery. Unset values take Celery's defaults.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// Broker URL (`redis://`, `amqp://`, `postgres://`, `sqlite://`, `memory://`).
    pub broker_url: Option<String>,
    /// TLS to the broker with own CA / client certificate files
    /// (`broker_use_ssl`; AMQP broker). `None`: TLS only as the URL says
    /// (`amqps://`), with the system's roots.
    pub broker_use_ssl: Option<BrokerSsl>,
    /// `broker_transport_options` (Redis/SQL brokers).
    pub broker_transport_options: TransportOptions,
    /// Result backend URL; `None` stores no results.
    pub result_backend: Option<String>,
    /// `result_backend_transport_options` (Redis backend).
    pub result_backend_transport_options: TransportOptions,
    /// Serializer of result documents (`result_serializer`, Celery: json).
    pub result_serializer: ContentType,
    /// `result_persistent`: persistent result messages (`rpc://`). `None`:
    /// the backend's default.
    pub result_persistent: Option<bool>,
    /// `database_table_schemas` (SQL result backend).
    pub database_table_schemas: TableSchemas,
    /// Queue for tasks with no route (Celery: `celery`).
    pub task_default_queue: String,
    /// Body serializer for sent tasks.
    pub task_serializer: ContentType,
    /// `task_queue_max_priority`: `x-max-priority` of the task queues a
    /// RabbitMQ broker declares.
    pub task_queue_max_priority: Option<u8>,
    /// `task_default_queue_type`: classic or quorum task queues (RabbitMQ).
    pub task_default_queue_type: QueueType,
    /// `accept_content`: the body serializers a worker accepts; a message
    /// in another one is parked in the dead-letter place (Celery:
    /// `ContentDisallowed`). `None` (unset): every serializer qtask decodes
    /// (JSON and msgpack).
    pub accept_content: Option<Vec<ContentType>>,
    /// `result_accept_content`: the serializers stored results may be read
    /// in; `None` (unset): `accept_content` (Celery's rule). See
    /// [`ResultCodec`](crate::ResultCodec).
    pub result_accept_content: Option<Vec<ContentType>>,
    /// How long results are kept (Celery: 1 day).
    pub result_expires: Duration,
    /// Ack after the task ran (default false: ack just before running).
    pub task_acks_late: bool,
    /// With acks_late, also ack failed and timed-out tasks (Celery default true).
    pub task_acks_on_failure_or_timeout: bool,
    /// Messages reserved per concurrency slot (Celery: 4).
    pub worker_prefetch_multiplier: usize,
    /// Tasks run at once by one worker (default: number of CPUs).
    pub worker_concurrency: usize,
    /// The largest message body a worker decodes, in bytes (qtask's own
    /// setting; default 128 MiB, RabbitMQ's own default limit). A larger
    /// message is parked in the dead-letter place with the reason, unread.
    pub worker_max_message_size: usize,
    /// Store STARTED when a task starts.
    pub task_track_started: bool,
    /// Store name, args, kwargs, worker, retries, queue with results.
    pub result_extended: bool,
    /// Routing rules, first match wins (in the order written).
    pub task_routes: Vec<Route>,
    /// `task_queues`: declared queues with their exchange and routing key,
    /// in the order written (see [`TaskQueue`]).
    pub task_queues: Vec<TaskQueue>,
    /// Default hard time limit.
    pub task_time_limit: Option<Duration>,
    /// Default soft time limit.
    pub task_soft_time_limit: Option<Duration>,
    /// Default per-task rate limit.
    pub task_default_rate_limit: Option<RateLimit>,
    /// `task_max_retries`: retries allowed to a task that does not set its
    /// own `max_retries` (default 3, Celery's task default; `None` = retry
    /// forever). Not a Celery 5.7 setting (Celery ignores it): qtask
    /// honours it because users write it.
    pub task_max_retries: Option<u32>,
    /// `task_default_retry_delay`: countdown of a retry of a task that does
    /// not set its own `default_retry_delay` (default 180 s, Celery's task
    /// default). Not a Celery 5.7 setting; honoured as for `task_max_retries`.
    pub task_default_retry_delay: Duration,
    /// Do not store results by default.
    pub task_ignore_result: bool,
    /// Run tasks in the caller at `apply_async` (tests, single process).
    pub task_always_eager: bool,
    /// Send `task-*`/`worker-*` events.
    pub worker_send_task_events: bool,
    /// Send `task-sent` events from producers.
    pub task_send_sent_event: bool,
    /// Node name of the worker (default `qtask@<host>`).
    pub worker_hostname: Option<String>,
    /// Time a worker waits for running tasks at warm shutdown.
    pub worker_shutdown_timeout: Duration,
    /// Redis/SQL: age after which an unacked delivery is given to another
    /// worker (qtask's name; `broker_transport_options.visibility_timeout`
    /// is Celery's, see [`Config::broker_visibility_timeout`]).
    pub visibility_timeout: Option<Duration>,
    /// Deliveries after which a message is dead-lettered as poison.
    pub max_deliveries: Option<u32>,
    /// Celery's `timezone`: the IANA zone name (`"Europe/Paris"`) periodic
    /// schedules (crontab) are computed in when an entry names none. `None`:
    /// UTC. The name is checked by the beat (qbeat), which owns the zone
    /// database.
    pub timezone: Option<String>,
    /// Celery's `enable_utc` (default true). Messages always carry UTC
    /// times; without `timezone`, `enable_utc = false` means the system's
    /// local zone in Celery, which the beat takes from `TZ` (else UTC).
    pub enable_utc: bool,
    /// Celery's `beat_schedule`: the periodic entries, as written (a table
    /// of entries by name). Kept unparsed here; the beat (qbeat) reads and
    /// checks it, naming the entry and field of any error.
    pub beat_schedule: Option<Value>,
    /// Celery's `beat_max_loop_interval`: the longest the beat sleeps
    /// between ticks (`None`: Celery's 300 s).
    pub beat_max_loop_interval: Option<Duration>,
    /// Celery's `beat_cron_starting_deadline`: after downtime a crontab
    /// entry catches up only on a slot at most this late (the beat's
    /// default `misfire_grace` of crontab entries). `None`: no limit.
    pub beat_cron_starting_deadline: Option<Duration>,
    /// Celery settings that were set but that qtask does not support.
    unsupported: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            broker_url: None,
            broker_use_ssl: None,
            broker_transport_options: TransportOptions::default(),
            result_backend: None,
            result_backend_transport_options: TransportOptions::default(),
            result_serializer: ContentType::Json,
            result_persistent: None,
            database_table_schemas: TableSchemas::default(),
            task_default_queue: "celery".into(),
            task_serializer: ContentType::Json,
            task_queue_max_priority: None,
            task_default_queue_type: QueueType::Classic,
            accept_content: None,
            result_accept_content: None,
            result_expires: Duration::from_secs(86_400),
            task_acks_late: false,
            task_acks_on_failure_or_timeout: true,
            worker_prefetch_multiplier: 4,
            worker_concurrency: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            worker_max_message_size: 128 << 20,
            task_track_started: false,
            result_extended: false,
            task_routes: Vec::new(),
            task_queues: Vec::new(),
            task_time_limit: None,
            task_soft_time_limit: None,
            task_default_rate_limit: None,
            task_max_retries: Some(3),
            task_default_retry_delay: Duration::from_secs(180),
            task_ignore_result: false,
            task_always_eager: false,
            worker_send_task_events: false,
            task_send_sent_event: false,
            worker_hostname: None,
            worker_shutdown_timeout: Duration::from_secs(30),
            visibility_timeout: None,
            max_deliveries: None,
            timezone: None,
            enable_utc: true,
            beat_schedule: None,
            beat_max_loop_interval: None,
            beat_cron_starting_deadline: None,
            unsupported: Vec::new(),
        }
    }
}

/// The setting names [`Config::set`] understands (Celery's names, and
/// qtask's own `visibility_timeout` and `max_deliveries`).
pub const KNOWN_SETTINGS: &[&str] = &[
    "broker_url",
    "broker_use_ssl",
    "broker_transport_options",
    "result_backend",
    "result_backend_transport_options",
    "result_serializer",
    "result_persistent",
    "database_table_schemas",
    "task_default_queue",
    "task_serializer",
    "task_queue_max_priority",
    "task_default_queue_type",
    "accept_content",
    "result_accept_content",
    "result_expires",
    "task_acks_late",
    "task_acks_on_failure_or_timeout",
    "worker_prefetch_multiplier",
    "worker_concurrency",
    "worker_max_message_size",
    "task_track_started",
    "result_extended",
    "task_routes",
    "task_queues",
    "task_time_limit",
    "task_soft_time_limit",
    "task_default_rate_limit",
    "task_max_retries",
    "task_default_retry_delay",
    "task_ignore_result",
    "task_always_eager",
    "worker_send_task_events",
    "task_send_sent_event",
    "worker_hostname",
    "worker_shutdown_timeout",
    "visibility_timeout",
    "max_deliveries",
    "timezone",
    "enable_utc",
    "beat_schedule",
    "beat_max_loop_interval",
    "beat_cron_starting_deadline",
];

/// `QTASK_*` environment variables that are not settings: the settings
/// file, logging, and the project's test and benchmark harness.
const NOT_SETTINGS: &[&str] = &["CONFIG", "LOG", "PYTHON", "CLI"];
const NOT_SETTINGS_PREFIXES: &[&str] = &["TEST_", "E2E_", "BENCH_"];

fn cfg_err(key: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("{key}: {msg}"))
}

/// The known name closest to `name` among `candidates`, if one is close
/// enough to be a likely typo (or Celery's old upper-case spelling).
fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    let stripped = ["celeryd_", "celery_"].iter().find_map(|p| lower.strip_prefix(p)).unwrap_or(&lower).to_string();
    candidates
        .into_iter()
        .map(|c| (c, strsim::jaro_winkler(&lower, c).max(strsim::jaro_winkler(&stripped, c))))
        .filter(|(_, score)| *score >= 0.85)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(c, _)| c)
}

fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion.map(|s| format!(": did you mean `{s}`?")).unwrap_or_default()
}

fn all_names() -> impl Iterator<Item = &'static str> {
    KNOWN_SETTINGS.iter().chain(CELERY_SETTINGS.iter()).copied()
}

fn as_bool(key: &str, v: &Value) -> Result<bool, Error> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(cfg_err(key, format!("expected true/false, got {s:?}"))),
        },
        Value::Int(i) => Ok(*i != 0),
        other => Err(cfg_err(key, format!("expected a boolean, got {}", other.kind()))),
    }
}

/// `true`/`"each"` or `false`/`"pipelined"`.
fn as_confirm_publish(key: &str, v: &Value) -> Result<ConfirmPublish, Error> {
    if let Value::Str(s) = v {
        match s.trim().to_ascii_lowercase().as_str() {
            "each" => return Ok(ConfirmPublish::Each),
            "pipelined" => return Ok(ConfirmPublish::Pipelined),
            _ => {}
        }
    }
    match as_bool(key, v) {
        Ok(true) => Ok(ConfirmPublish::Each),
        Ok(false) => Ok(ConfirmPublish::Pipelined),
        Err(_) => Err(cfg_err(key, "expected \"each\", \"pipelined\" or a boolean")),
    }
}

fn as_f64(key: &str, v: &Value) -> Result<f64, Error> {
    let f = match v {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        Value::Str(s) => s.trim().parse().map_err(|_| cfg_err(key, format!("expected a number, got {s:?}")))?,
        other => return Err(cfg_err(key, format!("expected a number, got {}", other.kind()))),
    };
    if !f.is_finite() || f < 0.0 {
        return Err(cfg_err(key, format!("expected a non-negative number, got {f}")));
    }
    Ok(f)
}

fn as_usize(key: &str, v: &Value) -> Result<usize, Error> {
    let f = as_f64(key, v)?;
    if f.fract() != 0.0 || f > u32::MAX as f64 {
        return Err(cfg_err(key, format!("expected a whole number, got {f}")));
    }
    Ok(f as usize)
}

fn as_secs(key: &str, v: &Value) -> Result<Duration, Error> {
    Ok(Duration::from_secs_f64(as_f64(key, v)?))
}

fn as_opt_secs(key: &str, v: &Value) -> Result<Option<Duration>, Error> {
    match v {
        Value::Str(s) if s.is_empty() || s.eq_ignore_ascii_case("none") => Ok(None),
        _ => as_secs(key, v).map(|d| if d.is_zero() { None } else { Some(d) }),
    }
}

fn as_string(key: &str, v: &Value) -> Result<String, Error> {
    match v {
        Value::Str(s) => Ok(s.clone()),
        other => Err(cfg_err(key, format!("expected a string, got {}", other.kind()))),
    }
}

/// A list of serializer names (`json`, `application/json`, `msgpack`, ...)
/// or, from the environment, `json,msgpack`.
fn as_content_types(key: &str, v: &Value) -> Result<Vec<ContentType>, Error> {
    let names: Vec<String> = match v {
        Value::List(items) => items.iter().map(|i| as_string(key, i)).collect::<Result<_, _>>()?,
        Value::Str(s) => s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect(),
        other => return Err(cfg_err(key, format!("expected a list of serializers, got {}", other.kind()))),
    };
    names.iter().map(|n| ContentType::from_mime(n).map_err(|e| cfg_err(key, e))).collect()
}

/// A table, or from the environment `key=value,key2=value2` (in that order).
fn as_table(key: &str, v: &Value, what: &str) -> Result<Vec<(String, Value)>, Error> {
    match v {
        Value::Table(t) => Ok(t.clone()),
        Value::Str(s) => s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|part| {
                let (k, v) =
                    part.split_once('=').ok_or_else(|| cfg_err(key, format!("expected {what}, got {part:?}")))?;
                Ok((k.trim().to_string(), Value::Str(v.trim().to_string())))
            })
            .collect(),
        other => Err(cfg_err(key, format!("expected a table, got {}", other.kind()))),
    }
}

fn parse_broker_ssl(v: &Value) -> Result<Option<BrokerSsl>, Error> {
    const KEY: &str = "broker_use_ssl";
    let table = match v {
        Value::Table(_) => as_table(KEY, v, "key=value")?,
        Value::Str(s) if s.contains('=') => as_table(KEY, v, "key=value")?,
        other => return Ok(as_bool(KEY, other)?.then(BrokerSsl::default)),
    };
    let mut ssl = BrokerSsl::default();
    for (k, v) in &table {
        let path = || -> Result<Option<PathBuf>, Error> {
            match v {
                Value::Str(s) if !s.trim().is_empty() => Ok(Some(PathBuf::from(s.trim()))),
                other => Err(cfg_err(KEY, format!("{k}: expected a file path, got {other:?}"))),
            }
        };
        match k.as_str() {
            "ca_certs" => ssl.ca_certs = path()?,
            "certfile" => ssl.certfile = path()?,
            "keyfile" => ssl.keyfile = path()?,
            "cert_reqs" => {
                let level = match v {
                    Value::Int(i) => *i,
                    Value::Str(s) => match s.trim().to_ascii_uppercase().trim_start_matches("SSL.") {
                        "CERT_NONE" | "NONE" | "0" => 0,
                        "CERT_OPTIONAL" | "OPTIONAL" | "1" => 1,
                        "CERT_REQUIRED" | "REQUIRED" | "2" => 2,
                        _ => -1,
                    },
                    _ => -1,
                };
                match level {
                    1 | 2 => {}
                    0 => {
                        return Err(cfg_err(
                            KEY,
                            "cert_reqs = CERT_NONE is not supported: qtask always verifies the broker's certificate \
                             (give its CA in ca_certs)",
                        ))
                    }
                    _ => {
                        return Err(cfg_err(
                            KEY,
                            format!("cert_reqs: expected CERT_REQUIRED or CERT_OPTIONAL, got {v:?}"),
                        ))
                    }
                }
            }
            other => {
                return Err(cfg_err(
                    KEY,
                    format!("unknown key {other:?} (known: ca_certs, certfile, keyfile, cert_reqs)"),
                ))
            }
        }
    }
    if ssl.keyfile.is_some() && ssl.certfile.is_none() {
        return Err(cfg_err(KEY, "keyfile needs certfile"));
    }
    Ok(Some(ssl))
}

impl Config {
    /// Set one setting by its Celery name:
    ///
    /// ```
    /// # use qcore::Config;
    /// let mut cfg = Config::default();
    /// cfg.set("task_acks_late", true)?;
    /// cfg.set("result_expires", 3600)?;
    /// cfg.set("broker_transport_options", [("visibility_timeout", 60)].into_iter().collect::<qcore::config::Value>())?;
    /// let typo = cfg.set("task_ack_late", true).unwrap_err().to_string();
    /// assert!(typo.contains("did you mean `task_acks_late`?"), "{typo}");
    /// cfg.set("worker_pool_restarts", true)?; // Celery's, not qtask's: accepted and reported
    /// assert_eq!(cfg.unsupported(), ["worker_pool_restarts"]);
    /// # Ok::<(), qcore::Error>(())
    /// ```
    ///
    /// A name that is neither a qtask nor a Celery setting is an error naming
    /// the closest known one; a Celery setting qtask does not support is
    /// accepted, logged as a warning and listed by [`unsupported`](Self::unsupported).
    pub fn set(&mut self, key: &str, v: impl Into<Value>) -> Result<(), Error> {
        self.set_value(key, &v.into())
    }

    fn set_value(&mut self, key: &str, v: &Value) -> Result<(), Error> {
        match key {
            "broker_url" => self.broker_url = Some(as_string(key, v)?),
            "broker_use_ssl" => self.broker_use_ssl = parse_broker_ssl(v)?,
            "broker_transport_options" => self.broker_transport_options = self.transport_options(key, v)?,
            "result_backend" => self.result_backend = Some(as_string(key, v)?).filter(|s| !s.is_empty()),
            "result_backend_transport_options" => {
                self.result_backend_transport_options = self.transport_options(key, v)?
            }
            "result_serializer" => {
                self.result_serializer = ContentType::from_mime(&as_string(key, v)?).map_err(|e| cfg_err(key, e))?
            }
            "result_persistent" => self.result_persistent = Some(as_bool(key, v)?),
            "database_table_schemas" => self.database_table_schemas = self.table_schemas(key, v)?,
            "task_default_queue" => self.task_default_queue = as_string(key, v)?,
            "task_serializer" => {
                self.task_serializer = ContentType::from_mime(&as_string(key, v)?).map_err(|e| cfg_err(key, e))?
            }
            "task_queue_max_priority" => {
                let n = as_usize(key, v)?;
                if n > 255 {
                    return Err(cfg_err(key, format!("expected 0 to 255, got {n}")));
                }
                self.task_queue_max_priority = Some(n as u8).filter(|n| *n > 0);
            }
            "task_default_queue_type" => {
                self.task_default_queue_type = match as_string(key, v)?.trim().to_ascii_lowercase().as_str() {
                    "classic" => QueueType::Classic,
                    "quorum" => QueueType::Quorum,
                    other => return Err(cfg_err(key, format!("expected \"classic\" or \"quorum\", got {other:?}"))),
                }
            }
            "accept_content" => self.accept_content = Some(as_content_types(key, v)?),
            "result_accept_content" => self.result_accept_content = Some(as_content_types(key, v)?),
            "result_expires" => self.result_expires = as_secs(key, v)?,
            "task_acks_late" => self.task_acks_late = as_bool(key, v)?,
            "task_acks_on_failure_or_timeout" => self.task_acks_on_failure_or_timeout = as_bool(key, v)?,
            "worker_prefetch_multiplier" => self.worker_prefetch_multiplier = as_usize(key, v)?,
            "worker_max_message_size" => {
                let n = as_usize(key, v)?;
                if n == 0 {
                    return Err(cfg_err(key, "must be at least 1 (bytes)"));
                }
                self.worker_max_message_size = n;
            }
            "worker_concurrency" => {
                let n = as_usize(key, v)?;
                if n == 0 {
                    return Err(cfg_err(key, "must be at least 1"));
                }
                self.worker_concurrency = n;
            }
            "task_track_started" => self.task_track_started = as_bool(key, v)?,
            "result_extended" => self.result_extended = as_bool(key, v)?,
            "task_routes" => self.task_routes = self.routes(v)?,
            "task_queues" => self.task_queues = self.queues(v)?,
            "task_time_limit" => self.task_time_limit = as_opt_secs(key, v)?,
            "task_soft_time_limit" => self.task_soft_time_limit = as_opt_secs(key, v)?,
            "task_default_rate_limit" => {
                let s = match v {
                    Value::Int(i) => i.to_string(),
                    other => as_string(key, other)?,
                };
                self.task_default_rate_limit = RateLimit::parse(&s).map_err(|e| cfg_err(key, e))?;
            }
            "task_max_retries" => {
                self.task_max_retries = match v {
                    Value::Str(s) if s.trim().eq_ignore_ascii_case("none") => None,
                    _ => Some(u32::try_from(as_usize(key, v)?).map_err(|_| cfg_err(key, "too large"))?),
                }
            }
            "task_default_retry_delay" => self.task_default_retry_delay = as_secs(key, v)?,
            "task_ignore_result" => self.task_ignore_result = as_bool(key, v)?,
            "task_always_eager" => self.task_always_eager = as_bool(key, v)?,
            "worker_send_task_events" => self.worker_send_task_events = as_bool(key, v)?,
            "task_send_sent_event" => self.task_send_sent_event = as_bool(key, v)?,
            "worker_hostname" => self.worker_hostname = Some(as_string(key, v)?),
            "worker_shutdown_timeout" => self.worker_shutdown_timeout = as_secs(key, v)?,
            "visibility_timeout" => self.visibility_timeout = as_opt_secs(key, v)?,
            "max_deliveries" => self.max_deliveries = Some(as_usize(key, v)? as u32).filter(|n| *n > 0),
            "timezone" => {
                let tz = as_string(key, v)?.trim().to_string();
                if tz.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(cfg_err(key, format!("expected an IANA zone name like \"Europe/Paris\", got {tz:?}")));
                }
                self.timezone = Some(tz).filter(|t| !t.is_empty());
            }
            "enable_utc" => self.enable_utc = as_bool(key, v)?,
            "beat_max_loop_interval" => self.beat_max_loop_interval = as_opt_secs(key, v)?,
            "beat_cron_starting_deadline" => self.beat_cron_starting_deadline = as_opt_secs(key, v)?,
            "beat_schedule" => match v {
                Value::Table(_) => self.beat_schedule = Some(v.clone()),
                other => return Err(cfg_err(key, format!("expected a table of entries, got {}", other.kind()))),
            },
            other if CELERY_SETTINGS.contains(&other) => self.note_unsupported(other),
            other => {
                return Err(Error::Config(format!(
                    "unknown setting `{other}`{}",
                    did_you_mean(closest(other, all_names()))
                )))
            }
        }
        Ok(())
    }

    fn note_unsupported(&mut self, name: &str) {
        tracing::warn!(setting = name, "a Celery setting that qtask does not support: ignored");
        if !self.unsupported.iter().any(|n| n == name) {
            self.unsupported.push(name.to_string());
        }
    }

    /// The Celery settings (and keys of table settings, as
    /// `broker_transport_options.sep`) that were set but that qtask does not
    /// support, in the order they were set. Each was also logged as a
    /// warning when it was read.
    pub fn unsupported(&self) -> &[String] {
        &self.unsupported
    }

    fn transport_options(&mut self, key: &str, v: &Value) -> Result<TransportOptions, Error> {
        let mut o = TransportOptions::default();
        for (k, v) in as_table(key, v, "key=value")? {
            let name = format!("{key}.{k}");
            match k.as_str() {
                "visibility_timeout" => o.visibility_timeout = as_opt_secs(&name, &v)?,
                "global_keyprefix" => o.global_keyprefix = Some(as_string(&name, &v)?),
                "confirm_publish" => o.confirm_publish = Some(as_confirm_publish(&name, &v)?),
                other if KOMBU_TRANSPORT_OPTIONS.contains(&other) => self.note_unsupported(&name),
                other => {
                    let known = ["visibility_timeout", "global_keyprefix", "confirm_publish"].into_iter();
                    return Err(cfg_err(
                        key,
                        format!(
                            "unknown key `{other}`{}",
                            did_you_mean(closest(other, known.chain(KOMBU_TRANSPORT_OPTIONS.iter().copied())))
                        ),
                    ));
                }
            }
        }
        Ok(o)
    }

    fn table_schemas(&mut self, key: &str, v: &Value) -> Result<TableSchemas, Error> {
        let mut s = TableSchemas::default();
        for (k, v) in as_table(key, v, "table=schema")? {
            let schema = Some(as_string(&format!("{key}.{k}"), &v)?).filter(|s| !s.is_empty());
            match k.as_str() {
                "task" => s.task = schema,
                "group" => s.group = schema,
                other => return Err(cfg_err(key, format!("unknown table `{other}` (known: task, group)"))),
            }
        }
        Ok(s)
    }

    /// `task_routes` as a table (`"pattern" = "queue"` or
    /// `"pattern" = { queue = "q" }`), or from the environment
    /// `pattern=queue,pattern2=queue2`. The order written is the order tried.
    fn routes(&mut self, v: &Value) -> Result<Vec<Route>, Error> {
        const KEY: &str = "task_routes";
        let mut routes = Vec::new();
        for (pattern, target) in as_table(KEY, v, "pattern=queue")? {
            let queue = match &target {
                Value::Str(q) => q.clone(),
                Value::Table(t) => {
                    let mut queue = None;
                    for (k, v) in t {
                        match k.as_str() {
                            "queue" => queue = Some(as_string(&format!("{KEY}.{pattern}.queue"), v)?),
                            "exchange" | "exchange_type" | "routing_key" | "priority" => {
                                self.note_unsupported(&format!("{KEY}.{pattern}.{k}"))
                            }
                            other => {
                                return Err(cfg_err(
                                    KEY,
                                    format!("route {pattern:?}: unknown key `{other}` (known: queue)"),
                                ))
                            }
                        }
                    }
                    queue.ok_or_else(|| cfg_err(KEY, format!("route {pattern:?} has no queue")))?
                }
                other => {
                    return Err(cfg_err(KEY, format!("route {pattern:?}: expected a queue, got {}", other.kind())))
                }
            };
            routes.push(Route { pattern, queue });
        }
        Ok(routes)
    }

    fn queues(&mut self, v: &Value) -> Result<Vec<TaskQueue>, Error> {
        type Table = Vec<(String, Value)>;
        const KEY: &str = "task_queues";
        // A table of name = {exchange, ...}, or a list of names or of tables
        // with a `name`, or (environment) `a,b`.
        let entries: Vec<(String, Option<Table>)> = match v {
            Value::Table(t) => t
                .iter()
                .map(|(name, decl)| match decl {
                    Value::Table(d) => Ok((name.clone(), Some(d.clone()))),
                    other => Err(cfg_err(KEY, format!("queue {name:?}: expected a table, got {}", other.kind()))),
                })
                .collect::<Result<_, _>>()?,
            Value::List(items) => items
                .iter()
                .map(|item| match item {
                    Value::Str(name) => Ok((name.clone(), None)),
                    Value::Table(d) => {
                        let name = d
                            .iter()
                            .find(|(k, _)| k == "name")
                            .map(|(_, n)| as_string(&format!("{KEY}.name"), n))
                            .transpose()?
                            .ok_or_else(|| cfg_err(KEY, "a queue in the list has no `name`"))?;
                        Ok((name, Some(d.iter().filter(|(k, _)| k != "name").cloned().collect())))
                    }
                    other => Err(cfg_err(KEY, format!("expected a queue name or table, got {}", other.kind()))),
                })
                .collect::<Result<_, _>>()?,
            Value::Str(s) => {
                s.split(',').map(|n| n.trim()).filter(|n| !n.is_empty()).map(|n| (n.into(), None)).collect()
            }
            other => return Err(cfg_err(KEY, format!("expected a table or a list of queues, got {}", other.kind()))),
        };
        let mut queues: Vec<TaskQueue> = Vec::with_capacity(entries.len());
        for (name, decl) in entries {
            if name.trim().is_empty() {
                return Err(cfg_err(KEY, "a queue name is empty"));
            }
            if queues.iter().any(|q| q.name == name) {
                return Err(cfg_err(KEY, format!("queue {name:?} is listed twice")));
            }
            let mut q = TaskQueue::new(name.clone());
            for (k, v) in decl.unwrap_or_default() {
                let field = format!("{KEY}.{name}.{k}");
                match k.as_str() {
                    "exchange" => q.exchange = as_string(&field, &v)?,
                    "routing_key" => q.routing_key = as_string(&field, &v)?,
                    "exchange_type" => {
                        q.exchange_type = match as_string(&field, &v)?.as_str() {
                            "direct" => ExchangeType::Direct,
                            "topic" => ExchangeType::Topic,
                            "fanout" => ExchangeType::Fanout,
                            other => {
                                return Err(cfg_err(&field, format!("{other:?}: expected direct, topic or fanout")))
                            }
                        }
                    }
                    other if KOMBU_QUEUE_OPTIONS.contains(&other) => self.note_unsupported(&field),
                    other => {
                        return Err(cfg_err(
                            KEY,
                            format!(
                                "queue {name:?}: unknown key `{other}` (known: exchange, exchange_type, routing_key)"
                            ),
                        ))
                    }
                }
            }
            queues.push(q);
        }
        Ok(queues)
    }

    /// The declaration of `queue` in `task_queues`, if listed.
    pub fn task_queue(&self, queue: &str) -> Option<&TaskQueue> {
        self.task_queues.iter().find(|q| q.name == queue)
    }

    /// The visibility timeout of Redis/SQL brokers: qtask's
    /// `visibility_timeout`, else Celery's
    /// `broker_transport_options.visibility_timeout`.
    pub fn broker_visibility_timeout(&self) -> Option<Duration> {
        self.visibility_timeout.or(self.broker_transport_options.visibility_timeout)
    }

    /// Parse a TOML document of settings.
    pub fn from_toml_str(text: &str) -> Result<Config, Error> {
        let mut cfg = Config::default();
        cfg.merge_toml_str(text)?;
        Ok(cfg)
    }

    /// Apply the settings of a TOML document over these.
    pub fn merge_toml_str(&mut self, text: &str) -> Result<(), Error> {
        let table: toml::Table = text.parse().map_err(|e| Error::Config(format!("invalid TOML: {e}")))?;
        for (k, v) in table {
            self.set_value(&k, &Value::from_toml(v))?;
        }
        Ok(())
    }

    /// Read a TOML file of settings.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, Error> {
        let mut cfg = Config::default();
        cfg.merge_file(path)?;
        Ok(cfg)
    }

    /// Apply the settings of a TOML file over these.
    pub fn merge_file(&mut self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        self.merge_toml_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Apply environment variables: `QTASK_<NAME>` for every known setting,
    /// with `CELERY_<NAME>` as a fallback (`QTASK_BROKER_URL`,
    /// `CELERY_RESULT_BACKEND`, ...). An unknown `QTASK_<NAME>` is an error
    /// naming the closest setting (`QTASK_CONFIG`, `QTASK_LOG` and the test
    /// harness's `QTASK_TEST_*` are not settings); a `CELERY_<NAME>` that
    /// qtask does not know is logged as a warning (Python tools share them).
    pub fn merge_env(&mut self) -> Result<(), Error> {
        self.merge_vars(std::env::vars())
    }

    /// Like [`merge_env`](Self::merge_env) with explicit variables (tests).
    pub fn merge_vars(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), Error> {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        for (var, value) in &vars {
            let (qtask, rest) = match (var.strip_prefix("QTASK_"), var.strip_prefix("CELERY_")) {
                (Some(rest), _) => (true, rest),
                (None, Some(rest)) => (false, rest),
                (None, None) => continue,
            };
            if qtask && (NOT_SETTINGS.contains(&rest) || NOT_SETTINGS_PREFIXES.iter().any(|p| rest.starts_with(p))) {
                continue;
            }
            let name = rest.to_ascii_lowercase();
            if KNOWN_SETTINGS.contains(&name.as_str()) {
                if !qtask && vars.contains_key(&format!("QTASK_{rest}")) {
                    continue; // QTASK_<NAME> wins
                }
                self.set_value(&name, &Value::Str(value.clone())).map_err(|e| Error::Config(format!("{var}: {e}")))?;
            } else if CELERY_SETTINGS.contains(&name.as_str()) {
                self.note_unsupported(&name);
            } else if qtask {
                let hint = closest(&name, KNOWN_SETTINGS.iter().copied()).map(|s| s.to_ascii_uppercase());
                return Err(Error::Config(format!(
                    "unknown environment variable {var}{}",
                    did_you_mean(hint.map(|h| format!("QTASK_{h}")).as_deref())
                )));
            } else {
                tracing::warn!(variable = %var, "not a setting qtask knows: ignored");
            }
        }
        Ok(())
    }

    /// Defaults, then the settings file named by `QTASK_CONFIG` (when set),
    /// then the environment.
    pub fn from_env() -> Result<Config, Error> {
        Config::from_vars(std::env::vars())
    }

    /// Like [`from_env`](Self::from_env) with explicit variables (tests).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Config, Error> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let mut c = Config::default();
        if let Some((_, path)) = vars.iter().find(|(k, v)| k == "QTASK_CONFIG" && !v.is_empty()) {
            c.merge_file(path).map_err(|e| Error::Config(format!("QTASK_CONFIG: {e}")))?;
        }
        c.merge_vars(vars)?;
        Ok(c)
    }

    /// The queue for `task`: the first matching route, else `fallback`, else the default queue.
    pub fn route(&self, task: &str, fallback: Option<&str>) -> String {
        self.task_routes
            .iter()
            .find(|r| r.matches(task))
            .map(|r| r.queue.clone())
            .or_else(|| fallback.map(str::to_owned))
            .unwrap_or_else(|| self.task_default_queue.clone())
    }
}

#[cfg(test)]
mod tests;
