//! Monitoring events against Celery 5.7's captures (FACTS §4): every captured
//! event message must decode, and encoding its events back must give Celery's
//! body bytes, batches included.
//!
//! The vectors are a committed copy of the capture set's event files
//! (`tests/fixtures/celery-compat/vectors/`, as captured; set
//! `QTASK_CELERY_COMPAT` to read another copy). Each
//! family test checks all of its vectors and fails once, listing every
//! mismatch.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use qcore::event::{
    Event, EventData, EventKind, EventSender, TaskFailure, TaskReceived, TaskRevoked, TaskSent, TaskSucceeded,
    WorkerInfo, EVENT_EXCHANGE, TASK_MULTI,
};
use qcore::{ContentType, Message, Properties, TaskMessage};
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------
// Vector access and failure reporting

fn compat() -> PathBuf {
    match std::env::var_os("QTASK_CELERY_COMPAT") {
        Some(dir) => dir.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery-compat"),
    }
}

fn read(rel: &str) -> Vec<u8> {
    let path = compat().join("vectors").join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("capture {} (set QTASK_CELERY_COMPAT): {e}", path.display()))
}

fn json_file(rel: &str) -> Value {
    serde_json::from_slice(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Files in `dir` whose name ends with `suffix`, sorted.
fn files(dir: &str, suffix: &str) -> Vec<String> {
    let path = compat().join("vectors").join(dir);
    let mut out: Vec<String> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("capture dir {} (set QTASK_CELERY_COMPAT): {e}", path.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(suffix))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no {suffix} vectors in {dir}");
    out
}

#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, file: &str, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(format!("{file}: {}", what()));
        }
    }

    fn bytes(&mut self, file: &str, what: &str, expected: &[u8], actual: &[u8]) {
        if expected != actual {
            let at = expected.iter().zip(actual).position(|(a, b)| a != b).unwrap_or(expected.len().min(actual.len()));
            let show = |b: &[u8]| {
                String::from_utf8_lossy(&b[at.saturating_sub(40).min(b.len())..(at + 40).min(b.len())]).into_owned()
            };
            self.0.push(format!(
                "{file}: {what} differs from Celery's at byte {at}\n  expected: …{:?}…\n  actual:   …{:?}…",
                show(expected),
                show(actual)
            ));
        }
    }

    fn finish(self, family: &str, checked: usize) {
        assert!(checked > 0, "no {family} vector was checked");
        assert!(
            self.0.is_empty(),
            "{} mismatch(es) in {family} ({checked} checked):\n\n{}",
            self.0.len(),
            self.0.join("\n\n")
        );
    }
}

/// A Redis `PUBLISH` payload (kombu's envelope, base64 body) as a message.
fn redis_message(env: &Value) -> Message {
    let body = base64::engine::general_purpose::STANDARD.decode(env["body"].as_str().unwrap()).unwrap();
    let props = &env["properties"];
    Message {
        headers: env["headers"].as_object().unwrap().clone(),
        properties: Properties {
            content_type: env["content-type"].as_str().unwrap().into(),
            content_encoding: env["content-encoding"].as_str().unwrap().into(),
            delivery_mode: props["delivery_mode"].as_u64().unwrap() as u8,
            priority: props["priority"].as_u64().unwrap() as u8,
            ..Properties::default()
        },
        body,
    }
}

