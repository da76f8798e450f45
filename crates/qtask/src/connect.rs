//! Brokers and backends from URLs.

use std::sync::Arc;

use qcore::{App, Broker, Config, Error, ResultBackend};

/// URL schemes this build understands (depends on cargo features).
pub const SUPPORTED_SCHEMES: &[&str] = &[
    #[cfg(feature = "memory")]
    "memory://",
    #[cfg(feature = "redis")]
    "redis://",
    #[cfg(feature = "redis")]
    "rediss://",
    #[cfg(feature = "amqp")]
    "amqp://",
    #[cfg(feature = "amqp")]
    "amqps://",
    #[cfg(feature = "amqp")]
    "rpc://",
    #[cfg(feature = "postgres")]
    "postgres://",
    #[cfg(feature = "postgres")]
    "postgresql://",
    #[cfg(feature = "sqlite")]
    "sqlite://",
];

/// The broker and result backend of an app configured with neither
/// `broker_url` nor `result_backend`: the embedded SQLite database
/// `qtask.db` in the working directory (feature `sqlite`, on by default),
/// else `memory://`.
pub const DEFAULT_URL: &str = if cfg!(feature = "sqlite") { "sqlite://qtask.db" } else { "memory://" };

fn scheme(url: &str) -> Result<&str, Error> {
    url.split_once("://")
        .map(|(s, _)| s)
        .or_else(|| url.split_once(':').map(|(s, _)| s))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::Config(format!("invalid URL {url:?}: expected scheme://...")))
}

fn unsupported(kind: &str, url: &str) -> Error {
    let shown = url.split_once('@').map(|(_, rest)| format!("...@{rest}")).unwrap_or_else(|| url.to_string());
    Error::Config(format!(
        "unsupported {kind} URL {shown:?}: this build supports {} (enable the matching qtask feature for others)",
        SUPPORTED_SCHEMES.join(", ")
    ))
}

/// A broker for `url` (`memory://`, `sqlite://path`, and with features
/// `redis://` / `rediss://`, `postgres://` / `postgresql://`, `amqp://` /
/// `amqps://`), with default settings. See [`connect_with`] to pass settings.
pub async fn connect(url: &str) -> Result<Arc<dyn Broker>, Error> {
    connect_with(url, &Config::default()).await
}

/// A broker for `url` using the adapter settings of `cfg` (Redis:
/// `visibility_timeout`, `max_deliveries`, `broker_transport_options`
/// `global_keyprefix` / `visibility_timeout`; SQL: `visibility_timeout`,
/// `max_deliveries`). The server is contacted once,
/// so an unreachable broker is an error here rather than at the first send.
#[cfg_attr(not(any(feature = "redis", feature = "sqlite", feature = "postgres")), allow(unused_variables))]
pub async fn connect_with(url: &str, cfg: &Config) -> Result<Arc<dyn Broker>, Error> {
    match scheme(url)? {
        #[cfg(feature = "memory")]
        "memory" => Ok(Arc::new(qmemory::MemoryBroker::new())),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => {
            let options = qredis::RedisOptions::from_config(cfg);
            Ok(Arc::new(qredis::RedisBroker::connect(url, options).await?))
        }
        #[cfg(feature = "amqp")]
        "amqp" | "amqps" | "pyamqp" => Ok(Arc::new(crate::amqp::broker(url, cfg).await?)),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => crate::sql::connect_broker(url, cfg).await,
        #[cfg(feature = "sqlite")]
        "sqlite" => crate::sql::connect_broker(url, cfg).await,
        _ => Err(unsupported("broker", url)),
    }
}

/// A result backend for `url`, with default settings. `rpc://` (feature
/// `amqp`) needs the broker URL: use [`connect_backend_with`] with
/// `broker_url` set, or [`app_from_config`].
pub async fn connect_backend(url: &str) -> Result<Arc<dyn ResultBackend>, Error> {
    connect_backend_with(url, &Config::default()).await
}

/// A result backend for `url` using the adapter settings of `cfg` (Redis:
/// `result_backend_transport_options` `global_keyprefix`). SQL databases
/// take Celery's database backend spellings too: `db+postgresql://…`,
/// `db+postgresql+psycopg2://…`, `db+sqlite:///relative.db`,
/// `db+sqlite:////absolute.db`; `database_table_schemas.task` sets the
/// PostgreSQL schema. `rpc://` (feature `amqp`, Celery's RPC backend)
/// connects to `cfg.broker_url`, which must be `amqp://` / `amqps://`, and
/// takes `result_expires`, `result_persistent`, `result_serializer`.
#[cfg_attr(not(any(feature = "redis", feature = "sqlite", feature = "postgres")), allow(unused_variables))]
pub async fn connect_backend_with(url: &str, cfg: &Config) -> Result<Arc<dyn ResultBackend>, Error> {
    match scheme(url)? {
        #[cfg(feature = "memory")]
        "memory" => Ok(Arc::new(qmemory::MemoryBackend::new())),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => {
            let mut options = qredis::RedisBackendOptions::default();
            if let Some(prefix) = &cfg.result_backend_transport_options.global_keyprefix {
                options = options.global_keyprefix(prefix);
            }
            Ok(Arc::new(qredis::RedisBackend::connect(url, options).await?))
        }
        #[cfg(feature = "amqp")]
        "rpc" => Ok(crate::amqp::rpc_backend(cfg.broker_url.as_deref(), cfg).await?),
        #[cfg(feature = "amqp")]
        "amqp" | "amqps" => Err(Error::Config(
            "an amqp:// result backend is Celery's deprecated `amqp` backend: use \"rpc://\" (results over the broker)"
                .into(),
        )),
        #[cfg(any(feature = "sqlite", feature = "postgres"))]
        _ if crate::sql::backend_url(url).is_some() => {
            let sql_url = crate::sql::backend_url(url).unwrap_or_default();
            crate::sql::connect_backend(&sql_url, cfg).await
        }
        _ => Err(unsupported("result backend", url)),
    }
}

/// An app on `url` for both broker and results (`memory://` shares one
/// in-process store).
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
    #[cfg(feature = "amqp")]
    if cfg.result_backend.as_deref().is_some_and(|u| scheme(u).ok() == Some("rpc")) {
        // rpc:// rides on the broker's own connections; the app names the
        // backend's reply queue as its tasks' reply_to.
        if !crate::amqp::is_amqp(&broker_url) {
            return Err(crate::amqp::rpc_needs_amqp(Some(&broker_url)));
        }
        let broker = crate::amqp::broker(&broker_url, &cfg).await?;
        let backend = broker.rpc_backend(crate::amqp::rpc_options(&cfg)).await?;
        return App::builder().broker(Arc::new(broker)).backend(Arc::new(backend)).config(cfg).build();
    }
    let broker = connect_with(&broker_url, &cfg).await?;
    let mut builder = App::builder().broker(broker);
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
}
