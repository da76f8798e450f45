//! Golden vectors: messages and result documents captured from Celery 5.7
//! (`tests/fixtures/`, see its README) must decode, and encoding them back
//! must give Celery's bytes.
//!
//! Every family test checks all of its vectors and then fails once, listing
//! each vector that did not match with the file name and where the bytes
//! first differ.

use std::fmt::{Debug, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use qcore::message::{TaskBody, TimeLimit};
use qcore::{CanvasKind, ContentType, ExceptionInfo, Message, Properties, ResultMeta, Signature, State, TaskMessage};
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------
// Fixture access and failure reporting

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// Fixture files in `dir` whose name ends with `suffix`, sorted by name.
fn files(dir: &str, suffix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(fixtures().join(dir))
        .unwrap_or_else(|e| panic!("fixture dir {dir}: {e}"))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(suffix))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no {suffix} fixtures in {dir}");
    out
}

/// Collects mismatches of one vector family and reports them all at the end.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn bytes(&mut self, file: &str, what: &str, expected: &[u8], actual: &[u8]) {
        if expected != actual {
            self.0.push(format!("{file}: {what} differs from Celery's\n{}", byte_diff(expected, actual)));
        }
    }

    fn eq<T: PartialEq + Debug>(&mut self, file: &str, what: &str, actual: T, expected: T) {
        if actual != expected {
            self.0.push(format!("{file}: {what}\n  expected: {expected:?}\n  actual:   {actual:?}"));
        }
    }

    fn fail(&mut self, file: &str, what: impl std::fmt::Display) {
        self.0.push(format!("{file}: {what}"));
    }

    fn finish(self, family: &str, checked: usize) {
        assert!(checked > 0, "no {family} vector was checked");
        if !self.0.is_empty() {
            panic!(
                "{} mismatch(es) in the {family} vectors ({checked} checked):\n\n{}",
                self.0.len(),
                self.0.join("\n\n")
            );
        }
    }
}

/// Where two byte strings first differ, with some context (text or hex).
fn byte_diff(expected: &[u8], actual: &[u8]) -> String {
    let at = expected.iter().zip(actual).position(|(a, b)| a != b).unwrap_or(expected.len().min(actual.len()));
    let from = at.saturating_sub(48);
    let show = |b: &[u8]| -> String {
        let seg = &b[from.min(b.len())..(at + 48).min(b.len())];
        match std::str::from_utf8(seg) {
            Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n') => format!("{s:?}"),
            _ => seg.iter().fold(String::from("hex "), |mut acc, x| {
                let _ = write!(acc, "{x:02x}");
                acc
            }),
        }
    };
    format!(
        "  first difference at byte {at} (expected {} bytes, got {})\n  expected: …{}…\n  actual:   …{}…",
        expected.len(),
        actual.len(),
        show(expected),
        show(actual)
    )
}

/// Python-style JSON text of a value (what Celery writes).
fn py(v: &impl serde::Serialize) -> Vec<u8> {
    qcore::json::to_vec(v).unwrap()
}

/// The exact text of the top-level member `key` of the JSON object `raw`.
fn member_text<'a>(raw: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let needle = format!("\"{key}\": ");
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for i in 0..raw.len() {
        let c = raw[i];
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' if depth == 1 && raw[i..].starts_with(needle.as_bytes()) => {
                let start = i + needle.len();
                return Some(&raw[start..start + value_len(&raw[start..])?]);
            }
            b'"' => in_str = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.checked_sub(1)?,
            _ => {}
        }
    }
    None
}

/// Length of the JSON value at the start of `s`.
fn value_len(s: &[u8]) -> Option<usize> {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for (i, &c) in s.iter().enumerate() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') if depth == 0 => return Some(i + 1),
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 1 => return Some(i + 1),
            b'}' | b']' => depth = depth.checked_sub(1)?,
            b',' if depth == 0 => return Some(i),
            _ => {}
        }
    }
    (depth == 0).then_some(s.len())
}

// ---------------------------------------------------------------------------
// Captured messages

/// One captured task message, transport envelope removed.
struct Captured {
    file: String,
    /// The whole captured bytes (Redis envelopes only).
    raw: Option<Vec<u8>>,
    /// The headers' JSON text exactly as captured (Redis envelopes only).
    headers_text: Option<Vec<u8>>,
    message: Message,
}

/// A Redis list element: JSON envelope with a base64 body. The envelope
/// belongs to the Redis transport; here it is only unwrapped.
fn redis_vector(rel: &str) -> Captured {
    let raw = read(rel);
    let env: Map<String, Value> = serde_json::from_slice(&raw).unwrap();
    let body = base64::engine::general_purpose::STANDARD.decode(env["body"].as_str().unwrap()).unwrap();
    let props = env["properties"].as_object().unwrap();
    let extra = props
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "correlation_id"
                    | "reply_to"
                    | "delivery_mode"
                    | "priority"
                    | "expiration"
                    | "delivery_info"
                    | "body_encoding"
                    | "delivery_tag"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let properties = Properties {
        content_type: env["content-type"].as_str().unwrap().into(),
        content_encoding: env["content-encoding"].as_str().unwrap().into(),
        correlation_id: props.get("correlation_id").and_then(Value::as_str).map(Into::into),
        reply_to: props.get("reply_to").and_then(Value::as_str).map(Into::into),
        delivery_mode: props["delivery_mode"].as_u64().unwrap() as u8,
        priority: props["priority"].as_u64().unwrap() as u8,
        expiration: props.get("expiration").and_then(Value::as_str).map(Into::into),
        extra,
    };
    Captured {
        file: rel.into(),
        headers_text: Some(member_text(&raw, "headers").expect("envelope has headers").to_vec()),
        raw: Some(raw.clone()),
        message: Message { headers: env["headers"].as_object().unwrap().clone(), properties, body },
    }
}