/// What one captured event message must satisfy: it decodes to known
/// events (equal to `expected` when given), travels on the key Celery's rule
/// gives, and encodes back to the same body, headers and properties.
fn check_message(
    f: &mut Failures,
    file: &str,
    msg: &Message,
    exchange: &str,
    routing_key: &str,
    expected: Option<&[Value]>,
) -> Vec<Event> {
    let events = match Event::from_message(msg) {
        Ok(events) => events,
        Err(e) => {
            f.check(false, file, || format!("does not decode: {e}"));
            return Vec::new();
        }
    };
    let is_list = msg.body.first() == Some(&b'[');
    f.check(exchange == EVENT_EXCHANGE, file, || format!("exchange {exchange}"));
    f.check(!events.is_empty(), file, || "no event".into());
    for ev in &events {
        f.check(!matches!(ev.data, EventData::Other(_)), file, || {
            format!("{} read as an unknown type", ev.type_name())
        });
        let key = if ev.kind().is_batched() { TASK_MULTI.to_owned() } else { ev.routing_key() };
        f.check(key == routing_key, file, || {
            format!("{} would go on {key}, Celery used {routing_key}", ev.type_name())
        });
        f.check(ev.kind().is_batched() == is_list, file, || format!("{} batched: {is_list}", ev.type_name()));
    }
    if let Some(expected) = expected {
        let actual: Vec<Value> = events.iter().map(|e| Value::Object(e.to_map())).collect();
        f.check(actual == expected, file, || format!("decoded\n  {actual:?}\nexpected\n  {expected:?}"));
    }
    let again = if is_list { Event::batch_to_message(&events) } else { events[0].to_message() };
    match again {
        Ok(m) => {
            f.bytes(file, "body", &msg.body, &m.body);
            f.check(m.headers == msg.headers, file, || format!("headers {:?}", m.headers));
            f.check(m.properties == msg.properties, file, || format!("properties {:?}", m.properties));
        }
        Err(e) => f.check(false, file, || format!("does not encode: {e}")),
    }
    events
}

fn redis_routing(env: &Value) -> (String, String) {
    let info = &env["properties"]["delivery_info"];
    (info["exchange"].as_str().unwrap().into(), info["routing_key"].as_str().unwrap().into())
}

// ---------------------------------------------------------------------------
// Captured messages

#[test]
fn redis_decoded_vectors_decode_and_encode_back_byte_for_byte() {
    let mut f = Failures::default();
    let mut checked = 0;
    for file in files("events/redis", ".decoded.json") {
        let v = json_file(&file);
        f.check(v["_body_bytes_b64"] == v["body"], &file, || "_body_bytes_b64 is not the envelope body".into());
        let (exchange, rk) = redis_routing(&v);
        f.check(v["_channel"] == format!("/5.{exchange}/{rk}"), &file, || format!("channel {}", v["_channel"]));
        let expected = match &v["_body_decoded"] {
            Value::Array(items) => items.clone(),
            one => vec![one.clone()],
        };
        let events = check_message(&mut f, &file, &redis_message(&v), &exchange, &rk, Some(&expected));
        let name = file.trim_start_matches("events/redis/").trim_end_matches(".decoded.json");
        f.check(events.iter().any(|e| e.type_name() == name), &file, || format!("no {name} event"));
        checked += 1;
    }
    f.finish("events/redis/*.decoded.json", checked);
}

#[test]
fn redis_raw_payloads_decode_and_encode_back_byte_for_byte() {
    let mut f = Failures::default();
    let mut checked = 0;
    let mut raw = files("events/redis", ".raw.json");
    raw.extend(files("events/redis/by-channel", ".raw.json"));
    for file in raw {
        let env = json_file(&file);
        let (exchange, rk) = redis_routing(&env);
        check_message(&mut f, &file, &redis_message(&env), &exchange, &rk, None);
        checked += 1;
    }
    // The three ways a task is revoked (terminated, revoked before it
    // started, expired), each with the event as Celery's reader decoded it.
    let file = "events/redis/task-revoked.all.json";
    let mut revoked = Vec::new();
    for item in json_file(file).as_array().unwrap() {
        let env: Value = serde_json::from_str(item["raw_payload"].as_str().unwrap()).unwrap();
        let (exchange, rk) = redis_routing(&env);
        f.check(item["channel"] == format!("/5.{exchange}/{rk}"), file, || format!("channel {}", item["channel"]));
        let expected = [item["event"].clone()];
        for ev in check_message(&mut f, file, &redis_message(&env), &exchange, &rk, Some(&expected)) {
            if let EventData::TaskRevoked(r) = ev.data {
                revoked.push((r.terminated, r.signum, r.expired));
            }
        }
        checked += 1;
    }
    f.check(revoked == [(true, Some(15), false), (false, None, false), (false, None, true)], file, || {
        format!("revoked fields {revoked:?}")
    });
    f.finish("events/redis raw payloads", checked);
}

