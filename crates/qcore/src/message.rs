//! The task message of Celery protocol v2 (and v1 on input).
//!
//! A [`Message`] is transport independent: headers (an ordered map, so unknown
//! headers are kept and re-sent unchanged), [`Properties`] and the serialized
//! body bytes. Brokers wrap it in their own envelope. [`TaskMessage`] is the
//! decoded, typed view a worker executes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ProtocolError;
use crate::signature::Signature;
use crate::time::{format_iso, parse_iso};

/// The body serialization of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    /// `application/json`, encoding `utf-8`.
    #[default]
    Json,
    /// `application/x-msgpack`, encoding `binary`.
    Msgpack,
}

impl ContentType {
    /// The MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            ContentType::Json => "application/json",
            ContentType::Msgpack => "application/x-msgpack",
        }
    }

    /// The content encoding Celery pairs with it.
    pub fn encoding(self) -> &'static str {
        match self {
            ContentType::Json => "utf-8",
            ContentType::Msgpack => "binary",
        }
    }

    /// Parse a MIME type (also Celery's short names `json`, `msgpack`).
    pub fn from_mime(s: &str) -> Result<Self, ProtocolError> {
        match s {
            "application/json" | "json" => Ok(ContentType::Json),
            "application/x-msgpack" | "msgpack" | "application/msgpack" => Ok(ContentType::Msgpack),
            other => Err(ProtocolError::ContentType(other.to_string())),
        }
    }

    /// Encode a value with this serializer (JSON as Python writes it).
    pub fn encode<T: Serialize + ?Sized>(self, v: &T) -> Result<Vec<u8>, ProtocolError> {
        match self {
            ContentType::Json => crate::json::to_vec(v).map_err(|e| ProtocolError::encode("json", e)),
            ContentType::Msgpack => rmp_serde::to_vec_named(v).map_err(|e| ProtocolError::encode("msgpack", e)),
        }
    }

    /// Decode bytes with this serializer.
    pub fn decode<T: serde::de::DeserializeOwned>(self, bytes: &[u8]) -> Result<T, ProtocolError> {
        match self {
            ContentType::Json => serde_json::from_slice(bytes).map_err(|e| ProtocolError::decode("json body", e)),
            ContentType::Msgpack => {
                // Like JSON, a body must be exactly one value: trailing bytes
                // mean a broken producer, and the message is malformed.
                let mut rest_bytes: &[u8] = bytes;
                let mut de = rmp_serde::Deserializer::new(&mut rest_bytes);
                let v = T::deserialize(&mut de).map_err(|e| ProtocolError::decode("msgpack body", e))?;
                drop(de);
                let rest = rest_bytes.len();
                if rest != 0 {
                    return Err(ProtocolError::decode(
                        "msgpack body",
                        format!("{rest} trailing bytes after the value"),
                    ));
                }
                Ok(v)
            }
        }
    }
}

/// Message properties (AMQP basic properties, or their emulation on Redis).
#[derive(Debug, Clone, PartialEq)]
pub struct Properties {
    /// MIME type of the body.
    pub content_type: String,
    /// Content encoding (`utf-8` for JSON, `binary` for msgpack).
    pub content_encoding: String,
    /// The task id for task messages.
    pub correlation_id: Option<String>,
    /// The sender's reply queue (used by `rpc://`).
    pub reply_to: Option<String>,
    /// 2 = persistent (tasks), 1 = transient (events, replies).
    pub delivery_mode: u8,
    /// Priority as requested (0–255; Celery uses 0–9).
    pub priority: u8,
    /// Per-message TTL in milliseconds, as a string (set from `expires`).
    pub expiration: Option<String>,
    /// Properties qtask does not know, kept as they came.
    pub extra: Map<String, Value>,
}

impl Default for Properties {
    fn default() -> Self {
        Properties {
            content_type: ContentType::Json.mime().into(),
            content_encoding: ContentType::Json.encoding().into(),
            correlation_id: None,
            reply_to: None,
            delivery_mode: 2,
            priority: 0,
            expiration: None,
            extra: Map::new(),
        }
    }
}