/// An AMQP `basic.publish`: exact body bytes, headers/properties from the
/// decoded companion (AMQP field tables have no JSON text to compare).
fn amqp_vector(body_rel: &str) -> Captured {
    let decoded_rel = body_rel.replace(".body.bin", ".decoded.json");
    let decoded: Value = serde_json::from_slice(&read(&decoded_rel)).unwrap();
    let p = &decoded["properties_plain"];
    let s = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
    let properties = Properties {
        content_type: s("content_type").unwrap(),
        content_encoding: s("content_encoding").unwrap(),
        correlation_id: s("correlation_id"),
        reply_to: s("reply_to"),
        delivery_mode: p["delivery_mode"].as_u64().unwrap() as u8,
        priority: p["priority"].as_u64().unwrap() as u8,
        expiration: s("expiration"),
        extra: Map::new(),
    };
    Captured {
        file: body_rel.into(),
        headers_text: None,
        raw: None,
        message: Message { headers: p["headers"].as_object().unwrap().clone(), properties, body: read(body_rel) },
    }
}

/// Every protocol-2 task message captured: producer, canvas, worker, AMQP.
fn v2_vectors() -> Vec<Captured> {
    let mut out: Vec<Captured> = files("redis-broker", ".raw.json")
        .iter()
        .filter(|f| !f.contains("protocol1"))
        .map(|f| redis_vector(f))
        .collect();
    out.extend(files("canvas", ".raw.json").iter().map(|f| redis_vector(f)));
    out.extend(files("canvas/worker-sent", ".raw.json").iter().map(|f| redis_vector(f)));
    out.extend(files("amqp-publish", ".body.bin").iter().map(|f| amqp_vector(f)));
    out
}

fn date(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn sig_opt<'a>(s: &'a Signature, k: &str) -> Option<&'a Value> {
    s.options.get(k)
}

// ---------------------------------------------------------------------------
// 1. Task messages

/// Fields that must decode the same whatever the vector.
fn check_common(f: &mut Failures, c: &Captured, tm: &TaskMessage) {
    let (file, h) = (&c.file, &c.message.headers);
    f.eq(file, "id", Some(tm.id.as_str()), h["id"].as_str());
    f.eq(file, "id = correlation_id", Some(tm.id.as_str()), c.message.properties.correlation_id.as_deref());
    f.eq(file, "task", Some(tm.task.as_str()), h["task"].as_str());
    f.eq(file, "protocol", tm.protocol, 2);
    f.eq(file, "root_id", tm.root_id.as_deref(), h["root_id"].as_str());
    f.eq(file, "parent_id", tm.parent_id.as_deref(), h["parent_id"].as_str());
    f.eq(file, "origin", tm.origin.as_deref(), h["origin"].as_str());
    f.eq(file, "group", tm.group.as_deref(), h["group"].as_str());
    f.eq(file, "group_index", tm.group_index, h["group_index"].as_u64());
    f.eq(file, "retries", u64::from(tm.retries), h["retries"].as_u64().unwrap());
    f.eq(file, "headers kept in order", py(&tm.headers), py(h));
    let ct = ContentType::from_mime(&c.message.properties.content_type).unwrap();
    f.eq(file, "content type", tm.content_type, ct);
    let body: Value = ct.decode(&c.message.body).unwrap();
    f.eq(file, "args", Value::Array(tm.args.clone()), body[0].clone());
    f.eq(file, "kwargs", Value::Object(tm.kwargs.clone()), body[1].clone());
    for (k, v) in [("eta", tm.eta), ("expires", tm.expires)] {
        let want = h[k].as_str().map(|s| qcore::time::parse_iso(s).unwrap());
        f.eq(file, k, v, want);
    }
    let hard_soft = |i: usize| h["timelimit"][i].as_f64();
    f.eq(file, "timelimit", tm.timelimit, TimeLimit { hard: hard_soft(0), soft: hard_soft(1) });
}

