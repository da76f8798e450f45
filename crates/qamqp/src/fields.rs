//! JSON values ↔ AMQP field values, with the type tags py-amqp writes.
//!
//! | JSON | AMQP | note |
//! |---|---|---|
//! | string | `S` long string | py-amqp also writes `bytes` as `S` |
//! | bool | `t` | |
//! | integer in ±2147483647 | `I` signed 32 | py-amqp's range (−2³¹ itself goes to 64 bits) |
//! | other integer in i64 | signed 64 | py-amqp writes the tag `L`, amq-protocol always `l`: same 8 bytes, RabbitMQ and py-amqp read both as a signed 64-bit integer |
//! | integer above i64 | error | py-amqp cannot encode it either |
//! | float | `d` double | |
//! | null | `V` void | |
//! | object | `F` table | also for `{}` |
//! | array | `A` array | |
//!
//! Reading accepts every type RabbitMQ or another client may send: all
//! integer widths (`b B s u I i l L`), `f`, `d`, `D` (decimal → float),
//! `T` (timestamp → integer seconds), `S` and `x` (UTF-8 → string; other
//! bytes → their standard base64 text, since JSON has no bytes), `A`, `F`, `V`.

use base64::Engine as _;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use qcore::{BrokerError, ErrorKind};
use serde_json::{Map, Number, Value};

/// A [`ShortString`] (queue, exchange, routing key, property) or a
/// [`ErrorKind::Config`] error if it is longer than 255 bytes. Never
/// `ShortString::from`, which panics on long input.
pub(crate) fn short(s: &str, what: &str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(s).map_err(|_| {
        BrokerError::new(ErrorKind::Config, format!("{what} is {} bytes long; AMQP allows 255: {s:.64}...", s.len()))
    })
}

fn ser(what: String) -> BrokerError {
    BrokerError::new(ErrorKind::Serialization, what)
}

/// Encode one JSON value.
pub(crate) fn to_amqp(v: &Value) -> Result<AMQPValue, BrokerError> {
    Ok(match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                if (-2_147_483_647..=2_147_483_647).contains(&i) {
                    AMQPValue::LongInt(i as i32)
                } else {
                    AMQPValue::LongLongInt(i)
                }
            } else if n.is_u64() {
                return Err(ser(format!("integer {n} does not fit an AMQP header (signed 64 bits)")));
            } else {
                AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Array(items) => {
            AMQPValue::FieldArray(FieldArray::from(items.iter().map(to_amqp).collect::<Result<Vec<_>, _>>()?))
        }
        Value::Object(m) => AMQPValue::FieldTable(to_table(m)?),
    })
}

/// Encode a JSON object as a field table.
pub(crate) fn to_table(m: &Map<String, Value>) -> Result<FieldTable, BrokerError> {
    let mut t = FieldTable::default();
    for (k, v) in m {
        let key = ShortString::try_new(k.as_str())
            .map_err(|_| ser(format!("header name longer than 255 bytes: {k:.64}...")))?;
        t.insert(key, to_amqp(v)?);
    }
    Ok(t)
}

fn bytes_to_json(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// Decode one field value (any type).
pub(crate) fn from_amqp(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::from(*i),
        AMQPValue::ShortShortUInt(i) => Value::from(*i),
        AMQPValue::ShortInt(i) => Value::from(*i),
        AMQPValue::ShortUInt(i) => Value::from(*i),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::LongUInt(i) => Value::from(*i),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(d) => float(*d),
        AMQPValue::DecimalValue(d) => float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => bytes_to_json(s.as_bytes()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(from_amqp).collect()),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => Value::Object(from_table(t)),
        AMQPValue::ByteArray(b) => bytes_to_json(b.as_slice()),
        AMQPValue::Void => Value::Null,
    }
}

/// Decode a field table (keys in the table's order).
pub(crate) fn from_table(t: &FieldTable) -> Map<String, Value> {
    t.inner().iter().map(|(k, v)| (k.as_str().to_owned(), from_amqp(v))).collect()
}

/// The type tag py-amqp would show for a value (tests and diagnostics).
#[cfg(test)]
pub(crate) fn tag(v: &AMQPValue) -> char {
    v.get_type().get_id()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn py_amqp_tags() {
        let cases = [
            (json!("s"), 'S'),
            (json!(true), 't'),
            (json!(0), 'I'),
            (json!(-5), 'I'),
            (json!(2_147_483_647), 'I'),
            (json!(-2_147_483_647), 'I'),
            (json!(-2_147_483_648i64), 'l'),
            (json!(1u64 << 40), 'l'),
            (json!(1.25), 'd'),
            (json!(null), 'V'),
            (json!({}), 'F'),
            (json!([1, "a"]), 'A'),
        ];
        for (v, t) in cases {
            let a = to_amqp(&v).unwrap();
            assert_eq!(tag(&a), t, "{v}");
            assert_eq!(from_amqp(&a), v, "round trip of {v}");
        }
        assert_eq!(to_amqp(&json!(u64::MAX)).unwrap_err().kind(), ErrorKind::Serialization);
    }

    #[test]
    fn reads_every_type() {
        use lapin::types::{ByteArray, DecimalValue};
        assert_eq!(from_amqp(&AMQPValue::ShortShortInt(-3)), json!(-3));
        assert_eq!(from_amqp(&AMQPValue::LongUInt(7)), json!(7));
        assert_eq!(from_amqp(&AMQPValue::Float(0.5)), json!(0.5));
        assert_eq!(from_amqp(&AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 125 })), json!(1.25));
        assert_eq!(from_amqp(&AMQPValue::Timestamp(1_700_000_000)), json!(1_700_000_000u64));
        assert_eq!(from_amqp(&AMQPValue::ByteArray(ByteArray::from(b"ab".to_vec()))), json!("ab"));
        assert_eq!(from_amqp(&AMQPValue::ByteArray(ByteArray::from(vec![0xff, 0x00]))), json!("/wA="));
        assert_eq!(from_amqp(&AMQPValue::LongString(LongString::from(vec![0x00, 0x01]))), json!("\u{0}\u{1}"));
        assert_eq!(from_amqp(&AMQPValue::Double(f64::NAN)), json!(null));
    }

    #[test]
    fn long_names_are_errors_not_panics() {
        let long = "x".repeat(300);
        assert_eq!(short(&long, "queue name").unwrap_err().kind(), ErrorKind::Config);
        let mut m = Map::new();
        m.insert(long, json!(1));
        assert!(to_table(&m).is_err());
    }
}
