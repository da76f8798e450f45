//! The AMQP driver: the settings of [`AmqpBroker`] and [`RpcBackend`] read
//! from the app's [`Config`], in one place.

use std::borrow::Cow;
use std::sync::Arc;

use qcore::driver::{BoxFuture, Driver};
use qcore::{Broker, Config, Error, ResultBackend};

use crate::{AmqpBroker, AmqpOptions, RpcBackend, RpcOptions, TlsOptions};

/// The RabbitMQ driver: `amqp://`, `amqps://` (and kombu's `pyamqp://`)
/// brokers, and Celery's `rpc://` result backend over the broker.
pub static DRIVER: Driver = Driver::new("amqp")
    .broker(&["amqp", "amqps", "pyamqp"], connect_broker)
    .backend(&["rpc", "amqp", "amqps"], connect_backend);

impl AmqpOptions {
    /// Broker settings from `cfg`: `task_queue_max_priority` (`x-max-priority`
    /// on task queues, as Celery declares them), `task_default_queue_type`,
    /// `max_deliveries`, the
    /// worker's node name (`worker_hostname`, also put in the connection
    /// name) and `broker_use_ssl` (its files are read here: a missing or bad
    /// one is a configuration error before any connection).
    pub fn from_config(cfg: &Config) -> Result<AmqpOptions, Error> {
        let mut o = AmqpOptions::default();
        if let Some(ssl) = &cfg.broker_use_ssl {
            o = o.tls(TlsOptions::from_files(
                ssl.ca_certs.as_deref(),
                ssl.certfile.as_deref(),
                ssl.keyfile.as_deref(),
            )?);
        }
        if let Some(p) = cfg.task_queue_max_priority {
            o = o.queue_max_priority(p);
        }
        o.queue_type = cfg.task_default_queue_type;
        o.task_queues = cfg.task_queues.clone();
        if let Some(mode) = cfg.broker_transport_options.confirm_publish {
            o = o.confirm_publish(mode);
        }
        if let Some(m) = cfg.max_deliveries {
            o = o.max_deliveries(Some(m));
        }
        if let Some(h) = &cfg.worker_hostname {
            // Also the connections' `connection_name`, so operators can tell workers apart.
            let node = qcore::node_name(Some(h));
            o = o.node_name(node.clone()).connection_name(format!("qtask {node}"));
        }
        Ok(o)
    }
}

impl RpcOptions {
    /// Result settings from `cfg`: `result_expires` (reply queue
    /// `x-expires`), `result_persistent`, `result_serializer`,
    /// `result_accept_content` (else `accept_content`).
    pub fn from_config(cfg: &Config) -> RpcOptions {
        let accept = cfg.result_accept_content.clone().or_else(|| cfg.accept_content.clone());
        let mut o =
            RpcOptions::default().expires(Some(cfg.result_expires)).serializer(cfg.result_serializer).accept(accept);
        if let Some(p) = cfg.result_persistent {
            o = o.persistent(p);
        }
        o
    }
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

fn is_amqp(url: &str) -> bool {
    url.split_once("://").is_some_and(|(s, _)| DRIVER.broker_schemes.iter().any(|k| k.eq_ignore_ascii_case(s)))
}

fn connect_broker<'a>(url: &'a str, cfg: &'a Config) -> BoxFuture<'a, Result<Arc<dyn Broker>, Error>> {
    Box::pin(async move {
        let broker = AmqpBroker::connect(&tls_url(url, cfg), AmqpOptions::from_config(cfg)?).await?;
        Ok(Arc::new(broker) as Arc<dyn Broker>)
    })
}

/// `rpc://` sends results as messages over the broker of `cfg.broker_url`
/// (connections of its own, with the broker's settings: `broker_use_ssl`...).
fn connect_backend<'a>(url: &'a str, cfg: &'a Config) -> BoxFuture<'a, Result<Arc<dyn ResultBackend>, Error>> {
    Box::pin(async move {
        if !url.trim_start().to_ascii_lowercase().starts_with("rpc:") {
            return Err(Error::Config(
                "an amqp:// result backend is Celery's deprecated `amqp` backend: use \"rpc://\" (results over the \
                 broker)"
                    .into(),
            ));
        }
        match cfg.broker_url.as_deref() {
            Some(b) if is_amqp(b) => {
                // Connections of its own, with the broker's settings (TLS files included).
                let options = AmqpOptions::from_config(cfg)?.connection_name("qtask-rpc");
                let link = AmqpBroker::connect(&tls_url(b, cfg), options).await?;
                let backend: RpcBackend = link.rpc_backend(RpcOptions::from_config(cfg)).await?;
                Ok(Arc::new(backend) as Arc<dyn ResultBackend>)
            }
            other => Err(Error::Config(format!(
                "result_backend \"rpc://\" sends results as AMQP messages over the broker: it needs an amqp:// or \
                 amqps:// broker_url (broker is {:?})",
                other.map(qcore::url::redact).unwrap_or_else(|| "none".into())
            ))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "qamqp-driver-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
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
        let o = AmqpOptions::from_config(&cfg).unwrap();
        assert_eq!(o.tls.ca_path(), Some(ca.as_path()));
        assert_eq!(tls_url("amqp://u:p@h/v", &cfg), "amqps://u:p@h/v");
        assert_eq!(tls_url("pyamqp://h", &cfg), "amqps://h");
        assert_eq!(tls_url("amqps://h:5671", &cfg), "amqps://h:5671");
        let plain = Config::default();
        assert_eq!(tls_url("amqp://h", &plain), "amqp://h");
        assert_eq!(AmqpOptions::from_config(&plain).unwrap().tls, TlsOptions::default());

        // A missing file is a configuration error naming it.
        let missing = d.join("nope.pem");
        let toml = format!("broker_use_ssl = {{ ca_certs = {:?} }}", missing.display().to_string());
        let e = AmqpOptions::from_config(&Config::from_toml_str(&toml).unwrap()).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn settings_reach_the_options() {
        let cfg = Config::from_toml_str(
            "task_queue_max_priority = 10\nmax_deliveries = 3\nresult_persistent = false\nresult_expires = 60\n\
             result_serializer = \"msgpack\"",
        )
        .unwrap();
        let o = AmqpOptions::from_config(&cfg).unwrap();
        assert_eq!(o.queue_max_priority, Some(10));
        assert_eq!(o.max_deliveries, Some(3));
        assert_eq!(o.queue_type, crate::QueueType::Classic);
        let quorum = Config::from_toml_str("task_default_queue_type = \"quorum\"").unwrap();
        assert_eq!(AmqpOptions::from_config(&quorum).unwrap().queue_type, crate::QueueType::Quorum);
        let r = RpcOptions::from_config(&cfg);
        assert_eq!(r.expires, Some(std::time::Duration::from_secs(60)));
        assert!(!r.persistent);
        assert_eq!(r.serializer, qcore::ContentType::Msgpack);
    }

    #[tokio::test]
    async fn rpc_needs_an_amqp_broker_and_amqp_results_are_refused() {
        let mut cfg = Config::default();
        cfg.broker_url = Some("redis://:pw@h/0".into());
        let e = connect_backend("rpc://", &cfg).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("needs an amqp://") && !e.contains("pw@"), "{e}");
        let e = connect_backend("amqp://h", &cfg).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("use \"rpc://\""), "{e}");
    }
}