/// What each captured case is about.
fn check_case(f: &mut Failures, file: &str, tm: &TaskMessage, m: &Message) {
    let name = file.rsplit('/').next().unwrap();
    let stem = name.split('.').next().unwrap();
    let e = &tm.embed;
    let no_embed = e.callbacks.is_none() && e.errbacks.is_none() && e.chain.is_none() && e.chord.is_none();
    match stem {
        "task-add-json" | "task-add-msgpack" | "00-DEFAULT_celery_capapp" | "02-DEFAULT_celery_capapp" => {
            f.eq(file, "args", tm.args.clone(), vec![json!(2), json!(3)]);
            f.eq(file, "embed unused (all four keys null)", no_embed, true);
            let ct = if stem.contains("msgpack") || stem.starts_with("02") {
                ContentType::Msgpack
            } else {
                ContentType::Json
            };
            f.eq(file, "serializer", tm.content_type, ct);
        }
        "task-options-countdown" | "04-DEFAULT_capture_special_capapp" => {
            f.eq(file, "id", tm.id.as_str(), "11111111-2222-3333-4444-555555555555");
            f.eq(file, "task", tm.task.as_str(), "capapp.echo");
            f.eq(file, "args", tm.args.clone(), vec![json!(1), json!("two"), json!(3.5)]);
            let kw = json!({"flag": true, "nothing": null, "items": [1, 2], "nested": {"a": "b"}});
            f.eq(file, "kwargs", Value::Object(tm.kwargs.clone()), kw);
            f.eq(file, "retries", tm.retries, 3);
            f.eq(file, "timelimit [hard, soft]", tm.timelimit, TimeLimit { hard: Some(60.0), soft: Some(50.0) });
            match (tm.eta, tm.expires) {
                // countdown=30, expires=600: expires is 570 s after the eta.
                (Some(eta), Some(exp)) => f.eq(file, "expires - eta", (exp - eta).num_seconds(), 570),
                other => f.fail(file, format!("eta and expires must be set, got {other:?}")),
            }
            f.eq(file, "expiration property", m.properties.expiration.as_deref(), Some("600000"));
        }
        "task-eta-explicit" => {
            f.eq(file, "eta", tm.eta, Some(date("2030-01-02T03:04:05.678901+00:00")));
            f.eq(file, "expires", tm.expires, Some(date("2030-01-03T00:00:00+00:00")));
        }
        "task-eta-naive" => f.eq(file, "naive eta read as UTC", tm.eta, Some(date("2030-01-02T03:04:05+00:00"))),
        "task-shadow-ignore-result-custom-headers" => {
            f.eq(file, "shadow", tm.shadow.as_deref(), Some("renamed.add"));
            f.eq(file, "display name", tm.display_name(), "renamed.add");
            f.eq(file, "ignore_result", tm.ignore_result, true);
            f.eq(file, "custom header kept", tm.headers.get("x-custom"), Some(&json!("hello")));
            f.eq(file, "custom header kept", tm.headers.get("x-num"), Some(&json!(7)));
        }
        "task-send-task-by-name" => {
            f.eq(file, "task", tm.task.as_str(), "remote.only.task");
            f.eq(file, "ignore_result null means false", tm.ignore_result, false);
        }
        "task-priority-5" => f.eq(file, "priority", m.properties.priority, 5),
        "task-priority-9" => f.eq(file, "priority", m.properties.priority, 9),
        "task-from-beat" => f.eq(file, "beat header", tm.headers.get("celery_beat_task"), Some(&json!(true))),
        "chain2" | "chain3" => {
            let chain = e.chain.clone().unwrap_or_default();
            let rest: Vec<Value> = chain.iter().map(|s| Value::Array(s.args.clone())).collect();
            // Reversed: the next step is the last element.
            let want = if stem == "chain2" { vec![json!([3])] } else { vec![json!([4]), json!([3])] };
            f.eq(file, "chain (reversed) args", rest, want);
            f.eq(file, "chain steps are frozen", chain.iter().all(|s| s.id().is_some()), true);
        }
        "chord3" => {
            let idx: u64 = name.split(".msg").nth(1).and_then(|r| r[..1].parse().ok()).unwrap();
            f.eq(file, "group_index", tm.group_index, Some(idx));
            f.eq(file, "args", tm.args.clone(), vec![json!(idx + 1), json!(idx + 1)]);
            match &e.chord {
                Some(body) => {
                    f.eq(file, "chord body task", body.task.as_str(), "capapp.tsum");
                    f.eq(
                        file,
                        "chord body group_id = group header",
                        sig_opt(body, "group_id"),
                        tm.headers.get("group"),
                    );
                    f.eq(file, "chord body has a task id", body.id().is_some(), true);
                }
                None => f.fail(file, "embed.chord must hold the chord body"),
            }
        }
        "group3" => {
            let idx: u64 = name.split(".msg").nth(1).and_then(|r| r[..1].parse().ok()).unwrap();
            f.eq(file, "group_index", tm.group_index, Some(idx));
            f.eq(file, "group set", tm.group.is_some(), true);
            f.eq(file, "embed unused", no_embed, true);
        }
        "immutable-sig-in-chain" => match e.chain.as_deref() {
            Some([step]) => {
                f.eq(file, "immutable", step.immutable, true);
                f.eq(file, "args", step.args.clone(), vec![json!(5), json!(5)]);
                f.eq(file, "countdown option", sig_opt(step, "countdown"), Some(&json!(5)));
            }
            other => f.fail(file, format!("expected one chain step, got {other:?}")),
        },
        "link-linkerror" | "10-DEFAULT_celery_capapp" => {
            let cbs = e.callbacks.clone().unwrap_or_default();
            let ebs = e.errbacks.clone().unwrap_or_default();
            f.eq(
                file,
                "callbacks",
                cbs.iter().map(|s| (s.task.clone(), s.args.clone())).collect(),
                vec![("capapp.add".to_string(), vec![json!(10)])],
            );
            f.eq(file, "errbacks", ebs.iter().map(|s| s.task.clone()).collect(), vec!["capapp.on_error".to_string()]);
        }
        "link-multiple" => {
            let cbs = e.callbacks.clone().unwrap_or_default();
            let ebs = e.errbacks.clone().unwrap_or_default();
            f.eq(file, "callbacks immutable flags", cbs.iter().map(|s| s.immutable).collect(), vec![false, true]);
            f.eq(
                file,
                "callback args",
                cbs.iter().map(|s| s.args.clone()).collect(),
                vec![vec![json!(10)], vec![json!(100), json!(100)]],
            );
            f.eq(
                file,
                "errbacks",
                ebs.iter().map(|s| s.task.clone()).collect(),
                vec!["capapp.on_error".to_string(), "capapp.on_error_old".into()],
            );
        }
        "chain-with-group-middle" => match e.chain.as_deref() {
            Some([c]) => {
                f.eq(file, "group + next step became a chord", c.kind(), CanvasKind::Chord);
                match c.chord_parts() {
                    Some((header, body)) => {
                        f.eq(file, "header kind", header.kind(), CanvasKind::Group);
                        f.eq(file, "chord id = header group id", c.id(), header.id());
                        let members = header.tasks();
                        f.eq(
                            file,
                            "header args",
                            members.iter().map(|m| m.args.clone()).collect(),
                            vec![vec![json!(10)], vec![json!(20)]],
                        );
                        f.eq(
                            file,
                            "header group_index",
                            members.iter().map(|m| sig_opt(m, "group_index").cloned()).collect(),
                            vec![Some(json!(0)), Some(json!(1))],
                        );
                        f.eq(file, "body", body.task.as_str(), "capapp.tsum");
                    }
                    None => f.fail(file, "chord without header/body"),
                }
            }
            other => f.fail(file, format!("expected one chain element, got {other:?}")),
        },
        "chain-ending-in-group" => match e.chain.as_deref() {
            Some([g]) => {
                f.eq(file, "last step kind", g.kind(), CanvasKind::Group);
                f.eq(file, "members", g.tasks().len(), 2);
            }
            other => f.fail(file, format!("expected one chain element, got {other:?}")),
        },
        "00-retry-flaky" | "01-retry-flaky" => {
            let n: u32 = stem[..2].parse::<u32>().unwrap() + 1;
            f.eq(file, "retries", tm.retries, n);
            f.eq(file, "retry: parent_id = own id", tm.parent_id.as_deref(), Some(tm.id.as_str()));
            f.eq(file, "retry has an eta", tm.eta.is_some(), true);
            f.eq(file, "origin property kept", m.properties.extra.get("origin"), tm.headers.get("origin"));
        }
        "02-chain-add" => {
            f.eq(file, "parent result prepended", tm.args.clone(), vec![json!(3), json!(3)]);
            f.eq(file, "first step is parent and root", tm.parent_id.clone(), tm.root_id.clone());
            f.eq(file, "rest of chain", e.chain.as_ref().map(Vec::len), Some(1));
        }
        "03-chain-add" | "07-chain-group-middle-tsum" => {
            f.eq(file, "last chain step carries []", e.chain.clone(), Some(Vec::new()));
        }
        "04-chord-tsum" => {
            f.eq(file, "chord callback args", tm.args.clone(), vec![json!([2, 3, 4])]);
            f.eq(file, "callback group set", tm.group.is_some(), true);
            f.eq(file, "callback group_index", tm.group_index, None);
        }
        "05-chain-group-middle-add" | "06-chain-group-middle-add" => {
            let body = e.chord.clone();
            f.eq(file, "chord body in embed", body.as_ref().map(|b| b.task.clone()), Some("capapp.tsum".into()));
            f.eq(file, "parent result prepended", tm.args[0].clone(), json!(3));
        }
        "08-link-add" => {
            f.eq(file, "link: parent result prepended", tm.args.clone(), vec![json!(4), json!(10)]);
            f.eq(file, "parent is root", tm.parent_id.clone(), tm.root_id.clone());
        }
        "09-link-error-on_error_old" => {
            f.eq(file, "old errback is a group of one", tm.group_index, Some(0));
            f.eq(file, "args = failed task id", tm.args.clone(), vec![json!(tm.parent_id.clone())]);
        }
        "06-DEFAULT_celery_capapp" | "08-DEFAULT_celery_capapp" => {
            f.eq(file, "chord body", e.chord.as_ref().map(|b| b.task.clone()), Some("capapp.tsum".into()));
        }
        "12-DEFAULT_celery_capapp" => {
            f.eq(
                file,
                "big/negative/float/non-ASCII args",
                tm.args.clone(),
                vec![json!(1099511627776u64), json!(-5), json!(1.25), json!("ü")],
            );
            f.eq(file, "typed custom headers", tm.headers.get("x-big"), Some(&json!(1099511627776u64)));
        }
        _ => f.fail(file, "no case-specific check for this vector: add one"),
    }
}

