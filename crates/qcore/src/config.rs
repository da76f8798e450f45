//! Configuration with Celery's setting names, from a TOML file and the
//! environment (`QTASK_<NAME>`, then `CELERY_<NAME>` as a fallback).
//!
//! ```toml
//! broker_url = "redis://127.0.0.1:6379/0"
//! result_backend = "redis://127.0.0.1:6379/0"
//! task_acks_late = true
//! worker_prefetch_multiplier = 1
//! result_expires = 3600          # seconds
//! task_routes = { "emails.*" = "mail", "reports.build" = { queue = "slow" } }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Error;
use crate::message::ContentType;
use crate::task::RateLimit;

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

fn parse_broker_ssl(v: &toml::Value) -> Result<Option<BrokerSsl>, Error> {
    const KEY: &str = "broker_use_ssl";
    let table = match v {
        toml::Value::Table(t) => t.clone(),
        toml::Value::String(s) if s.contains('=') => {
            // From the environment: `ca_certs=/a.pem,certfile=/c.pem,keyfile=/k.pem`.
            let mut t = toml::Table::new();
            for part in s.split(',').filter(|p| !p.trim().is_empty()) {
                let (k, v) =
                    part.split_once('=').ok_or_else(|| cfg_err(KEY, format!("expected key=value, got {part:?}")))?;
                t.insert(k.trim().to_string(), toml::Value::String(v.trim().to_string()));
            }
            t
        }
        other => return Ok(as_bool(KEY, other)?.then(BrokerSsl::default)),
    };
    let mut ssl = BrokerSsl::default();
    for (k, v) in &table {
        let path = || -> Result<Option<PathBuf>, Error> {
            match v {
                toml::Value::String(s) if !s.trim().is_empty() => Ok(Some(PathBuf::from(s.trim()))),
                other => Err(cfg_err(KEY, format!("{k}: expected a file path, got {other:?}"))),
            }
        };
        match k.as_str() {
            "ca_certs" => ssl.ca_certs = path()?,
            "certfile" => ssl.certfile = path()?,
            "keyfile" => ssl.keyfile = path()?,
            "cert_reqs" => {
                let level = match v {
                    toml::Value::Integer(i) => *i,
                    toml::Value::String(s) => match s.trim().to_ascii_uppercase().trim_start_matches("SSL.") {
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
    /// Result backend URL; `None` stores no results.
    pub result_backend: Option<String>,
    /// Queue for tasks with no route (Celery: `celery`).
    pub task_default_queue: String,
    /// Body serializer for sent tasks.
    pub task_serializer: ContentType,
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
    /// Store STARTED when a task starts.
    pub task_track_started: bool,
    /// Store name, args, kwargs, worker, retries, queue with results.
    pub result_extended: bool,
    /// Routing rules, first match wins.
    pub task_routes: Vec<Route>,
    /// Default hard time limit.
    pub task_time_limit: Option<Duration>,
    /// Default soft time limit.
    pub task_soft_time_limit: Option<Duration>,
    /// Default per-task rate limit.
    pub task_default_rate_limit: Option<RateLimit>,
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
    /// Redis/SQL: age after which an unacked delivery is given to another worker.
    pub visibility_timeout: Option<Duration>,
    /// Deliveries after which a message is dead-lettered as poison.
    pub max_deliveries: Option<u32>,
    /// Settings qtask does not know, kept for adapters (`broker_transport_options`...).
    pub extra: BTreeMap<String, toml::Value>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            broker_url: None,
            broker_use_ssl: None,
            result_backend: None,
            task_default_queue: "celery".into(),
            task_serializer: ContentType::Json,
            result_expires: Duration::from_secs(86_400),
            task_acks_late: false,
            task_acks_on_failure_or_timeout: true,
            worker_prefetch_multiplier: 4,
            worker_concurrency: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            task_track_started: false,
            result_extended: false,
            task_routes: Vec::new(),
            task_time_limit: None,
            task_soft_time_limit: None,
            task_default_rate_limit: None,
            task_ignore_result: false,
            task_always_eager: false,
            worker_send_task_events: false,
            task_send_sent_event: false,
            worker_hostname: None,
            worker_shutdown_timeout: Duration::from_secs(30),
            visibility_timeout: None,
            max_deliveries: None,
            extra: BTreeMap::new(),
        }
    }
}

/// The setting names [`Config::set`] understands.
pub const KNOWN_SETTINGS: &[&str] = &[
    "broker_url",
    "broker_use_ssl",
    "result_backend",
    "task_default_queue",
    "task_serializer",
    "result_expires",
    "task_acks_late",
    "task_acks_on_failure_or_timeout",
    "worker_prefetch_multiplier",
    "worker_concurrency",
    "task_track_started",
    "result_extended",
    "task_routes",
    "task_time_limit",
    "task_soft_time_limit",
    "task_default_rate_limit",
    "task_ignore_result",
    "task_always_eager",
    "worker_send_task_events",
    "task_send_sent_event",
    "worker_hostname",
    "worker_shutdown_timeout",
    "visibility_timeout",
    "max_deliveries",
    // Kept in `extra` for the AMQP adapter (`x-max-priority` of task queues).
    "task_queue_max_priority",
];

fn cfg_err(key: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("{key}: {msg}"))
}

fn as_bool(key: &str, v: &toml::Value) -> Result<bool, Error> {
    match v {
        toml::Value::Boolean(b) => Ok(*b),
        toml::Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(cfg_err(key, format!("expected true/false, got {s:?}"))),
        },
        toml::Value::Integer(i) => Ok(*i != 0),
        other => Err(cfg_err(key, format!("expected a boolean, got {other:?}"))),
    }
}

fn as_f64(key: &str, v: &toml::Value) -> Result<f64, Error> {
    let f = match v {
        toml::Value::Integer(i) => *i as f64,
        toml::Value::Float(f) => *f,
        toml::Value::String(s) => {
            s.trim().parse().map_err(|_| cfg_err(key, format!("expected a number, got {s:?}")))?
        }
        other => return Err(cfg_err(key, format!("expected a number, got {other:?}"))),
    };
    if !f.is_finite() || f < 0.0 {
        return Err(cfg_err(key, format!("expected a non-negative number, got {f}")));
    }
    Ok(f)
}

fn as_usize(key: &str, v: &toml::Value) -> Result<usize, Error> {
    let f = as_f64(key, v)?;
    if f.fract() != 0.0 || f > u32::MAX as f64 {
        return Err(cfg_err(key, format!("expected a whole number, got {f}")));
    }
    Ok(f as usize)
}

fn as_secs(key: &str, v: &toml::Value) -> Result<Duration, Error> {
    Ok(Duration::from_secs_f64(as_f64(key, v)?))
}

fn as_opt_secs(key: &str, v: &toml::Value) -> Result<Option<Duration>, Error> {
    match v {
        toml::Value::String(s) if s.is_empty() || s.eq_ignore_ascii_case("none") => Ok(None),
        _ => as_secs(key, v).map(|d| if d.is_zero() { None } else { Some(d) }),
    }
}

fn as_string(key: &str, v: &toml::Value) -> Result<String, Error> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        other => Err(cfg_err(key, format!("expected a string, got {other:?}"))),
    }
}

