//! Every page and API route through `oneshot`, with events fed directly.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use base64::Engine;
use qcore::event::{EventData, EventSender, TaskReceived, WorkerInfo};
use qcore::App;
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::monitor::Monitor;
use crate::store::Retention;

fn received(uuid: &str, name: &str, args: &str, parent: Option<&str>) -> EventData {
    EventData::TaskReceived(TaskReceived {
        uuid: uuid.into(),
        name: name.into(),
        args: args.into(),
        kwargs: "{}".into(),
        root_id: Some(parent.unwrap_or(uuid).into()),
        parent_id: parent.map(Into::into),
        retries: 0,
        eta: None,
        expires: None,
    })
}

/// A monitor that saw worker `w1@h` run `a` (add(2, 3) = 5), fail `b`, and
/// receive `c` (a child of `a`).
async fn monitor() -> Arc<Monitor> {
    let m = Monitor::open("sqlite::memory:", Retention::default()).await.unwrap();
    let s = EventSender::new("w1@h").with_pid(7).with_utcoffset(0.0);
    let events = vec![
        s.event(EventData::WorkerOnline(WorkerInfo::new(Duration::from_secs(2), 0, 0, [0.1, 0.2, 0.3]))),
        s.event(received("a", "tasks.add", "(2, 3)", None)),
        s.event(EventData::task_started("a")),
        s.event(EventData::task_succeeded("a", "5", Duration::from_millis(12))),
        s.event(received("b", "tasks.fail", "('boom',)", None)),
        s.event(EventData::task_started("b")),
        s.event(EventData::task_failed("b", "ValueError('boom')", Some("Traceback ...\nValueError: boom".into()))),
        s.event(received("c", "tasks.add", "(40, 2)", Some("a"))),
        s.event(EventData::WorkerHeartbeat(WorkerInfo::new(Duration::from_secs(2), 1, 2, [0.1, 0.2, 0.3]))),
    ];
    m.apply(&events).await.unwrap();
    m
}

async fn setup(cfg: WebConfig) -> (Router, App, Arc<Monitor>) {
    let m = monitor().await;
    let app = qmemory::app();
    (router(m.clone(), Some(app.clone()), cfg), app, m)
}

fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

async fn send(r: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

async fn get(r: &Router, uri: &str) -> (StatusCode, String) {
    let (s, _, b) = send(r, Request::get(uri).body(Body::empty()).unwrap()).await;
    (s, b)
}

async fn get_json(r: &Router, uri: &str) -> Value {
    let (s, b) = get(r, uri).await;
    assert_eq!(s, StatusCode::OK, "{uri}: {b}");
    serde_json::from_str(&b).unwrap()
}

fn post(uri: &str) -> axum::http::request::Builder {
    Request::post(uri)
}

#[tokio::test]
async fn tasks_api_has_flowers_shape_and_filters() {
    let (r, _, _) = setup(WebConfig::default()).await;
    let all = get_json(&r, "/api/tasks").await;
    let all = all.as_object().unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), ["c", "b", "a"], "newest first");
    let flower: Value = serde_json::from_str(include_str!("../../tests/data/api-tasks.json")).unwrap();
    let fl = flower.as_object().unwrap().values().next().unwrap().as_object().unwrap();
    for t in all.values() {
        let t = t.as_object().unwrap();
        assert_eq!(t.keys().collect::<Vec<_>>(), fl.keys().collect::<Vec<_>>());
    }
    // Types of the fields set on both sides are Flower's.
    let a = &all["a"];
    for (k, v) in fl {
        if !v.is_null() && !a[k].is_null() {
            assert_eq!(std::mem::discriminant(v), std::mem::discriminant(&a[k]), "{k}");
        }
    }
    assert_eq!(a["state"], "SUCCESS");
    assert_eq!(a["result"], "5");
    assert_eq!(a["worker"], "w1@h");
    assert_eq!(a["children"], serde_json::json!(["c"]));
    assert_eq!(all["b"]["exception"], "ValueError('boom')");

    let ok = get_json(&r, "/api/tasks?state=SUCCESS").await;
    assert_eq!(ok.as_object().unwrap().keys().collect::<Vec<_>>(), ["a"]);
    let named = get_json(&r, "/api/tasks?taskname=tasks.add&state=All").await;
    assert_eq!(named.as_object().unwrap().len(), 2);
    let by_worker = get_json(&r, "/api/tasks?workername=nobody").await;
    assert!(by_worker.as_object().unwrap().is_empty());
    let search = get_json(&r, "/api/tasks?search=40").await;
    assert_eq!(search.as_object().unwrap().keys().collect::<Vec<_>>(), ["c"]);
    let page = get_json(&r, "/api/tasks?limit=1&offset=1").await;
    assert_eq!(page.as_object().unwrap().keys().collect::<Vec<_>>(), ["b"]);
    let sorted = get_json(&r, "/api/tasks?sort_by=name").await;
    assert_eq!(sorted.as_object().unwrap().keys().next().unwrap(), "c", "tasks.add first (c newer than a)");
    let (s, _) = get(&r, "/api/tasks?received_start=yesterday").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let types = get_json(&r, "/api/task/types").await;
    assert_eq!(types["task-types"], serde_json::json!(["tasks.add", "tasks.fail"]));
}