#[test]
fn task_messages_decode_and_encode_back_to_celerys_bytes() {
    let mut f = Failures::default();
    let vectors = v2_vectors();
    for c in &vectors {
        let file = c.file.as_str();
        let m = &c.message;
        let tm = match m.decode_task() {
            Ok(tm) => tm,
            Err(e) => {
                f.fail(file, format!("decode_task failed: {e}"));
                continue;
            }
        };
        check_common(&mut f, c, &tm);
        check_case(&mut f, file, &tm, m);
        f.eq(file, "take_task() = decode_task()", m.clone().take_task().ok().as_ref(), Some(&tm));

        // The body, re-encoded from the decoded parts.
        let body = TaskBody(tm.args.clone(), tm.kwargs.clone(), tm.embed.clone());
        f.bytes(file, "re-encoded body", &m.body, &tm.content_type.encode(&body).unwrap());

        // The headers, as JSON text; and the whole Redis envelope, which a
        // transport can write with the same JSON writer.
        if let Some(text) = &c.headers_text {
            f.bytes(file, "headers JSON text", text, &py(&m.headers));
        }
        if let Some(raw) = &c.raw {
            let env: Value = serde_json::from_slice(raw).unwrap();
            f.bytes(file, "envelope JSON text", raw, &py(&env));
        }

        // Re-sending the message as is (a requeue): same headers and body.
        let mut b = tm.to_builder();
        b.priority = m.properties.priority;
        b.reply_to = m.properties.reply_to.clone();
        let built = match b.build() {
            Ok(built) => built,
            Err(e) => {
                f.fail(file, format!("to_builder().build() failed: {e}"));
                continue;
            }
        };
        f.bytes(file, "to_builder().build() headers", &py(&m.headers), &py(&built.headers));
        f.bytes(file, "to_builder().build() body", &m.body, &built.body);
        let mut props = built.properties.clone();
        f.eq(file, "expiration set iff expires", props.expiration.is_some(), m.properties.expiration.is_some());
        props.expiration = m.properties.expiration.clone();
        props.extra = m.properties.extra.clone();
        f.eq(file, "to_builder().build() properties (but expiration)", &props, &m.properties);
    }
    f.finish("task message", vectors.len());
}

#[test]
fn protocol1_message_decodes_like_its_protocol2_twin() {
    let v1 = redis_vector("redis-broker/task-protocol1.raw.json");
    let v2 = redis_vector("redis-broker/task-add-json.raw.json");
    assert!(v1.message.headers.is_empty(), "protocol 1 sends no headers");
    let one = v1.message.decode_task().unwrap();
    let two = v2.message.decode_task().unwrap();
    assert_eq!(one.protocol, 1);
    assert_eq!(one.id, "proto1-0000-0000-0000-000000000001");
    assert_eq!(Some(one.id.as_str()), v1.message.properties.correlation_id.as_deref());
    assert_eq!(
        (&one.task, &one.args, &one.kwargs, &one.embed, one.retries, &one.group, one.group_index, one.timelimit),
        (&two.task, &two.args, &two.kwargs, &two.embed, two.retries, &two.group, two.group_index, two.timelimit),
        "task-protocol1 and task-add-json differ in the fields both protocols carry"
    );
    assert_eq!((one.ignore_result, &one.shadow, one.content_type), (two.ignore_result, &two.shadow, two.content_type));
    // apply_async(countdown=10, expires=60) in protocol 1:
    assert_eq!(one.eta, Some(date("2026-11-22T02:17:28.170885+00:00")));
    assert_eq!(one.expires, Some(date("2026-11-22T02:18:18.170885+00:00")));
    assert_eq!(v1.message.properties.expiration.as_deref(), Some("60000"));

    // Re-sending it produces a protocol-2 message that decodes to the same task.
    let resent = one.to_builder().build().unwrap();
    assert_eq!(resent.body, v2.message.body, "v1 re-sent as v2 must have the v2 body of the same call");
    let again = resent.decode_task().unwrap();
    assert_eq!(again.protocol, 2);
    assert_eq!(
        (&again.id, &again.task, &again.args, &again.kwargs, &again.embed, again.eta, again.expires, again.timelimit),
        (&one.id, &one.task, &one.args, &one.kwargs, &one.embed, one.eta, one.expires, one.timelimit)
    );
    assert_eq!(again.root_id.as_deref(), Some(one.id.as_str()), "a protocol 1 task is its own root");
}