/// A message as it travels through a broker: headers, properties, body bytes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    /// Headers in order; unknown headers are kept.
    pub headers: Map<String, Value>,
    /// Properties.
    pub properties: Properties,
    /// Serialized body.
    pub body: Vec<u8>,
}

impl Message {
    /// The body's serializer, from `properties.content_type`.
    pub fn content_type(&self) -> Result<ContentType, ProtocolError> {
        ContentType::from_mime(&self.properties.content_type)
    }

    /// The task id (header `id`, or the v1 body's id via correlation id).
    pub fn task_id(&self) -> Option<&str> {
        self.headers.get("id").and_then(Value::as_str).or(self.properties.correlation_id.as_deref())
    }

    /// The task name from the v2 header, if present.
    pub fn task_name(&self) -> Option<&str> {
        self.headers.get("task").and_then(Value::as_str)
    }

    /// Decode into a typed [`TaskMessage`] (protocol v2, or v1 converted).
    pub fn decode_task(&self) -> Result<TaskMessage, ProtocolError> {
        TaskMessage::decode(self)
    }

    /// Like [`decode_task`](Self::decode_task), but on success the headers
    /// are moved into the [`TaskMessage`] instead of copied (this message is
    /// left with empty headers). On error the message is left unchanged, so
    /// it can still be dead-lettered as it came.
    pub fn take_task(&mut self) -> Result<TaskMessage, ProtocolError> {
        let ct = self.content_type()?;
        if self.headers.contains_key("task") {
            let mut tm = TaskMessage::decode_v2(&self.headers, &self.body, ct)?;
            tm.headers = std::mem::take(&mut self.headers);
            Ok(tm)
        } else {
            TaskMessage::decode_v1(self, ct)
        }
    }
}

/// The `embed` part of a protocol-2 body.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Embed {
    /// Signatures to call with the result on success (`link`).
    #[serde(default)]
    pub callbacks: Option<Vec<Signature>>,
    /// Signatures to call on failure (`link_error`).
    #[serde(default)]
    pub errbacks: Option<Vec<Signature>>,
    /// Remaining chain steps, **reversed**: the next task is the last element.
    #[serde(default)]
    pub chain: Option<Vec<Signature>>,
    /// The chord body for chord header tasks.
    #[serde(default)]
    pub chord: Option<Signature>,
    /// Keys qtask does not know, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The protocol-2 body: `[args, kwargs, embed]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TaskBody(pub Vec<Value>, pub Map<String, Value>, pub Embed);

/// A well-formed protocol-2 body read straight from the bytes, without an
/// intermediate `Value` tree: `[args, kwargs]` or `[args, kwargs, embed]`,
/// `null` args/kwargs read as empty. Anything else fails, and
/// [`TaskMessage::decode_body_slow`] then explains what is wrong.
struct WireBody(Vec<Value>, Map<String, Value>, Embed);

impl<'de> Deserialize<'de> for WireBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Seq;
        impl<'de> serde::de::Visitor<'de> for Seq {
            type Value = WireBody;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a protocol 2 body [args, kwargs, embed]")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<WireBody, A::Error> {
                use serde::de::Error;
                let args: Option<Vec<Value>> = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let kwargs: Option<Map<String, Value>> =
                    seq.next_element()?.ok_or_else(|| A::Error::invalid_length(1, &self))?;
                let embed: Embed = seq.next_element()?.unwrap_or_default();
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(4, &self));
                }
                Ok(WireBody(args.unwrap_or_default(), kwargs.unwrap_or_default(), embed))
            }
        }
        d.deserialize_seq(Seq)
    }
}

/// `[hard, soft]` time limits in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TimeLimit {
    /// Hard limit: the task is aborted.
    pub hard: Option<f64>,
    /// Soft limit: the task is told and may clean up.
    pub soft: Option<f64>,
}