#[test]
fn amqp_bodies_decode_and_encode_back_byte_for_byte() {
    let mut f = Failures::default();
    let mut checked = 0;
    for file in files("events/amqp", ".body.bin") {
        let d = json_file(&file.replace(".body.bin", ".decoded.json"));
        let p = &d["properties_plain"];
        let msg = Message {
            headers: p["headers"].as_object().unwrap().clone(),
            properties: Properties {
                content_type: p["content_type"].as_str().unwrap().into(),
                content_encoding: p["content_encoding"].as_str().unwrap().into(),
                delivery_mode: p["delivery_mode"].as_u64().unwrap() as u8,
                priority: p["priority"].as_u64().unwrap() as u8,
                ..Properties::default()
            },
            body: read(&file),
        };
        f.check(d["content_header"]["property_flags"] == "0xf800", &file, || "property flags".into());
        let args = &d["method_args"];
        let expected = match &d["body_decoded"] {
            Value::Array(items) => items.clone(),
            one => vec![one.clone()],
        };
        check_message(
            &mut f,
            &file,
            &msg,
            args["exchange"].as_str().unwrap(),
            args["routing_key"].as_str().unwrap(),
            Some(&expected),
        );
        checked += 1;
    }
    f.finish("events/amqp/*.body.bin", checked);
}

/// Every event of both captures (`all-events.decoded.jsonl`) is a known type,
/// goes on the key Celery used, and encodes as Python's `json.dumps` wrote it.
#[test]
fn every_captured_event_is_known_and_encodes_like_python() {
    let mut f = Failures::default();
    let mut checked = 0;
    let mut keys = std::collections::BTreeSet::new();
    for transport in ["redis", "amqp"] {
        let file = format!("events/{transport}/all-events.decoded.jsonl");
        let text = String::from_utf8(read(&file)).unwrap();
        for (n, line) in text.lines().enumerate() {
            let at = format!("{file}:{}", n + 1);
            let v: Value = serde_json::from_str(line).unwrap();
            let (rk, body) = if transport == "redis" {
                let channel = v["channel"].as_str().unwrap();
                let rk = channel.strip_prefix("/5.celeryev/").unwrap_or(channel).to_owned();
                let events = v["events"].clone();
                (rk, if v["n_events"].is_null() { events[0].clone() } else { events })
            } else {
                (v["routing_key"].as_str().unwrap().to_owned(), v["body"].clone())
            };
            let headers = if transport == "amqp" {
                v["headers"].as_object().unwrap().clone()
            } else {
                let first = if body.is_array() { &body[0] } else { &body };
                let mut h = Map::new();
                h.insert("hostname".into(), first["hostname"].clone());
                h
            };
            let msg = Message {
                headers,
                properties: Properties { delivery_mode: 1, ..Properties::default() },
                body: qcore::json::to_vec(&body).unwrap(),
            };
            let expected = match &body {
                Value::Array(items) => items.clone(),
                one => vec![one.clone()],
            };
            check_message(&mut f, &at, &msg, EVENT_EXCHANGE, &rk, Some(&expected));
            keys.insert(rk);
            checked += 1;
        }
    }
    let seen: Vec<String> = serde_json::from_value(json_file("events/amqp/routing-keys-seen.json")).unwrap();
    f.check(keys.iter().eq(seen.iter()), "routing-keys-seen.json", || format!("keys {keys:?}, seen {seen:?}"));
    f.finish("all-events.decoded.jsonl", checked);
}

// ---------------------------------------------------------------------------
// Building events from typed values gives Celery's bytes

fn body_of(rel: &str) -> Vec<u8> {
    let v = json_file(rel);
    base64::engine::general_purpose::STANDARD.decode(v["_body_bytes_b64"].as_str().unwrap()).unwrap()
}

fn captured(rel: &str, index: usize) -> Event {
    let events = Event::from_message(&redis_message(&json_file(rel))).unwrap();
    events[index].clone()
}

/// A task message from a captured Redis envelope.
fn task_message(env: &Value) -> TaskMessage {
    redis_message(env).decode_task().unwrap()
}

