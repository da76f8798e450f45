//! Result documents (`celery-task-meta-<id>`) and exceptions in Celery's format.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::Config;
use crate::error::ProtocolError;
use crate::message::ContentType;
use crate::state::State;

/// An exception as Celery stores it: `{"exc_type", "exc_message": [args], "exc_module"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExceptionInfo {
    /// Class name, e.g. `ValueError`.
    pub exc_type: String,
    /// The exception's args as a list (Celery stores `exc.args`).
    #[serde(deserialize_with = "de_exc_message")]
    pub exc_message: Vec<Value>,
    /// Module, e.g. `builtins` or `celery.exceptions`.
    #[serde(default = "default_module")]
    pub exc_module: String,
}

fn default_module() -> String {
    "builtins".into()
}

fn de_exc_message<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
    // Older Celery stored a plain string; accept both.
    Ok(match Value::deserialize(d)? {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        other => vec![other],
    })
}

impl ExceptionInfo {
    /// An exception with one message argument, like `ValueError("boom")`.
    pub fn new(exc_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            exc_type: exc_type.into(),
            exc_message: vec![Value::String(message.into())],
            exc_module: "builtins".into(),
        }
    }

    /// Set the module (`builtins` by default).
    pub fn module(mut self, module: impl Into<String>) -> Self {
        self.exc_module = module.into();
        self
    }

    /// A `celery.exceptions` exception.
    pub fn celery(exc_type: &str, message: impl Into<String>) -> Self {
        Self::new(exc_type, message).module("celery.exceptions")
    }

    /// `TaskRevokedError(reason)` where reason is `revoked`, `terminated` or `expired`.
    pub fn revoked(reason: &str) -> Self {
        Self::celery("TaskRevokedError", reason)
    }

    /// `TimeLimitExceeded(seconds)`.
    pub fn time_limit_exceeded(seconds: f64) -> Self {
        Self {
            exc_type: "TimeLimitExceeded".into(),
            exc_message: vec![serde_json::json!(seconds)],
            exc_module: "billiard.einfo".into(),
        }
    }

    /// `NotRegistered(name)`.
    pub fn not_registered(name: &str) -> Self {
        Self::celery("NotRegistered", format!("'{name}'"))
    }

    /// The message as Python's `str(exc)` shows it: the one argument as
    /// `str()` prints it, or the tuple of arguments (`('custom failure', 42)`).
    pub fn message(&self) -> String {
        match self.exc_message.as_slice() {
            [] => String::new(),
            [Value::String(s)] => s.clone(),
            [one] => crate::repr::repr(one),
            many => crate::repr::args_repr(many),
        }
    }

    /// Parse an exception map stored in a result.
    pub fn from_value(v: &Value) -> Option<ExceptionInfo> {
        serde_json::from_value(v.clone()).ok()
    }

    /// The exception map as a JSON value.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("exc_type".into(), Value::String(self.exc_type.clone()));
        m.insert("exc_message".into(), Value::Array(self.exc_message.clone()));
        m.insert("exc_module".into(), Value::String(self.exc_module.clone()));
        Value::Object(m)
    }
}

impl std::fmt::Display for ExceptionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.exc_type, self.message())
    }
}

/// The result document stored for a task, in Celery's field order.
///
/// `date_done` is null for states that are not ready; `children` is null
/// only when a revoke handler wrote the state without a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMeta {
    /// The state.
    pub status: State,
    /// The return value, the exception map, or the custom state's meta.
    #[serde(default)]
    pub result: Value,
    /// Traceback text, if any.
    #[serde(default)]
    pub traceback: Option<String>,
    /// Result tuples of the tasks this task sent (`[[id, null], null]`).
    #[serde(default)]
    pub children: Option<Vec<Value>>,
    /// When the task finished (UTC), for ready states.
    #[serde(default, with = "crate::time::opt_iso")]
    pub date_done: Option<DateTime<Utc>>,
    /// The group this task belonged to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The task that sent this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// With `result_extended`: task name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// With `result_extended`: positional args.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// With `result_extended`: keyword args.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kwargs: Option<Value>,
    /// With `result_extended`: the worker's node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// With `result_extended`: retries so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// With `result_extended`: the queue (routing key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Unknown fields written by other versions, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// The task id.
    pub task_id: String,
}

impl ResultMeta {
    /// A document for `task_id` in `status` with `result`.
    pub fn new(task_id: impl Into<String>, status: State, result: Value) -> Self {
        let date_done = if status.is_ready() { Some(Utc::now()) } else { None };
        Self {
            status,
            result,
            traceback: None,
            children: Some(Vec::new()),
            date_done,
            group_id: None,
            parent_id: None,
            name: None,
            args: None,
            kwargs: None,
            worker: None,
            retries: None,
            queue: None,
            extra: Map::new(),
            task_id: task_id.into(),
        }
    }