/// The decoded view of a task message that a worker executes.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// Task id.
    pub id: String,
    /// Registered task name.
    pub task: String,
    /// Positional args.
    pub args: Vec<Value>,
    /// Keyword args.
    pub kwargs: Map<String, Value>,
    /// Callbacks, errbacks, chain, chord.
    pub embed: Embed,
    /// Do not run before.
    pub eta: Option<DateTime<Utc>>,
    /// Revoke as expired if not started by then.
    pub expires: Option<DateTime<Utc>>,
    /// Retries so far.
    pub retries: u32,
    /// Group (or chord) id.
    pub group: Option<String>,
    /// Position in the group.
    pub group_index: Option<u64>,
    /// First task of the workflow.
    pub root_id: Option<String>,
    /// Task that sent this one.
    pub parent_id: Option<String>,
    /// Time limits.
    pub timelimit: TimeLimit,
    /// Skip storing the result.
    pub ignore_result: bool,
    /// Display name.
    pub shadow: Option<String>,
    /// Node name of the sender.
    pub origin: Option<String>,
    /// Body serializer, reused for follow-up messages.
    pub content_type: ContentType,
    /// Protocol version the message came in (1 or 2).
    pub protocol: u8,
    /// All headers as received (v2), for forwarding unknown ones.
    pub headers: Map<String, Value>,
}

fn opt_str(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn opt_date(m: &Map<String, Value>, k: &str) -> Result<Option<DateTime<Utc>>, ProtocolError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_iso(s).map(Some),
        Some(other) => Err(ProtocolError::Invalid(format!("{k} must be a date string, got {other}"))),
    }
}

fn timelimit(v: Option<&Value>) -> TimeLimit {
    match v.and_then(Value::as_array).map(Vec::as_slice) {
        Some([hard, soft, ..]) => TimeLimit { hard: hard.as_f64(), soft: soft.as_f64() },
        _ => TimeLimit::default(),
    }
}

impl TaskMessage {
    fn decode(msg: &Message) -> Result<Self, ProtocolError> {
        let ct = msg.content_type()?;
        if msg.headers.contains_key("task") {
            let mut tm = Self::decode_v2(&msg.headers, &msg.body, ct)?;
            tm.headers = msg.headers.clone();
            Ok(tm)
        } else {
            Self::decode_v1(msg, ct)
        }
    }

    /// Everything but `headers`, which the caller copies or moves in.
    fn decode_v2(h: &Map<String, Value>, body: &[u8], ct: ContentType) -> Result<Self, ProtocolError> {
        let task = opt_str(h, "task").ok_or_else(|| ProtocolError::Invalid("header task is not a string".into()))?;
        let id = opt_str(h, "id").ok_or_else(|| ProtocolError::Invalid("header id is missing".into()))?;
        let WireBody(args, kwargs, embed) = match ct.decode::<WireBody>(body) {
            Ok(parts) => parts,
            Err(_) => Self::decode_body_slow(body, ct)?,
        };
        Ok(TaskMessage {
            id,
            task,
            args,
            kwargs,
            embed,
            eta: opt_date(h, "eta")?,
            expires: opt_date(h, "expires")?,
            retries: h.get("retries").and_then(Value::as_u64).unwrap_or(0) as u32,
            group: opt_str(h, "group"),
            group_index: h.get("group_index").and_then(Value::as_u64),
            root_id: opt_str(h, "root_id"),
            parent_id: opt_str(h, "parent_id"),
            timelimit: timelimit(h.get("timelimit")),
            ignore_result: h.get("ignore_result").and_then(Value::as_bool).unwrap_or(false),
            shadow: opt_str(h, "shadow"),
            origin: opt_str(h, "origin"),
            content_type: ct,
            protocol: 2,
            headers: Map::new(),
        })
    }