#[tokio::test]
async fn task_info_and_result() {
    let (r, app, _) = setup(WebConfig::default()).await;
    let a = get_json(&r, "/api/task/info/a").await;
    assert_eq!(a["uuid"], "a");
    assert_eq!(a["args"], "(2, 3)");
    let (s, _) = get(&r, "/api/task/info/nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let res = get_json(&r, "/api/task/result/a").await;
    assert_eq!(res["task-id"], "a");
    assert_eq!(res["state"], "PENDING", "nothing stored in this backend");
    let meta = qcore::ResultMeta::new("a", qcore::State::Success, Value::from(5));
    app.backend().unwrap().store(&meta, None).await.unwrap();
    let res = get_json(&r, "/api/task/result/a").await;
    assert_eq!((res["state"].as_str(), res["result"].as_i64()), (Some("SUCCESS"), Some(5)));
    let v1 = get_json(&r, "/api/v1/tasks/b").await;
    assert_eq!(v1["task"]["state"], "FAILURE");
    assert_eq!(v1["events"].as_array().unwrap().len(), 3, "received, started, failed");
}

#[tokio::test]
async fn workers_api() {
    let (r, _, _) = setup(WebConfig::default()).await;
    let w = get_json(&r, "/api/workers").await;
    let flower: Value = serde_json::from_str(include_str!("../../tests/data/api-workers.json")).unwrap();
    let fl = flower.as_object().unwrap().values().next().unwrap().as_object().unwrap();
    let ours = w["w1@h"].as_object().unwrap();
    let mut keys: Vec<_> = ours.keys().collect();
    let mut expected: Vec<_> = fl.keys().collect();
    keys.sort();
    expected.sort();
    assert_eq!(keys, expected);
    for (k, v) in fl {
        if !ours[k].is_null() {
            assert_eq!(std::mem::discriminant(v), std::mem::discriminant(&ours[k]), "{k}");
        }
    }
    let status = get_json(&r, "/api/workers?status=1").await;
    assert_eq!(status["w1@h"], Value::Bool(true));
    let one = get_json(&r, "/api/workers?workername=w1@h").await;
    assert_eq!(one.as_object().unwrap().len(), 1);
    let (s, _) = get(&r, "/api/workers?workername=ghost@h").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let v1 = get_json(&r, "/api/v1/workers").await;
    assert_eq!(v1["workers"][0]["online"], true);
    assert_eq!(v1["workers"][0]["succeeded"], 1);
    assert_eq!(v1["workers"][0]["failed"], 1);
}

#[tokio::test]
async fn v1_tasks_pages_with_a_cursor() {
    let (r, _, _) = setup(WebConfig::default()).await;
    let first = get_json(&r, "/api/v1/tasks?limit=2").await;
    let ids: Vec<&str> = first["tasks"].as_array().unwrap().iter().map(|t| t["uuid"].as_str().unwrap()).collect();
    assert_eq!(ids, ["c", "b"]);
    let next = first["next"].as_i64().unwrap();
    let second = get_json(&r, &format!("/api/v1/tasks?limit=2&before={next}")).await;
    let ids: Vec<&str> = second["tasks"].as_array().unwrap().iter().map(|t| t["uuid"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a"]);
    assert!(second["next"].is_null());
    let q = get_json(&r, "/api/v1/tasks?q=boom").await;
    assert_eq!(q["tasks"][0]["uuid"], "b");
    let st = get_json(&r, "/api/v1/tasks?state=RECEIVED&name=tasks.add&worker=w1@h").await;
    assert_eq!(st["tasks"][0]["uuid"], "c");
}

#[tokio::test]
async fn revoke_reaches_the_workers() {
    let (r, app, _) = setup(WebConfig::default()).await;
    let mut pidbox = app.broker().subscribe(qcore::control::PIDBOX_EXCHANGE, "#").await.unwrap();
    let req = post("/api/task/revoke/c")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("terminate=true&signal=SIGKILL"))
        .unwrap();
    let (s, _, b) = send(&r, req).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["message"], "Revoked 'c'");
    let (_, msg) = pidbox.recv().await.unwrap().unwrap();
    let req = qcore::control::ControlRequest::from_message(&msg).unwrap();
    assert_eq!(req.method, "revoke");
    assert_eq!(req.arguments["task_id"], "c");
    assert_eq!(req.arguments["terminate"], true);
    assert_eq!(req.arguments["signal"], "SIGKILL");
    // Kept in the audit trail, with who did it, and shown on the dashboard.
    let actions = get_json(&r, "/api/v1/actions").await;
    assert_eq!(actions["actions"][0]["actor"], "anonymous");
    assert_eq!(actions["actions"][0]["action"], "revoke");
    assert_eq!(actions["actions"][0]["target"], "c (terminate, SIGKILL)");
    let (_, page) = get(&r, "/").await;
    assert!(page.contains("Recent actions") && page.contains("c (terminate, SIGKILL)"));
}

#[tokio::test]
async fn send_task_queues_a_message() {
    let (r, app, _) = setup(WebConfig::default()).await;
    let req = post("/api/task/send-task/tasks.add")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"args": [1, 2], "kwargs": {}}"#))
        .unwrap();
    let (s, _, b) = send(&r, req).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert!(v["task-id"].as_str().is_some_and(|id| id.len() == 36), "{v}");
    assert_eq!(app.broker().queue_len("celery").await.unwrap(), 1);
    let q = get_json(&r, "/api/queues/length").await;
    assert_eq!(q["active_queues"], serde_json::json!([{ "name": "celery", "messages": 1 }]));
    let bad = post("/api/task/async-apply/tasks.add").body(Body::from("[1]")).unwrap();
    assert_eq!(send(&r, bad).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn worker_control_of_an_unknown_worker_is_404() {
    let (r, _, _) = setup(WebConfig::default()).await;
    for path in ["shutdown", "pool/grow", "pool/shrink", "pool/restart", "queue/add-consumer"] {
        let path =
            if path.starts_with("queue") { format!("{path}/ghost@h?queue=q") } else { format!("{path}/ghost@h") };
        let (s, _, _) = send(&r, post(&format!("/api/worker/{path}")).body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }
    let (s, _, _) = send(&r, post("/api/task/rate-limit/tasks.add").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "workername is required");
    let (s, _, _) = send(&r, post("/api/task/timeout/tasks.add?workername=ghost@h").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn shutdown_is_broadcast_to_the_worker() {
    let (r, app, _) = setup(WebConfig::default()).await;
    let mut pidbox = app.broker().subscribe(qcore::control::PIDBOX_EXCHANGE, "#").await.unwrap();
    let (s, _, b) = send(&r, post("/api/worker/shutdown/w1@h").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["message"], "Shutting down!");
    let (_, msg) = pidbox.recv().await.unwrap().unwrap();
    let req = qcore::control::ControlRequest::from_message(&msg).unwrap();
    assert_eq!(req.method, "shutdown");
    assert_eq!(req.destination, Some(vec!["w1@h".to_string()]));
}

fn authed() -> WebConfig {
    WebConfig {
        users: User::parse_list("alice:s3cret-pw,bob:hunter22").unwrap(),
        tokens: vec!["tok-123".into()],
        broker: "redis://:brokerpass@127.0.0.1:6379/0".into(),
        ..WebConfig::default()
    }
}

#[tokio::test]
async fn auth_is_required_except_for_the_healthcheck() {
    let (r, _, _) = setup(authed()).await;
    assert_eq!(get(&r, "/healthcheck").await, (StatusCode::OK, "OK".to_string()));
    for path in ["/", "/tasks", "/api/tasks", "/api/workers", "/metrics", "/events/stream", "/task/a"] {
        let (s, h, _) = send(&r, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
        assert!(h.get(header::WWW_AUTHENTICATE).is_some());
    }
    for auth in [basic("alice", "wrong"), basic("mallory", "s3cret-pw"), "Bearer nope".into(), "Basic !!".into()] {
        let req = Request::get("/api/tasks").header(header::AUTHORIZATION, auth.clone()).body(Body::empty()).unwrap();
        assert_eq!(send(&r, req).await.0, StatusCode::UNAUTHORIZED, "{auth}");
    }
    for auth in [basic("alice", "s3cret-pw"), basic("bob", "hunter22"), "Bearer tok-123".into()] {
        let req = Request::get("/api/tasks").header(header::AUTHORIZATION, auth.clone()).body(Body::empty()).unwrap();
        assert_eq!(send(&r, req).await.0, StatusCode::OK, "{auth}");
    }
}

#[tokio::test]
async fn passwords_never_appear_on_pages() {
    let (r, _, _) = setup(authed()).await;
    for path in ["/", "/tasks", "/workers", "/worker/w1@h", "/task/a", "/queues"] {
        let req =
            Request::get(path).header(header::AUTHORIZATION, basic("alice", "s3cret-pw")).body(Body::empty()).unwrap();
        let (s, _, body) = send(&r, req).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert!(!body.contains("s3cret-pw") && !body.contains("hunter22") && !body.contains("brokerpass"), "{path}");
        assert!(body.contains("redis://:***@127.0.0.1:6379/0"), "{path}: the broker, redacted");
    }
    assert!(!format!("{:?}", authed()).contains("s3cret-pw"));
}

#[tokio::test]
async fn read_only_refuses_every_action() {
    let (r, app, _) = setup(WebConfig { read_only: true, ..WebConfig::default() }).await;
    for path in [
        "/api/task/revoke/a",
        "/api/task/send-task/tasks.add",
        "/api/task/async-apply/tasks.add",
        "/api/worker/shutdown/w1@h",
        "/api/worker/pool/grow/w1@h",
        "/api/task/rate-limit/tasks.add?workername=w1@h&ratelimit=1/s",
        "/task/a/revoke",
        "/task/b/retry",
        "/api/v1/tasks/b/retry",
        "/api/v1/queues/celery/purge",
        "/queue/celery/action",
        "/worker/w1@h/action",
    ] {
        let (s, _, _) = send(&r, post(path).body(Body::empty()).unwrap()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(app.broker().queue_len("celery").await.unwrap(), 0);
    let (_, page) = get(&r, "/task/c").await;
    assert!(!page.contains("Revoke") && page.contains("read-only"));
}

#[tokio::test]
async fn cross_site_posts_are_refused() {
    let (r, _, _) = setup(authed()).await;
    let alice = basic("alice", "s3cret-pw");
    // A form on another site posting with the browser's remembered basic auth.
    let req = post("/api/task/revoke/a")
        .header(header::AUTHORIZATION, alice.clone())
        .header(header::ORIGIN, "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .header(header::HOST, "127.0.0.1:5555")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&r, req).await.0, StatusCode::FORBIDDEN);
    // A script (curl, Flower clients) sends neither header: allowed.
    let req = post("/api/task/revoke/a").header(header::AUTHORIZATION, alice.clone()).body(Body::empty()).unwrap();
    assert_eq!(send(&r, req).await.0, StatusCode::OK);
    // A page form without the token.
    let req = post("/task/a/revoke")
        .header(header::AUTHORIZATION, alice.clone())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("terminate=true"))
        .unwrap();
    assert_eq!(send(&r, req).await.0, StatusCode::FORBIDDEN);
    // With the cookie's token: done, back to the task page.
    let page = Request::get("/task/c").header(header::AUTHORIZATION, alice.clone()).body(Body::empty()).unwrap();
    let (_, h, body) = send(&r, page).await;
    let set = h.get(header::SET_COOKIE).unwrap().to_str().unwrap().to_string();
    let token = set.trim_start_matches("qm_csrf=").split(';').next().unwrap().to_string();
    assert!(body.contains(&format!("value=\"{token}\"")), "the form carries the token");
    let wrong = post("/task/c/revoke")
        .header(header::AUTHORIZATION, alice.clone())
        .header(header::COOKIE, format!("qm_csrf={token}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("csrf=0123456789abcdef0123456789abcdef"))
        .unwrap();
    assert_eq!(send(&r, wrong).await.0, StatusCode::FORBIDDEN);
    let ok = post("/task/c/revoke")
        .header(header::AUTHORIZATION, alice)
        .header(header::COOKIE, format!("qm_csrf={token}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("csrf={token}")))
        .unwrap();
    let (s, h, _) = send(&r, ok).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let who = Request::get("/api/v1/actions")
        .header(header::AUTHORIZATION, basic("bob", "hunter22"))
        .body(Body::empty())
        .unwrap();
    let (_, _, actions) = send(&r, who).await;
    let actions: Value = serde_json::from_str(&actions).unwrap();
    assert_eq!(actions["actions"][0]["actor"], "alice", "who revoked c");
    assert_eq!(h.get(header::LOCATION).unwrap(), "/task/c?msg=Revoked");
}

#[tokio::test]
async fn every_page_renders() {
    let (r, _, _) = setup(WebConfig::default()).await;
    let (s, body) = get(&r, "/").await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("w1@h") && body.contains("online") && body.contains("SUCCESS"), "{body}");
    let (_, body) = get(&r, "/tasks").await;
    assert!(body.contains("/task/a") && body.contains("/task/b") && body.contains("/task/c"));
    let (_, body) = get(&r, "/tasks?q=boom").await;
    assert!(body.contains("/task/b") && !body.contains("/task/a\""));
    let (_, body) = get(&r, "/tasks?state=SUCCESS").await;
    assert!(body.contains("/task/a\"") && !body.contains("/task/b\""));
    let (_, body) = get(&r, "/tasks?limit=1").await;
    assert!(body.contains("Older"));
    let (_, body) = get(&r, "/task/b").await;
    assert!(body.contains("ValueError(&#39;boom&#39;)") || body.contains("ValueError('boom')"), "{body}");
    assert!(body.contains("Traceback") && body.contains("task-failed"));
    let (_, body) = get(&r, "/task/a").await;
    assert!(body.contains("/task/c"), "children linked");
    let (_, body) = get(&r, "/task/c").await;
    assert!(body.contains("Revoke") && body.contains("/task/a"), "revoke button, parent linked");
    assert_eq!(get(&r, "/task/zzz").await.0, StatusCode::NOT_FOUND);
    let (_, body) = get(&r, "/workers").await;
    assert!(body.contains("/worker/w1@h"));
    let (s, body) = get(&r, "/worker/w1@h").await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("Grow pool") && body.contains("Shut down"));
    assert_eq!(get(&r, "/worker/ghost@h").await.0, StatusCode::NOT_FOUND);
    let (_, body) = get(&r, "/queues").await;
    assert!(body.contains("celery"));
    let (s, css) = get(&r, "/static/style.css").await;
    assert!(s == StatusCode::OK && css.contains("body"));
    let (s, js) = get(&r, "/static/app.js").await;
    assert!(s == StatusCode::OK && js.contains("EventSource"));
}

#[tokio::test]
async fn the_stream_announces_new_events() {
    let (r, _, m) = setup(WebConfig::default()).await;
    let resp = r.clone().oneshot(Request::get("/events/stream").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = resp.into_body().into_data_stream();
    let s = EventSender::new("w2@h").with_pid(1).with_utcoffset(0.0);
    m.apply(&[s.event(received("d", "tasks.add", "(1, 1)", None))]).await.unwrap();
    use futures_util::StreamExt;
    let chunk = body.next().await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&chunk);
    assert!(text.contains("event: update") && text.contains("\"d\""), "{text}");
}

#[tokio::test]
async fn metrics_use_flowers_names() {
    let (r, _, _) = setup(WebConfig::default()).await;
    let (s, text) = get(&r, "/metrics").await;
    assert_eq!(s, StatusCode::OK);
    for name in [
        "flower_events_total{worker=\"w1@h\",type=\"task-succeeded\",task=\"tasks.add\"} 1",
        "flower_task_runtime_seconds_count{worker=\"w1@h\",task=\"tasks.add\"} 1",
        "flower_worker_online{worker=\"w1@h\"} 1",
        "flower_worker_number_of_currently_executing_tasks{worker=\"w1@h\"} 1",
        "flower_worker_prefetched_tasks{worker=\"w1@h\",task=\"tasks.add\"} 1",
        "flower_task_prefetch_time_seconds",
    ] {
        assert!(text.contains(name), "{name} in\n{text}");
    }
}

#[tokio::test]
async fn a_url_prefix_moves_everything() {
    let (r, _, _) = setup(WebConfig { url_prefix: "/monitor/".into(), ..WebConfig::default() }).await;
    assert_eq!(get(&r, "/api/tasks").await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&r, "/monitor/api/tasks").await.0, StatusCode::OK);
    assert_eq!(get(&r, "/monitor/healthcheck").await.1, "OK");
    let (_, body) = get(&r, "/monitor/tasks").await;
    assert!(body.contains("href=\"/monitor/task/a\"") && body.contains("/monitor/static/style.css"));
}

#[test]
fn no_auth_off_loopback_is_refused() {
    let open = WebConfig::default();
    assert!(open.check_listen(&"127.0.0.1:5555".parse().unwrap(), false).is_ok());
    assert!(open.check_listen(&"[::1]:5555".parse().unwrap(), false).is_ok());
    let err = open.check_listen(&"0.0.0.0:5555".parse().unwrap(), false).unwrap_err();
    assert!(err.contains("--basic-auth"), "{err}");
    assert!(open.check_listen(&"0.0.0.0:5555".parse().unwrap(), true).is_ok());
    assert!(authed().check_listen(&"0.0.0.0:5555".parse().unwrap(), false).is_ok());
    assert!(User::parse_list("nopass").is_err());
    assert!(User::parse_list("a:").is_err());
}

#[tokio::test]
async fn refresh_keeps_the_workers_when_none_answers() {
    let (r, _, _) = setup(WebConfig { inspect_timeout: Duration::from_millis(50), ..WebConfig::default() }).await;
    let w = get_json(&r, "/api/workers?refresh=1").await;
    assert!(w["w1@h"]["timestamp"].is_null(), "never inspected: {w}");
    assert_eq!(get(&r, "/api/workers?refresh=1&workername=w1@h").await.0, StatusCode::OK);
}

#[tokio::test]
async fn search_finds_substrings_with_any_characters() {
    let (r, _, m) = setup(WebConfig::default()).await;
    let s = EventSender::new("w1@h").with_pid(7).with_utcoffset(0.0);
    m.apply(&[s.event(received("q", "tasks.echo", "('50% \"off\"', 'a_b')", None))]).await.unwrap();
    for (q, expected) in [
        ("(2,%203)", vec!["a"]),
        ("50%25", vec!["q"]),
        ("%22off%22", vec!["q"]),
        ("a_b", vec!["q"]),
        ("_", vec!["q"]),
        ("%25", vec!["q"]),
        ("Boom", vec!["b"]),
        ("nothing-like-this", vec![]),
    ] {
        let found = get_json(&r, &format!("/api/tasks?search={q}")).await;
        assert_eq!(found.as_object().unwrap().keys().collect::<Vec<_>>(), expected, "{q}");
    }
}

#[tokio::test]
async fn retry_resends_the_stored_arguments_only() {
    let (r, app, _) = setup(WebConfig::default()).await;
    // Nothing stored for b: a repr is not re-sent.
    let (s, _, b) = send(&r, post("/api/v1/tasks/b/retry").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(app.broker().queue_len("celery").await.unwrap(), 0);
    let mut meta = qcore::ResultMeta::new("b", qcore::State::Failure, Value::Null);
    meta.name = Some("tasks.fail".into());
    meta.args = Some(serde_json::json!(["boom"]));
    meta.kwargs = Some(serde_json::json!({}));
    app.backend().unwrap().store(&meta, None).await.unwrap();
    let (s, _, b) = send(&r, post("/api/v1/tasks/b/retry").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["retry-of"], "b");
    let mut consumer =
        app.broker().consume(&["celery".to_string()], qcore::broker::ConsumeOptions::new(1)).await.unwrap();
    let d = consumer.recv().await.unwrap().unwrap();
    let tm = d.message.decode_task().unwrap();
    assert_eq!((tm.task.as_str(), tm.args.clone()), ("tasks.fail", vec![Value::from("boom")]));
    assert_eq!(Some(tm.id.as_str()), v["task-id"].as_str());
    let (_, page) = get(&r, "/task/b").await;
    assert!(page.contains("Retry (same arguments)"));
}

#[tokio::test]
async fn queues_are_listed_and_purged() {
    let (r, app, _) = setup(WebConfig::default()).await;
    for _ in 0..3 {
        app.send_task("tasks.add", vec![], Default::default(), Default::default()).await.unwrap();
    }
    let q = get_json(&r, "/api/v1/queues").await;
    assert_eq!(q["queues"], serde_json::json!([{ "name": "celery", "messages": 3, "dead_letters": 0 }]));
    let (_, page) = get(&r, "/").await;
    assert!(page.contains("celery"), "the dashboard shows the queue");
    let (s, _, b) = send(&r, post("/api/v1/queues/celery/purge").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b.contains("3 messages purged"), "{b}");
    assert_eq!(app.broker().queue_len("celery").await.unwrap(), 0);
    let (s, _, _) = send(&r, post("/api/v1/queues/celery/explode").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = send(&r, post("/queue/celery/action").body(Body::from("action=purge")).unwrap()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a page form without the CSRF token");
}

#[tokio::test]
async fn rates_count_finished_tasks_per_minute() {
    let (r, _, _) = setup(WebConfig::default()).await;
    let v = get_json(&r, "/api/v1/rates?minutes=30").await;
    let rows = v["per_minute"].as_array().unwrap();
    assert_eq!(rows.len(), 30);
    let sum = |k: &str| rows.iter().map(|m| m[k].as_i64().unwrap()).sum::<i64>();
    assert_eq!((sum("succeeded"), sum("failed"), sum("retried")), (1, 1, 0));
    let (_, page) = get(&r, "/").await;
    assert!(page.contains("<svg") && page.contains("succeeded 1") && page.contains("failed 1"), "{page}");
}

#[tokio::test]
async fn limits_from_the_worker_page_reach_the_worker() {
    let (r, app, _) = setup(WebConfig { inspect_timeout: Duration::from_millis(50), ..WebConfig::default() }).await;
    let page = Request::get("/worker/w1@h").body(Body::empty()).unwrap();
    let (_, h, body) = send(&r, page).await;
    assert!(body.contains("Set rate limit") && body.contains("Set time limits"));
    let token =
        h[header::SET_COOKIE].to_str().unwrap().trim_start_matches("qm_csrf=").split(';').next().unwrap().to_string();
    let mut pidbox = app.broker().subscribe(qcore::control::PIDBOX_EXCHANGE, "#").await.unwrap();
    let form = format!("csrf={token}&action=rate_limit&task=tasks.add&ratelimit=10%2Fm");
    let req = post("/worker/w1@h/action")
        .header(header::COOKIE, format!("qm_csrf={token}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form))
        .unwrap();
    let (s, h, _) = send(&r, req).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(h[header::LOCATION].to_str().unwrap().contains("did%20not%20answer"), "no worker here to answer");
    let (_, msg) = pidbox.recv().await.unwrap().unwrap();
    let req = qcore::control::ControlRequest::from_message(&msg).unwrap();
    assert_eq!(req.method, "rate_limit");
    assert_eq!(
        (req.arguments["task_name"].as_str(), req.arguments["rate_limit"].as_str()),
        (Some("tasks.add"), Some("10/m"))
    );
    assert_eq!(req.destination, Some(vec!["w1@h".to_string()]));
}
