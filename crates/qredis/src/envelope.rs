//! The kombu Redis envelope: the JSON text stored in a queue list (and sent
//! on a fanout channel) around every message.
//!
//! ```text
//! {"body": "<base64>", "content-encoding": "utf-8", "content-type": "application/json",
//!  "headers": {...}, "properties": {"correlation_id": ..., "reply_to": ..., <other properties>,
//!  "delivery_mode": 2, ["expiration": "600000",] "delivery_info": {"exchange": "", "routing_key": "celery"},
//!  "priority": 0, "body_encoding": "base64", "delivery_tag": "<uuid4>"}}
//! ```
//!
//! Written with Python's `json.dumps` separators and key order, so a message
//! decoded from kombu's bytes and encoded again with the same delivery tag
//! gives the same bytes.

use std::io::Write;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use qcore::{Message, Properties, ProtocolError};
use serde_json::{Map, Value};

/// Standard base64 with padding on output, padding optional on input.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Properties kombu's Redis transport writes itself (not part of [`Properties`]).
const TRANSPORT_PROPERTIES: [&str; 4] = ["delivery_info", "body_encoding", "delivery_tag", "priority"];
/// Properties with a typed field in [`Properties`].
const TYPED_PROPERTIES: [&str; 4] = ["correlation_id", "reply_to", "delivery_mode", "expiration"];

/// A decoded envelope.
///
/// The transport flags kombu writes into a restored message's headers
/// (`redelivered`) and qtask's restore counter (`x-qtask-deliveries`) are
/// taken out of [`Message::headers`]: the message is the same whatever the
/// broker, and [`Envelope::redelivered`] reports the flag.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Envelope {
    /// The message inside.
    pub message: Message,
    /// `properties.delivery_tag` (kombu's ack key), if present.
    pub delivery_tag: Option<String>,
    /// `properties.delivery_info.exchange`.
    pub exchange: String,
    /// `properties.delivery_info.routing_key`.
    pub routing_key: String,
    /// `properties.delivery_info.redelivered` or `headers.redelivered`.
    pub redelivered: bool,
}

fn invalid(reason: impl Into<String>) -> ProtocolError {
    ProtocolError::Invalid(reason.into())
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = qcore::json::to_writer(&mut *out, s);
}

/// Encode `message` as kombu's Redis transport stores it.
///
/// `exchange` and `routing_key` go to `properties.delivery_info` (tasks:
/// exchange `""`, routing key = queue); `delivery_tag` should be a fresh
/// uuid4 per publish.
pub fn encode(message: &Message, exchange: &str, routing_key: &str, delivery_tag: &str) -> Vec<u8> {
    let p = &message.properties;
    let mut out = Vec::with_capacity(message.body.len() * 4 / 3 + 512);
    out.extend_from_slice(b"{\"body\": \"");
    let start = out.len();
    out.resize(start + message.body.len().div_ceil(3) * 4, 0);
    let written = B64.encode_slice(&message.body, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
    out.extend_from_slice(b"\", \"content-encoding\": ");
    write_str(&mut out, &p.content_encoding);
    out.extend_from_slice(b", \"content-type\": ");
    write_str(&mut out, &p.content_type);
    out.extend_from_slice(b", \"headers\": ");
    let _ = qcore::json::to_writer(&mut out, &message.headers);
    out.extend_from_slice(b", \"properties\": {");
    if let Some(c) = &p.correlation_id {
        out.extend_from_slice(b"\"correlation_id\": ");
        write_str(&mut out, c);
        out.extend_from_slice(b", ");
    }
    if let Some(r) = &p.reply_to {
        out.extend_from_slice(b"\"reply_to\": ");
        write_str(&mut out, r);
        out.extend_from_slice(b", ");
    }
    for (k, v) in &p.extra {
        if TRANSPORT_PROPERTIES.contains(&k.as_str()) || TYPED_PROPERTIES.contains(&k.as_str()) {
            continue;
        }
        write_str(&mut out, k);
        out.extend_from_slice(b": ");
        let _ = qcore::json::to_writer(&mut out, v);
        out.extend_from_slice(b", ");
    }
    let _ = write!(out, "\"delivery_mode\": {}, ", p.delivery_mode);
    if let Some(e) = &p.expiration {
        out.extend_from_slice(b"\"expiration\": ");
        write_str(&mut out, e);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(b"\"delivery_info\": {\"exchange\": ");
    write_str(&mut out, exchange);
    out.extend_from_slice(b", \"routing_key\": ");
    write_str(&mut out, routing_key);
    let _ = write!(out, "}}, \"priority\": {}, \"body_encoding\": \"base64\", \"delivery_tag\": ", p.priority);
    write_str(&mut out, delivery_tag);
    out.extend_from_slice(b"}}");
    out
}

/// Decode an envelope from its JSON bytes.
pub fn decode(bytes: &[u8]) -> Result<Envelope, ProtocolError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ProtocolError::Decode { what: "redis envelope", reason: e.to_string() })?;
    decode_value(value)
}

fn opt_string(v: Option<Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    }
}