    /// The body through a `Value` tree, with a precise error for what is
    /// malformed (the fast path [`WireBody`] only says that something is).
    fn decode_body_slow(bytes: &[u8], ct: ContentType) -> Result<WireBody, ProtocolError> {
        let body: Value = ct.decode(bytes)?;
        match body {
            Value::Array(mut parts) if (2..=3).contains(&parts.len()) => {
                let embed = if parts.len() == 3 {
                    serde_json::from_value(parts.pop().unwrap_or(Value::Null))
                        .map_err(|e| ProtocolError::decode("body embed", e))?
                } else {
                    Embed::default()
                };
                let kwargs = match parts.pop() {
                    Some(Value::Object(m)) => m,
                    Some(Value::Null) => Map::new(),
                    _ => return Err(ProtocolError::Invalid("body kwargs must be a map".into())),
                };
                let args = match parts.pop() {
                    Some(Value::Array(a)) => a,
                    Some(Value::Null) => Vec::new(),
                    _ => return Err(ProtocolError::Invalid("body args must be a list".into())),
                };
                Ok(WireBody(args, kwargs, embed))
            }
            _ => Err(ProtocolError::Invalid("protocol 2 body must be [args, kwargs, embed]".into())),
        }
    }

    fn decode_v1(msg: &Message, ct: ContentType) -> Result<Self, ProtocolError> {
        let body: Value = ct.decode(&msg.body)?;
        let Value::Object(b) = body else {
            return Err(ProtocolError::Invalid(
                "message has no task header and its body is not a protocol 1 map".into(),
            ));
        };
        let task = opt_str(&b, "task").ok_or_else(|| ProtocolError::Invalid("protocol 1 body has no task".into()))?;
        let id = opt_str(&b, "id").ok_or_else(|| ProtocolError::Invalid("protocol 1 body has no id".into()))?;
        let sigs = |k: &str| -> Result<Option<Vec<Signature>>, ProtocolError> {
            match b.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => serde_json::from_value(v.clone())
                    .map(Some)
                    .map_err(|e| ProtocolError::decode("protocol 1 callbacks", e)),
            }
        };
        let chord = match b.get("chord") {
            None | Some(Value::Null) => None,
            Some(v) => {
                Some(serde_json::from_value(v.clone()).map_err(|e| ProtocolError::decode("protocol 1 chord", e))?)
            }
        };
        let embed =
            Embed { callbacks: sigs("callbacks")?, errbacks: sigs("errbacks")?, chain: None, chord, extra: Map::new() };
        let group = opt_str(&b, "group").or_else(|| opt_str(&b, "taskset"));
        let mut headers = Map::new();
        headers.insert("lang".into(), "py".into());
        headers.insert("task".into(), task.clone().into());
        headers.insert("id".into(), id.clone().into());
        Ok(TaskMessage {
            args: b.get("args").and_then(Value::as_array).cloned().unwrap_or_default(),
            kwargs: b.get("kwargs").and_then(Value::as_object).cloned().unwrap_or_default(),
            embed,
            eta: opt_date(&b, "eta")?,
            expires: opt_date(&b, "expires")?,
            retries: b.get("retries").and_then(Value::as_u64).unwrap_or(0) as u32,
            group,
            group_index: b.get("group_index").and_then(Value::as_u64),
            root_id: None,
            parent_id: None,
            timelimit: timelimit(b.get("timelimit")),
            ignore_result: false,
            shadow: None,
            origin: None,
            content_type: ct,
            protocol: 1,
            headers,
            id,
            task,
        })
    }

    /// The name to show in logs and events (`shadow` if set).
    pub fn display_name(&self) -> &str {
        self.shadow.as_deref().unwrap_or(&self.task)
    }
}

/// Everything needed to build a protocol-2 task message.
///
/// Fields left at their default produce exactly the headers Celery sends
/// (`null` where unset, `[null, null]` time limits, `{}` stamps).
#[derive(Debug, Clone, Default)]
pub struct TaskMessageBuilder {
    /// Task id.
    pub id: String,
    /// Task name.
    pub task: String,
    /// Positional args.
    pub args: Vec<Value>,
    /// Keyword args.
    pub kwargs: Map<String, Value>,
    /// Embed.
    pub embed: Embed,
    /// ETA.
    pub eta: Option<DateTime<Utc>>,
    /// Expiry.
    pub expires: Option<DateTime<Utc>>,
    /// Group id.
    pub group: Option<String>,
    /// Group index.
    pub group_index: Option<u64>,
    /// Retries.
    pub retries: u32,
    /// Time limits.
    pub timelimit: TimeLimit,
    /// Root id (defaults to `id`).
    pub root_id: Option<String>,
    /// Parent id.
    pub parent_id: Option<String>,
    /// Shadow name.
    pub shadow: Option<String>,
    /// Sender's node name.
    pub origin: String,
    /// Ignore result.
    pub ignore_result: bool,
    /// Extra headers appended after Celery's own (custom `headers=`), or kept
    /// from a received message.
    pub extra_headers: Map<String, Value>,
    /// Serializer.
    pub content_type: ContentType,
    /// Priority.
    pub priority: u8,
    /// Reply-to queue.
    pub reply_to: Option<String>,
}

