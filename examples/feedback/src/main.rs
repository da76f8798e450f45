//! `feedback`: the feedback web app with its worker in the same process.
//!
//! ```text
//! cargo run -p qtask-feedback
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
//! * `QTASK_BROKER_URL` / `QTASK_RESULT_BACKEND` — another broker and backend.

use std::time::Duration;

use anyhow::Context;
use qtask::{Config, Worker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("QTASK_LOG").unwrap_or_else(|_| "info".into())).init();
    let app = qtask::app_from_config(Config::from_env()?).await?;
    let mailer = qtask_feedback::Mailer::from_env()?;
    tracing::info!(transport = ?mailer.transport, "mail");
    qtask_feedback::register(&app, mailer);

    let worker = Worker::builder(app.clone()).concurrency(4).shutdown_timeout(Duration::from_secs(30)).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());

    let addr = std::env::var("FEEDBACK_ADDR").unwrap_or_else(|_| "127.0.0.1:8000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    println!("feedback: http://{addr}/  (broker {})", app.broker().describe());
    axum::serve(listener, qtask_feedback::router(app))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    stop.shutdown();
    running.await??;
    Ok(())
}