// ---------------------------------------------------------------------------
// 2. Signatures

/// Checks one signature map (and every signature nested in it) round-trips
/// through [`Signature`] to the identical JSON text. Returns how many were checked.
fn check_signature(f: &mut Failures, file: &str, path: &str, body: &[u8], v: &Value) -> usize {
    let text = py(v);
    if !body.windows(text.len()).any(|w| w == text.as_slice()) {
        f.fail(file, format!("{path}: the signature text is not a part of the captured body"));
    }
    let sig: Signature = match serde_json::from_slice(&text) {
        Ok(s) => s,
        Err(e) => {
            f.fail(file, format!("{path}: does not deserialize as a Signature: {e}"));
            return 0;
        }
    };
    f.bytes(file, &format!("{path} re-serialized"), &text, &py(&sig));
    f.bytes(file, &format!("{path} to_value()"), &text, &py(&sig.to_value()));
    let mut n = 1;
    // Nested canvas, through the typed accessors.
    match sig.kind() {
        CanvasKind::Group | CanvasKind::Chain => {
            for (i, (t, raw)) in sig.tasks().iter().zip(v["kwargs"]["tasks"].as_array().unwrap()).enumerate() {
                f.bytes(file, &format!("{path}.tasks[{i}] via tasks()"), &py(raw), &py(t));
                n += check_signature(f, file, &format!("{path}.tasks[{i}]"), body, raw);
            }
        }
        CanvasKind::Chord => match sig.chord_parts() {
            Some((h, b)) => {
                f.bytes(file, &format!("{path} header via chord_parts()"), &py(&v["kwargs"]["header"]), &py(&h));
                f.bytes(file, &format!("{path} body via chord_parts()"), &py(&v["kwargs"]["body"]), &py(&b));
                n += check_signature(f, file, &format!("{path}.header"), body, &v["kwargs"]["header"]);
                n += check_signature(f, file, &format!("{path}.body"), body, &v["kwargs"]["body"]);
            }
            None => f.fail(file, format!("{path}: chord_parts() found no header/body")),
        },
        CanvasKind::Task => {}
    }
    for key in ["link", "link_error"] {
        for (i, s) in sig.option_signatures(key).iter().enumerate() {
            let raw = &sig.options[key];
            let raw = if raw.is_array() { &raw[i] } else { raw };
            f.bytes(file, &format!("{path}.options.{key}[{i}]"), &py(raw), &py(s));
        }
    }
    if let Some(Value::Array(steps)) = sig.options.get("chain") {
        for (i, s) in steps.iter().enumerate() {
            n += check_signature(f, file, &format!("{path}.options.chain[{i}]"), body, s);
        }
    }
    if let Some(c @ Value::Object(_)) = sig.options.get("chord") {
        n += check_signature(f, file, &format!("{path}.options.chord"), body, c);
    }
    n
}

#[test]
fn signatures_in_embeds_round_trip_to_identical_json() {
    let mut f = Failures::default();
    let mut checked = 0;
    for c in v2_vectors() {
        let ct = ContentType::from_mime(&c.message.properties.content_type).unwrap();
        let body: Value = ct.decode(&c.message.body).unwrap();
        if ct != ContentType::Json {
            continue;
        }
        let embed = &body[2];
        for key in ["callbacks", "errbacks", "chain"] {
            for (i, s) in embed[key].as_array().into_iter().flatten().enumerate() {
                checked += check_signature(&mut f, &c.file, &format!("embed.{key}[{i}]"), &c.message.body, s);
            }
        }
        if embed["chord"].is_object() {
            checked += check_signature(&mut f, &c.file, "embed.chord", &c.message.body, &embed["chord"]);
        }
    }
    // chain2 1, chain3 2, chord3 3, immutable 1, link-linkerror 2 (+2 AMQP),
    // link-multiple 4, chain-with-group-middle 5 (chord, group, 2 members,
    // body), chain-ending-in-group 3, worker-sent 1 + 2, AMQP chord 2.
    assert!(checked >= 28, "only {checked} signatures found in the vectors");
    f.finish("signature", checked);

    // Keys qtask does not know are kept (after Celery's own keys).
    let text = br#"{"task": "capapp.add", "args": [10], "kwargs": {}, "options": {"task_id": "x", "link": []}, "subtask_type": null, "immutable": false, "chord_size": 2, "x-future": {"a": [1, 2.5]}}"#;
    let sig: Signature = serde_json::from_slice(text).unwrap();
    assert_eq!(sig.extra.get("chord_size"), Some(&json!(2)));
    assert_eq!(String::from_utf8(py(&sig)).unwrap(), String::from_utf8(text.to_vec()).unwrap());
}

// ---------------------------------------------------------------------------
// 3. Result documents

/// `from_json` then `to_json` must give the same bytes.
fn check_result_doc(f: &mut Failures, file: &str, raw: &[u8]) -> Option<ResultMeta> {
    match ResultMeta::from_json(raw) {
        Ok(meta) => {
            f.bytes(file, "ResultMeta::to_json", raw, &meta.to_json());
            Some(meta)
        }
        Err(e) => {
            f.fail(file, format!("ResultMeta::from_json failed: {e}"));
            None
        }
    }
}

