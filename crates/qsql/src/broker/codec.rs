//! Messages <-> rows: headers and properties as JSON text, body as bytes.

use base64::Engine;
use qcore::{Message, Properties};
use serde_json::{Map, Value};

/// The headers as a JSON object (order kept).
pub(crate) fn headers_json(m: &Message) -> String {
    // A map of JSON values always serializes.
    serde_json::to_string(&m.headers).unwrap_or_else(|_| "{}".into())
}

fn properties_value(p: &Properties) -> Value {
    let mut m = Map::new();
    m.insert("content_type".into(), p.content_type.clone().into());
    m.insert("content_encoding".into(), p.content_encoding.clone().into());
    if let Some(c) = &p.correlation_id {
        m.insert("correlation_id".into(), c.clone().into());
    }
    if let Some(r) = &p.reply_to {
        m.insert("reply_to".into(), r.clone().into());
    }
    m.insert("delivery_mode".into(), p.delivery_mode.into());
    m.insert("priority".into(), p.priority.into());
    if let Some(e) = &p.expiration {
        m.insert("expiration".into(), e.clone().into());
    }
    for (k, v) in &p.extra {
        m.entry(k.clone()).or_insert_with(|| v.clone());
    }
    Value::Object(m)
}

/// The properties as a JSON object.
pub(crate) fn properties_json(p: &Properties) -> String {
    properties_value(p).to_string()
}

fn properties_from(v: Value) -> Result<Properties, String> {
    let Value::Object(mut m) = v else { return Err("properties are not a JSON object".into()) };
    let mut take_str = |k: &str| match m.remove(k) {
        Some(Value::String(s)) => Ok(Some(s)),
        None | Some(Value::Null) => Ok(None),
        Some(other) => Err(format!("property {k} is not a string: {other}")),
    };
    let d = Properties::default();
    let content_type = take_str("content_type")?.unwrap_or(d.content_type);
    let content_encoding = take_str("content_encoding")?.unwrap_or(d.content_encoding);
    let correlation_id = take_str("correlation_id")?;
    let reply_to = take_str("reply_to")?;
    let expiration = take_str("expiration")?;
    let small = |v: Option<Value>, default: u8| -> u8 {
        v.and_then(|v| v.as_u64()).map_or(default, |n| u8::try_from(n).unwrap_or(u8::MAX))
    };
    let delivery_mode = small(m.remove("delivery_mode"), d.delivery_mode);
    let priority = small(m.remove("priority"), d.priority);
    Ok(Properties {
        content_type,
        content_encoding,
        correlation_id,
        reply_to,
        delivery_mode,
        priority,
        expiration,
        extra: m,
    })
}

/// Rebuild a message from its stored columns; the error says what is wrong.
pub(crate) fn decode_message(headers: &str, properties: &str, body: Vec<u8>) -> Result<Message, String> {
    let headers = match serde_json::from_str::<Value>(headers) {
        Ok(Value::Object(h)) => h,
        Ok(_) => return Err("headers are not a JSON object".into()),
        Err(e) => return Err(format!("headers are not JSON: {e}")),
    };
    let properties =
        properties_from(serde_json::from_str(properties).map_err(|e| format!("properties are not JSON: {e}"))?)?;
    Ok(Message { headers, properties, body })
}

/// A fanout message as one JSON text (NOTIFY payload or table row).
pub(crate) fn fanout_payload(routing_key: &str, m: &Message) -> String {
    let mut o = Map::new();
    o.insert("k".into(), routing_key.into());
    o.insert("h".into(), Value::Object(m.headers.clone()));
    o.insert("p".into(), properties_value(&m.properties));
    o.insert("b".into(), base64::engine::general_purpose::STANDARD.encode(&m.body).into());
    Value::Object(o).to_string()
}

/// Decode [`fanout_payload`].
pub(crate) fn decode_fanout(payload: &str) -> Result<(String, Message), String> {
    let v: Value = serde_json::from_str(payload).map_err(|e| format!("fanout payload is not JSON: {e}"))?;
    let Value::Object(mut o) = v else { return Err("fanout payload is not an object".into()) };
    let rk = o.remove("k").and_then(|k| k.as_str().map(str::to_owned)).unwrap_or_default();
    let headers = match o.remove("h") {
        Some(Value::Object(h)) => h,
        _ => return Err("fanout headers missing".into()),
    };
    let properties = properties_from(o.remove("p").unwrap_or(Value::Object(Map::new())))?;
    let body = match o.remove("b") {
        Some(Value::String(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map_err(|e| format!("fanout body is not base64: {e}"))?,
        _ => Vec::new(),
    };
    Ok((rk, Message { headers, properties, body }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let mut m = Message::default();
        m.headers.insert("task".into(), "tasks.add".into());
        m.headers.insert("id".into(), "abc".into());
        m.headers.insert("x-zz".into(), Value::Null);
        m.properties.correlation_id = Some("abc".into());
        m.properties.priority = 7;
        m.properties.extra.insert("body_encoding".into(), "base64".into());
        m.body = b"[[1, 2], {}, {}]".to_vec();
        m
    }

    #[test]
    fn messages_round_trip_through_columns() {
        let m = sample();
        let back = decode_message(&headers_json(&m), &properties_json(&m.properties), m.body.clone()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.headers.keys().collect::<Vec<_>>(), vec!["task", "id", "x-zz"]);
    }

    #[test]
    fn fanout_payload_round_trips() {
        let m = sample();
        let (rk, back) = decode_fanout(&fanout_payload("worker.heartbeat", &m)).unwrap();
        assert_eq!(rk, "worker.heartbeat");
        assert_eq!(back, m);
    }

    #[test]
    fn malformed_columns_are_errors() {
        assert!(decode_message("[1]", "{}", vec![]).is_err());
        assert!(decode_message("{", "{}", vec![]).is_err());
        assert!(decode_message("{}", "{\"priority\": 1, \"content_type\": 3}", vec![]).is_err());
    }
}