/// The headers Celery's protocol 2 defines, in the order Celery writes them.
pub const PROTOCOL2_HEADERS: [&str; 19] = [
    "lang",
    "task",
    "id",
    "shadow",
    "eta",
    "expires",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
];

/// Whether `name` is one of the headers Celery's protocol 2 defines.
pub fn is_known_header(name: &str) -> bool {
    PROTOCOL2_HEADERS.contains(&name)
}

fn opt_val<T: Into<Value>>(v: Option<T>) -> Value {
    v.map(Into::into).unwrap_or(Value::Null)
}

fn f64_or_int(v: Option<f64>) -> Value {
    match v {
        None => Value::Null,
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => Value::from(f as i64),
        Some(f) => Value::from(f),
    }
}

/// The `eta`/`expires` header: the spelling received (kept in `hint`, e.g. a
/// naive `2030-01-02T03:04:05`) when it still denotes `value`, else isoformat.
fn date_header(hint: Option<&Value>, value: Option<&DateTime<Utc>>) -> Value {
    match (hint, value) {
        (Some(Value::String(s)), Some(dt)) if parse_iso(s).is_ok_and(|h| h == *dt) => Value::String(s.clone()),
        (_, v) => opt_val(v.map(format_iso)),
    }
}

/// The `timelimit` header: the received numbers (`60` vs `60.0`) when they
/// still denote the same limits.
fn timelimit_header(hint: Option<&Value>, tl: TimeLimit) -> Value {
    if let Some(Value::Array(a)) = hint {
        if let [hard, soft] = a.as_slice() {
            if hard.as_f64() == tl.hard && soft.as_f64() == tl.soft {
                return Value::Array(a.clone());
            }
        }
    }
    Value::Array(vec![f64_or_int(tl.hard), f64_or_int(tl.soft)])
}

/// The `argsrepr` header: `repr(tuple(args))`, or the received text when it
/// is the list form of the same args (`[4, 4]`, as beat and `send_task` write it).
fn argsrepr_header(hint: Option<&Value>, args: &[Value]) -> Value {
    let tuple = crate::repr::args_repr(args);
    if let Some(Value::String(s)) = hint {
        if *s != tuple && s.starts_with('[') && *s == crate::repr::list_repr(args) {
            return Value::String(s.clone());
        }
    }
    Value::String(tuple)
}

/// Headers whose received spelling [`TaskMessage::to_builder`] passes on in
/// `extra_headers`, so that re-sending reproduces them as they came as long
/// as they still say the same thing.
const SPELLING_HINTS: [&str; 5] = ["eta", "expires", "timelimit", "argsrepr", "ignore_result"];

