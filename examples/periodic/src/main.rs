//! `periodic`: an axum service with the beat and a worker in the same
//! process.
//!
//! ```text
//! cargo run -p qtask-periodic
//! curl http://127.0.0.1:8002/beat
//! ```
//!
//! With nothing configured it runs on the embedded default (`qtask.db` in
//! the working directory). `PERIODIC_ADDR` sets the listen address;
//! `QTASK_BROKER_URL` / `QTASK_RESULT_BACKEND` another broker and backend.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use qtask::beat::Beat;
use qtask::{Config, Worker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("QTASK_LOG").unwrap_or_else(|_| "info".into())).init();
    let app = qtask::app_from_config(Config::from_env()?).await?;
    qtask_periodic::register(&app);

    let worker = Worker::builder(app.clone()).concurrency(2).shutdown_timeout(Duration::from_secs(30)).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());
    let beat = Arc::new(Beat::builder(app.clone()).schedule(qtask_periodic::entries()?).spawn().await?);

    let addr = std::env::var("PERIODIC_ADDR").unwrap_or_else(|_| "127.0.0.1:8002".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    println!("periodic: http://{addr}/beat  (broker {})", app.broker().describe());
    // Healthy while the loop ticks: it ticks at least every 300 s.
    let router = qtask_periodic::router(beat.clone(), chrono::TimeDelta::minutes(10));
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    if let Ok(beat) = Arc::try_unwrap(beat) {
        beat.stop().await?;
    }
    stop.shutdown();
    running.await??;
    Ok(())
}
