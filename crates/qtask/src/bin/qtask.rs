//! The `qtask` command line.
//!
//! ```text
//! qtask [--broker URL] [--backend URL] call NAME [--args JSON] [--kwargs JSON]
//!       [--queue Q] [--countdown SECS] [--wait SECS]
//! qtask [--broker URL] [--backend URL] result ID
//! qtask [--broker URL] purge [--queue Q]
//! ```
//!
//! Settings come from the TOML file named by `QTASK_CONFIG`, then the
//! environment (`QTASK_<SETTING>`, then `CELERY_<SETTING>`); the URL flags
//! win over both. With no URL anywhere, the embedded default
//! `sqlite://qtask.db` (in the working directory) for both. An unknown
//! setting is an error naming the closest one.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{Map, Value};

use qtask::{Config, Error, SendOptions};

const USAGE: &str = "usage:
  qtask [--broker URL] [--backend URL] call NAME [--args JSON] [--kwargs JSON] [--queue Q] [--countdown SECS] [--wait SECS]
  qtask [--broker URL] [--backend URL] result ID
  qtask [--broker URL] purge [--queue Q]
Settings: the TOML file named by QTASK_CONFIG, then QTASK_<SETTING> / CELERY_<SETTING> variables.
URLs default to QTASK_BROKER_URL / QTASK_RESULT_BACKEND, then CELERY_BROKER_URL / CELERY_RESULT_BACKEND,
then sqlite://qtask.db (in the working directory) for both.";

#[derive(Debug, Default)]
struct Cli {
    broker: Option<String>,
    backend: Option<String>,
    command: Vec<String>,
    args: Option<String>,
    kwargs: Option<String>,
    queue: Option<String>,
    countdown: Option<f64>,
    wait: Option<f64>,
}

fn parse(argv: Vec<String>) -> anyhow::Result<Cli> {
    let mut cli = Cli::default();
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| -> anyhow::Result<String> {
            inline.clone().or_else(|| it.next()).ok_or_else(|| anyhow!("{name} needs a value"))
        };
        let secs = |s: String, name: &str| -> anyhow::Result<f64> {
            let v: f64 = s.parse().map_err(|_| anyhow!("{name} must be a number of seconds, got {s:?}"))?;
            if !v.is_finite() || v < 0.0 {
                bail!("{name} must be a non-negative number of seconds, got {s:?}");
            }
            Ok(v)
        };
        match flag.as_str() {
            "--broker" => cli.broker = Some(value("--broker")?),
            "--backend" => cli.backend = Some(value("--backend")?),
            "--args" => cli.args = Some(value("--args")?),
            "--kwargs" => cli.kwargs = Some(value("--kwargs")?),
            "--queue" | "-Q" => cli.queue = Some(value("--queue")?),
            "--countdown" => cli.countdown = Some(secs(value("--countdown")?, "--countdown")?),
            "--wait" => cli.wait = Some(secs(value("--wait")?, "--wait")?),
            "-h" | "--help" => bail!("{USAGE}"),
            f if f.starts_with('-') && f.len() > 1 => bail!("unknown option {f}\n{USAGE}"),
            _ => cli.command.push(a),
        }
    }
    Ok(cli)
}

fn config(cli: &Cli) -> Result<Config, Error> {
    let mut cfg = Config::from_env()?;
    if let Some(b) = &cli.broker {
        cfg.broker_url = Some(b.clone());
    }
    if let Some(b) = &cli.backend {
        cfg.result_backend = Some(b.clone());
    }
    Ok(cfg)
}

async fn main_inner(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = config(&cli)?;
    let app = qtask::app_from_config(cfg).await?;
    match cli.command.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["call", name] => {
            let args: Vec<Value> = match &cli.args {
                Some(s) => serde_json::from_str(s).with_context(|| format!("--args must be a JSON list, got {s:?}"))?,
                None => Vec::new(),
            };
            let kwargs: Map<String, Value> = match &cli.kwargs {
                Some(s) => {
                    serde_json::from_str(s).with_context(|| format!("--kwargs must be a JSON object, got {s:?}"))?
                }
                None => Map::new(),
            };
            let mut opts = SendOptions::new();
            if let Some(q) = &cli.queue {
                opts = opts.queue(q.clone());
            }
            if let Some(c) = cli.countdown {
                opts = opts.countdown(Duration::from_secs_f64(c));
            }
            let res = app.send_task(name, args, kwargs, opts).await?;
            println!("{}", res.id());
            if let Some(w) = cli.wait {
                return print_result(res.get(Duration::from_secs_f64(w)).await);
            }
            Ok(ExitCode::SUCCESS)
        }
        ["result", id] => {
            let res = app.result::<Value>(id.to_string());
            let meta = res.meta().await?;
            if meta.status.is_ready() {
                // Ready: `get` returns at once (a zero timeout could expire before the read).
                print_result(res.get(Duration::from_secs(10)).await)
            } else {
                println!("{}", serde_json::json!({"status": meta.status, "result": meta.result}));
                Ok(ExitCode::SUCCESS)
            }
        }
        ["purge"] => {
            let queue = cli.queue.clone().unwrap_or_else(|| app.config().task_default_queue.clone());
            let n = app.broker().purge(&queue).await?;
            println!("purged {n} message(s) from {queue}");
            Ok(ExitCode::SUCCESS)
        }
        [] => bail!("no command given\n{USAGE}"),
        other => bail!("unknown command {:?}\n{USAGE}", other.join(" ")),
    }
}

fn print_result(r: Result<Value, Error>) -> anyhow::Result<ExitCode> {
    match r {
        Ok(v) => {
            println!("{}", serde_json::to_string(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::TaskFailed { task_id, state, exc }) => {
            eprintln!("task {task_id} {state}: {}", serde_json::to_string(&exc.to_value())?);
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("QTASK_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = match parse(std::env::args().skip(1).collect()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(main_inner(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
