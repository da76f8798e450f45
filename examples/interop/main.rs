//! `interop-worker`: a qtask worker with the tasks the Python interop tests
//! call. Its command line is a stable interface used by external tooling:
//!
//! ```text
//! interop-worker --broker URL [--backend URL] [--queues a,b] [--concurrency N]
//!                [--prefetch-multiplier N] [--acks-late] [--threads N]
//!                [-B|--beat [--schedule FILE]]
//! ```
//!
//! `-B`/`--beat` runs a beat in the worker (Celery's `worker -B`) with the
//! `beat_schedule` of the settings (`QTASK_CONFIG`) and of `--schedule FILE`
//! (a settings file with a `beat_schedule` table).
//!
//! Without `--backend` results are not stored; the default queue is `celery`.
//! `--threads` sets the tokio runtime's worker threads: 1 runs the worker on
//! a current-thread runtime (no wake-ups across threads; the benchmarks use
//! it), the default is a multi-thread runtime with one thread per core.
//! SIGTERM or SIGINT gives a warm shutdown (a second one, a cold shutdown).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail};
use qtask::{task, Config, TaskContext, TaskError, Worker};
use serde_json::Value;

/// x + y
#[task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

/// x * y
#[task(name = "tasks.mul")]
async fn mul(x: i64, y: i64) -> i64 {
    x * y
}

/// Sum of a list.
#[task(name = "tasks.xsum")]
async fn xsum(numbers: Vec<i64>) -> i64 {
    numbers.iter().sum()
}

/// Sleep asynchronously, return the seconds.
#[task(name = "tasks.sleep")]
async fn sleep(seconds: f64) -> Result<f64, TaskError> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(TaskError::value_error(format!("invalid seconds {seconds}")));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    Ok(seconds)
}

/// Fail with `ValueError(message)`.
#[task(name = "tasks.fail")]
async fn fail(message: String) -> Result<Value, TaskError> {
    Err(TaskError::value_error(message))
}

/// `steps` steps of 10 ms, reporting PROGRESS `{"current": i, "total": steps}` after each.
#[task(name = "tasks.progress")]
async fn progress(ctx: TaskContext, steps: u64) -> Result<u64, TaskError> {
    for i in 1..=steps {
        tokio::time::sleep(Duration::from_millis(10)).await;
        ctx.progress(i, steps).await.map_err(|e| TaskError::fail("BackendError", e.to_string()))?;
    }
    Ok(steps)
}

/// Do nothing.
#[task(name = "tasks.noop")]
async fn noop() -> Value {
    Value::Null
}

#[derive(Debug, Default)]
struct Args {
    broker: Option<String>,
    backend: Option<String>,
    queues: Vec<String>,
    concurrency: Option<usize>,
    prefetch_multiplier: Option<usize>,
    acks_late: bool,
    threads: Option<usize>,
    beat: bool,
    schedule: Option<String>,
}

const USAGE: &str = "usage: interop-worker --broker URL [--backend URL] [--queues a,b] [--concurrency N] [--prefetch-multiplier N] [--acks-late] [--threads N] [-B|--beat [--schedule FILE]]";

fn parse(argv: Vec<String>) -> anyhow::Result<Args> {
    let mut a = Args::default();
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next()).ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"));
        let number = |s: String, name: &str| -> anyhow::Result<usize> {
            s.parse().map_err(|_| anyhow!("{name} must be a whole number, got {s:?}"))
        };
        match flag.as_str() {
            "--broker" => a.broker = Some(value()?),
            "--backend" => a.backend = Some(value()?),
            "--queues" | "-Q" => {
                a.queues = value()?.split(',').map(str::trim).filter(|q| !q.is_empty()).map(str::to_owned).collect()
            }
            "--concurrency" | "-c" => {
                let n = number(value()?, "--concurrency")?;
                if n == 0 {
                    bail!("--concurrency must be at least 1");
                }
                a.concurrency = Some(n);
            }
            "--prefetch-multiplier" => a.prefetch_multiplier = Some(number(value()?, "--prefetch-multiplier")?),
            "--acks-late" => a.acks_late = true,
            "--threads" => {
                let n = number(value()?, "--threads")?;
                if n == 0 {
                    bail!("--threads must be at least 1");
                }
                a.threads = Some(n);
            }
            "-B" | "--beat" => a.beat = true,
            "--schedule" => a.schedule = Some(value()?),
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if a.schedule.is_some() && !a.beat {
        bail!("--schedule needs -B/--beat\n{USAGE}");
    }
    Ok(a)
}

async fn run(a: Args) -> anyhow::Result<()> {
    let mut cfg = Config::from_env()?;
    if let Some(b) = a.broker {
        cfg.broker_url = Some(b);
    }
    if cfg.broker_url.is_none() {
        bail!("--broker is required\n{USAGE}");
    }
    cfg.result_backend = a.backend;
    if a.acks_late {
        cfg.task_acks_late = true;
    }
    let app = qtask::app_from_config(cfg).await?;
    app.register(add).register(mul).register(xsum).register(sleep).register(fail).register(progress).register(noop);
    let beat = match a.beat {
        true => {
            let entries = qtask::beat::entries_from_config(app.config(), a.schedule.as_deref().map(Path::new))?;
            Some(qtask::beat::Beat::builder(app.clone()).schedule(entries).spawn().await?)
        }
        false => None,
    };
    let mut builder = Worker::builder(app);
    if !a.queues.is_empty() {
        builder = builder.queues(a.queues);
    }
    if let Some(c) = a.concurrency {
        builder = builder.concurrency(c);
    }
    if let Some(m) = a.prefetch_multiplier {
        builder = builder.prefetch_multiplier(m);
    }
    let ran = builder.build().run_until_signal().await;
    if let Some(beat) = beat {
        beat.stop().await?;
    }
    ran?;
    Ok(())
}

/// The worker allocates a little per task from several threads (frames,
/// headers, results); mimalloc does that with less work than the system
/// allocator. The choice belongs to the binary, not to the qtask crates.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("QTASK_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = match parse(std::env::args().skip(1).collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match args.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
        None => tokio::runtime::Runtime::new(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> anyhow::Result<Args> {
        parse(a.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn threads_pick_the_runtime_and_zero_is_refused() {
        assert_eq!(args(&["--broker", "amqp://h", "--threads", "1"]).unwrap().threads, Some(1));
        assert_eq!(args(&["--threads=4"]).unwrap().threads, Some(4));
        assert_eq!(args(&["--broker", "amqp://h"]).unwrap().threads, None);
        let e = args(&["--threads", "0"]).unwrap_err().to_string();
        assert!(e.contains("--threads must be at least 1"), "{e}");
        let a = args(&["--broker", "redis://h", "-B", "--schedule", "beat.toml"]).unwrap();
        assert!(a.beat);
        assert_eq!(a.schedule.as_deref(), Some("beat.toml"));
        let e = args(&["--schedule", "beat.toml"]).unwrap_err().to_string();
        assert!(e.contains("--schedule needs -B/--beat"), "{e}");
        let e = args(&["--threads", "two"]).unwrap_err().to_string();
        assert!(e.contains("--threads must be a whole number"), "{e}");
    }
}
