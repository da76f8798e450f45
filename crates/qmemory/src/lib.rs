//! # qmemory
//!
//! An in-process [`Broker`] ([`MemoryBroker`]) and
//! [`ResultBackend`] ([`MemoryBackend`]) that keep the
//! same contracts as the Redis, AMQP and SQL adapters (they pass the same
//! `qconformance` suites), for unit tests, eager mode and single-process apps.
//! Nothing survives the process: use a real broker when tasks must outlive it.
//!
//! [`app`] builds an [`App`] on both; [`eager_app`] one that runs every task
//! in the caller (`task_always_eager`), results stored as a worker would.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::time::Duration;
//! use async_trait::async_trait;
//! use qcore::{Signature, Task, TaskContext, TaskResult};
//! use serde_json::{Map, Value};
//!
//! struct Add;
//!
//! #[async_trait]
//! impl Task for Add {
//!     fn name(&self) -> &str {
//!         "tasks.add"
//!     }
//!     async fn run(&self, _ctx: TaskContext, args: Vec<Value>, _kwargs: Map<String, Value>) -> TaskResult {
//!         Ok((args[0].as_i64().unwrap_or(0) + args[1].as_i64().unwrap_or(0)).into())
//!     }
//! }
//!
//! let app = qmemory::eager_app();
//! app.register(Add);
//! let res = app.delay(Signature::new("tasks.add").arg(2).arg(3)).await?;
//! assert_eq!(res.get(Duration::from_secs(1)).await?, 5);
//! # Ok::<(), qcore::Error>(())
//! # }).unwrap();
//! ```

mod backend;
mod broker;

use std::sync::Arc;

pub use backend::MemoryBackend;
pub use broker::MemoryBroker;
use qcore::driver::{BoxFuture, Driver};
use qcore::{App, Broker, Config, Error, ResultBackend};

/// The `memory://` driver: a new in-process broker or backend per connect.
pub static DRIVER: Driver = Driver::new("memory").broker(&["memory"], broker).backend(&["memory"], backend);

fn broker<'a>(_url: &'a str, _cfg: &'a Config) -> BoxFuture<'a, Result<Arc<dyn Broker>, Error>> {
    Box::pin(async { Ok(Arc::new(MemoryBroker::new()) as Arc<dyn Broker>) })
}

fn backend<'a>(_url: &'a str, _cfg: &'a Config) -> BoxFuture<'a, Result<Arc<dyn ResultBackend>, Error>> {
    Box::pin(async { Ok(Arc::new(MemoryBackend::new()) as Arc<dyn ResultBackend>) })
}

/// An [`App`] with `config` on a new [`MemoryBroker`] and [`MemoryBackend`].
/// `broker_url` and `result_backend` are set to `memory://` when unset.
pub fn app_with_config(mut config: Config) -> App {
    config.broker_url.get_or_insert_with(|| "memory://".into());
    config.result_backend.get_or_insert_with(|| "memory://".into());
    let built = App::builder()
        .config(config)
        .broker(Arc::new(MemoryBroker::new()))
        .backend(Arc::new(MemoryBackend::new()))
        .build();
    match built {
        Ok(app) => app,
        // `build` fails only without a broker, and one is always set here.
        Err(e) => unreachable!("an App with a broker always builds: {e}"),
    }
}

/// An [`App`] with default settings on a new [`MemoryBroker`] and
/// [`MemoryBackend`]: tasks are queued until a worker consumes them.
pub fn app() -> App {
    app_with_config(Config::default())
}

/// Like [`app`] with `task_always_eager` on: `delay`/`apply_async` run the
/// task in the caller, through the same serialization a worker sees, and
/// store its result before returning.
pub fn eager_app() -> App {
    let mut config = Config::default();
    config.task_always_eager = true;
    app_with_config(config)
}
