//! qmonitor: a web monitor for Celery and qtask workers.
//!
//! It reads Celery's events (`celeryev`) and asks the workers through
//! remote control, as Flower does, and keeps what it learns in a SQLite
//! history ([`Store`]) so a restart loses nothing. It serves Flower's REST
//! API at Flower's paths with Flower's JSON, qtask's own cursor-paginated
//! JSON, server-rendered pages that update live (server-sent events), and
//! `/metrics` with Flower's metric names.
//!
//! ```no_run
//! # async fn demo(app: qcore::App) -> Result<(), Box<dyn std::error::Error>> {
//! use qmonitor::{Monitor, Retention, WebConfig};
//!
//! let monitor = Monitor::open("qtask-monitor.db", Retention::default()).await?;
//! tokio::spawn(monitor.clone().ingest(app.broker().clone()));
//! let router = qmonitor::router(monitor, Some(app), WebConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5555").await?;
//! axum::serve(listener, router).await?;
//! # Ok(()) }
//! ```

pub mod metrics;
pub mod monitor;
pub mod state;
pub mod store;
mod web;

pub use metrics::Metrics;
pub use monitor::{Monitor, MonitorError, Update};
pub use state::{Task, Worker};
pub use store::{Action, Retention, Store, StoreError, TaskQuery};
pub use web::{router, User, WebConfig};

/// Serve `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Keep the workers' state fresh as Flower does: ask them to send events
/// (`enable_events`) and answer `inspect` (`stats`, `active_queues`,
/// `registered`, `conf`) now and every `every`; a worker that was running
/// before the monitor started is known at once, not at its next heartbeat.
pub async fn keep_inspecting(
    monitor: std::sync::Arc<Monitor>,
    client: qcore::control::Client,
    timeout: std::time::Duration,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let enable = qcore::control::ControlRequest::new("enable_events");
        if let Err(e) = client.cast(&enable, timeout).await {
            tracing::warn!(error = %e, "cannot ask the workers to send events");
        }
        match monitor.refresh_inspect(&client, timeout).await {
            Ok(n) => tracing::debug!(workers = n, "inspect answered"),
            Err(e) => tracing::warn!(error = %e, "inspect failed"),
        }
    }
}
