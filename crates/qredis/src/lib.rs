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

use std::sync::Arc;

use qcore::driver::{BoxFuture, Driver};
use qcore::{Broker, Config, Error, ResultBackend};

/// The Redis driver: `redis://` and `rediss://` (TLS, feature `tls`) as
/// broker ([`RedisOptions::from_config`]) and result backend
/// ([`RedisBackendOptions::from_config`]).
pub static DRIVER: Driver =
    Driver::new("redis").broker(&["redis", "rediss"], connect_broker).backend(&["redis", "rediss"], connect_backend);

fn connect_broker<'a>(url: &'a str, cfg: &'a Config) -> BoxFuture<'a, Result<Arc<dyn Broker>, Error>> {
    Box::pin(async move {
        let broker = RedisBroker::connect(url, RedisOptions::from_config(cfg)).await?;
        Ok(Arc::new(broker) as Arc<dyn Broker>)
    })
}

fn connect_backend<'a>(url: &'a str, cfg: &'a Config) -> BoxFuture<'a, Result<Arc<dyn ResultBackend>, Error>> {
    Box::pin(async move {
        let backend = RedisBackend::connect(url, RedisBackendOptions::from_config(cfg)).await?;
        Ok(Arc::new(backend) as Arc<dyn ResultBackend>)
    })
}
pub use keys::{priority_step, DELIVERIES_HEADER, PRIORITY_STEPS, SEP};

/// Entry points of the fuzz targets (`fuzz/`). Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// Parse a `redis://` / `rediss://` URL; the error message on failure.
    pub fn url(url: &str) -> Result<(), String> {
        crate::url::parse(url).map(drop).map_err(|e| e.0)
    }
}