fn parse_routes(v: &toml::Value) -> Result<Vec<Route>, Error> {
    let table = match v {
        toml::Value::Table(t) => t.clone(),
        toml::Value::String(s) => {
            // From the environment: `pattern=queue,pattern2=queue2`.
            let mut t = toml::Table::new();
            for part in s.split(',').filter(|p| !p.trim().is_empty()) {
                let (p, q) = part
                    .split_once('=')
                    .ok_or_else(|| cfg_err("task_routes", format!("expected pattern=queue, got {part:?}")))?;
                t.insert(p.trim().to_string(), toml::Value::String(q.trim().to_string()));
            }
            t
        }
        other => return Err(cfg_err("task_routes", format!("expected a table, got {other:?}"))),
    };
    table
        .into_iter()
        .map(|(pattern, target)| {
            let queue = match &target {
                toml::Value::String(q) => q.clone(),
                toml::Value::Table(t) => t
                    .get("queue")
                    .and_then(toml::Value::as_str)
                    .ok_or_else(|| cfg_err("task_routes", format!("route {pattern:?} has no queue")))?
                    .to_string(),
                other => {
                    return Err(cfg_err("task_routes", format!("route {pattern:?}: expected a queue, got {other:?}")))
                }
            };
            Ok(Route { pattern, queue })
        })
        .collect()
}

