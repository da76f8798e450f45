//! The arguments: Celery's subcommands and flags, as clap types.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use qcore::Config;

/// Everything on the command line.
#[derive(Debug, Clone, Parser)]
#[command(
    about = "A distributed task queue speaking Celery's protocol",
    after_help = "Settings: the TOML file named by QTASK_CONFIG, then QTASK_<SETTING> / CELERY_<SETTING> variables; \
                  the flags win. With no URL anywhere, sqlite://qtask.db (in the working directory) for both."
)]
pub struct Args {
    /// Options of every command.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes (before or after the command's name).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Global {
    /// Broker URL (`broker_url`).
    #[arg(short = 'b', long, global = true, value_name = "URL")]
    pub broker: Option<String>,
    /// Result backend URL (`result_backend`).
    #[arg(long, visible_alias = "result-backend", global = true, value_name = "URL")]
    pub backend: Option<String>,
    /// Log lines as text (default) or one JSON object per line (`json`:
    /// with `task_id` and `task_name` fields on every task line).
    #[arg(long, global = true, value_enum, default_value = "text", value_name = "FORMAT")]
    pub log_format: LogFormat,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (and the worker's start-up banner).
    #[default]
    Text,
    /// One JSON object per line on stderr (no banner): `timestamp`, `level`,
    /// `target`, `message` and the line's fields at the top level.
    Json,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run a worker with this binary's tasks.
    Worker(WorkerArgs),
    /// Run the periodic task scheduler (the settings' `beat_schedule`).
    Beat(BeatArgs),
    /// Send a task by name; print its id (and its result with --wait).
    Call(CallArgs),
    /// Print a task's result (or its state when not ready).
    Result(ResultArgs),
    /// Delete the waiting messages of the queues.
    Purge(PurgeArgs),
    /// Show the workers that are online (a ping).
    Status(RemoteArgs),
    /// Show the versions and settings of this client.
    Report,
    /// Ask the workers (ping, stats, active, registered, ...).
    Inspect(InspectArgs),
    /// Tell the workers (revoke, rate_limit, add_consumer, shutdown, ...).
    Control(ControlArgs),
    /// Watch the events workers send (--dump: one JSON object per line).
    Events(EventsArgs),
    /// Serve the web monitor (Flower's API and pages, with stored history).
    #[cfg(feature = "monitor")]
    Monitor(MonitorArgs),
}

/// How much a worker logs (Celery's `-l` names, any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "lower")]
pub enum LogLevel {
    /// Everything.
    Debug,
    /// Start-up, tasks received and finished (the default).
    Info,
    /// Problems only.
    #[value(alias = "warn")]
    Warning,
    /// Errors only.
    Error,
    /// Errors only (Celery's CRITICAL).
    Critical,
    /// Errors only (Celery's FATAL).
    Fatal,
}

impl LogLevel {
    /// The `tracing` filter of this level.
    pub fn filter(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warn",
            LogLevel::Error | LogLevel::Critical | LogLevel::Fatal => "error",
        }
    }
}

/// The execution pool (Celery's `-P`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pool {
    /// One task at a time.
    Solo,
    /// `--concurrency` tasks at once (async tasks on the runtime, `fn` tasks on its blocking threads).
    Threads,
}

