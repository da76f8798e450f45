//! `uploads`: file processing with progress, the worker in the same process.
//!
//! ```text
//! cargo run -p qtask-uploads
//! ```
//!
//! Open <http://127.0.0.1:8001/>, choose a file, and watch the progress bar.
//! With nothing configured it runs on the embedded default (`qtask.db` in
//! the working directory) and saves uploads in `uploads/`. Settings:
//!
//! * `UPLOADS_ADDR` — listen address (default `127.0.0.1:8001`).
//! * `UPLOADS_DIR` — where uploads are saved (default `uploads`).
//! * `UPLOADS_STEP_MS` — simulated work per step, 10 steps (default 1000, as the tutorial).
//! * `QTASK_BROKER_URL` / `QTASK_RESULT_BACKEND` — another broker and backend.
//!
//! With curl: `curl -s -H 'X-Filename: notes.txt' --data-binary @notes.txt
//! http://127.0.0.1:8001/upload`, then `curl -s http://127.0.0.1:8001/tasks/<id>`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use qtask::{Config, Worker};
use qtask_uploads::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("QTASK_LOG").unwrap_or_else(|_| "info".into())).init();
    let app = qtask::app_from_config(Config::from_env()?).await?;
    let step_ms: u64 = match std::env::var("UPLOADS_STEP_MS") {
        Ok(v) => v.parse().with_context(|| format!("UPLOADS_STEP_MS must be milliseconds, got {v:?}"))?,
        Err(_) => 1000,
    };
    let dir = std::env::var("UPLOADS_DIR").unwrap_or_else(|_| "uploads".into());
    let settings = Arc::new(Settings::new(dir, Duration::from_millis(step_ms)));
    qtask_uploads::register(&app, settings.clone());

    let worker = Worker::builder(app.clone()).concurrency(4).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());

    let addr = std::env::var("UPLOADS_ADDR").unwrap_or_else(|_| "127.0.0.1:8001".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    println!("uploads: http://{addr}/  (broker {})", app.broker().describe());
    axum::serve(listener, qtask_uploads::router(app, settings))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    stop.shutdown();
    running.await??;
    Ok(())
}