#[test]
fn result_documents_round_trip_byte_for_byte() {
    let mut f = Failures::default();
    let mut checked = 0;
    for file in files("result-redis", ".raw.json") {
        if file.contains("taskset-meta") {
            continue; // a group's saved member list, not a task's document (tested below)
        }
        let raw = read(&file);
        checked += 1;
        let Some(meta) = check_result_doc(&mut f, &file, &raw) else { continue };
        let doc: Map<String, Value> = serde_json::from_slice(&raw).unwrap();
        f.eq(&file, "task_id", Some(meta.task_id.as_str()), doc["task_id"].as_str());
        f.eq(&file, "status", meta.status.as_str(), doc["status"].as_str().unwrap());
        f.eq(&file, "date_done only for ready states", meta.date_done.is_some(), meta.status.is_ready());
        f.eq(&file, "exception for exception states", meta.exception().is_some(), meta.status.is_exception());
        let stem = file.rsplit('/').next().unwrap().trim_end_matches(".raw.json");
        let extended = doc.contains_key("worker");
        f.eq(&file, "extended fields", meta.name.is_some() && meta.worker.is_some() && meta.queue.is_some(), extended);
        if extended {
            f.eq(&file, "extended retries", meta.retries, Some(0));
        }
        match stem {
            "success-add" | "extended-success" => f.eq(&file, "result", meta.result.clone(), json!(5)),
            "started" => f.eq(&file, "STARTED result", meta.result.get("hostname"), Some(&json!("w1@capture"))),
            "progress-custom-state" => {
                f.eq(&file, "custom state", meta.status.clone(), State::progress());
                f.eq(&file, "custom meta kept", meta.result.clone(), json!({"current": 0, "total": 3}));
            }
            "retry" => {
                f.eq(&file, "state", meta.status.clone(), State::Retry);
                let child = json!([[meta.task_id.clone(), null], null]);
                f.eq(&file, "children tuple", meta.children.clone(), Some(vec![child]));
            }
            "retry-final-success" => {
                f.eq(&file, "parent_id = own id", meta.parent_id.clone(), Some(meta.task_id.clone()))
            }
            "revoked-eta" => f.eq(&file, "children null", meta.children.clone(), None),
            _ => {}
        }
    }
    // Metas of executed canvases (captured decoded; Celery wrote them as
    // json.dumps, which is what qcore::json reproduces).
    for file in ["result-redis/chain-metas.json", "result-redis/group-metas.json", "result-redis/chord-metas.json"] {
        let all: Map<String, Value> = serde_json::from_slice(&read(file)).unwrap();
        let mut metas: Vec<(String, Value)> = Vec::new();
        for (k, v) in all {
            match k.as_str() {
                "group_id" => {}
                "callback" | "header" => metas.extend(v.as_object().unwrap().clone()),
                _ => metas.push((k, v)),
            }
        }
        for (id, v) in metas {
            checked += 1;
            let what = format!("{file} [{id}]");
            if let Some(meta) = check_result_doc(&mut f, &what, &py(&v)) {
                f.eq(&what, "task_id", meta.task_id, id);
            }
        }
    }
    f.finish("result document", checked);

    // GroupResult.save() value: plain JSON, written the same way.
    let raw = read("result-redis/group-saved-taskset-meta.raw.json");
    let v: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(py(&v), raw, "group-saved-taskset-meta.raw.json does not re-serialize identically");
}

#[test]
fn exception_maps_parse_like_celery_stores_them() {
    let result_of = |file: &str| -> (ResultMeta, Vec<u8>) {
        let raw = read(&format!("result-redis/{file}"));
        let meta = ResultMeta::from_json(&raw).unwrap();
        let text = member_text(&raw, "result").unwrap().to_vec();
        (meta, text)
    };

    let (meta, text) = result_of("failure-valueerror.raw.json");
    let exc = meta.exception().expect("FAILURE holds an exception");
    assert_eq!(exc, ExceptionInfo::new("ValueError", "boom"));
    assert_eq!(exc.exc_module, "builtins");
    assert_eq!(exc.to_string(), "ValueError: boom");
    assert_eq!(py(&exc.to_value()), text, "exception map re-serialized");
    assert_eq!(py(&exc), text, "ExceptionInfo serialized");

    let (meta, text) = result_of("failure-custom-exception.raw.json");
    let exc = meta.exception().unwrap();
    assert_eq!(exc.exc_type, "CaptureError");
    assert_eq!(exc.exc_module, "capapp");
    assert_eq!(exc.exc_message, vec![json!("custom failure"), json!(42)]);
    // The traceback's last line is `<module>.<type>: str(exc)`.
    let tb = meta.traceback.as_deref().unwrap();
    assert!(
        tb.ends_with(&format!("{}.{}: {}\n", exc.exc_module, exc.exc_type, exc.message())),
        "str(exc) = {:?} is not the end of the captured traceback {tb:?}",
        exc.message()
    );
    assert_eq!(py(&exc.to_value()), text);

    let (meta, _) = result_of("retry.raw.json");
    assert_eq!(meta.exception().unwrap(), ExceptionInfo::new("KeyError", "try again"));

    for (file, reason) in [
        ("revoked-eta.raw.json", "revoked"),
        ("revoked-before-start.raw.json", "revoked"),
        ("revoked-terminated.raw.json", "terminated"),
        ("revoked-expired.raw.json", "expired"),
    ] {
        let (meta, text) = result_of(file);
        assert_eq!(meta.exception(), Some(ExceptionInfo::revoked(reason)), "{file}");
        assert_eq!(py(&ExceptionInfo::revoked(reason).to_value()), text, "{file}: ExceptionInfo::revoked text");
    }

    // Older Celery stored exc_message as a string; it is read as one argument.
    let old =
        ExceptionInfo::from_value(&json!({"exc_type": "ValueError", "exc_message": "boom", "exc_module": "builtins"}));
    assert_eq!(old, Some(ExceptionInfo::new("ValueError", "boom")));
}

// ---------------------------------------------------------------------------
// 4. The canvas as qcore sends it, against Celery's layout

mod producer {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use async_trait::async_trait;
    use qcore::{
        chain, chord, group, App, BackendError, Broker, BrokerError, ChordJoin, ChordPart, ConsumeOptions, Consumer,
        ErrorKind, Message, ResultBackend, ResultMeta, SendOptions, Signature, Subscription,
    };
    use serde_json::{Map, Value};

    use super::{read, redis_vector, Captured};

    /// A broker that only records what is published.
    #[derive(Default)]
    struct Recorder {
        sent: Mutex<Vec<(String, Message)>>,
    }