#[test]
fn events_built_from_typed_values_have_celerys_bytes() {
    // task-succeeded: the captured body is a batch of one.
    let c = captured("events/redis/task-succeeded.decoded.json", 0);
    let built = Event {
        data: EventData::TaskSucceeded(TaskSucceeded {
            uuid: "e3c170de-721f-41fc-ab16-aa2df8eb882f".into(),
            result: "5".into(),
            runtime: 0.013639032000014595,
        }),
        ..c.clone()
    };
    assert_eq!(built, c);
    assert_eq!(Event::batch_to_message(&[built]).unwrap().body, body_of("events/redis/task-succeeded.decoded.json"));

    // task-started from its helper.
    let c = captured("events/redis/task-started.decoded.json", 0);
    let built = Event { data: EventData::task_started("e3c170de-721f-41fc-ab16-aa2df8eb882f"), ..c.clone() };
    assert_eq!(Event::batch_to_message(&[built]).unwrap().body, body_of("events/redis/task-started.decoded.json"));

    // task-failed and task-retried.
    let c = captured("events/redis/task-failed.decoded.json", 1);
    let EventData::TaskFailed(TaskFailure { traceback, .. }) = &c.data else { panic!("{c:?}") };
    let exc = qcore::ExceptionInfo::new("ValueError", "boom");
    assert_eq!(qcore::event::exception_repr(&exc), "ValueError('boom')");
    let built = EventData::task_failed(
        "42a73550-ca4d-4f15-9638-8c975c160c2f",
        qcore::event::exception_repr(&exc),
        traceback.clone(),
    );
    assert_eq!(built, c.data);
    let c = captured("events/redis/task-retried.decoded.json", 0);
    let EventData::TaskRetried(TaskFailure { traceback, .. }) = &c.data else { panic!("{c:?}") };
    let built =
        EventData::task_retried("592d46c3-704c-4dd2-a026-0fffdd5a626b", "KeyError('try again')", traceback.clone());
    assert_eq!(built, c.data);

    // task-revoked, the three ways.
    let all = json_file("events/redis/task-revoked.all.json");
    let cases = [(true, Some(15), false), (false, None, false), (false, None, true)];
    for (item, (terminated, signum, expired)) in all.as_array().unwrap().iter().zip(cases) {
        let ev: Event = serde_json::from_value(item["event"].clone()).unwrap();
        let uuid = item["event"]["uuid"].as_str().unwrap();
        assert_eq!(ev.data, EventData::task_revoked(uuid, terminated, signum, expired));
        assert_eq!(ev.data, EventData::TaskRevoked(TaskRevoked { uuid: uuid.into(), terminated, signum, expired }));
    }

    // worker-heartbeat: a single map on its own key.
    let c = captured("events/redis/worker-heartbeat.decoded.json", 0);
    let info = WorkerInfo {
        freq: 2.0,
        active: 0,
        processed: 0,
        loadavg: vec![1.12, 1.47, 0.79],
        sw_ident: "py-celery".into(),
        sw_ver: "5.7.0".into(),
        sw_sys: "Linux".into(),
    };
    let built = Event { data: EventData::WorkerHeartbeat(info), ..c.clone() };
    assert_eq!(built.to_message().unwrap().body, body_of("events/redis/worker-heartbeat.decoded.json"));
    assert_eq!(built.routing_key(), "worker.heartbeat");
}