/// `worker`: Celery's flags, and the flags of `interop-worker`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WorkerArgs {
    /// Queues to consume, comma separated (default: `task_default_queue`).
    #[arg(short = 'Q', long, value_delimiter = ',', value_name = "QUEUES")]
    pub queues: Vec<String>,
    /// Tasks run at once (default: `worker_concurrency`).
    #[arg(short = 'c', long, value_parser = at_least_one)]
    pub concurrency: Option<usize>,
    /// Node name (`%h` host, `%n` name, `%d` domain; default `qtask@<host>`).
    #[arg(short = 'n', long)]
    pub hostname: Option<String>,
    /// Send task events (monitoring), as `worker_send_task_events`.
    #[arg(short = 'E', long = "task-events", visible_alias = "events")]
    pub task_events: bool,
    /// Messages reserved per concurrency slot (default: `worker_prefetch_multiplier`).
    #[arg(long)]
    pub prefetch_multiplier: Option<usize>,
    /// Acknowledge after the task ran (`task_acks_late`).
    #[arg(long)]
    pub acks_late: bool,
    /// Log level (default: the `QTASK_LOG` filter, else info).
    #[arg(short = 'l', long, value_enum, ignore_case = true)]
    pub loglevel: Option<LogLevel>,
    /// Execution pool.
    #[arg(short = 'P', long, value_enum)]
    pub pool: Option<Pool>,
    /// MAX,MIN: run at most MAX tasks at once (idle slots cost nothing, so the pool stays at MAX).
    #[arg(long, value_parser = autoscale, value_name = "MAX,MIN")]
    pub autoscale: Option<(usize, usize)>,
    /// Do not send worker heartbeat events.
    #[arg(long)]
    pub without_heartbeat: bool,
    /// Accepted for Celery's command lines: a qtask worker never synchronises with others at start.
    #[arg(long)]
    pub without_mingle: bool,
    /// Accepted for Celery's command lines: a qtask worker never gossips.
    #[arg(long)]
    pub without_gossip: bool,
    /// Tokio runtime threads: 1 runs the worker on a current-thread runtime (default: one per core).
    #[arg(long, value_parser = at_least_one)]
    pub threads: Option<usize>,
    /// Run a beat in this worker (Celery's `worker -B`), with the settings' `beat_schedule`.
    #[arg(short = 'B', long)]
    pub beat: bool,
    /// A settings file whose `beat_schedule` adds to (or overrides) the settings' one (needs -B).
    #[arg(long, value_name = "FILE", requires = "beat")]
    pub schedule: Option<std::path::PathBuf>,
    /// Serve `/metrics` (Prometheus text), `/healthz` and `/readyz` on HOST:PORT (default: off).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
}

/// `beat`: send the tasks of `beat_schedule` when they are due.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BeatArgs {
    /// A settings file whose `beat_schedule` adds to (or overrides) the settings' one.
    #[arg(long, value_name = "FILE")]
    pub schedule: Option<std::path::PathBuf>,
    /// Where the entries live: `django` reads django-celery-beat's tables in --db (Celery's
    /// `django_celery_beat.schedulers:DatabaseScheduler` is accepted too); default: the settings.
    #[arg(short = 'S', long, value_name = "SCHEDULER")]
    pub scheduler: Option<String>,
    /// The Django database of `--scheduler django` (`postgres://…`, `sqlite://path`).
    #[arg(long, value_name = "URL")]
    pub db: Option<String>,
    /// Run as one of several replicas: send only while holding the leader lease at this URL
    /// (`redis://…` or `postgres://…`).
    #[arg(long, value_name = "URL")]
    pub lock: Option<String>,
    /// Node name of the beat (default `celerybeat@<host>`).
    #[arg(short = 'n', long)]
    pub hostname: Option<String>,
    /// Log level (default: the `QTASK_LOG` filter, else info).
    #[arg(short = 'l', long, value_enum, ignore_case = true)]
    pub loglevel: Option<LogLevel>,
}

impl WorkerArgs {
    /// Flags that contradict each other.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.pool == Some(Pool::Solo) {
            if let Some(c) = self.concurrency.filter(|c| *c > 1) {
                return Err(format!("--pool solo runs one task at a time, not --concurrency {c}: use --pool threads"));
            }
            if self.autoscale.is_some() {
                return Err("--pool solo runs one task at a time: --autoscale needs --pool threads".into());
            }
        }
        Ok(())
    }

    /// Tasks run at once: solo → 1, else `--autoscale` MAX, else `-c`.
    pub fn slots(&self) -> Option<usize> {
        match (self.pool, self.autoscale) {
            (Some(Pool::Solo), _) => Some(1),
            (_, Some((max, _))) => Some(max),
            _ => self.concurrency,
        }
    }

    /// The settings the flags set.
    pub(crate) fn apply(&self, cfg: &mut Config) {
        if self.acks_late {
            cfg.task_acks_late = true;
        }
        if self.task_events {
            cfg.worker_send_task_events = true;
        }
    }
}

/// `call NAME`.
#[derive(Debug, Clone, clap::Args)]
pub struct CallArgs {
    /// Task name.
    pub name: String,
    /// Positional arguments, a JSON list.
    #[arg(short = 'a', long, value_name = "JSON")]
    pub args: Option<String>,
    /// Keyword arguments, a JSON object.
    #[arg(short = 'k', long, value_name = "JSON")]
    pub kwargs: Option<String>,
    /// Queue (default: the app's routing).
    #[arg(short = 'Q', long)]
    pub queue: Option<String>,
    /// Run no sooner than SECS from now.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub countdown: Option<Duration>,
    /// Expire (REVOKED, not run) SECS from now.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub expires: Option<Duration>,
    /// Wait up to SECS for the result and print it.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub wait: Option<Duration>,
}

/// `result ID`.
#[derive(Debug, Clone, clap::Args)]
pub struct ResultArgs {
    /// Task id.
    pub id: String,
}

