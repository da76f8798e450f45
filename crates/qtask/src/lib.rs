//! # qtask
//!
//! A distributed task queue in Rust that speaks Celery's protocol. This is
//! the facade: it re-exports [`qcore`] (messages, canvas, [`App`], the
//! [`Broker`] and [`ResultBackend`] contracts), the [`task`](macro@task) attribute, the
//! [`Worker`], and builds brokers and backends from URLs with [`connect`].
//!
//! ```
//! use std::time::Duration;
//! use qtask::{task, App, Worker};
//!
//! #[task(name = "tasks.add")]
//! async fn add(x: i64, y: i64) -> i64 {
//!     x + y
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), qtask::Error> {
//! let app = qtask::app("memory://").await?;
//! app.register(add);
//! let worker = Worker::builder(app.clone()).concurrency(2).build();
//! let stop = worker.handle();
//! let running = tokio::spawn(worker.run());
//! let result = app.delay(add::s(2, 3)).await?;
//! assert_eq!(result.get(Duration::from_secs(5)).await?, 5);
//! stop.shutdown();
//! running.await.unwrap()?;
//! # Ok(()) }
//! ```
//!
//! Features: `macros` (`#[task]`), `worker`, `memory` (the in-process
//! `memory://` broker and backend) and `sqlite` (the SQLite broker and
//! Celery's database result backend, `sqlite://path`) are on by default;
//! `redis` adds the Redis broker and result backend (`redis://`, and
//! `rediss://` over TLS; re-exported as `qtask::qredis` for its options);
//! `postgres` adds the PostgreSQL broker and result backend
//! (`postgres://`, Celery's `db+postgresql://` for results) with enqueue on
//! commit (`SendInTx`); `amqp` adds RabbitMQ (`amqp://`, `amqps://`) and Celery's `rpc://`
//! result backend (re-exported as `qamqp`).
//!
//! **The embedded default:** an app configured with neither `broker_url`
//! nor `result_backend` uses [`DEFAULT_URL`], `sqlite://qtask.db` (a file
//! in the working directory), for both, so `qtask::app_from_config(Config::default())`
//! needs no server. Sending after a commit on any broker: [`AfterCommit`].
//!
//! **The command line:** a binary with tasks calls [`cli::run`] and gets
//! Celery's commands (`worker`, `inspect`, `control`, `events`, `call`, ...);
//! the `qtask` binary is the same command line without tasks.

#[cfg(feature = "beat")]
pub mod beat;
pub mod cli;
mod connect;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;

pub use connect::{
    app, app_from_config, connect, connect_backend, connect_backend_with, connect_with, supported_schemes, DEFAULT_URL,
    DRIVERS,
};
#[cfg(feature = "amqp")]
pub use qamqp;
pub use qcore::*;
#[cfg(feature = "macros")]
pub use qmacros::task;
#[cfg(feature = "memory")]
pub use qmemory;
#[cfg(feature = "monitor")]
pub use qmonitor as monitor;
#[cfg(feature = "redis")]
pub use qredis;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use qsql;
#[cfg(feature = "worker")]
pub use qworker::{self, Worker, WorkerHandle, WorkerStats};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::AfterCommit;
#[cfg(feature = "postgres")]
pub use sql::{pg_broker, SendInTx};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sqlx;
