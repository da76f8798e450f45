//! RabbitMQ (feature `amqp`): the AMQP broker and Celery's `rpc://` backend.

use std::sync::Arc;

use std::borrow::Cow;

use qamqp::{AmqpBroker, AmqpOptions, RpcBackend, RpcOptions, TlsOptions};
use qcore::{Config, Error};

/// Broker settings from `cfg`: `task_queue_max_priority` (`x-max-priority`
/// on task queues, as Celery declares them), `max_deliveries`, the
/// worker's node name (`worker_hostname`, also put in the connection name)
/// and `broker_use_ssl` (its files are read here: a missing or bad one is a
/// configuration error before any connection).
pub(crate) fn options(cfg: &Config) -> Result<AmqpOptions, Error> {
    let mut o = AmqpOptions::default();
    if let Some(ssl) = &cfg.broker_use_ssl {
        o = o.tls(TlsOptions::from_files(ssl.ca_certs.as_deref(), ssl.certfile.as_deref(), ssl.keyfile.as_deref())?);
    }
    if let Some(p) = cfg.task_queue_max_priority.filter(|p| *p > 0) {
        o = o.queue_max_priority(p);
    }
    if let Some(m) = cfg.max_deliveries {
        o = o.max_deliveries(Some(m));
    }
    if let Some(h) = &cfg.worker_hostname {
        // Also the connections' `connection_name` (`<node>/publish`,
        // `<node>/consume`), so operators can tell workers apart.
        o = o.node_name(h.clone()).connection_name(format!("qtask {h}"));
    }
    Ok(o)
}

/// With `broker_use_ssl` set, an `amqp://` (or `pyamqp://`) URL connects
/// with TLS, as kombu does (and so defaults to port 5671).
pub(crate) fn tls_url<'a>(url: &'a str, cfg: &Config) -> Cow<'a, str> {
    if cfg.broker_use_ssl.is_none() {
        return Cow::Borrowed(url);
    }
    match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("amqp") || scheme.eq_ignore_ascii_case("pyamqp") => {
            Cow::Owned(format!("amqps://{rest}"))
        }
        _ => Cow::Borrowed(url),
    }
}

/// Result settings from `cfg`: `result_expires` (reply queue `x-expires`),
/// `result_persistent`, `result_serializer`.
pub(crate) fn rpc_options(cfg: &Config) -> RpcOptions {
    let mut o = RpcOptions::default().expires(Some(cfg.result_expires));
    if let Some(p) = cfg.result_persistent {
        o = o.persistent(p);
    }
    o.serializer(cfg.result_serializer)
}

pub(crate) async fn broker(url: &str, cfg: &Config) -> Result<AmqpBroker, Error> {
    Ok(AmqpBroker::connect(&tls_url(url, cfg), options(cfg)?).await?)
}

pub(crate) fn is_amqp(url: &str) -> bool {
    matches!(url.split_once("://").map(|(s, _)| s), Some("amqp" | "amqps" | "pyamqp"))
}

pub(crate) fn rpc_needs_amqp(broker_url: Option<&str>) -> Error {
    let shown = broker_url
        .map(|u| u.split_once('@').map(|(_, rest)| format!("...@{rest}")).unwrap_or_else(|| u.to_string()))
        .unwrap_or_else(|| "none".into());
    Error::Config(format!(
        "result_backend \"rpc://\" sends results as AMQP messages over the broker: it needs an amqp:// or amqps:// \
         broker_url (broker is {shown:?})"
    ))
}

/// The `rpc://` backend of an app whose broker is `broker_url`, with its own
/// connection (see [`crate::app_from_config`], which shares the broker's).
pub(crate) async fn rpc_backend(broker_url: Option<&str>, cfg: &Config) -> Result<Arc<RpcBackend>, Error> {
    match broker_url {
        Some(u) if is_amqp(u) => Ok(Arc::new(RpcBackend::connect(&tls_url(u, cfg), rpc_options(cfg)).await?)),
        other => Err(rpc_needs_amqp(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_dir() -> PathBuf {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let d = std::env::temp_dir().join(format!("qtask-amqp-tls-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn broker_use_ssl_becomes_tls_options_and_an_amqps_url() {
        let d = temp_dir();
        let ca = d.join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n").unwrap();
        let toml =
            format!("broker_use_ssl = {{ ca_certs = {:?}, cert_reqs = \"CERT_REQUIRED\" }}", ca.display().to_string());
        let cfg = Config::from_toml_str(&toml).unwrap();
        let o = options(&cfg).unwrap();
        assert_eq!(o.tls.ca_path(), Some(ca.as_path()));
        assert_eq!(tls_url("amqp://u:p@h/v", &cfg), "amqps://u:p@h/v");
        assert_eq!(tls_url("pyamqp://h", &cfg), "amqps://h");
        assert_eq!(tls_url("amqps://h:5671", &cfg), "amqps://h:5671");
        let plain = Config::default();
        assert_eq!(tls_url("amqp://h", &plain), "amqp://h");
        assert_eq!(options(&plain).unwrap().tls, TlsOptions::default());

        // A missing file is a configuration error naming it.
        let missing = d.join("nope.pem");
        let toml = format!("broker_use_ssl = {{ ca_certs = {:?} }}", missing.display().to_string());
        let e = options(&Config::from_toml_str(&toml).unwrap()).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }
}