#[test]
fn task_received_and_task_sent_come_from_the_task_message_as_celery_fills_them() {
    // The message of `add(2, 3)` as the worker held it (the `unacked` hash).
    let line = String::from_utf8(read("redis-reliability/ack-emulation-commands.jsonl")).unwrap();
    let hset = line
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["cmd"][0] == "HSET" && v["cmd"][3].as_str().is_some_and(|s| s.contains("e3c170de-721f")))
        .expect("the HSET of add(2, 3)");
    let entry: Value = serde_json::from_str(hset["cmd"][3].as_str().unwrap()).unwrap();
    let tm = task_message(&entry[0]);
    let received = captured("events/redis/task-received.decoded.json", 0);
    assert_eq!(EventData::TaskReceived(TaskReceived::from_task(&tm)), received.data);
    let sent = captured("events/redis/task-sent.decoded.json", 0);
    assert_eq!(EventData::TaskSent(TaskSent::from_task(&tm, "celery", "", "celery")), sent.data);

    // A retry: eta, parent_id and retries as the headers spell them.
    let tm = task_message(&json_file("canvas/worker-sent/00-retry-flaky.raw.json"));
    let text = String::from_utf8(read("events/redis/all-events.decoded.jsonl")).unwrap();
    let find = |t: &str| -> Event {
        text.lines()
            .flat_map(|l| serde_json::from_str::<Value>(l).unwrap()["events"].as_array().unwrap().clone())
            .find(|e| e["type"] == t && e["eta"] == "2026-11-22T02:20:07.341088+00:00")
            .map(|e| serde_json::from_value(e).unwrap())
            .unwrap()
    };
    assert_eq!(EventData::TaskReceived(TaskReceived::from_task(&tm)), find("task-received").data);
    assert_eq!(EventData::TaskSent(TaskSent::from_task(&tm, "celery", "", "celery")), find("task-sent").data);
}

// ---------------------------------------------------------------------------
// Routing keys

#[test]
fn routing_keys_follow_celerys_rule() {
    assert_eq!(EVENT_EXCHANGE, "celeryev");
    assert_eq!(TASK_MULTI, "task.multi");
    let cases = [
        ("worker-online", "worker.online", false),
        ("worker-heartbeat", "worker.heartbeat", false),
        ("worker-offline", "worker.offline", false),
        ("task-sent", "task.sent", false),
        ("task-received", "task.received", true),
        ("task-started", "task.started", true),
        ("task-succeeded", "task.succeeded", true),
        ("task-failed", "task.failed", true),
        ("task-retried", "task.retried", true),
        ("task-revoked", "task.revoked", true),
        ("task-rejected", "task.rejected", true),
        ("task-custom-progress", "task.custom.progress", true),
        ("worker-custom", "worker.custom", false),
    ];
    for (t, key, batched) in cases {
        let kind = EventKind::from_type(t);
        assert_eq!(kind.as_str(), t);
        assert_eq!(kind.routing_key(), key, "{t}");
        assert_eq!(kind.is_batched(), batched, "{t}");
        assert_eq!(matches!(kind, EventKind::Other(_)), t.contains("custom"), "{t}");
    }
}

// ---------------------------------------------------------------------------
// Decoding shapes, malformed bodies, unknown types and fields

fn json_message(body: &[u8]) -> Message {
    Message {
        properties: Properties { delivery_mode: 1, ..Properties::default() },
        body: body.to_vec(),
        ..Message::default()
    }
}

