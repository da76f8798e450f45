//! Result documents <-> the columns of `celery_taskmeta`, byte for byte as
//! Celery's database backend writes them: `result`, `children`, `args` and
//! `kwargs` hold the bytes of the `result_serializer` (JSON or msgpack),
//! read back in either encoding through [`ResultCodec`].

use chrono::{NaiveDateTime, Utc};
use qcore::{BackendError, ErrorKind, ResultCodec, ResultMeta, State};
use serde_json::{Map, Value};

/// A document ready to be bound.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) status: String,
    /// `json.dumps(result)`, e.g. `35` or the exception map.
    pub(crate) result: Vec<u8>,
    /// Naive UTC. Celery's database backend also stamps non-ready states.
    pub(crate) date_done: NaiveDateTime,
    pub(crate) traceback: Option<String>,
    /// `json.dumps(children)`, NULL when there are none (as Celery writes it).
    pub(crate) children: Option<Vec<u8>>,
    pub(crate) name: Option<String>,
    pub(crate) args: Option<Vec<u8>>,
    pub(crate) kwargs: Option<Vec<u8>>,
    pub(crate) worker: Option<String>,
    pub(crate) retries: Option<i32>,
    pub(crate) queue: Option<String>,
    /// Fields Celery's table has no column for (group_id, parent_id, unknown
    /// fields, whether children was null), kept in qtask's side table.
    pub(crate) side: Option<String>,
    pub(crate) ready: bool,
}

/// The serializer's bytes of a stored value (`self.encode(value)` in Celery).
pub(crate) fn encode_value(c: &ResultCodec, v: &Value) -> Result<Vec<u8>, BackendError> {
    c.encode(v).map_err(|e| BackendError::with_source(ErrorKind::Serialization, "cannot encode result", e))
}

/// Encode `meta` as Celery's database backend would store it.
pub(crate) fn encode(c: &ResultCodec, meta: &ResultMeta) -> Result<Encoded, BackendError> {
    let py_json = |v: &Value| encode_value(c, v);
    let children = match &meta.children {
        Some(c) if !c.is_empty() => Some(py_json(&Value::Array(c.clone()))?),
        _ => None,
    };
    let mut side = Map::new();
    if let Some(g) = &meta.group_id {
        side.insert("group_id".into(), Value::String(g.clone()));
    }
    if let Some(p) = &meta.parent_id {
        side.insert("parent_id".into(), Value::String(p.clone()));
    }
    if meta.children.is_none() {
        side.insert("children_null".into(), Value::Bool(true));
    }
    if !meta.extra.is_empty() {
        side.insert("extra".into(), Value::Object(meta.extra.clone()));
    }
    let side = if side.is_empty() { None } else { Some(Value::Object(side).to_string()) };
    Ok(Encoded {
        status: meta.status.as_str().to_string(),
        result: py_json(&meta.result)?,
        date_done: meta.date_done.unwrap_or_else(Utc::now).naive_utc(),
        traceback: meta.traceback.clone(),
        children,
        name: meta.name.clone(),
        args: meta.args.as_ref().map(&py_json).transpose()?,
        kwargs: meta.kwargs.as_ref().map(&py_json).transpose()?,
        worker: meta.worker.clone(),
        retries: meta.retries.map(|r| i32::try_from(r).unwrap_or(i32::MAX)),
        queue: meta.queue.clone(),
        side,
        ready: meta.status.is_ready(),
    })
}

/// One row as read back.
#[derive(Debug, Default)]
pub(crate) struct Raw {
    pub(crate) status: Option<String>,
    pub(crate) result: Option<Vec<u8>>,
    pub(crate) date_done: Option<NaiveDateTime>,
    pub(crate) traceback: Option<String>,
    pub(crate) children: Option<Vec<u8>>,
    pub(crate) name: Option<String>,
    pub(crate) args: Option<Vec<u8>>,
    pub(crate) kwargs: Option<Vec<u8>>,
    pub(crate) worker: Option<String>,
    pub(crate) retries: Option<i64>,
    pub(crate) queue: Option<String>,
    pub(crate) side: Option<String>,
}

/// A stored value, JSON or msgpack; a pickle is an error naming the setting.
pub(crate) fn decode_value(c: &ResultCodec, task_id: &str, column: &str, bytes: &[u8]) -> Result<Value, BackendError> {
    let what = format!("column {column} of {task_id}");
    c.decode(&what, bytes).map_err(|e| BackendError::new(ErrorKind::Serialization, e.to_string()))
}

