//! Remote-control (pidbox) messages against Celery 5.7's captures (FACTS §5):
//! every captured request and reply decodes, and encodes back to Celery's
//! body bytes and headers.
//!
//! The vectors are a committed copy of the capture set's pidbox files
//! (`tests/fixtures/celery-compat/vectors/pidbox`; set `QTASK_CELERY_COMPAT`
//! to read another copy).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use qcore::control::{ControlRequest, Matcher, Reply, RequestHeaders, PIDBOX_EXCHANGE, REPLY_EXCHANGE};
use qcore::{Message, Properties};
use serde_json::{json, Map, Value};

fn compat() -> PathBuf {
    match std::env::var_os("QTASK_CELERY_COMPAT") {
        Some(dir) => dir.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/celery-compat"),
    }
}

fn read(rel: &str) -> Vec<u8> {
    let path = compat().join("vectors").join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("capture {}: {e}", path.display()))
}

fn files(dir: &str, suffix: &str) -> Vec<String> {
    let path = compat().join("vectors").join(dir);
    let mut out: Vec<String> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("capture dir {}: {e}", path.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(suffix))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no {suffix} vectors in {dir}");
    out
}

/// One captured message: body bytes, headers, delivery mode.
struct Captured {
    file: String,
    body: Vec<u8>,
    headers: Map<String, Value>,
    delivery_mode: u8,
    exchange: String,
}

fn redis(suffix: &str) -> Vec<Captured> {
    files("pidbox/redis", suffix)
        .into_iter()
        .map(|file| {
            let v: Value = serde_json::from_slice(&read(&file)).unwrap();
            let body = base64::engine::general_purpose::STANDARD.decode(v["body"].as_str().unwrap()).unwrap();
            Captured {
                body,
                headers: v["headers"].as_object().unwrap().clone(),
                delivery_mode: v["properties"]["delivery_mode"].as_u64().unwrap() as u8,
                exchange: v["properties"]["delivery_info"]["exchange"].as_str().unwrap().to_owned(),
                file,
            }
        })
        .collect()
}

fn amqp(suffix: &str) -> Vec<Captured> {
    files("pidbox/amqp", suffix)
        .into_iter()
        .map(|file| {
            let v: Value = serde_json::from_slice(&read(&file)).unwrap();
            let body = read(&file.replace(".decoded.json", ".body.bin"));
            Captured {
                body,
                headers: v["properties_plain"]["headers"].as_object().unwrap().clone(),
                delivery_mode: v["properties_plain"]["delivery_mode"].as_u64().unwrap() as u8,
                exchange: v["method_args"]["exchange"].as_str().unwrap().to_owned(),
                file,
            }
        })
        .collect()
}

fn message(c: &Captured) -> Message {
    Message { headers: c.headers.clone(), properties: Properties::default(), body: c.body.clone() }
}

fn requests() -> Vec<Captured> {
    let mut all = redis(".request0.decoded.json");
    all.extend(redis("hello.request.decoded.json"));
    all.extend(amqp(".request0.decoded.json"));
    all.extend(amqp("broadcast0.decoded.json"));
    all
}

fn replies() -> Vec<Captured> {
    let mut all = redis(".reply0.decoded.json");
    all.extend(amqp(".reply0.decoded.json"));
    all
}