impl Config {
    /// Set one setting by its Celery name. Unknown names are kept in `extra`.
    pub fn set(&mut self, key: &str, v: &toml::Value) -> Result<(), Error> {
        match key {
            "broker_url" => self.broker_url = Some(as_string(key, v)?),
            "broker_use_ssl" => self.broker_use_ssl = parse_broker_ssl(v)?,
            "result_backend" => self.result_backend = Some(as_string(key, v)?).filter(|s| !s.is_empty()),
            "task_default_queue" => self.task_default_queue = as_string(key, v)?,
            "task_serializer" => {
                self.task_serializer = ContentType::from_mime(&as_string(key, v)?).map_err(|e| cfg_err(key, e))?
            }
            "result_expires" => self.result_expires = as_secs(key, v)?,
            "task_acks_late" => self.task_acks_late = as_bool(key, v)?,
            "task_acks_on_failure_or_timeout" => self.task_acks_on_failure_or_timeout = as_bool(key, v)?,
            "worker_prefetch_multiplier" => self.worker_prefetch_multiplier = as_usize(key, v)?,
            "worker_concurrency" => {
                let n = as_usize(key, v)?;
                if n == 0 {
                    return Err(cfg_err(key, "must be at least 1"));
                }
                self.worker_concurrency = n;
            }
            "task_track_started" => self.task_track_started = as_bool(key, v)?,
            "result_extended" => self.result_extended = as_bool(key, v)?,
            "task_routes" => self.task_routes = parse_routes(v)?,
            "task_time_limit" => self.task_time_limit = as_opt_secs(key, v)?,
            "task_soft_time_limit" => self.task_soft_time_limit = as_opt_secs(key, v)?,
            "task_default_rate_limit" => {
                let s = match v {
                    toml::Value::Integer(i) => i.to_string(),
                    other => as_string(key, other)?,
                };
                self.task_default_rate_limit = RateLimit::parse(&s).map_err(|e| cfg_err(key, e))?;
            }
            "task_ignore_result" => self.task_ignore_result = as_bool(key, v)?,
            "task_always_eager" => self.task_always_eager = as_bool(key, v)?,
            "worker_send_task_events" => self.worker_send_task_events = as_bool(key, v)?,
            "task_send_sent_event" => self.task_send_sent_event = as_bool(key, v)?,
            "worker_hostname" => self.worker_hostname = Some(as_string(key, v)?),
            "worker_shutdown_timeout" => self.worker_shutdown_timeout = as_secs(key, v)?,
            "visibility_timeout" => self.visibility_timeout = as_opt_secs(key, v)?,
            "max_deliveries" => self.max_deliveries = Some(as_usize(key, v)? as u32).filter(|n| *n > 0),
            other => {
                tracing::debug!(setting = other, "setting not known to qtask core, kept for adapters");
                self.extra.insert(other.to_string(), v.clone());
            }
        }
        Ok(())
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
        for (k, v) in &table {
            self.set(k, v)?;
        }
        Ok(())
    }

    /// Read a TOML file of settings.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, Error> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Config::from_toml_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Apply environment variables: `QTASK_<NAME>` for every known setting,
    /// with `CELERY_<NAME>` as a fallback (`QTASK_BROKER_URL`,
    /// `CELERY_RESULT_BACKEND`, ...).
    pub fn merge_env(&mut self) -> Result<(), Error> {
        self.merge_vars(std::env::vars())
    }

    /// Like [`merge_env`](Self::merge_env) with explicit variables (tests).
    pub fn merge_vars(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), Error> {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        for name in KNOWN_SETTINGS {
            let upper = name.to_ascii_uppercase();
            let value = vars.get(&format!("QTASK_{upper}")).or_else(|| vars.get(&format!("CELERY_{upper}")));
            if let Some(v) = value {
                self.set(name, &toml::Value::String(v.clone()))?;
            }
        }
        Ok(())
    }

