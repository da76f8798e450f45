//! Brokers and backends from URLs: a lookup over the drivers of the
//! adapters this build enables. Each adapter reads its own settings from the
//! [`Config`] in its driver; nothing here knows an adapter's options.

use std::sync::Arc;

use qcore::driver::{self, Driver, Role};
use qcore::{App, Broker, Config, Error, ResultBackend};

/// The drivers this build enables (cargo features), in lookup order.
/// Adding an adapter is one crate and one line here.
pub static DRIVERS: &[&Driver] = &[
    #[cfg(feature = "memory")]
    &qmemory::DRIVER,
    #[cfg(feature = "redis")]
    &qredis::DRIVER,
    #[cfg(feature = "amqp")]
    &qamqp::DRIVER,
    #[cfg(feature = "postgres")]
    &qsql::POSTGRES,
    #[cfg(feature = "sqlite")]
    &qsql::SQLITE,
];

/// The URL schemes this build serves as a broker or result backend.
pub fn supported_schemes() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = Vec::new();
    for d in DRIVERS {
        for s in d.schemes(Role::Broker).iter().chain(d.schemes(Role::Backend)) {
            if !all.contains(s) {
                all.push(s);
            }
        }
    }
    all
}

/// The broker and result backend of an app configured with neither
/// `broker_url` nor `result_backend`: the embedded SQLite database
/// `qtask.db` in the working directory (feature `sqlite`, on by default),
/// else `memory://`.
pub const DEFAULT_URL: &str = if cfg!(feature = "sqlite") { "sqlite://qtask.db" } else { "memory://" };

/// A broker for `url` (`memory://`, `sqlite://path`, `redis://` /
/// `rediss://`, `postgres://` / `postgresql://`, `amqp://` / `amqps://`, as
/// the build's features allow), with default settings. See [`connect_with`].
pub async fn connect(url: &str) -> Result<Arc<dyn Broker>, Error> {
    connect_with(url, &Config::default()).await
}

/// A broker for `url`, its adapter reading its settings from `cfg`
/// (`broker_transport_options`, `visibility_timeout`, `max_deliveries`,
/// `broker_use_ssl`, `task_queue_max_priority`, ...). The server is
/// contacted once, so an unreachable broker is an error here rather than
/// at the first send.
pub async fn connect_with(url: &str, cfg: &Config) -> Result<Arc<dyn Broker>, Error> {
    driver::connect_broker(DRIVERS, url, cfg).await
}

/// A result backend for `url`, with default settings. `rpc://` (feature
/// `amqp`) needs the broker URL: use [`connect_backend_with`] with
/// `broker_url` set, or [`app_from_config`].
pub async fn connect_backend(url: &str) -> Result<Arc<dyn ResultBackend>, Error> {
    connect_backend_with(url, &Config::default()).await
}

/// A result backend for `url`, its adapter reading its settings from `cfg`.
/// SQL databases take Celery's database backend spellings too
/// (`db+postgresql://…`, `db+sqlite:///relative.db`); `rpc://` (Celery's
/// RPC backend) connects to `cfg.broker_url`, which must be `amqp://` /
/// `amqps://`.
pub async fn connect_backend_with(url: &str, cfg: &Config) -> Result<Arc<dyn ResultBackend>, Error> {
    driver::connect_backend(DRIVERS, url, cfg).await
}

/// An app on `url` for both broker and results (`memory://`: an in-process
/// broker and backend).
pub async fn app(url: &str) -> Result<App, Error> {
    let mut cfg = Config::default();
    cfg.broker_url = Some(url.to_string());
    cfg.result_backend = Some(url.to_string());
    app_from_config(cfg).await
}

/// An app from settings: `broker_url` and `result_backend`. With neither
/// set, both are [`DEFAULT_URL`] (the embedded `sqlite://qtask.db`); with
/// only `result_backend` set the broker is [`DEFAULT_URL`]; with only
/// `broker_url` set results are not stored (as in Celery).
pub async fn app_from_config(mut cfg: Config) -> Result<App, Error> {
    if cfg.broker_url.is_none() && cfg.result_backend.is_none() {
        cfg.result_backend = Some(DEFAULT_URL.to_string());
    }
    let broker_url = cfg.broker_url.get_or_insert_with(|| DEFAULT_URL.to_string()).clone();
    // Both URLs are checked before either server is contacted.
    driver::find(DRIVERS, &broker_url, Role::Broker)?;
    if let Some(url) = &cfg.result_backend {
        driver::find(DRIVERS, url, Role::Backend)?;
    }
    let mut builder = App::builder().broker(connect_with(&broker_url, &cfg).await?);
    if let Some(url) = cfg.result_backend.clone() {
        builder = builder.backend(connect_backend_with(&url, &cfg).await?);
    }
    builder.config(cfg).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_are_clear_errors() {
        let e = connect("nope").await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("invalid URL"), "{e}");
        let e = connect("foo://user:secret@host").await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("unsupported broker URL"), "{e}");
        assert!(!e.contains("secret"), "password leaked: {e}");
    }

    #[cfg(feature = "amqp")]
    #[tokio::test]
    async fn rpc_without_an_amqp_broker_is_a_config_error() {
        let mut cfg = Config::default();
        cfg.broker_url = Some("memory://".into());
        cfg.result_backend = Some("rpc://".into());
        let e = app_from_config(cfg.clone()).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("rpc://") && e.contains("amqp://"), "{e}");
        let e = connect_backend_with("rpc://", &cfg).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("needs an amqp://"), "{e}");
        let e = connect_backend("rpc://").await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("needs an amqp://"), "{e}");
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn a_results_only_url_is_not_a_broker() {
        let e = connect("db+sqlite:///x.db").await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("result backend URL of the sqlite adapter"), "{e}");
    }
}
