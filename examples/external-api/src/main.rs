//! `external-api`: the task calling an external API, with its worker in
//! the same process.
//!
//! ```text
//! cargo run -p qtask-external-api                      # against a local API that fails twice
//! cargo run -p qtask-external-api -- URL '{"k": "v"}'   # POST this JSON to URL
//! ```
//!
//! It runs on the embedded default (`qtask.db` in the working directory;
//! `QTASK_BROKER_URL` / `QTASK_RESULT_BACKEND` point elsewhere), logs each
//! retry with its delay, and prints the answer or the final error.
//! `API_BACKOFF_MS` sets the first backoff (default 1000, Celery's
//! `retry_backoff=True`).

use std::time::Duration;

use anyhow::{bail, Context};
use qtask::{Config, Signature, Worker};
use qtask_external_api::{FlakyApi, TASK_NAME};
use serde_json::Value;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("QTASK_LOG").unwrap_or_else(|_| "info".into())).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backoff_ms: u64 = match std::env::var("API_BACKOFF_MS") {
        Ok(v) => v.parse().with_context(|| format!("API_BACKOFF_MS must be milliseconds, got {v:?}"))?,
        Err(_) => 1000,
    };
    let (endpoint, data) = match args.as_slice() {
        [] => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}/echo", listener.local_addr()?);
            let api = FlakyApi::new(2);
            tokio::spawn(async move { axum::serve(listener, api.router()).await });
            println!("a local API that answers 503 twice: {url}");
            (url, serde_json::json!({"hello": "world"}))
        }
        [url, json] => (url.clone(), serde_json::from_str::<Value>(json).context("the data must be JSON")?),
        _ => bail!("usage: external-api [URL JSON]"),
    };
    let app = qtask::app_from_config(Config::from_env()?).await?;
    qtask_external_api::register(&app, Duration::from_millis(backoff_ms));
    let worker = Worker::builder(app.clone()).concurrency(4).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());

    let result = app.delay(Signature::new(TASK_NAME).arg(endpoint).arg(data)).await?;
    let outcome = result.get(Duration::from_secs(600)).await;
    stop.shutdown();
    running.await??;
    match outcome {
        Ok(answer) => println!("answer: {answer}"),
        Err(e) => bail!("the call failed: {e}"),
    }
    Ok(())
}