#[test]
fn captured_requests_encode_back_to_celerys_bytes() {
    let mut failures = Vec::new();
    let all = requests();
    assert!(all.len() >= 23, "{} request vectors", all.len());
    for c in &all {
        let msg = message(c);
        let req = match ControlRequest::from_message(&msg) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: {e}", c.file));
                continue;
            }
        };
        let h = RequestHeaders::from_message(&msg);
        let again = req.to_message(h.clock.unwrap(), h.expires).unwrap();
        if again.body != c.body {
            failures.push(format!(
                "{}: body\n  ours   {}\n  celery {}",
                c.file,
                String::from_utf8_lossy(&again.body),
                String::from_utf8_lossy(&c.body)
            ));
        }
        if qcore::json::to_vec(&again.headers).unwrap() != qcore::json::to_vec(&c.headers).unwrap() {
            failures.push(format!("{}: headers {:?} vs {:?}", c.file, again.headers, c.headers));
        }
        if again.properties.delivery_mode != c.delivery_mode || c.exchange != PIDBOX_EXCHANGE {
            failures.push(format!("{}: delivery mode {} / exchange {}", c.file, c.delivery_mode, c.exchange));
        }
        let reply_to = req.reply_to.as_ref().unwrap();
        assert_eq!(reply_to.exchange, REPLY_EXCHANGE, "{}", c.file);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn captured_replies_encode_back_to_celerys_bytes() {
    let mut failures = Vec::new();
    let all = replies();
    assert!(all.len() >= 20, "{} reply vectors", all.len());
    for c in &all {
        let msg = message(c);
        let replies = match Reply::from_message(&msg) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: {e}", c.file));
                continue;
            }
        };
        assert_eq!(replies.len(), 1, "{}: one node per reply", c.file);
        let r = &replies[0];
        assert!(r.node.contains('@'), "{}: node {}", c.file, r.node);
        let again = r.to_message(r.ticket.as_deref(), r.clock.unwrap()).unwrap();
        if again.body != c.body {
            failures.push(format!(
                "{}: body\n  ours   {}\n  celery {}",
                c.file,
                String::from_utf8_lossy(&again.body),
                String::from_utf8_lossy(&c.body)
            ));
        }
        if qcore::json::to_vec(&again.headers).unwrap() != qcore::json::to_vec(&c.headers).unwrap() {
            failures.push(format!("{}: headers {:?} vs {:?}", c.file, again.headers, c.headers));
        }
        if again.properties.delivery_mode != c.delivery_mode || c.exchange != REPLY_EXCHANGE {
            failures.push(format!("{}: delivery mode {} / exchange {}", c.file, c.delivery_mode, c.exchange));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn captured_arguments_read_as_celery_sent_them() {
    let revoke = redis("control-revoke.request0.decoded.json").remove(0);
    let req = ControlRequest::from_message(&message(&revoke)).unwrap();
    assert_eq!(req.method, "revoke");
    assert_eq!(req.task_ids(), vec!["6019129c-a555-4ca4-bb93-0351d5d420a6".to_string()]);
    let dest = redis("inspect-ping-destination.request0.decoded.json").remove(0);
    let req = ControlRequest::from_message(&message(&dest)).unwrap();
    assert!(req.addressed_to("w1@capture"));
    assert!(!req.addressed_to("w2@capture"));
    let registered = redis("inspect-registered.request0.decoded.json").remove(0);
    let req = ControlRequest::from_message(&message(&registered)).unwrap();
    assert_eq!(req.arguments.get("taskinfoitems"), Some(&json!([])));
}

#[test]
fn a_request_built_here_is_celerys_shape() {
    let req = ControlRequest::new("ping").reply_to("52f753b3-652d-3332-9a83-73f41e8ed73a");
    let ticket = req.ticket.clone().unwrap();
    let msg = req.to_message(1, Some(1795314048.675506)).unwrap();
    let want = format!(
        "{{\"method\": \"ping\", \"arguments\": {{}}, \"destination\": null, \"pattern\": null, \"matcher\": null, \
         \"ticket\": \"{ticket}\", \"reply_to\": {{\"exchange\": \"reply.celery.pidbox\", \"routing_key\": \
         \"52f753b3-652d-3332-9a83-73f41e8ed73a\"}}}}"
    );
    assert_eq!(String::from_utf8(msg.body).unwrap(), want);
    assert_eq!(qcore::json::to_string(&msg.headers).unwrap(), r#"{"clock": 1, "expires": 1795314048.675506}"#);
    assert_eq!(msg.properties.delivery_mode, 2);
}

#[test]
fn addressing_follows_kombu() {
    let all = ControlRequest::new("ping");
    assert!(all.addressed_to("any@host"));
    let glob = ControlRequest::new("ping").matching("w1@*", Matcher::Glob);
    assert!(glob.addressed_to("w1@capture") && !glob.addressed_to("w2@capture"));
    let pcre = ControlRequest::new("ping").matching(r"w[0-9]@", Matcher::Pcre);
    assert!(pcre.addressed_to("w1@capture") && !pcre.addressed_to("x1@capture"));
    let mut no_matcher = ControlRequest::new("ping");
    no_matcher.pattern = Some("*".into());
    assert!(!no_matcher.addressed_to("w1@capture"), "a pattern without a matcher addresses nobody");
    let mut unknown = glob.clone();
    unknown.matcher = Some("soundex".into());
    assert!(!unknown.addressed_to("w1@capture"));
    let both = ControlRequest::new("ping").to(["w2@capture"]).matching("w1@*", Matcher::Glob);
    assert!(both.addressed_to("w2@capture") && !both.addressed_to("w1@capture"), "destination wins");
}

#[test]
fn malformed_bytes_are_errors_not_panics() {
    let bodies: [&[u8]; 9] = [
        b"",
        b"null",
        b"[]",
        b"{\"method\": 5}",
        b"{\"method\": \"\"}",
        b"{\"method\": \"ping\", \"destination\": \"w1\"}",
        b"\xff\xfe",
        b"{\"method\": \"ping\", \"reply_to\": {\"exchange\": 1}}",
        b"{\"w1@h\": ",
    ];
    for body in bodies {
        let msg = Message { headers: Map::new(), properties: Properties::default(), body: body.to_vec() };
        assert!(ControlRequest::from_message(&msg).is_err(), "{:?}", String::from_utf8_lossy(body));
    }
    for body in [&b""[..], b"[1]", b"5", b"\xff"] {
        let msg = Message { headers: Map::new(), properties: Properties::default(), body: body.to_vec() };
        assert!(Reply::from_message(&msg).is_err(), "{:?}", String::from_utf8_lossy(body));
    }
    let mut headers = Map::new();
    headers.insert("clock".into(), json!("x"));
    headers.insert("expires".into(), json!([1]));
    let msg = Message { headers, properties: Properties::default(), body: b"{}".to_vec() };
    assert_eq!(RequestHeaders::from_message(&msg), RequestHeaders::default());
    let replies = Reply::from_message(&msg).unwrap();
    assert!(replies.is_empty());
}
