//! The command line as a library: Celery's `celery -A proj <command>` for a
//! binary whose tasks are compiled in.
//!
//! A Python project names its app module (`-A proj`); a Rust project's tasks
//! live in its own binary, so that binary's `main` hands its tasks to
//! [`run`] and gets Celery's subcommands with Celery's flags:
//!
//! ```no_run
//! use qtask::task;
//!
//! #[task(name = "tasks.add")]
//! async fn add(x: i64, y: i64) -> i64 {
//!     x + y
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     qtask::cli::run(|app| {
//!         app.register(add);
//!     })
//! }
//! ```
//!
//! `proj worker -Q hipri -c 8 -l info`, `proj inspect ping`,
//! `proj events --dump`, `proj call tasks.add -a '[2, 3]' --wait 10`... The
//! tasks are registered by a function rather than passed as a built
//! [`App`]: the app's broker and backend come from the command line
//! (`-b/--broker`, `--backend`) and the settings (`QTASK_CONFIG`,
//! `QTASK_*`/`CELERY_*`), which are read only once the arguments are parsed.
//! The standalone `qtask` binary is [`Cli::new`] without tasks: every
//! command but `worker`.
//!
//! The tokio runtime is built here, after parsing: `worker --threads 1` runs
//! on a current-thread runtime, `--threads N` on N threads, and the default
//! is one thread per core; the client commands use two threads. Logs go to
//! stderr through `tracing-subscriber` (`-l/--loglevel`, else the `QTASK_LOG`
//! filter, else `info` for a worker and `warn` otherwise; `--log-format
//! json` for one JSON object per line) unless the binary installed a
//! subscriber of its own. `worker --metrics-addr HOST:PORT` serves
//! `/metrics` (Prometheus text), `/healthz` and `/readyz`.
//!
//! Exit codes: 0 done, 1 a task failed (`call --wait`, `result`), 2 a usage,
//! configuration or connection error, 69 no worker replied (`inspect`,
//! `control`, `status`; Celery's `EX_UNAVAILABLE`).

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use qcore::{App, Config, Error};

mod args;
mod client;
mod events;
#[cfg(feature = "worker")]
mod metrics;
#[cfg(feature = "monitor")]
mod monitor;
mod remote;
#[cfg(feature = "worker")]
mod worker;

#[cfg(feature = "monitor")]
pub use args::MonitorArgs;
pub use args::{
    Args, BeatArgs, CallArgs, Command, EventsArgs, Global, LogFormat, LogLevel, Pool, PurgeArgs, ResultArgs, WorkerArgs,
};

/// Registers the binary's tasks on the app the command line builds.
type Register = Box<dyn Fn(&App) + Send + Sync>;

/// A command line: the binary's name, its tasks and its defaults. [`run`] is
/// the short form for a binary with tasks.
pub struct Cli {
    name: String,
    register: Option<Register>,
    default_command: Option<String>,
    urls_from_flags_only: bool,
    task_log: bool,
}

impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli")
            .field("name", &self.name)
            .field("tasks", &self.register.is_some())
            .field("default_command", &self.default_command)
            .field("urls_from_flags_only", &self.urls_from_flags_only)
            .field("task_log", &self.task_log)
            .finish()
    }
}

/// Run the command line of a binary whose tasks `register` adds to the app:
/// [`Cli::new`] named after the executable, with those tasks, on the
/// process's arguments.
pub fn run(register: impl Fn(&App) + Send + Sync + 'static) -> ExitCode {
    let name = std::env::args_os()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "qtask".into());
    Cli::new(name).tasks(register).run()
}

impl Cli {
    /// A command line named `name` (in usage and help), without tasks: it
    /// offers every command but `worker`.
    pub fn new(name: impl Into<String>) -> Self {
        Cli { name: name.into(), register: None, default_command: None, urls_from_flags_only: false, task_log: true }
    }

    /// The binary's tasks: `register` is called on the app before any
    /// command runs, and `worker` runs them.
    pub fn tasks(mut self, register: impl Fn(&App) + Send + Sync + 'static) -> Self {
        self.register = Some(Box::new(register));
        self
    }

    /// The command run when the arguments name none (`interop-worker
    /// --broker URL` runs `worker`): the arguments are then that command's.
    pub fn default_command(mut self, command: impl Into<String>) -> Self {
        self.default_command = Some(command.into());
        self
    }

    /// Take the broker and backend URLs from `--broker`/`--backend` only,
    /// never from the settings file or the environment: `--broker` becomes
    /// required and without `--backend` no result is stored. For test and
    /// benchmark binaries that must not pick up a machine's configuration.
    pub fn urls_from_flags_only(mut self, yes: bool) -> Self {
        self.urls_from_flags_only = yes;
        self
    }

