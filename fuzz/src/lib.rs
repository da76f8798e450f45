//! The bodies of the fuzz targets: every decoder that reads bytes from
//! outside the process (brokers, result stores, other workers, settings and
//! URLs). Each body must return normally on any input: an error is the
//! expected answer to bad bytes, a panic is a bug.
//!
//! Inputs that carry two parts (headers and body, a pattern and a name) are
//! split at the first `0xFF` byte, which never occurs in UTF-8 text, so a
//! seed can be written by hand as `<headers JSON>\xff<body>`.

use qcore::control::{ControlRequest, Matcher, Reply, RequestHeaders};
use qcore::event::{Event, TaskReceived};
use qcore::{Config, ContentType, ExceptionInfo, Message, Properties, ResultCodec, ResultMeta, TaskMessage};
use serde_json::{Map, Value};

/// `(before, after)` the first `0xFF`; `(data, [])` without one.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// The content type a flag byte selects.
fn content_type(flag: u8) -> ContentType {
    if flag & 1 == 1 {
        ContentType::Msgpack
    } else {
        ContentType::Json
    }
}

fn message(headers: Map<String, Value>, ct: ContentType, body: &[u8]) -> Message {
    let properties =
        Properties { content_type: ct.mime().into(), content_encoding: ct.encoding().into(), ..Properties::default() };
    Message { headers, properties, body: body.to_vec() }
}

/// What a worker does with a task message before running it: decode (by
/// copy and by move), the `task-received` fields with the arguments' repr,
/// and the embedded signatures written back.
fn check_task(mut msg: Message) {
    let copied = msg.decode_task();
    let moved = msg.take_task();
    if let (Ok(a), Ok(b)) = (&copied, &moved) {
        assert_eq!(a.id, b.id, "decode_task and take_task disagree on the id");
        assert_eq!(a.args, b.args, "decode_task and take_task disagree on the args");
    }
    if let Ok(tm) = moved {
        use_task(&tm);
    }
}

fn use_task(tm: &TaskMessage) {
    let received = TaskReceived::from_task(tm);
    let _ = (received.args.len(), received.kwargs.len(), tm.display_name());
    for sig in tm.embed.callbacks.iter().chain(&tm.embed.errbacks).chain(&tm.embed.chain).flatten() {
        let _ = serde_json::to_vec(sig);
    }
    if let Some(chord) = &tm.embed.chord {
        let _ = serde_json::to_vec(chord);
    }
}

/// A task message: `flag byte, headers JSON 0xFF body`. Without a
/// separator the whole input after the flag is the body (protocol 1).
pub fn task_message(data: &[u8]) {
    let Some((&flag, rest)) = data.split_first() else { return };
    let (head, body) = split(rest);
    let (headers, body) = if body.is_empty() && !rest.contains(&0xFF) {
        (Map::new(), head)
    } else {
        match serde_json::from_slice::<Value>(head) {
            Ok(Value::Object(m)) => (m, body),
            _ => return,
        }
    };
    check_task(message(headers, content_type(flag), body));
}

/// A task body under valid protocol-2 headers (what a producer controls
/// most): `flag byte, body`.
pub fn task_body(data: &[u8]) {
    let Some((&flag, body)) = data.split_first() else { return };
    let mut headers = Map::new();
    headers.insert("lang".into(), "py".into());
    headers.insert("task".into(), "tasks.add".into());
    headers.insert("id".into(), "5f0e6bd8-5d6b-4a47-9c8b-4f3a1f1b0c11".into());
    headers.insert("root_id".into(), "5f0e6bd8-5d6b-4a47-9c8b-4f3a1f1b0c11".into());
    headers.insert("retries".into(), 0.into());
    if flag & 2 == 2 {
        headers.insert("eta".into(), "2026-12-06T10:00:00.000001+00:00".into());
        headers.insert("timelimit".into(), Value::Array(vec![Value::from(10.5), Value::Null]));
    }
    check_task(message(headers, content_type(flag), body));
}