/// `purge`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PurgeArgs {
    /// Only these queues, comma separated (no confirmation asked; default: every queue the app knows).
    #[arg(short = 'Q', long = "queues", visible_alias = "queue", value_delimiter = ',', value_name = "QUEUES")]
    pub queues: Vec<String>,
    /// Not these queues, comma separated.
    #[arg(short = 'X', long = "exclude-queues", value_delimiter = ',', value_name = "QUEUES")]
    pub exclude_queues: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// Options of the remote-control commands.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// Seconds to wait for replies.
    #[arg(short = 't', long, default_value = "1.0", value_parser = seconds, value_name = "SECS")]
    pub timeout: Duration,
    /// Only these nodes, comma separated.
    #[arg(short = 'd', long, value_delimiter = ',', value_name = "NODES")]
    pub destination: Vec<String>,
    /// Print the replies as JSON.
    #[arg(short = 'j', long)]
    pub json: bool,
}

/// `inspect COMMAND [ARGS...]`.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// ping, stats, active, reserved, scheduled, registered, active_queues, revoked, conf, query_task, report, clock.
    pub method: String,
    /// The command's arguments (Celery's order).
    pub arguments: Vec<String>,
    /// Replies, nodes, output.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `control COMMAND [ARGS...]`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// revoke, terminate, rate_limit, time_limit, add_consumer, cancel_consumer, shutdown, pool_grow,
    /// pool_shrink, autoscale, enable_events, disable_events, heartbeat.
    pub method: String,
    /// The command's arguments (Celery's order).
    pub arguments: Vec<String>,
    /// Replies, nodes, output.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `events`.
#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Print every event as one JSON object per line.
    #[arg(short = 'd', long)]
    pub dump: bool,
    /// Redraw the live view every SECS.
    #[arg(short = 'F', long, default_value = "1.0", value_parser = seconds, value_name = "SECS")]
    pub freq: Duration,
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("must be a whole number, got {s:?}")),
    }
}

fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1e12).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("must be a non-negative number of seconds, got {s:?}")),
    }
}

fn autoscale(s: &str) -> Result<(usize, usize), String> {
    let (max, min) = s.split_once(',').unwrap_or((s, "0"));
    let number = |v: &str| v.trim().parse::<usize>().map_err(|_| format!("MAX,MIN must be whole numbers, got {s:?}"));
    let (max, min) = (number(max)?, number(min)?);
    if max == 0 || min > max {
        return Err(format!("MAX must be at least 1 and MIN at most MAX, got {s:?}"));
    }
    Ok((max, min))
}

/// `monitor`: the web monitor's options (Flower's, spelled with dashes).
#[cfg(feature = "monitor")]
#[derive(Debug, Clone, clap::Args)]
pub struct MonitorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1", value_name = "A")]
    pub address: std::net::IpAddr,
    /// Port to listen on.
    #[arg(long, default_value_t = 5555, value_name = "P")]
    pub port: u16,
    /// A user allowed in, `user:pass` (repeat the flag, or separate users with commas); the
    /// QMONITOR_BASIC_AUTH variable adds users the same way.
    #[arg(long = "basic-auth", value_name = "U:P")]
    pub basic_auth: Vec<String>,
    /// A bearer token accepted by the API (repeatable); the QMONITOR_API_TOKEN variable adds one.
    #[arg(long = "api-token", value_name = "TOKEN")]
    pub api_token: Vec<String>,
    /// The history: a SQLite file (`path` or `sqlite://path`).
    #[arg(long, default_value = "qtask-monitor.db", value_name = "URL")]
    pub db: String,
    /// Serve under this path (behind a reverse proxy), e.g. `/monitor`.
    #[arg(long = "url-prefix", default_value = "", value_name = "P")]
    pub url_prefix: String,
    /// Refuse every action (revoke, send, worker control).
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Allow serving without auth on an address other than loopback.
    #[arg(long = "unsafe-no-auth")]
    pub unsafe_no_auth: bool,
    /// Keep at most this many tasks (the oldest go first).
    #[arg(long = "max-tasks", value_name = "N")]
    pub max_tasks: Option<u64>,
    /// Forget tasks whose last event is older than SECS.
    #[arg(long = "max-age", value_parser = seconds, value_name = "SECS")]
    pub max_age: Option<Duration>,
    /// How long to wait for workers' answers to inspect.
    #[arg(long = "inspect-timeout", default_value = "1.0", value_parser = seconds, value_name = "SECS")]
    pub inspect_timeout: Duration,
}