    /// Defaults, then the environment.
    pub fn from_env() -> Result<Config, Error> {
        let mut c = Config::default();
        c.merge_env()?;
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
mod tests {
    use super::*;

    #[test]
    fn toml_and_env_with_celery_names() {
        let mut c = Config::from_toml_str(
            r#"
            broker_url = "redis://localhost/1"
            task_acks_late = true
            worker_prefetch_multiplier = 1
            result_expires = 3600
            task_default_rate_limit = "10/m"
            task_routes = { "mail.*" = "emails", "reports.build" = { queue = "slow" } }
            broker_transport_options = { visibility_timeout = 60 }
            "#,
        )
        .unwrap();
        assert_eq!(c.broker_url.as_deref(), Some("redis://localhost/1"));
        assert!(c.task_acks_late);
        assert_eq!(c.worker_prefetch_multiplier, 1);
        assert_eq!(c.result_expires, Duration::from_secs(3600));
        assert_eq!(c.task_default_rate_limit, Some(RateLimit { count: 10, per: Duration::from_secs(60) }));
        assert_eq!(c.route("mail.send", None), "emails");
        assert_eq!(c.route("reports.build", None), "slow");
        assert_eq!(c.route("other", Some("q")), "q");
        assert_eq!(c.route("other", None), "celery");
        assert!(c.extra.contains_key("broker_transport_options"));

        c.merge_vars([
            ("CELERY_BROKER_URL".to_string(), "amqp://x".to_string()),
            ("QTASK_RESULT_BACKEND".to_string(), "redis://y".to_string()),
            ("CELERY_RESULT_BACKEND".to_string(), "ignored://".to_string()),
            ("QTASK_TASK_ACKS_LATE".to_string(), "false".to_string()),
        ])
        .unwrap();
        assert_eq!(c.broker_url.as_deref(), Some("amqp://x"));
        assert_eq!(c.result_backend.as_deref(), Some("redis://y"));
        assert!(!c.task_acks_late);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let e = Config::from_toml_str("worker_concurrency = 0").unwrap_err().to_string();
        assert!(e.contains("worker_concurrency"), "{e}");
        let e = Config::from_toml_str("task_acks_late = \"maybe\"").unwrap_err().to_string();
        assert!(e.contains("task_acks_late"), "{e}");
        let e = Config::from_toml_str("task_default_rate_limit = \"10/fortnight\"").unwrap_err().to_string();
        assert!(e.contains("rate limit"), "{e}");
        assert!(Config::from_toml_str("not toml [").is_err());
    }

    #[test]
    fn the_deploy_example_settings_parse() {
        let c = Config::from_toml_str(include_str!("../../../deploy/qtask.toml")).unwrap();
        assert!(c.task_acks_late);
        assert_eq!(c.worker_shutdown_timeout, Duration::from_secs(60));
        assert_eq!(c.route("emails.welcome", None), "mail");
        assert_eq!(c.route("reports.build", None), "slow");
    }

    #[test]
    fn broker_use_ssl_from_toml_and_env() {
        let c = Config::from_toml_str(
            r#"broker_use_ssl = { ca_certs = "/etc/q/ca.pem", certfile = "/etc/q/c.pem", keyfile = "/etc/q/c.key", cert_reqs = "CERT_REQUIRED" }"#,
        )
        .unwrap();
        let ssl = c.broker_use_ssl.unwrap();
        assert_eq!(ssl.ca_certs.as_deref(), Some(Path::new("/etc/q/ca.pem")));
        assert_eq!(ssl.certfile.as_deref(), Some(Path::new("/etc/q/c.pem")));
        assert_eq!(ssl.keyfile.as_deref(), Some(Path::new("/etc/q/c.key")));
        assert_eq!(Config::from_toml_str("broker_use_ssl = true").unwrap().broker_use_ssl, Some(BrokerSsl::default()));
        assert_eq!(Config::from_toml_str("broker_use_ssl = false").unwrap().broker_use_ssl, None);
        assert_eq!(Config::default().broker_use_ssl, None);
        let c = Config::from_toml_str("broker_use_ssl = { cert_reqs = 2 }").unwrap();
        assert_eq!(c.broker_use_ssl, Some(BrokerSsl::default()));

        let mut c = Config::default();
        c.merge_vars([(
            "CELERY_BROKER_USE_SSL".to_string(),
            "ca_certs=/a.pem, cert_reqs=ssl.CERT_REQUIRED".to_string(),
        )])
        .unwrap();
        assert_eq!(c.broker_use_ssl.and_then(|s| s.ca_certs), Some(PathBuf::from("/a.pem")));
        let mut c = Config::default();
        c.merge_vars([("QTASK_BROKER_USE_SSL".to_string(), "yes".to_string())]).unwrap();
        assert_eq!(c.broker_use_ssl, Some(BrokerSsl::default()));

        for bad in [
            "broker_use_ssl = { cert_reqs = \"CERT_NONE\" }",
            "broker_use_ssl = { cert_reqs = 0 }",
            "broker_use_ssl = { ca_cert = \"/typo.pem\" }",
            "broker_use_ssl = { ca_certs = \"\" }",
            "broker_use_ssl = { ca_certs = 1 }",
            "broker_use_ssl = { keyfile = \"/k.pem\" }",
            "broker_use_ssl = \"maybe\"",
            "broker_use_ssl = [1]",
        ] {
            let e = Config::from_toml_str(bad).unwrap_err().to_string();
            assert!(e.contains("broker_use_ssl"), "{bad}: {e}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("a.*", "a.b.c"));
        assert!(glob_match("*.send", "mail.send"));
        assert!(!glob_match("a.*", "b.c"));
        assert!(glob_match("exact", "exact"));
    }
}