impl TaskMessageBuilder {
    /// Build the message: headers in Celery's order, the body serialized.
    ///
    /// `extra_headers` may also carry the received spelling of `eta`,
    /// `expires`, `timelimit`, `argsrepr` and `ignore_result` (as
    /// [`TaskMessage::to_builder`] does); it is used only where it denotes the
    /// same value as the typed field, so a re-sent message keeps Python's
    /// exact header text (a naive `eta`, `[4, 4]` as `argsrepr`, `null` for
    /// `ignore_result`).
    pub fn build(self) -> Result<Message, ProtocolError> {
        let mut h = Map::with_capacity(PROTOCOL2_HEADERS.len() + self.extra_headers.len());
        let root = self.root_id.clone().unwrap_or_else(|| self.id.clone());
        h.insert("lang".into(), "py".into());
        h.insert("task".into(), self.task.clone().into());
        h.insert("id".into(), self.id.clone().into());
        h.insert("shadow".into(), opt_val(self.shadow));
        let hints = &self.extra_headers;
        h.insert("eta".into(), date_header(hints.get("eta"), self.eta.as_ref()));
        h.insert("expires".into(), date_header(hints.get("expires"), self.expires.as_ref()));
        h.insert("group".into(), opt_val(self.group));
        h.insert("group_index".into(), opt_val(self.group_index));
        h.insert("retries".into(), self.retries.into());
        h.insert("timelimit".into(), timelimit_header(hints.get("timelimit"), self.timelimit));
        h.insert("root_id".into(), root.into());
        h.insert("parent_id".into(), opt_val(self.parent_id));
        h.insert("argsrepr".into(), argsrepr_header(hints.get("argsrepr"), &self.args));
        h.insert("kwargsrepr".into(), crate::repr::kwargs_repr(&self.kwargs).into());
        h.insert("origin".into(), self.origin.into());
        let ignore_result = match hints.get("ignore_result") {
            // Celery's `send_task` leaves it unset: `null` means false.
            Some(Value::Null) if !self.ignore_result => Value::Null,
            _ => self.ignore_result.into(),
        };
        h.insert("ignore_result".into(), ignore_result);
        h.insert("replaced_task_nesting".into(), 0.into());
        h.insert("stamped_headers".into(), Value::Null);
        h.insert("stamps".into(), Value::Object(Map::new()));
        for (k, v) in self.extra_headers {
            if !is_known_header(&k) || matches!(k.as_str(), "replaced_task_nesting" | "stamped_headers" | "stamps") {
                h.insert(k, v);
            }
        }
        let body = TaskBody(self.args, self.kwargs, self.embed);
        let bytes = self.content_type.encode(&body)?;
        let expiration = self.expires.map(|exp| {
            let ms = (exp - Utc::now()).num_milliseconds().max(0);
            ms.to_string()
        });
        Ok(Message {
            headers: h,
            properties: Properties {
                content_type: self.content_type.mime().into(),
                content_encoding: self.content_type.encoding().into(),
                correlation_id: Some(self.id),
                reply_to: self.reply_to,
                delivery_mode: 2,
                priority: self.priority,
                expiration,
                extra: Map::new(),
            },
            body: bytes,
        })
    }
}