/// The kombu Redis envelope (JSON text in a queue list or a pub/sub
/// channel), then the task inside, then the envelope written again.
pub fn redis_envelope(data: &[u8]) {
    let Ok(env) = qredis::envelope::decode(data) else { return };
    let again = qredis::envelope::encode(&env.message, &env.exchange, &env.routing_key, "tag");
    if let Err(e) = qredis::envelope::decode(&again) {
        panic!("an envelope qtask wrote does not decode: {e}");
    }
    check_task(env.message);
}

/// AMQP frames as the consumer's reader parses them: flag bit 0 clear, a
/// method frame payload; set, `header length (u16, big endian), content
/// header payload, body`, whose message is then decoded as a task.
pub fn amqp_frames(data: &[u8]) {
    let Some((&flag, rest)) = data.split_first() else { return };
    if flag & 1 == 0 {
        let _ = qamqp::fuzzing::method(rest);
        return;
    }
    if rest.len() < 2 {
        return;
    }
    let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
    let (header, body) = rest[2..].split_at(n);
    if let Ok(msg) = qamqp::fuzzing::content(header, body) {
        check_task(msg);
    }
}

/// A stored result document (JSON or msgpack, as Redis and SQL keep them),
/// and the exception inside, then written again.
pub fn result_doc(data: &[u8]) {
    if let Ok(meta) = ResultMeta::from_json(data) {
        let again = meta.to_json();
        if let Err(e) = ResultMeta::from_json(&again) {
            panic!("a result document qtask wrote does not decode: {e}");
        }
    }
    if let Ok(meta) = ResultCodec::new(ContentType::Msgpack).decode_meta(data) {
        let _ = ResultCodec::new(ContentType::Msgpack).encode_meta(&meta);
        let _ = ExceptionInfo::from_value(&meta.result);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        let _ = ExceptionInfo::from_value(&v);
    }
}

/// A message on `celeryev`: one event or a `task.multi` list; each event
/// written again.
pub fn event(data: &[u8]) {
    let Some((&flag, body)) = data.split_first() else { return };
    let Ok(events) = Event::from_message(&message(Map::new(), content_type(flag), body)) else { return };
    for ev in events {
        let _ = ev.to_json();
        let _ = ev.to_message();
    }
}

/// Remote control: a request (`headers JSON 0xFF body`) as a worker reads
/// it, the same bytes as a reply, and a node-name match of its destination.
pub fn pidbox(data: &[u8]) {
    let Some((&flag, rest)) = data.split_first() else { return };
    let (head, body) = split(rest);
    let headers = match serde_json::from_slice::<Value>(head) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let msg = message(headers, content_type(flag), body);
    let _ = RequestHeaders::from_message(&msg);
    if let Ok(req) = ControlRequest::from_message(&msg) {
        let matcher = req.matcher.as_deref().and_then(Matcher::from_name).unwrap_or(Matcher::Glob);
        if let Some(pattern) = &req.pattern {
            let _ = matcher.matches(pattern, "qtask@host");
        }
    }
    let _ = Reply::from_message(&msg);
}

/// Settings: a TOML file, or `NAME=value` lines as environment variables.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Config::from_toml_str(text);
    let vars = text.lines().filter_map(|l| l.split_once('=')).filter(|(k, _)| *k != "QTASK_CONFIG");
    let _ = Config::from_vars(vars.map(|(k, v)| (k.to_owned(), v.to_owned())));
}

/// Broker and backend URLs, and their redaction for logs.
pub fn urls(data: &[u8]) {
    let Ok(url) = std::str::from_utf8(data) else { return };
    let _ = qamqp::AmqpUrl::parse(url);
    let _ = qredis::fuzzing::url(url);
    let _ = qsql::fuzzing::url(url, None);
    let redacted = qcore::url::redact(url);
    if has_password(url, "secretpw") {
        assert!(!redacted.contains("secretpw"), "a password survives redaction: {redacted}");
    }
}

/// Whether `url` is `scheme://user:<password>@...` with a valid scheme
/// (a letter, then letters, digits, `+`, `-`, `.`).
fn has_password(url: &str, password: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else { return false };
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let user_end = rest.find(|c| "/?#@:".contains(c));
    scheme_ok
        && user_end.is_some_and(|i| rest[i..].starts_with(':') && rest[i + 1..].starts_with(password))
        && rest.contains(&format!("{password}@"))
}
