//! `worker`: the start-up banner, the task log lines, the worker itself.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;

use qcore::App;
use qworker::Worker;

use super::args::{LogFormat, Pool, WorkerArgs};
use super::metrics::{self, Metrics, TaskLog};

/// Build the worker the flags describe, print the banner, log the tasks and
/// run until SIGTERM/SIGINT (warm shutdown; a second signal, cold).
pub(super) async fn run(app: App, w: &WorkerArgs, task_log: bool, format: LogFormat) -> anyhow::Result<ExitCode> {
    // Bound before anything starts: a taken port is a start-up error.
    let listener = match &w.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr.as_str())
                .await
                .with_context(|| format!("--metrics-addr {addr}: cannot listen"))?,
        ),
        None => None,
    };
    let mut builder = Worker::builder(app.clone()).heartbeat(!w.without_heartbeat);
    if w.task_events {
        builder = builder.send_events(true);
    }
    if !w.queues.is_empty() {
        builder = builder.queues(w.queues.iter().map(|q| q.trim()).filter(|q| !q.is_empty()).map(str::to_owned));
    }
    if let Some(c) = w.slots() {
        builder = builder.concurrency(c);
    }
    if let Some(m) = w.prefetch_multiplier {
        builder = builder.prefetch_multiplier(m);
    }
    if let Some(n) = &w.hostname {
        builder = builder.hostname(n.clone());
    }
    let worker = builder.build();
    let handle = worker.handle();
    if format == LogFormat::Text {
        print!("{}", banner(&app, w, handle.hostname()));
    }
    let beat = embedded_beat(&app, w).await?;
    let metrics = listener.as_ref().map(|_| Arc::new(Metrics::new(app.registered())));
    let log = task_log.then_some(TaskLog { fields: format == LogFormat::Json });
    let observer = (log.is_some() || metrics.is_some())
        .then(|| tokio::spawn(metrics::observe(handle.events(), log, metrics.clone())));
    let alive = Arc::new(AtomicBool::new(true));
    let server = match (listener, &metrics) {
        (Some(l), Some(m)) => {
            tracing::info!(address = %l.local_addr()?, "serving /metrics, /healthz and /readyz");
            Some(tokio::spawn(metrics::serve(app.clone(), l, m.clone(), handle.clone(), alive.clone())))
        }
        _ => None,
    };
    let result = worker.run_until_signal().await;
    alive.store(false, Ordering::Relaxed);
    if let Some(o) = observer {
        o.abort();
    }
    if let Some(s) = server {
        s.abort();
    }
    #[cfg(feature = "beat")]
    if let Some(beat) = beat {
        beat.stop().await?;
    }
    #[cfg(not(feature = "beat"))]
    let () = beat;
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `-B`: a beat in the worker's process (Celery's `worker -B`).
#[cfg(feature = "beat")]
async fn embedded_beat(app: &App, w: &WorkerArgs) -> anyhow::Result<Option<crate::beat::BeatHandle>> {
    if !w.beat {
        return Ok(None);
    }
    let entries = crate::beat::entries_from_config(app.config(), w.schedule.as_deref())?;
    Ok(Some(crate::beat::Beat::builder(app.clone()).schedule(entries).spawn().await?))
}

#[cfg(not(feature = "beat"))]
async fn embedded_beat(_app: &App, w: &WorkerArgs) -> anyhow::Result<()> {
    if w.beat {
        anyhow::bail!("this build of qtask has no beat (cargo feature `beat`): -B is not available");
    }
    Ok(())
}

/// Celery's start-up banner: node, transport, results, concurrency, events,
/// queues, then `[tasks]`.
fn banner(app: &App, w: &WorkerArgs, hostname: &str) -> String {
    let cfg = app.config();
    let broker = qcore::url::redact(cfg.broker_url.as_deref().unwrap_or(crate::DEFAULT_URL));
    let results = cfg.result_backend.as_deref().map(qcore::url::redact).unwrap_or_else(|| "disabled://".into());
    let concurrency = w.slots().unwrap_or(cfg.worker_concurrency).max(1);
    let pool = match w.pool {
        Some(Pool::Solo) => "solo",
        _ => "threads",
    };
    let events = if cfg.worker_send_task_events {
        "ON".to_string()
    } else {
        "OFF (enable -E to monitor tasks in this worker)".to_string()
    };
    let queues = if w.queues.is_empty() { vec![cfg.task_default_queue.clone()] } else { w.queues.clone() };
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S");
    let mut b = String::new();
    let _ = writeln!(b, "\n -------------- {hostname} v{} (qtask)", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(b, "--- ***** ----- ");
    let _ = writeln!(b, "-- ******* ---- {}-{} {now}", std::env::consts::OS, std::env::consts::ARCH);
    let _ = writeln!(b, "- *** --- * --- ");
    let _ = writeln!(b, "- ** ---------- [config]");
    let _ = writeln!(b, "- ** ---------- .> app:         {}", app.origin());
    let _ = writeln!(b, "- ** ---------- .> transport:   {broker}");
    let _ = writeln!(b, "- ** ---------- .> results:     {results}");
    let _ = writeln!(b, "- *** --- * --- .> concurrency: {concurrency} ({pool})");
    let _ = writeln!(b, "-- ******* ---- .> task events: {events}");
    let _ = writeln!(b, "--- ***** ----- ");
    let _ = writeln!(b, " -------------- [queues]");
    for q in &queues {
        let _ = writeln!(b, "                .> {q:<16} exchange={q}(direct) key={q}");
    }
    let _ = writeln!(b, "\n[tasks]");
    let mut tasks = app.registered();
    tasks.sort();
    for t in tasks {
        let _ = writeln!(b, "  . {t}");
    }
    b.push('\n');
    b
}
