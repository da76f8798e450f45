//! [`Message`] ↔ AMQP basic properties, as py-amqp writes them.
//!
//! Sent properties: `content_type`, `content_encoding`, `headers` (always,
//! `{}` when empty), `delivery_mode`, `priority` (always, also 0), and
//! `correlation_id`, `reply_to`, `expiration` when set: the property-flag
//! words are Celery's `0xfe00`/`0xff00` for tasks and `0xf800` for events.
//! `message_id`, `timestamp`, `type`, `user_id`, `app_id` are never sent
//! (Celery does not); when received they are kept in
//! [`Properties::extra`](qcore::Properties::extra).
//!
//! Header order: AMQP tables have no order and lapin keeps them sorted by
//! name, so headers go out sorted (py-amqp writes them in insertion order;
//! no Celery component depends on it). On receipt Celery's protocol-2
//! headers are put back in Celery's order, followed by the others.

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use qcore::message::PROTOCOL2_HEADERS;
use qcore::{BrokerError, Message, Properties};
use serde_json::{Map, Value};

use crate::fields::{from_amqp, short, to_amqp, to_table};

/// Delivery count kept by qtask on classic queues (see the crate docs).
pub(crate) const H_DELIVERIES: &str = "x-qtask-deliveries";
/// Due time (ms since the epoch) of a deferred message.
pub(crate) const H_ETA: &str = "x-qtask-eta";
/// The `expiration` property of a deferred message, kept while it waits.
pub(crate) const H_EXPIRATION: &str = "x-qtask-expiration";
/// Why a message was dead-lettered.
pub(crate) const H_DEAD_REASON: &str = "x-qtask-dead-reason";
/// RabbitMQ's delivery counter on quorum queues.
pub(crate) const H_DELIVERY_COUNT: &str = "x-delivery-count";

/// What the consumer reads from qtask's own headers before they are removed.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Internal {
    /// `x-qtask-deliveries`.
    pub(crate) deliveries: Option<u64>,
    /// `x-delivery-count` (quorum queues).
    pub(crate) delivery_count: Option<u64>,
    /// `x-qtask-eta`.
    pub(crate) eta_ms: Option<i64>,
}

fn is_dead_letter_annotation(k: &str) -> bool {
    k == "x-death" || k.starts_with("x-first-death-") || k.starts_with("x-last-death-")
}

/// Whether a header is qtask's or RabbitMQ's bookkeeping, never shown to
/// the application. RabbitMQ's `x-death` annotations are only removed from
/// messages that came back through a qtask delay queue.
fn is_internal(k: &str, deferred: bool) -> bool {
    k.starts_with("x-qtask-") || k == H_DELIVERY_COUNT || (deferred && is_dead_letter_annotation(k))
}

fn as_u64(v: &AMQPValue) -> Option<u64> {
    from_amqp(v).as_u64()
}

fn short_opt(v: &Option<ShortString>) -> Option<String> {
    v.as_ref().map(|s| s.as_str().to_owned())
}

/// The message and qtask's bookkeeping from a delivery's properties and body.
pub(crate) fn decode(props: &BasicProperties, body: Vec<u8>) -> (Message, Internal) {
    let mut internal = Internal::default();
    let mut headers = Map::new();
    let mut expiration = short_opt(props.expiration());
    if let Some(t) = props.headers() {
        let t = t.inner();
        let deferred = t.contains_key(H_ETA);
        internal.deliveries = t.get(H_DELIVERIES).and_then(as_u64);
        internal.delivery_count = t.get(H_DELIVERY_COUNT).and_then(as_u64);
        internal.eta_ms = t.get(H_ETA).and_then(|v| from_amqp(v).as_i64());
        if let Some(AMQPValue::LongString(s)) = t.get(H_EXPIRATION) {
            expiration = std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned);
        }
        for k in PROTOCOL2_HEADERS {
            if let Some(v) = t.get(k) {
                headers.insert(k.to_owned(), from_amqp(v));
            }
        }
        for (k, v) in t {
            let k = k.as_str();
            if !PROTOCOL2_HEADERS.contains(&k) && !is_internal(k, deferred) {
                headers.insert(k.to_owned(), from_amqp(v));
            }
        }
    }
    let mut extra = Map::new();
    let mut keep = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            extra.insert(k.to_owned(), v);
        }
    };
    keep("message_id", short_opt(props.message_id()).map(Value::String));
    keep("timestamp", props.timestamp().map(Value::from));
    keep("type", short_opt(props.kind()).map(Value::String));
    keep("user_id", short_opt(props.user_id()).map(Value::String));
    keep("app_id", short_opt(props.app_id()).map(Value::String));
    keep("cluster_id", short_opt(props.cluster_id()).map(Value::String));
    let properties = Properties {
        content_type: short_opt(props.content_type()).unwrap_or_default(),
        content_encoding: short_opt(props.content_encoding()).unwrap_or_default(),
        correlation_id: short_opt(props.correlation_id()),
        reply_to: short_opt(props.reply_to()),
        delivery_mode: props.delivery_mode().unwrap_or(1),
        priority: props.priority().unwrap_or(0),
        expiration,
        extra,
    };
    (Message { headers, properties, body }, internal)
}

