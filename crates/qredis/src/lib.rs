//! # qredis
//!
//! The Redis broker ([`RedisBroker`]) and result backend ([`RedisBackend`])
//! of qtask, laid out byte for byte as kombu 5.7's Redis transport and
//! Celery 5.7's Redis result backend: Python Celery workers and producers
//! can share the same Redis with qtask in both directions.
//!
//! ```no_run
//! use qcore::{Broker, ConsumeOptions, ResultBackend, TaskMessageBuilder};
//! use qredis::{RedisBackend, RedisBackendOptions, RedisBroker, RedisOptions};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = RedisBroker::connect("redis://127.0.0.1:6379/0", RedisOptions::default()).await?;
//! let msg = TaskMessageBuilder { id: "1".into(), task: "tasks.add".into(), ..Default::default() }.build()?;
//! broker.publish("celery", &msg).await?;
//!
//! let mut consumer = broker.consume(&["celery".to_string()], ConsumeOptions::new(8)).await?;
//! if let Some(delivery) = consumer.recv().await? {
//!     delivery.acker.ack().await?;
//! }
//!
//! let backend = RedisBackend::connect("redis://127.0.0.1:6379/0", RedisBackendOptions::default()).await?;
//! let _meta = backend.get("1").await?;
//! # Ok(()) }
//! ```
//!
//! Redis 6.2 or newer is required (`RPOP` with a count, `BLMOVE`).
//!
//! Cargo feature `tls` (off by default): `rediss://` URLs through rustls
//! with the `ring` provider and the webpki root certificates. It is opt-in
//! because it adds a C build (`ring`) to every build of the crate.
//!
#![doc = include_str!("../docs/design.md")]

mod backend;
mod broker;
mod conn;
pub mod envelope;
mod keys;
mod scripts;
mod url;

pub use backend::{RedisBackend, RedisBackendOptions};
pub use broker::{RedisBroker, RedisOptions};
pub use keys::{priority_step, DELIVERIES_HEADER, PRIORITY_STEPS, SEP};
