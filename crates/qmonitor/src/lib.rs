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
pub use store::{Retention, Store, StoreError, TaskQuery};
pub use web::{router, User, WebConfig};