    #[async_trait]
    impl Broker for Recorder {
        async fn declare_queue(&self, _queue: &str) -> Result<(), BrokerError> {
            Ok(())
        }
        async fn publish(&self, queue: &str, message: &Message) -> Result<(), BrokerError> {
            self.sent.lock().unwrap().push((queue.to_string(), message.clone()));
            Ok(())
        }
        async fn consume(&self, _q: &[String], _o: ConsumeOptions) -> Result<Box<dyn Consumer>, BrokerError> {
            Err(BrokerError::new(ErrorKind::Unsupported, "recorder only records"))
        }
        async fn queue_len(&self, queue: &str) -> Result<u64, BrokerError> {
            Ok(self.sent.lock().unwrap().iter().filter(|(q, _)| q == queue).count() as u64)
        }
        async fn purge(&self, _queue: &str) -> Result<u64, BrokerError> {
            Ok(0)
        }
        async fn publish_fanout(&self, _e: &str, _rk: &str, _m: &Message) -> Result<(), BrokerError> {
            Ok(())
        }
        async fn subscribe(&self, _e: &str, _p: &str) -> Result<Box<dyn Subscription>, BrokerError> {
            Err(BrokerError::new(ErrorKind::Unsupported, "recorder only records"))
        }
        async fn ping(&self) -> Result<(), BrokerError> {
            Ok(())
        }
        fn describe(&self) -> String {
            "recorder://".into()
        }
    }

    /// A backend that records chord set-ups (all a producer does with it).
    #[derive(Default)]
    struct ChordLog {
        inits: Mutex<Vec<(String, u64)>>,
        metas: Mutex<HashMap<String, ResultMeta>>,
    }

