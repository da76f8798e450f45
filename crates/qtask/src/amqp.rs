//! RabbitMQ (feature `amqp`): the AMQP broker and Celery's `rpc://` backend.

use std::sync::Arc;

use qamqp::{AmqpBroker, AmqpOptions, RpcBackend, RpcOptions};
use qcore::{Config, Error};

/// Broker settings from `cfg`: `task_queue_max_priority` (`x-max-priority`
/// on task queues, as Celery declares them), `max_deliveries`, and the
/// worker's node name (`worker_hostname`, also put in the connection name).
pub(crate) fn options(cfg: &Config) -> AmqpOptions {
    let mut o = AmqpOptions::default();
    let max_priority = cfg
        .extra
        .get("task_queue_max_priority")
        .and_then(|v| v.as_integer().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())));
    if let Some(p) = max_priority.filter(|p| *p > 0) {
        o = o.queue_max_priority(p.clamp(0, 255) as u8);
    }
    if let Some(m) = cfg.max_deliveries {
        o = o.max_deliveries(Some(m));
    }
    if let Some(h) = &cfg.worker_hostname {
        // Also the connections' `connection_name` (`<node>/publish`,
        // `<node>/consume`), so operators can tell workers apart.
        o = o.node_name(h.clone()).connection_name(format!("qtask {h}"));
    }
    o
}

/// Result settings from `cfg`: `result_expires` (reply queue `x-expires`),
/// `result_persistent`, `result_serializer`.
pub(crate) fn rpc_options(cfg: &Config) -> RpcOptions {
    let mut o = RpcOptions::default().expires(Some(cfg.result_expires));
    if let Some(p) = cfg.extra.get("result_persistent").and_then(|v| v.as_bool()) {
        o = o.persistent(p);
    }
    if let Some(ct) =
        cfg.extra.get("result_serializer").and_then(|v| v.as_str()).and_then(|s| qcore::ContentType::from_mime(s).ok())
    {
        o = o.serializer(ct);
    }
    o
}

pub(crate) async fn broker(url: &str, cfg: &Config) -> Result<AmqpBroker, Error> {
    Ok(AmqpBroker::connect(url, options(cfg)).await?)
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
        Some(u) if is_amqp(u) => Ok(Arc::new(RpcBackend::connect(u, rpc_options(cfg)).await?)),
        other => Err(rpc_needs_amqp(other)),
    }
}