    /// The PENDING document a reader reports when nothing is stored.
    pub fn pending(task_id: impl Into<String>) -> Self {
        Self::new(task_id, State::Pending, Value::Null)
    }

    /// The stored exception, for exception states.
    pub fn exception(&self) -> Option<ExceptionInfo> {
        if self.status.is_exception() {
            ExceptionInfo::from_value(&self.result)
        } else {
            None
        }
    }

    /// Encode as Celery's JSON (Python `json.dumps` bytes).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail.
        crate::json::to_vec(self).unwrap_or_default()
    }

    /// Decode a JSON result document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ProtocolError> {
        serde_json::from_slice(bytes).map_err(|e| ProtocolError::decode("result document", e))
    }
}

/// How stored results are written and read: Celery's `result_serializer`
/// and `result_accept_content`. The one codec of result documents, stored
/// values (SQL columns) and chord/group bookkeeping, for every backend.
///
/// * **Writing** uses [`serializer`](Self::serializer) (JSON as Python's
///   `json.dumps` writes it, or msgpack as kombu writes it).
/// * **Reading** takes either encoding whatever the setting, as long as it
///   is accepted: stored bytes carry no content type, so the serializer is
///   tried first, then the other accepted one. Celery decodes with its own
///   setting only; reading both lets one reader see results written by
///   workers configured either way. A scalar whose bytes are valid in both
///   (the JSON text `5` is the msgpack integer 53) is read with the
///   serializer, as Celery reads it.
/// * A **pickle** (Python's `result_serializer = 'pickle'`) is refused with
///   an error naming the setting to change, never mistaken for data.
///
/// ```
/// use qcore::{ContentType, ResultCodec, ResultMeta, State};
/// let meta = ResultMeta::new("t1", State::Success, serde_json::json!(5));
/// let msgpack = ResultCodec::new(ContentType::Msgpack);
/// let bytes = msgpack.encode_meta(&meta).unwrap();
/// assert_eq!(ResultCodec::default().decode_meta(&bytes).unwrap().result, serde_json::json!(5));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResultCodec {
    /// What is written (`result_serializer`; Celery's default JSON).
    pub serializer: ContentType,
    /// What may be read (`result_accept_content`, else `accept_content`;
    /// `None`: every serializer qtask decodes).
    pub accept: Option<Vec<ContentType>>,
}

impl ResultCodec {
    /// Write with `serializer`, read anything qtask decodes.
    pub fn new(serializer: ContentType) -> Self {
        ResultCodec { serializer, accept: None }
    }

    /// Read only these serializers (`None`: all).
    pub fn accept(mut self, accept: Option<Vec<ContentType>>) -> Self {
        self.accept = accept;
        self
    }

    /// The codec of an app's settings: `result_serializer`, and
    /// `result_accept_content` falling back to `accept_content` (Celery's rule).
    pub fn from_config(config: &Config) -> Self {
        ResultCodec {
            serializer: config.result_serializer,
            accept: config.result_accept_content.clone().or_else(|| config.accept_content.clone()),
        }
    }

    fn accepts(&self, ct: ContentType) -> bool {
        self.accept.as_ref().is_none_or(|a| a.contains(&ct))
    }

    /// Encode a stored value with the serializer.
    pub fn encode<T: Serialize + ?Sized>(&self, v: &T) -> Result<Vec<u8>, ProtocolError> {
        self.serializer.encode(v)
    }

    /// Encode a result document with the serializer.
    pub fn encode_meta(&self, meta: &ResultMeta) -> Result<Vec<u8>, ProtocolError> {
        match self.serializer {
            ContentType::Json => Ok(meta.to_json()),
            other => other.encode(meta),
        }
    }

    /// Decode a result document, JSON or msgpack (see the type's docs).
    pub fn decode_meta(&self, bytes: &[u8]) -> Result<ResultMeta, ProtocolError> {
        self.decode("result document", bytes)
    }