    #[async_trait]
    impl ResultBackend for ChordLog {
        async fn store(&self, meta: &ResultMeta, _ttl: Option<Duration>) -> Result<(), BackendError> {
            self.metas.lock().unwrap().insert(meta.task_id.clone(), meta.clone());
            Ok(())
        }
        async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
            Ok(self.metas.lock().unwrap().get(task_id).cloned())
        }
        async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
            self.metas.lock().unwrap().remove(task_id);
            Ok(())
        }
        async fn save_group(&self, _g: &str, _ids: &[String], _ttl: Option<Duration>) -> Result<(), BackendError> {
            Ok(())
        }
        async fn get_group(&self, _g: &str) -> Result<Option<Vec<String>>, BackendError> {
            Ok(None)
        }
        async fn chord_init(&self, group_id: &str, size: u64, _ttl: Option<Duration>) -> Result<(), BackendError> {
            self.inits.lock().unwrap().push((group_id.to_string(), size));
            Ok(())
        }
        async fn chord_part(
            &self,
            _g: &str,
            _p: &ChordPart,
            _ttl: Option<Duration>,
        ) -> Result<ChordJoin, BackendError> {
            Err(BackendError::new(ErrorKind::Unsupported, "producer-side test"))
        }
        fn describe(&self) -> String {
            "chordlog://".into()
        }
    }

    /// Replaces ids, the reply queue and the node name by placeholders: the
    /// n-th distinct id seen becomes `<id n>`, so which ids are equal (root =
    /// own id, chord id = group id, ...) is still compared.
    #[derive(Default)]
    struct Normalizer {
        ids: HashMap<String, usize>,
    }

    fn is_uuid(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 36
            && b.iter().enumerate().all(
                |(i, c)| {
                    if matches!(i, 8 | 13 | 18 | 23) {
                        *c == b'-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                },
            )
    }

    impl Normalizer {
        fn value(&mut self, v: &Value, reply_to: &str, origin: &str) -> Value {
            match v {
                Value::String(s) if s == reply_to => Value::String("<reply_to>".into()),
                Value::String(s) if s == origin => Value::String("<origin>".into()),
                Value::String(s) if is_uuid(s) => {
                    let next = self.ids.len();
                    Value::String(format!("<id {}>", self.ids.entry(s.clone()).or_insert(next)))
                }
                Value::String(s) if qcore::time::parse_iso(s).is_ok() => Value::String("<time>".into()),
                Value::Array(a) => Value::Array(a.iter().map(|x| self.value(x, reply_to, origin)).collect()),
                Value::Object(m) => {
                    Value::Object(m.iter().map(|(k, x)| (k.clone(), self.value(x, reply_to, origin))).collect())
                }
                other => other.clone(),
            }
        }

        /// Queue, the properties both sides set, headers and decoded body of a message.
        fn message(&mut self, queue: &str, m: &Message, reply_to: &str, origin: &str) -> Value {
            let p = &m.properties;
            let mut doc = Map::new();
            doc.insert("queue".into(), queue.into());
            let props = serde_json::json!({
                "content_type": p.content_type, "content_encoding": p.content_encoding,
                "correlation_id": p.correlation_id, "reply_to": p.reply_to,
                "delivery_mode": p.delivery_mode, "priority": p.priority,
            });
            doc.insert("properties".into(), props);
            doc.insert("headers".into(), Value::Object(m.headers.clone()));
            let body: Value = m.content_type().unwrap().decode(&m.body).unwrap();
            doc.insert("body".into(), body);
            self.value(&Value::Object(doc), reply_to, origin)
        }
    }

    fn celery_layout(files: &[&str]) -> String {
        let mut n = Normalizer::default();
        let docs: Vec<Value> = files
            .iter()
            .map(|f| {
                let c: Captured = redis_vector(&format!("canvas/{f}"));
                let env: Value = serde_json::from_slice(&read(&format!("canvas/{f}"))).unwrap();
                let queue = env["properties"]["delivery_info"]["routing_key"].as_str().unwrap().to_string();
                let reply_to = c.message.properties.reply_to.clone().unwrap();
                let origin = c.message.headers["origin"].as_str().unwrap().to_string();
                n.message(&queue, &c.message, &reply_to, &origin)
            })
            .collect();
        serde_json::to_string_pretty(&docs).unwrap()
    }

    fn line_diff(expected: &str, actual: &str) -> String {
        let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
        let at = e.iter().zip(&a).position(|(x, y)| x != y).unwrap_or(e.len().min(a.len()));
        let from = at.saturating_sub(8);
        let mut out = format!("  first differing line {} (- Celery, + qcore):\n", at + 1);
        for l in &e[from..at] {
            out.push_str(&format!("    {l}\n"));
        }
        for l in e.iter().skip(at).take(6) {
            out.push_str(&format!("  - {l}\n"));
        }
        for l in a.iter().skip(at).take(6) {
            out.push_str(&format!("  + {l}\n"));
        }
        out
    }

    fn add(a: &[i64]) -> Signature {
        a.iter().fold(Signature::new("capapp.add"), |s, x| s.arg(*x))
    }

    struct Case {
        name: &'static str,
        celery: &'static [&'static str],
        sig: Signature,
        options: SendOptions,
    }

    #[tokio::test]
    async fn canvas_messages_have_celerys_layout() {
        let cases = vec![
            Case {
                name: "chain2",
                celery: &["chain2.msg0.raw.json"],
                sig: chain([add(&[1, 2]), add(&[3])]),
                options: SendOptions::new(),
            },
            Case {
                name: "chain3",
                celery: &["chain3.msg0.raw.json"],
                sig: chain([add(&[1, 2]), add(&[3]), add(&[4])]),
                options: SendOptions::new(),
            },
            Case {
                name: "group3",
                celery: &["group3.msg0.raw.json", "group3.msg1.raw.json", "group3.msg2.raw.json"],
                sig: group([add(&[1, 1]), add(&[2, 2]), add(&[3, 3])]),
                options: SendOptions::new(),
            },
            Case {
                name: "chord3",
                celery: &["chord3.msg0.raw.json", "chord3.msg1.raw.json", "chord3.msg2.raw.json"],
                sig: chord([add(&[1, 1]), add(&[2, 2]), add(&[3, 3])], Signature::new("capapp.tsum")),
                options: SendOptions::new(),
            },
            Case {
                name: "chain-with-group-middle",
                celery: &["chain-with-group-middle.msg0.raw.json"],
                sig: chain([add(&[1, 2]), group([add(&[10]), add(&[20])]), Signature::new("capapp.tsum")]),
                options: SendOptions::new(),
            },
            Case {
                name: "chain-ending-in-group",
                celery: &["chain-ending-in-group.msg0.raw.json"],
                sig: chain([add(&[1, 2]), group([add(&[10]), add(&[20])])]),
                options: SendOptions::new(),
            },
            Case {
                name: "link-linkerror",
                celery: &["link-linkerror.msg0.raw.json"],
                sig: add(&[2, 2]),
                options: SendOptions::new().link(add(&[10])).link_error(Signature::new("capapp.on_error")),
            },
            Case {
                name: "link-multiple",
                celery: &["link-multiple.msg0.raw.json"],
                sig: add(&[2, 2]),
                options: SendOptions::new()
                    .link(add(&[10]))
                    .link(add(&[100, 100]).immutable())
                    .link_error(Signature::new("capapp.on_error"))
                    .link_error(Signature::new("capapp.on_error_old")),
            },
            Case {
                name: "immutable-sig-in-chain",
                celery: &["immutable-sig-in-chain.msg0.raw.json"],
                sig: chain([add(&[1, 2]), add(&[5, 5]).immutable().countdown(Duration::from_secs(5))]),
                options: SendOptions::new(),
            },
        ];
        let mut failures = Vec::new();
        for case in cases {
            let broker = Arc::new(Recorder::default());
            let backend = Arc::new(ChordLog::default());
            let app = App::builder().broker(broker.clone()).backend(backend.clone()).build().unwrap();
            app.apply_async(case.sig, case.options).await.unwrap();
            let sent = broker.sent.lock().unwrap().clone();
            let mut n = Normalizer::default();
            let docs: Vec<Value> = sent.iter().map(|(q, m)| n.message(q, m, app.reply_to(), app.origin())).collect();
            let ours = serde_json::to_string_pretty(&docs).unwrap();
            let celery = celery_layout(case.celery);
            if ours != celery {
                failures.push(format!(
                    "{} (canvas/{}):\n{}",
                    case.name,
                    case.celery.join(", canvas/"),
                    line_diff(&celery, &ours)
                ));
            }
            if case.name == "chord3" {
                // The producer prepares the join for 3 header tasks of the chord's group
                // (Celery: `celery-taskset-meta-<gid>.s` = "3", chord3.backend-keys.json).
                let keys: Value = serde_json::from_slice(&read("canvas/chord3.backend-keys.json")).unwrap();
                let size: u64 =
                    keys.as_object().unwrap().values().next().unwrap()["value"].as_str().unwrap().parse().unwrap();
                let inits = backend.inits.lock().unwrap().clone();
                let gid = sent[0].1.headers["group"].as_str().unwrap().to_string();
                if inits != vec![(gid, size)] {
                    failures.push(format!(
                        "chord3: chord_init calls {inits:?}, want one for the header group with size {size}"
                    ));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} canvas case(s) differ from Celery's layout:\n\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    /// `App::prepare` builds exactly the messages `apply_async` publishes
    /// (same layout, same order) and publishes nothing.
    #[tokio::test]
    async fn prepare_builds_without_publishing() {
        let sigs = [
            add(&[2, 2]),
            chain([add(&[1, 2]), add(&[3]), add(&[4])]),
            group([add(&[1, 1]), add(&[2, 2])]),
            chord([add(&[1, 1]), add(&[2, 2]), add(&[3, 3])], Signature::new("capapp.tsum")),
        ];
        for sig in sigs {
            let broker = Arc::new(Recorder::default());
            let app = App::builder().broker(broker.clone()).backend(Arc::new(ChordLog::default())).build().unwrap();
            let prepared = app.prepare(sig.clone(), SendOptions::new().priority(3)).await.unwrap();
            assert!(broker.sent.lock().unwrap().is_empty(), "prepare published");
            app.apply_async(sig.clone(), SendOptions::new().priority(3)).await.unwrap();
            let sent = broker.sent.lock().unwrap().clone();
            let norm = |msgs: &[(String, Message)]| {
                let mut n = Normalizer::default();
                msgs.iter().map(|(q, m)| n.message(q, m, app.reply_to(), app.origin())).collect::<Vec<Value>>()
            };
            assert_eq!(norm(&prepared.messages), norm(&sent), "{}", sig.task);
            let ids: Vec<&str> = prepared.messages.iter().filter_map(|(_, m)| m.headers["id"].as_str()).collect();
            if sig.kind() == qcore::CanvasKind::Task {
                assert_eq!(ids, vec![prepared.result.id()]);
            }
        }
    }
}