    /// Whether `worker` logs a line per task received and finished (on by
    /// default, at info level with the target `qtask::worker::task`, as
    /// Celery's worker does). A benchmark binary turns them off so that it
    /// measures the worker rather than its log.
    pub fn task_log(mut self, yes: bool) -> Self {
        self.task_log = yes;
        self
    }

    /// Parse the process's arguments and run the command.
    pub fn run(self) -> ExitCode {
        self.run_from(std::env::args_os())
    }

    /// Parse `argv` (the program name first) and run the command.
    pub fn run_from<I, T>(self, argv: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args = match self.parse(argv) {
            Ok(a) => a,
            Err(e) => {
                let _ = e.print();
                return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
            }
        };
        init_logging(&args);
        let rt = match runtime(&args) {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                return ExitCode::from(2);
            }
        };
        match rt.block_on(self.execute(args)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        }
    }

    /// The clap command of this binary (its name; `worker` hidden without tasks).
    fn command(&self) -> clap::Command {
        let cmd = Args::command().bin_name(self.name.clone());
        if self.register.is_some() {
            cmd
        } else {
            cmd.mut_subcommand("worker", |w| w.hide(true))
        }
    }

    /// Parse `argv` into [`Args`], inserting the default command when the
    /// first argument names no command.
    pub fn parse<I, T>(&self, argv: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let mut argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        let cmd = self.command();
        if let Some(default) = &self.default_command {
            let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
            let first = argv.get(1).map(|a| a.to_string_lossy().into_owned());
            let named = match first.as_deref() {
                Some(a) => names.iter().any(|n| n == a) || matches!(a, "help" | "-h" | "--help" | "-V" | "--version"),
                None => false,
            };
            if !named {
                argv.insert(1.min(argv.len()), default.into());
            }
        }
        let mut cmd = cmd;
        let matches = cmd.try_get_matches_from_mut(argv)?;
        let args = Args::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))?;
        if self.urls_from_flags_only && args.global.broker.is_none() {
            return Err(cmd.error(clap::error::ErrorKind::MissingRequiredArgument, "--broker URL is required"));
        }
        if let Command::Worker(w) = &args.command {
            if let Err(msg) = w.check() {
                return Err(cmd.error(clap::error::ErrorKind::ArgumentConflict, msg));
            }
        }
        Ok(args)
    }

    /// The settings: `QTASK_CONFIG`, the environment, then the flags.
    fn config(&self, args: &Args) -> Result<Config, Error> {
        let mut cfg = Config::from_env()?;
        if self.urls_from_flags_only {
            cfg.broker_url = None;
            cfg.result_backend = None;
        }
        if let Some(b) = &args.global.broker {
            cfg.broker_url = Some(b.clone());
        }
        if let Some(b) = &args.global.backend {
            cfg.result_backend = Some(b.clone());
        }
        Ok(cfg)
    }

    async fn app(&self, cfg: Config) -> Result<App, Error> {
        let app = crate::app_from_config(cfg).await?;
        if let Some(register) = &self.register {
            register(&app);
        }
        Ok(app)
    }

    async fn execute(self, args: Args) -> anyhow::Result<ExitCode> {
        let mut cfg = self.config(&args)?;
        match &args.command {
            Command::Worker(w) => {
                if self.register.is_none() {
                    anyhow::bail!(
                        "`{} worker` has no tasks to run: a worker runs in the binary that holds the tasks \
                         (its main calls qtask::cli::run)",
                        self.name
                    );
                }
                w.apply(&mut cfg);
                #[cfg(feature = "worker")]
                {
                    let app = self.app(cfg).await?;
                    worker::run(app, w, self.task_log, args.global.log_format).await
                }
                #[cfg(not(feature = "worker"))]
                {
                    let _ = cfg;
                    anyhow::bail!("this build of qtask has no worker (cargo feature `worker`)")
                }
            }
            Command::Beat(b) => beat(self.app(cfg).await?, b).await,
            Command::Call(c) => client::call(&self.app(cfg).await?, c).await,
            Command::Result(r) => client::result(&self.app(cfg).await?, r).await,
            Command::Purge(p) => client::purge(&self.app(cfg).await?, p).await,
            Command::Report => client::report(&self.app(cfg).await?),
            Command::Status(r) => remote::status(&self.app(cfg).await?, r).await,
            Command::Inspect(i) => remote::inspect(&self.app(cfg).await?, i).await,
            Command::Control(c) => remote::control(&self.app(cfg).await?, c).await,
            Command::Events(e) => events::run(&self.app(cfg).await?, e).await,
            #[cfg(feature = "monitor")]
            Command::Monitor(m) => monitor::run(self.app(cfg).await?, m).await,
        }
    }
}