#[test]
fn a_single_map_and_a_list_both_decode() {
    let sender = EventSender::new("w1@example").with_pid(7).with_utcoffset(-5.5);
    let online = sender.event(EventData::WorkerOnline(WorkerInfo::new(Duration::from_secs(2), 0, 0, [0.5, 0.25, 0.0])));
    let received = sender.event(EventData::TaskReceived(TaskReceived {
        uuid: "t1".into(),
        name: "tasks.add".into(),
        args: "(2, 3)".into(),
        kwargs: "{}".into(),
        root_id: Some("t1".into()),
        parent_id: None,
        retries: 0,
        eta: None,
        expires: None,
    }));
    let started = sender.event(EventData::task_started("t1"));
    let succeeded = sender.event(EventData::task_succeeded("t1", "5", Duration::from_millis(1500)));

    let msg = online.to_message().unwrap();
    assert_eq!(msg.headers, json!({"hostname": "w1@example"}).as_object().unwrap().clone());
    assert_eq!((msg.properties.delivery_mode, msg.properties.priority), (1, 0));
    assert_eq!(msg.properties.content_type, "application/json");
    assert_eq!(msg.properties.content_encoding, "utf-8");
    assert_eq!(Event::from_message(&msg).unwrap(), vec![online.clone()]);
    let text = String::from_utf8(msg.body).unwrap();
    assert!(
        text.starts_with(r#"{"hostname": "w1@example", "utcoffset": -5.5, "pid": 7, "clock": 1, "freq": 2.0, "active": 0, "processed": 0, "loadavg": [0.5, 0.25, 0.0], "sw_ident": "qtask", "sw_ver": ""#),
        "{text}"
    );
    assert!(text.ends_with(r#", "type": "worker-online"}"#), "{text}");

    let batch = vec![received, started, succeeded];
    let msg = Event::batch_to_message(&batch).unwrap();
    assert_eq!(msg.body[0], b'[');
    let back = Event::from_message(&msg).unwrap();
    assert_eq!(back, batch);
    assert_eq!(back.iter().map(|e| e.clock).collect::<Vec<_>>(), [Some(2), Some(3), Some(4)]);
    assert_eq!(back[2].data, EventData::task_succeeded("t1", "5", Duration::from_millis(1500)));
    assert!(back.iter().all(|e| e.task_id() == Some("t1") && e.kind().is_batched()));

    assert!(Event::from_message(&json_message(b"[]")).unwrap().is_empty());
    assert!(Event::batch_to_message(&[]).is_err(), "an empty batch has no sender");

    // The same event as msgpack (Celery's `event_serializer = "msgpack"`).
    let mut msg = online.to_message().unwrap();
    msg.properties.content_type = ContentType::Msgpack.mime().into();
    msg.body = ContentType::Msgpack.encode(&online).unwrap();
    assert_eq!(Event::from_message(&msg).unwrap(), vec![online]);
}

#[test]
fn malformed_bodies_are_errors_not_panics() {
    let ok = r#"{"hostname": "w", "utcoffset": 0.0, "pid": 1, "clock": 1, "uuid": "t", "timestamp": 1.5, "type": "task-started"}"#;
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "not JSON"),
        (String::new(), "empty"),
        ("42".into(), "a number"),
        ("\"task-started\"".into(), "a string"),
        ("null".into(), "null"),
        ("[1]".into(), "a list with a number"),
        (format!("[{ok}, 3]"), "a list with a map and a number"),
        (format!("[{ok}, [{ok}]]"), "a nested list"),
        (format!("{ok} trailing"), "trailing bytes"),
        (r#"{"hostname": "w", "utcoffset": 0.0, "pid": 1, "clock": 1, "timestamp": 1.5}"#.into(), "no type"),
        (ok.replace(r#""type": "task-started""#, r#""type": 7"#), "type not a string"),
        (ok.replace(r#""uuid": "t", "#, ""), "task-started without uuid"),
        (ok.replace(r#""hostname": "w", "#, ""), "no hostname"),
        (ok.replace(r#""pid": 1"#, r#""pid": -1"#), "negative pid"),
        (ok.replace(r#""pid": 1"#, r#""pid": 99999999999"#), "pid too large"),
        (ok.replace(r#""clock": 1"#, r#""clock": "1""#), "clock a string"),
        (ok.replace(r#""timestamp": 1.5"#, r#""timestamp": "now""#), "timestamp a string"),
        (ok.replace(r#""utcoffset": 0.0, "#, ""), "no utcoffset"),
        (
            ok.replace(r#""uuid": "t""#, r#""uuid": "t", "result": "5", "runtime": "fast""#)
                .replace("task-started", "task-succeeded"),
            "runtime a string",
        ),
    ];
    for (body, what) in &cases {
        let r = Event::from_message(&json_message(body.as_bytes()));
        assert!(r.is_err(), "{what}: {r:?}");
    }
    assert_eq!(Event::from_message(&json_message(ok.as_bytes())).unwrap().len(), 1);

    // A content type qtask does not speak, and broken msgpack.
    let mut msg = json_message(ok.as_bytes());
    msg.properties.content_type = "application/x-yaml".into();
    assert!(Event::from_message(&msg).is_err());
    msg.properties.content_type = ContentType::Msgpack.mime().into();
    msg.body = vec![0xc1, 0x00];
    assert!(Event::from_message(&msg).is_err());
}

#[test]
fn an_unknown_event_type_round_trips() {
    let body = r#"[{"hostname": "w1@capture", "utcoffset": -1.0, "pid": 5, "clock": null, "uuid": "t9", "progress": 0.5, "meta": {"step": "\u00fcber", "n": [1, 2]}, "timestamp": 1795314005.3159735, "type": "task-progress"}, {"hostname": "w1@capture", "utcoffset": -1.0, "pid": 5, "clock": 12, "uuid": "t9", "timestamp": 1795314005.316, "type": "task-started"}]"#;
    let events = Event::from_message(&json_message(body.as_bytes())).unwrap();
    assert_eq!(events.len(), 2);
    let ev = &events[0];
    assert_eq!(ev.kind(), EventKind::Other("task-progress".into()));
    assert_eq!(ev.type_name(), "task-progress");
    assert_eq!(ev.clock, None);
    assert_eq!(ev.task_id(), Some("t9"));
    assert_eq!(ev.extra.keys().collect::<Vec<_>>(), ["uuid", "progress", "meta"]);
    assert_eq!(ev.routing_key(), "task.progress");
    assert!(ev.kind().is_batched());
    assert_eq!(Event::batch_to_message(&events).unwrap().body, body.as_bytes());

    let single = r#"{"hostname": "w", "utcoffset": 0.0, "pid": 1, "clock": 3, "a": 1, "timestamp": 2.0, "type": "worker-custom"}"#;
    let events = Event::from_message(&json_message(single.as_bytes())).unwrap();
    assert_eq!(events[0].routing_key(), "worker.custom");
    assert_eq!(events[0].task_id(), None);
    assert_eq!(events[0].to_message().unwrap().body, single.as_bytes());
}

#[test]
fn unknown_fields_of_a_known_type_are_kept_in_order() {
    let body = r#"{"hostname": "w", "utcoffset": 0.0, "pid": 1, "clock": 8, "uuid": "t", "result": "5", "runtime": 0.25, "worker_pid": 77, "note": "x", "timestamp": 1.5, "type": "task-succeeded"}"#;
    let events = Event::from_message(&json_message(body.as_bytes())).unwrap();
    let ev = &events[0];
    assert!(matches!(&ev.data, EventData::TaskSucceeded(s) if s.runtime == 0.25 && s.result == "5"));
    assert_eq!(ev.extra.keys().collect::<Vec<_>>(), ["worker_pid", "note"]);
    assert_eq!(ev.to_message().unwrap().body, body.as_bytes());

    // Celery before 4.0 sent no root_id/parent_id: read as null.
    let old = r#"{"hostname": "w", "utcoffset": 0, "pid": 1, "clock": 2, "uuid": "t", "name": "tasks.add", "args": "(2, 3)", "kwargs": "{}", "retries": 0, "eta": null, "expires": null, "timestamp": 1.5, "type": "task-received"}"#;
    let ev = &Event::from_message(&json_message(old.as_bytes())).unwrap()[0];
    assert!(matches!(&ev.data, EventData::TaskReceived(r) if r.root_id.is_none() && r.parent_id.is_none()));
    assert_eq!(ev.utcoffset, 0.0, "an integer offset (Celery before 5.7) reads as hours");
}

#[test]
fn the_sender_stamps_the_common_fields() {
    let sender = EventSender::new("w2@example").with_pid(99);
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let ev = sender.event(EventData::task_rejected("t", true));
    assert_eq!((ev.hostname.as_str(), ev.pid, ev.clock), ("w2@example", 99, Some(1)));
    assert_eq!(ev.utcoffset, qcore::event::utcoffset());
    assert!(ev.timestamp >= before && ev.timestamp < before + 60.0);
    assert!(ev.extra.is_empty());
    let text = String::from_utf8(ev.to_json()).unwrap();
    assert!(text.contains(r#""clock": 1, "uuid": "t", "requeue": true, "timestamp": "#), "{text}");
    assert!(text.ends_with(r#", "type": "task-rejected"}"#), "{text}");
    assert_eq!(sender.adjust(41), 42);
    assert_eq!(sender.event(EventData::task_started("t")).clock, Some(43));
    assert_eq!(std::process::id(), EventSender::new("x").pid());
}