    /// Decode a stored value (`what` names it in errors), JSON or msgpack
    /// within the accepted serializers.
    pub fn decode<T: serde::de::DeserializeOwned>(&self, what: &str, bytes: &[u8]) -> Result<T, ProtocolError> {
        let other = match self.serializer {
            ContentType::Json => ContentType::Msgpack,
            ContentType::Msgpack => ContentType::Json,
        };
        let mut first_err = None;
        for ct in [self.serializer, other] {
            if !self.accepts(ct) {
                continue;
            }
            match ct.decode::<T>(bytes) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if is_pickle(bytes) {
            return Err(ProtocolError::Unreadable(format!(
                "{what} was written with Python's pickle serializer, which qtask cannot read: set \
                 result_serializer = 'json' (or 'msgpack') in the Python app that stores results"
            )));
        }
        for ct in [self.serializer, other] {
            if !self.accepts(ct) && ct.decode::<T>(bytes).is_ok() {
                return Err(ProtocolError::Unreadable(format!(
                    "{what} is {}, which result_accept_content does not allow (it falls back to accept_content)",
                    ct.mime()
                )));
            }
        }
        Err(match first_err {
            Some(ProtocolError::Decode { reason, .. }) => {
                ProtocolError::Unreadable(format!("cannot decode {what} as JSON or msgpack: {reason}"))
            }
            Some(e) => e,
            None => ProtocolError::Unreadable(format!("cannot decode {what}: result_accept_content allows nothing")),
        })
    }
}

/// A pickle of protocol 2 or later, as Python's pickle serializer writes.
fn is_pickle(bytes: &[u8]) -> bool {
    matches!(bytes, [0x80, 2..=5, ..])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// `msgpack.packb(meta, use_bin_type=True)` of a SUCCESS document, as
    /// Celery's Redis backend writes it with `result_serializer = 'msgpack'`.
    const PY_MSGPACK_SUCCESS: &str = "86a6737461747573a753554343455353a6726573756c7405a974726163656261636bc0a86368696c6472656e90a9646174655f646f6e65d920323032362d31312d32325430323a32303a30352e3238333639332b30303a3030a77461736b5f6964a27431";

    #[test]
    fn reads_python_msgpack_documents_whatever_the_setting() {
        let bytes = unhex(PY_MSGPACK_SUCCESS);
        for codec in [ResultCodec::default(), ResultCodec::new(ContentType::Msgpack)] {
            let meta = codec.decode_meta(&bytes).unwrap();
            assert_eq!((meta.status, meta.result, meta.task_id.as_str()), (State::Success, json!(5), "t1"));
            assert_eq!(meta.children, Some(Vec::new()));
            assert!(meta.date_done.is_some());
        }
        let json_doc = ResultMeta::new("t2", State::Failure, ExceptionInfo::new("ValueError", "boom").to_value());
        let via_json = ResultCodec::new(ContentType::Msgpack).decode_meta(&json_doc.to_json()).unwrap();
        assert_eq!(via_json.exception().unwrap().exc_type, "ValueError");
    }

    #[test]
    fn msgpack_documents_encode_like_kombu() {
        let mut meta = ResultMeta::new("t1", State::Success, json!(5));
        meta.date_done = Some(crate::time::parse_iso("2026-11-22T02:20:05.283693+00:00").unwrap());
        let bytes = ResultCodec::new(ContentType::Msgpack).encode_meta(&meta).unwrap();
        assert_eq!(bytes, unhex(PY_MSGPACK_SUCCESS));
        let exc = ExceptionInfo::new("ValueError", "boom").to_value();
        assert_eq!(
            ResultCodec::new(ContentType::Msgpack).encode(&exc).unwrap(),
            unhex("83a86578635f74797065aa56616c75654572726f72ab6578635f6d65737361676591a4626f6f6daa6578635f6d6f64756c65a86275696c74696e73")
        );
        assert_eq!(ResultCodec::default().encode_meta(&meta).unwrap(), meta.to_json());
    }

    #[test]
    fn accept_content_limits_what_is_read() {
        let codec = ResultCodec::default().accept(Some(vec![ContentType::Json]));
        let e = codec.decode_meta(&unhex(PY_MSGPACK_SUCCESS)).unwrap_err().to_string();
        assert!(e.contains("application/x-msgpack") && e.contains("result_accept_content"), "{e}");
        let cfg = Config::from_toml_str("accept_content = [\"json\"]").unwrap();
        assert_eq!(ResultCodec::from_config(&cfg).accept, Some(vec![ContentType::Json]));
        let cfg = Config::from_toml_str(
            "accept_content = [\"json\"]\nresult_accept_content = [\"msgpack\", \"json\"]\nresult_serializer = \"msgpack\"",
        )
        .unwrap();
        let codec = ResultCodec::from_config(&cfg);
        assert_eq!(codec.serializer, ContentType::Msgpack);
        assert_eq!(codec.decode_meta(&unhex(PY_MSGPACK_SUCCESS)).unwrap().result, json!(5));
    }

    #[test]
    fn pickles_are_refused_naming_the_setting() {
        // pickle.dumps(5, protocol=4)
        let e = ResultCodec::default().decode::<Value>("result of t1", &unhex("80044b052e")).unwrap_err().to_string();
        assert!(e.contains("pickle") && e.contains("result_serializer = 'json'"), "{e}");
        let e = ResultCodec::default().decode_meta(b"not a document").unwrap_err().to_string();
        assert!(e.contains("JSON or msgpack"), "{e}");
    }

    #[test]
    fn scalars_are_read_with_the_serializer_first() {
        // b"5": JSON 5, msgpack 53.
        assert_eq!(ResultCodec::default().decode::<Value>("v", b"5").unwrap(), json!(5));
        assert_eq!(ResultCodec::new(ContentType::Msgpack).decode::<Value>("v", b"5").unwrap(), json!(53));
        // msgpack 5 is not JSON.
        assert_eq!(ResultCodec::default().decode::<Value>("v", &[5]).unwrap(), json!(5));
    }
}