/// `beat`: run the schedule until SIGTERM or SIGINT.
async fn beat(app: App, b: &BeatArgs) -> anyhow::Result<ExitCode> {
    #[cfg(feature = "beat")]
    {
        let mut builder = crate::beat::Beat::builder(app.clone());
        match b.scheduler.as_deref().map(str::trim) {
            None | Some("" | "default" | "memory") => {
                if b.db.is_some() {
                    anyhow::bail!("--db is the database of --scheduler django");
                }
                let entries = crate::beat::entries_from_config(app.config(), b.schedule.as_deref())?;
                if entries.is_empty() {
                    tracing::warn!("beat: the schedule is empty (no beat_schedule entries)");
                }
                builder = builder.schedule(entries);
            }
            Some(
                "django"
                | "django_celery_beat.schedulers:DatabaseScheduler"
                | "django_celery_beat.schedulers.DatabaseScheduler",
            ) => {
                let Some(url) = b.db.as_deref() else {
                    anyhow::bail!(
                        "--scheduler django needs --db URL (the Django database: postgres://… or sqlite://path)"
                    )
                };
                builder = builder.store(django_store(url).await?);
                if b.schedule.is_some() || app.config().beat_schedule.is_some() {
                    tracing::warn!(
                        "beat: --scheduler django runs the entries of Django's tables; beat_schedule is not used"
                    );
                }
            }
            Some(other) => anyhow::bail!("unknown --scheduler {other:?}: expected django (or none, for beat_schedule)"),
        }
        // Celery's beat node name; it answers remote-control ping.
        let node = b.hostname.clone().unwrap_or_else(|| format!("celerybeat@{}", qcore::hostname()));
        if let Some(url) = b.lock.as_deref() {
            builder = builder.lease(lease(url, &format!("{node}/{}", std::process::id())).await?);
        }
        builder = builder.remote_control(node);
        crate::beat::run_until_signal(builder).await?;
        Ok(ExitCode::SUCCESS)
    }
    #[cfg(not(feature = "beat"))]
    {
        let _ = (app, b);
        anyhow::bail!("this build of qtask has no beat (cargo feature `beat`)")
    }
}

#[cfg(all(feature = "beat", any(feature = "sqlite", feature = "postgres")))]
async fn django_store(url: &str) -> anyhow::Result<std::sync::Arc<dyn crate::beat::Store>> {
    Ok(std::sync::Arc::new(crate::beat::DjangoStore::connect(url).await?))
}

#[cfg(all(feature = "beat", not(any(feature = "sqlite", feature = "postgres"))))]
async fn django_store(_url: &str) -> anyhow::Result<std::sync::Arc<dyn crate::beat::Store>> {
    anyhow::bail!("this build of qtask has no SQL (cargo features `sqlite`, `postgres`): no --scheduler django")
}

/// The lease of `--lock URL`: Redis or PostgreSQL, by the URL's scheme.
#[cfg(feature = "beat")]
async fn lease(url: &str, owner: &str) -> anyhow::Result<std::sync::Arc<dyn crate::beat::Lease>> {
    let url = url.trim();
    #[cfg(not(any(feature = "redis", feature = "postgres")))]
    let _ = owner;
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        #[cfg(feature = "redis")]
        return Ok(std::sync::Arc::new(crate::beat::RedisLease::new(url, owner)?));
        #[cfg(not(feature = "redis"))]
        anyhow::bail!("this build of qtask has no Redis (cargo feature `redis`): no --lock redis://");
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return Ok(std::sync::Arc::new(crate::beat::PgLease::connect(url, owner).await?));
        #[cfg(not(feature = "postgres"))]
        anyhow::bail!("this build of qtask has no PostgreSQL (cargo feature `postgres`): no --lock postgres://");
    }
    anyhow::bail!("--lock {}: expected a redis://, rediss:// or postgres:// URL", qcore::url::redact(url))
}

fn init_logging(args: &Args) {
    let filter = match (&args.command, std::env::var("QTASK_LOG")) {
        (Command::Worker(WorkerArgs { loglevel: Some(l), .. }), _) => l.filter().to_string(),
        (Command::Beat(BeatArgs { loglevel: Some(l), .. }), _) => l.filter().to_string(),
        (_, Ok(f)) if !f.is_empty() => f,
        (Command::Worker(_) | Command::Beat(_), _) => "info".to_string(),
        #[cfg(feature = "monitor")]
        (Command::Monitor(_), _) => "info".to_string(),
        _ => "warn".to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into());
    // A binary that installed its own subscriber keeps it.
    let _ = match args.global.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

fn runtime(args: &Args) -> std::io::Result<tokio::runtime::Runtime> {
    match &args.command {
        Command::Worker(w) => match w.threads {
            Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
            Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
            None => tokio::runtime::Runtime::new(),
        },
        _ => tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build(),
    }
}

#[cfg(test)]
mod tests;