/// Decode an envelope already parsed as JSON.
pub fn decode_value(value: Value) -> Result<Envelope, ProtocolError> {
    let Value::Object(mut env) = value else {
        return Err(invalid("redis envelope is not a JSON object"));
    };
    let mut props = match env.remove("properties") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(invalid("envelope properties is not an object")),
    };
    let mut headers = match env.remove("headers") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(invalid("envelope headers is not an object")),
    };
    let base64_body = matches!(props.get("body_encoding"), Some(Value::String(s)) if s == "base64");
    let body = match env.remove("body") {
        Some(Value::String(s)) if base64_body => B64
            .decode(s.as_bytes())
            .map_err(|e| ProtocolError::Decode { what: "base64 body", reason: e.to_string() })?,
        Some(Value::String(s)) => s.into_bytes(),
        None | Some(Value::Null) => Vec::new(),
        Some(other) => qcore::json::to_vec(&other)
            .map_err(|e| ProtocolError::Encode { what: "inline JSON body", reason: e.to_string() })?,
    };
    let defaults = Properties::default();
    let content_type = opt_string(env.remove("content-type")).unwrap_or(defaults.content_type);
    let content_encoding = opt_string(env.remove("content-encoding")).unwrap_or(defaults.content_encoding);

    let (exchange, routing_key, info_redelivered) = match props.remove("delivery_info") {
        Some(Value::Object(mut info)) => (
            opt_string(info.remove("exchange")).unwrap_or_default(),
            opt_string(info.remove("routing_key")).unwrap_or_default(),
            matches!(info.get("redelivered"), Some(Value::Bool(true))),
        ),
        _ => (String::new(), String::new(), false),
    };
    let delivery_tag = opt_string(props.remove("delivery_tag"));
    props.remove("body_encoding");
    let priority = match props.remove("priority") {
        Some(Value::Number(n)) => n.as_u64().map(|p| p.min(255) as u8).unwrap_or(0),
        _ => 0,
    };
    let delivery_mode = match props.remove("delivery_mode") {
        Some(Value::Number(n)) => n.as_u64().map(|p| p.min(255) as u8).unwrap_or(defaults.delivery_mode),
        _ => defaults.delivery_mode,
    };
    let correlation_id = opt_string(props.remove("correlation_id"));
    let reply_to = opt_string(props.remove("reply_to"));
    let expiration = opt_string(props.remove("expiration"));
    // Transport flags kombu (and qtask's restore) add to the stored headers:
    // reported as `redelivered`, not part of the message.
    let header_redelivered = match headers.get("redelivered") {
        Some(Value::Bool(b)) => {
            let b = *b;
            headers.remove("redelivered");
            b
        }
        _ => false,
    };
    if matches!(headers.get(crate::keys::DELIVERIES_HEADER), Some(Value::Number(_))) {
        headers.remove(crate::keys::DELIVERIES_HEADER);
    }
    let redelivered = info_redelivered || header_redelivered;
    Ok(Envelope {
        message: Message {
            headers,
            properties: Properties {
                content_type,
                content_encoding,
                correlation_id,
                reply_to,
                delivery_mode,
                priority,
                expiration,
                extra: props,
            },
            body,
        },
        delivery_tag,
        exchange,
        routing_key,
        redelivered,
    })
}

/// Mark a stored envelope as redelivered the way kombu does on restore and
/// requeue: `headers.redelivered = true` and
/// `properties.delivery_info.redelivered = true`, everything else (key
/// order, delivery tag) unchanged. `bump` names a header to increment.
pub(crate) fn mark_redelivered(raw: &[u8], bump: Option<&str>) -> Result<(Vec<u8>, u64), ProtocolError> {
    let mut value: Value = serde_json::from_slice(raw)
        .map_err(|e| ProtocolError::Decode { what: "redis envelope", reason: e.to_string() })?;
    let Value::Object(env) = &mut value else {
        return Err(invalid("redis envelope is not a JSON object"));
    };
    let mut count = 0;
    if let Some(Value::Object(h)) = env.get_mut("headers") {
        h.insert("redelivered".into(), Value::Bool(true));
        if let Some(name) = bump {
            count = h.get(name).and_then(Value::as_u64).unwrap_or(0) + 1;
            h.insert(name.into(), Value::from(count));
        }
    }
    if let Some(Value::Object(p)) = env.get_mut("properties") {
        if let Some(Value::Object(info)) = p.get_mut("delivery_info") {
            info.insert("redelivered".into(), Value::Bool(true));
        }
    }
    let out = qcore::json::to_vec(&value)
        .map_err(|e| ProtocolError::Encode { what: "redis envelope", reason: e.to_string() })?;
    Ok((out, count))
}

/// How many times qtask restored this envelope after a lost delivery
/// (the `x-qtask-deliveries` header), without decoding the body.
pub(crate) fn restores(raw: &[u8]) -> u64 {
    serde_json::from_slice::<Value>(raw)
        .ok()
        .and_then(|v| v.get("headers")?.get(crate::keys::DELIVERIES_HEADER)?.as_u64())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_properties_keep_their_place() {
        let raw = br#"{"body": "e30=", "content-encoding": "utf-8", "content-type": "application/json", "headers": {}, "properties": {"correlation_id": "x", "reply_to": "r", "origin": "gen@vm", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "t"}}"#;
        let env = decode(raw).unwrap();
        assert_eq!(env.message.body, b"{}");
        assert_eq!(env.message.properties.extra.get("origin"), Some(&Value::from("gen@vm")));
        assert_eq!(encode(&env.message, "", "celery", "t"), raw.to_vec());
    }

    #[test]
    fn redelivered_flags_are_appended() {
        let raw = br#"{"body": "", "headers": {"a": 1}, "properties": {"delivery_info": {"exchange": "", "routing_key": "q"}, "delivery_tag": "t"}}"#;
        let (out, n) = mark_redelivered(raw, Some("x-n")).unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"{"body": "", "headers": {"a": 1, "redelivered": true, "x-n": 1}, "properties": {"delivery_info": {"exchange": "", "routing_key": "q", "redelivered": true}, "delivery_tag": "t"}}"#
        );
        assert!(decode(&out).unwrap().redelivered);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(b"not json").is_err());
        assert!(decode(b"[1, 2]").is_err());
        assert!(decode(br#"{"body": "!!!", "properties": {"body_encoding": "base64"}}"#).is_err());
        assert!(decode(br#"{"headers": 5}"#).is_err());
    }
}
