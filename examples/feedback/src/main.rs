//! `feedback`: the feedback web app with its worker in the same process,
//! and the same tasks behind qtask's command line for a deployment that runs
//! the web app and its workers apart (`deploy/`).
//!
//! ```text
//! cargo run -p qtask-feedback                  # web app + worker in one process
//! feedback web                                 # the same (FEEDBACK_WORKER=false: web app only)
//! feedback worker -c 4 --metrics-addr 0.0.0.0:9808   # a worker (every `qtask worker` flag)
//! feedback beat --schedule deploy/beat.toml    # beat; also inspect, control, events, call, ...
//! ```
//!
//! Open <http://127.0.0.1:8000/>. With nothing configured it runs on the
//! embedded default (`qtask.db` in the working directory) and writes the
//! emails as `.eml` files into `feedback-mail/`. Settings:
//!
//! * `FEEDBACK_ADDR` — listen address (default `127.0.0.1:8000`).
//! * `FEEDBACK_SMTP_URL` — send through this SMTP server (`smtp://host:port`, no TLS).
//! * `FEEDBACK_MAIL_DIR` — the `.eml` directory; `FEEDBACK_MAIL=stdout` prints instead.
//! * `FEEDBACK_FROM` — the sender (default `Support <support@example.com>`).
//! * `FEEDBACK_DELAY_MS` — simulated work before sending (default 2000), reported as progress.
//! * `FEEDBACK_WORKER` — `false` runs the web app without its in-process worker.
//! * `QTASK_BROKER_URL` / `QTASK_RESULT_BACKEND` — another broker and backend.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use qtask::{Config, Worker};

fn main() -> ExitCode {
    let first = std::env::args().nth(1);
    match first.as_deref() {
        None | Some("web") => match web() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        // Every other command is qtask's (worker, beat, inspect, ...), with the feedback tasks.
        Some(_) => {
            let mailer = match qtask_feedback::Mailer::from_env() {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            qtask::cli::Cli::new("feedback").tasks(move |app| qtask_feedback::register(app, mailer.clone())).run()
        }
    }
}

#[tokio::main]
async fn web() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("QTASK_LOG").unwrap_or_else(|_| "info".into())).init();
    let app = qtask::app_from_config(Config::from_env()?).await?;
    let mailer = qtask_feedback::Mailer::from_env()?;
    tracing::info!(transport = ?mailer.transport, "mail");
    qtask_feedback::register(&app, mailer);

    let embedded = !matches!(std::env::var("FEEDBACK_WORKER").as_deref(), Ok("false" | "0" | "no"));
    let worker =
        embedded.then(|| Worker::builder(app.clone()).concurrency(4).shutdown_timeout(Duration::from_secs(30)).build());
    let stop = worker.as_ref().map(Worker::handle);
    let running = worker.map(|w| tokio::spawn(w.run()));

    let addr = std::env::var("FEEDBACK_ADDR").unwrap_or_else(|_| "127.0.0.1:8000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    println!("feedback: http://{addr}/  (broker {})", app.broker().describe());
    axum::serve(listener, qtask_feedback::router(app)).with_graceful_shutdown(stop_signal()).await?;
    if let (Some(stop), Some(running)) = (stop, running) {
        stop.shutdown();
        running.await??;
    }
    Ok(())
}

/// Ctrl-C, or SIGTERM (what a container runtime or systemd sends).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