/// Properties for publishing `msg`, exactly as py-amqp would send them.
pub(crate) fn encode(msg: &Message) -> Result<BasicProperties, BrokerError> {
    let p = &msg.properties;
    let mut props = BasicProperties::default()
        .with_content_type(short(&p.content_type, "content_type")?)
        .with_content_encoding(short(&p.content_encoding, "content_encoding")?)
        .with_headers(to_table(&msg.headers)?)
        .with_delivery_mode(p.delivery_mode)
        .with_priority(p.priority);
    if let Some(c) = &p.correlation_id {
        props = props.with_correlation_id(short(c, "correlation_id")?);
    }
    if let Some(r) = &p.reply_to {
        props = props.with_reply_to(short(r, "reply_to")?);
    }
    if let Some(e) = &p.expiration {
        props = props.with_expiration(short(e, "expiration")?);
    }
    Ok(props)
}

/// The received properties for re-publishing the same message elsewhere
/// (delay queue, dead-letter queue, requeue with a count): the original
/// headers without qtask's bookkeeping (and without RabbitMQ's `x-death`
/// annotations of a deferred message), plus `set`. The `expiration`
/// property is dropped when `stash_expiration` (a per-message TTL must not
/// run while the message waits in a delay queue): it is kept in a header
/// and restored on receipt.
pub(crate) fn republish(
    raw: &BasicProperties,
    set: Vec<(&str, Value)>,
    stash_expiration: bool,
) -> Result<BasicProperties, BrokerError> {
    let mut table = FieldTable::default();
    let mut expiration = short_opt(raw.expiration());
    if let Some(t) = raw.headers() {
        let deferred = t.contains_key(H_ETA);
        if let Some(AMQPValue::LongString(s)) = t.inner().get(H_EXPIRATION) {
            if expiration.is_none() {
                expiration = std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned);
            }
        }
        for (k, v) in t {
            if !is_internal(k.as_str(), deferred) {
                table.insert(k.clone(), v.clone());
            }
        }
    }
    if stash_expiration {
        if let Some(e) = expiration.take() {
            table.insert(short(H_EXPIRATION, "header")?, AMQPValue::LongString(e.into_bytes().into()));
        }
    }
    for (k, v) in set {
        table.insert(short(k, "header")?, to_amqp(&v)?);
    }
    let mut props = raw.clone().with_headers(table);
    props = match expiration {
        Some(e) => props.with_expiration(short(&e, "expiration")?),
        None => without_expiration(props),
    };
    Ok(props)
}

fn without_expiration(p: BasicProperties) -> BasicProperties {
    // There is no setter that clears a property: rebuild it field by field.
    let mut out = BasicProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.headers() {
        out = out.with_headers(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Message {
        let mut headers = Map::new();
        headers.insert("lang".into(), json!("py"));
        headers.insert("task".into(), json!("t"));
        headers.insert("id".into(), json!("abc"));
        headers.insert("x-custom".into(), json!({"a": [1, null]}));
        Message {
            headers,
            properties: Properties {
                correlation_id: Some("abc".into()),
                reply_to: Some("r".into()),
                expiration: Some("600000".into()),
                ..Properties::default()
            },
            body: b"[]".to_vec(),
        }
    }

    #[test]
    fn round_trip_and_flags() {
        let m = sample();
        let p = encode(&m).unwrap();
        assert_eq!(p.bitmask(), 0xff00);
        let (back, internal) = decode(&p, m.body.clone());
        assert_eq!(back, m);
        assert_eq!(internal, Internal::default());
        let order: Vec<&str> = back.headers.keys().map(String::as_str).collect();
        assert_eq!(order, ["lang", "task", "id", "x-custom"], "Celery's order first");
        let mut ev = sample();
        ev.properties = Properties { delivery_mode: 1, ..Properties::default() };
        assert_eq!(encode(&ev).unwrap().bitmask(), 0xf800);
    }

    #[test]
    fn republish_stashes_and_restores_expiration_and_hides_bookkeeping() {
        let m = sample();
        let raw = encode(&m).unwrap();
        let deferred =
            republish(&raw, vec![(H_ETA, json!(1_700_000_000_000i64)), (H_DELIVERIES, json!(2))], true).unwrap();
        assert_eq!(*deferred.expiration(), None, "no per-message TTL while waiting");
        // RabbitMQ adds x-death when it dead-letters out of the delay queue.
        let mut t = deferred.headers().clone().unwrap();
        t.insert("x-death".into(), AMQPValue::FieldArray(vec![].into()));
        t.insert("x-first-death-queue".into(), AMQPValue::LongString("qtask.delay.128".into()));
        let arrived = deferred.clone().with_headers(t);
        let (back, internal) = decode(&arrived, m.body.clone());
        assert_eq!(back, m, "the application sees the message as it was sent");
        assert_eq!(internal.eta_ms, Some(1_700_000_000_000));
        assert_eq!(internal.deliveries, Some(2));
        let again = republish(&arrived, vec![], false).unwrap();
        assert_eq!(again.expiration().as_ref().map(|s| s.as_str()), Some("600000"));
        assert!(!again.headers().as_ref().unwrap().contains_key("x-death"));
    }

    #[test]
    fn foreign_properties_are_kept_in_extra() {
        let p = BasicProperties::default().with_message_id("m1".into()).with_timestamp(5).with_app_id("py".into());
        let (m, _) = decode(&p, vec![]);
        assert_eq!(m.properties.extra.get("message_id"), Some(&json!("m1")));
        assert_eq!(m.properties.extra.get("timestamp"), Some(&json!(5)));
        assert_eq!(m.properties.delivery_mode, 1);
        assert_eq!(m.properties.content_type, "");
    }
}