/// Decode a row into a document.
pub(crate) fn decode(c: &ResultCodec, task_id: &str, raw: Raw) -> Result<ResultMeta, BackendError> {
    let decode_json = |task_id: &str, column: &str, bytes: &[u8]| decode_value(c, task_id, column, bytes);
    let status = State::parse(raw.status.as_deref().unwrap_or("PENDING"));
    let result = match &raw.result {
        Some(b) => decode_json(task_id, "result", b)?,
        None => Value::Null,
    };
    let side: Map<String, Value> = match raw.side.as_deref().map(serde_json::from_str::<Value>) {
        Some(Ok(Value::Object(m))) => m,
        _ => Map::new(),
    };
    let children = match &raw.children {
        Some(b) => match decode_json(task_id, "children", b)? {
            Value::Array(a) => Some(a),
            Value::Null => None,
            other => Some(vec![other]),
        },
        None if side.get("children_null").and_then(Value::as_bool) == Some(true) => None,
        None => Some(Vec::new()),
    };
    let mut meta = ResultMeta::new(task_id, status, result);
    meta.date_done = if meta.status.is_ready() { raw.date_done.map(|d| d.and_utc()) } else { None };
    meta.traceback = raw.traceback;
    meta.children = children;
    meta.group_id = side.get("group_id").and_then(Value::as_str).map(str::to_owned);
    meta.parent_id = side.get("parent_id").and_then(Value::as_str).map(str::to_owned);
    if let Some(Value::Object(extra)) = side.get("extra") {
        meta.extra = extra.clone();
    }
    meta.name = raw.name;
    meta.args = raw.args.as_deref().map(|b| decode_json(task_id, "args", b)).transpose()?;
    meta.kwargs = raw.kwargs.as_deref().map(|b| decode_json(task_id, "kwargs", b)).transpose()?;
    meta.worker = raw.worker;
    meta.retries = raw.retries.and_then(|r| u32::try_from(r).ok());
    meta.queue = raw.queue;
    Ok(meta)
}

/// `GroupResult.as_tuple()` as Python's JSON serializer writes it:
/// `[["<gid>", null], [[["<id>", null], null], ...]]`.
pub(crate) fn encode_group(c: &ResultCodec, group_id: &str, task_ids: &[String]) -> Result<Vec<u8>, BackendError> {
    let children: Vec<Value> = task_ids
        .iter()
        .map(|id| Value::Array(vec![Value::Array(vec![Value::String(id.clone()), Value::Null]), Value::Null]))
        .collect();
    let tuple = Value::Array(vec![
        Value::Array(vec![Value::String(group_id.to_string()), Value::Null]),
        Value::Array(children),
    ]);
    encode_value(c, &tuple)
}

/// The member ids of a stored group tuple.
pub(crate) fn decode_group(c: &ResultCodec, group_id: &str, bytes: &[u8]) -> Result<Vec<String>, BackendError> {
    let v = decode_value(c, group_id, "celery_tasksetmeta.result", bytes)?;
    let members = match &v {
        Value::Array(a) if a.len() == 2 => a.get(1).and_then(Value::as_array),
        _ => None,
    }
    .ok_or_else(|| {
        BackendError::new(ErrorKind::Serialization, format!("group {group_id}: stored value is not a group tuple"))
    })?;
    members
        .iter()
        .map(|m| {
            qcore::chord_unlock::result_tuple_id(m).ok_or_else(|| {
                BackendError::new(
                    ErrorKind::Serialization,
                    format!("group {group_id}: member {m} is not a result tuple"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn results_are_encoded_like_python() {
        let meta = ResultMeta::new("t1", State::Success, json!(5));
        let c = ResultCodec::default();
        let e = encode(&c, &meta).unwrap();
        assert_eq!(e.result, b"5");
        assert_eq!(e.children, None);
        let exc = qcore::ExceptionInfo::new("ValueError", "boom").to_value();
        let e = encode(&c, &ResultMeta::new("t2", State::Failure, exc)).unwrap();
        assert_eq!(
            String::from_utf8(e.result).unwrap(),
            r#"{"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}"#
        );
    }

    #[test]
    fn group_tuple_matches_captured_bytes() {
        let c = ResultCodec::default();
        let bytes = encode_group(
            &c,
            "93775cd5-89c8-4713-bcea-c11be62cdb01",
            &["2fe664c4-3b79-4ae0-92ae-a29b2ea48ebd".into(), "b9e7773f-a439-4e93-b283-7c6f5f3e7c75".into()],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"[["93775cd5-89c8-4713-bcea-c11be62cdb01", null], [[["2fe664c4-3b79-4ae0-92ae-a29b2ea48ebd", null], null], [["b9e7773f-a439-4e93-b283-7c6f5f3e7c75", null], null]]]"#
        );
        assert_eq!(decode_group(&c, "g", &bytes).unwrap().len(), 2);
    }
}