impl TaskMessage {
    /// A builder that re-sends this message as is (for retries, requeues):
    /// same id, args, embed and extra headers. `extra_headers` also carries
    /// the received spelling of a few headers (see [`TaskMessageBuilder::build`]).
    pub fn to_builder(&self) -> TaskMessageBuilder {
        let extra_headers = self
            .headers
            .iter()
            .filter(|(k, _)| {
                !is_known_header(k)
                    || matches!(k.as_str(), "replaced_task_nesting" | "stamped_headers" | "stamps")
                    || SPELLING_HINTS.contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        TaskMessageBuilder {
            id: self.id.clone(),
            task: self.task.clone(),
            args: self.args.clone(),
            kwargs: self.kwargs.clone(),
            embed: self.embed.clone(),
            eta: self.eta,
            expires: self.expires,
            group: self.group.clone(),
            group_index: self.group_index,
            retries: self.retries,
            timelimit: self.timelimit,
            root_id: self.root_id.clone(),
            parent_id: self.parent_id.clone(),
            shadow: self.shadow.clone(),
            origin: self.origin.clone().unwrap_or_default(),
            ignore_result: self.ignore_result,
            extra_headers,
            content_type: self.content_type,
            priority: 0,
            reply_to: None,
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn msgpack_body_with_trailing_bytes_is_malformed() {
        let mut b = TaskMessageBuilder {
            id: "t1".into(),
            task: "tasks.add".into(),
            args: vec![1.into(), 2.into()],
            content_type: ContentType::Msgpack,
            ..TaskMessageBuilder::default()
        }
        .build()
        .unwrap();
        assert!(b.decode_task().is_ok());
        b.body.extend_from_slice(&[0x91, 0x01]);
        let e = b.decode_task().unwrap_err().to_string();
        assert!(e.contains("trailing bytes"), "{e}");
    }
    use serde_json::json;

    use super::*;

    fn received(headers: Value) -> TaskMessage {
        let Value::Object(headers) = headers else { panic!("headers must be a map") };
        let msg = Message { headers, properties: Properties::default(), body: br#"[[4, 4], {}, {}]"#.to_vec() };
        msg.decode_task().unwrap()
    }

    #[test]
    fn resend_keeps_received_spelling_while_it_still_holds() {
        let tm = received(json!({
            "lang": "py", "task": "t", "id": "i", "eta": "2030-01-02T03:04:05", "expires": null,
            "timelimit": [60.0, null], "argsrepr": "[4, 4]", "ignore_result": null,
        }));
        let m = tm.to_builder().build().unwrap();
        assert_eq!(m.headers["eta"], json!("2030-01-02T03:04:05"));
        assert_eq!(m.headers["timelimit"], json!([60.0, null]));
        assert_eq!(m.headers["argsrepr"], json!("[4, 4]"));
        assert_eq!(m.headers["ignore_result"], Value::Null);
        // Known headers used as spelling hints are not repeated at the end.
        assert_eq!(m.headers.len(), PROTOCOL2_HEADERS.len());
    }

    #[test]
    fn malformed_bodies_are_explained() {
        let decode = |body: &[u8]| {
            let Value::Object(headers) = json!({"lang": "py", "task": "t", "id": "i"}) else { unreachable!() };
            Message { headers, properties: Properties::default(), body: body.to_vec() }.decode_task()
        };
        let err = |body: &[u8]| decode(body).unwrap_err().to_string();
        assert!(err(br#"[1, {}, {}]"#).contains("body args must be a list"));
        assert!(err(br#"[[], [], {}]"#).contains("body kwargs must be a map"));
        assert!(err(br#"[[], {}, {}, 4]"#).contains("must be [args, kwargs, embed]"));
        assert!(err(br#"[[], {}, {"chain": 3}]"#).contains("body embed"));
        assert!(err(br#"[[], {}"#).contains("json body"));
        // Null args/kwargs and a missing embed are accepted, as before.
        let tm = decode(br#"[null, null]"#).unwrap();
        assert!(tm.args.is_empty() && tm.kwargs.is_empty() && tm.embed == Embed::default());
    }

    #[test]
    fn take_task_moves_headers_only_on_success() {
        let Value::Object(headers) = json!({"lang": "py", "task": "t", "id": "i", "x-custom": 1}) else {
            unreachable!()
        };
        let good = Message { headers, properties: Properties::default(), body: b"[[1], {}, {}]".to_vec() };
        let mut moved = good.clone();
        let tm = moved.take_task().unwrap();
        assert_eq!(tm, good.decode_task().unwrap());
        assert!(moved.headers.is_empty());
        let mut bad = Message { body: b"[1]".to_vec(), ..good.clone() };
        assert!(bad.take_task().is_err());
        assert_eq!(bad.headers, good.headers, "a message that fails to decode is left as it came");
    }

    #[test]
    fn stale_spelling_is_not_reused() {
        let tm = received(json!({
            "lang": "py", "task": "t", "id": "i", "eta": "2030-01-02T03:04:05",
            "timelimit": [60, 50], "argsrepr": "'hidden'", "ignore_result": null,
        }));
        let mut b = tm.to_builder();
        b.eta = Some(parse_iso("2031-01-01T00:00:00+00:00").unwrap());
        b.timelimit.hard = Some(10.0);
        b.args.push(json!(5));
        b.ignore_result = true;
        let m = b.build().unwrap();
        assert_eq!(m.headers["eta"], json!("2031-01-01T00:00:00+00:00"));
        assert_eq!(m.headers["timelimit"], json!([10, 50]));
        assert_eq!(m.headers["argsrepr"], json!("(4, 4, 5)"));
        assert_eq!(m.headers["ignore_result"], json!(true));
    }
}
