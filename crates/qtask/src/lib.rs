//! # qtask
//!
//! A distributed task queue in Rust that speaks Celery's protocol. This is
//! the facade: it re-exports [`qcore`] (messages, canvas, [`App`], the
//! [`Broker`] and [`ResultBackend`] contracts), the [`task`] attribute, the
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
//! `memory://` broker and backend) are on by default; `redis` adds the
//! Redis broker and result backend (`redis://`, and `rediss://` over TLS;
//! re-exported as [`qredis`] for its options); `amqp` and `sql` add the
//! other adapters as they land.

mod connect;

pub use connect::{
    app, app_from_config, connect, connect_backend, connect_backend_with, connect_with, SUPPORTED_SCHEMES,
};
pub use qcore::*;
#[cfg(feature = "macros")]
pub use qmacros::task;
#[cfg(feature = "memory")]
pub use qmemory;
#[cfg(feature = "redis")]
pub use qredis;
#[cfg(feature = "worker")]
pub use qworker::{self, EventKind, Worker, WorkerEvent, WorkerHandle, WorkerStats};
