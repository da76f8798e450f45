//! `SendOptions` reach the message typed, and say exactly what the same
//! options say in a signature's options (Celery's dict).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use qcore::{
    App, Broker, BrokerError, ConsumeOptions, Consumer, ContentType, ErrorKind, Message, SendOptions, Signature,
    Subscription,
};
use serde_json::{json, Value};

/// A broker nothing is sent to: the tests only `prepare` messages.
struct Unused;

fn unused<T>() -> Result<T, BrokerError> {
    Err(BrokerError::new(ErrorKind::Unsupported, "not used by these tests"))
}

#[async_trait]
impl Broker for Unused {
    async fn declare_queue(&self, _: &str) -> Result<(), BrokerError> {
        unused()
    }
    async fn publish(&self, _: &str, _: &Message) -> Result<(), BrokerError> {
        unused()
    }
    async fn consume(&self, _: &[String], _: ConsumeOptions) -> Result<Box<dyn Consumer>, BrokerError> {
        unused()
    }
    async fn queue_len(&self, _: &str) -> Result<u64, BrokerError> {
        unused()
    }
    async fn purge(&self, _: &str) -> Result<u64, BrokerError> {
        unused()
    }
    async fn publish_fanout(&self, _: &str, _: &str, _: &Message) -> Result<(), BrokerError> {
        unused()
    }
    async fn subscribe(&self, _: &str, _: &str) -> Result<Box<dyn Subscription>, BrokerError> {
        unused()
    }
    async fn ping(&self) -> Result<(), BrokerError> {
        unused()
    }
    fn describe(&self) -> String {
        "unused://".into()
    }
}

fn app() -> App {
    App::builder().broker(Arc::new(Unused)).build().unwrap()
}

async fn one(app: &App, sig: Signature, options: SendOptions) -> (String, Message) {
    let mut prepared = app.prepare(sig, options).await.unwrap();
    assert_eq!(prepared.messages.len(), 1);
    prepared.messages.remove(0)
}

fn callbacks(m: &Message, which: &str) -> Value {
    let body: Value = m.content_type().unwrap().decode(&m.body).unwrap();
    body[2][which].clone()
}

#[tokio::test]
async fn typed_options_build_the_message_the_same_options_in_the_signature_build() {
    let app = app();
    let eta = Utc.with_ymd_and_hms(2031, 5, 6, 7, 8, 9).unwrap() + chrono::Duration::nanoseconds(123_456_789);
    let expires = eta + chrono::Duration::hours(1);
    let cb = Signature::new("tasks.cb").arg(1);
    let eb = Signature::new("tasks.eb").immutable();
    let sig = Signature::new("tasks.add").arg(2).arg(3);
    let typed = SendOptions::new()
        .task_id("id-1")
        .eta(eta)
        .expires_at(expires)
        .priority(7)
        .queue("q1")
        .header("x-trace", "abc")
        .link(cb.clone())
        .link_error(eb.clone())
        .serializer(ContentType::Msgpack)
        .ignore_result(true)
        .time_limit(Duration::from_secs(10))
        .soft_time_limit(Duration::from_millis(2500))
        .shadow("add-shadow");
    let (q_typed, m_typed) = one(&app, sig.clone(), typed).await;
    let dict = sig
        .set("task_id", "id-1")
        .set("eta", "2031-05-06T07:08:09.123456+00:00")
        .set("expires", "2031-05-06T08:08:09.123456+00:00")
        .set("priority", 7)
        .set("queue", "q1")
        .set("headers", json!({"x-trace": "abc"}))
        .link(cb)
        .link_error(eb)
        .set("serializer", "application/x-msgpack")
        .set("ignore_result", true)
        .set("time_limit", 10.0)
        .set("soft_time_limit", 2.5)
        .set("shadow", "add-shadow");
    let (q_dict, m_dict) = one(&app, dict, SendOptions::new()).await;
    assert_eq!(q_typed, "q1");
    assert_eq!(q_typed, q_dict);
    assert_eq!(m_typed.headers, m_dict.headers);
    assert_eq!(m_typed.body, m_dict.body);
    assert_eq!(m_typed.headers["eta"], json!("2031-05-06T07:08:09.123456+00:00"));
    assert_eq!(m_typed.headers["timelimit"], json!([10, 2.5]));
    assert_eq!(m_typed.properties.priority, 7);
    assert_eq!(m_typed.properties.content_type, "application/x-msgpack");
    // `expiration` counts milliseconds from when each message was built.
    let (mut p_typed, mut p_dict) = (m_typed.properties.clone(), m_dict.properties.clone());
    let ms = |p: &qcore::Properties| p.expiration.as_deref().and_then(|e| e.parse::<i64>().ok());
    assert!(ms(&p_typed).zip(ms(&p_dict)).is_some_and(|(a, b)| (a - b).abs() < 5_000), "{p_typed:?} {p_dict:?}");
    (p_typed.expiration, p_dict.expiration) = (None, None);
    assert_eq!(p_typed, p_dict);
}

#[tokio::test]
async fn relative_times_count_from_the_send() {
    let app = app();
    let before = Utc::now();
    let opts = SendOptions::new().countdown(Duration::from_secs(30)).expires_in(Duration::from_secs(90));
    let (_, m) = one(&app, Signature::new("tasks.add"), opts).await;
    let after = Utc::now();
    let at = |k: &str| qcore::time::parse_iso(m.headers[k].as_str().unwrap()).unwrap();
    assert!(at("eta") >= before + chrono::Duration::seconds(30) && at("eta") <= after + chrono::Duration::seconds(30));
    assert!(
        at("expires") >= before + chrono::Duration::seconds(90)
            && at("expires") <= after + chrono::Duration::seconds(90)
    );
    // An eta, given or in the signature, wins over a countdown.
    let eta = Utc.with_ymd_and_hms(2031, 1, 1, 0, 0, 0).unwrap();
    let sig = Signature::new("tasks.add").eta(eta);
    let (_, m) = one(&app, sig, SendOptions::new().countdown(Duration::from_secs(5))).await;
    assert_eq!(m.headers["eta"], json!("2031-01-01T00:00:00+00:00"));
}

#[tokio::test]
async fn given_options_win_over_the_signatures_and_links_add_up() {
    let app = app();
    let sig = Signature::new("tasks.add")
        .queue("from-sig")
        .priority(1)
        .set("eta", "not a date")
        .link(Signature::new("tasks.first"));
    let opts = SendOptions::new()
        .queue("given")
        .eta(Utc.with_ymd_and_hms(2031, 1, 1, 0, 0, 0).unwrap())
        .link(Signature::new("tasks.second"));
    let (q, m) = one(&app, sig, opts).await;
    assert_eq!(q, "given");
    assert_eq!(m.properties.priority, 1, "the signature's priority stays");
    assert_eq!(m.headers["eta"], json!("2031-01-01T00:00:00+00:00"), "the given eta replaces an unusable one");
    let names: Vec<Value> = callbacks(&m, "callbacks").as_array().unwrap().iter().map(|c| c["task"].clone()).collect();
    assert_eq!(names, vec![json!("tasks.first"), json!("tasks.second")]);

    // A single signature (not a list) in `link` is kept with the given ones.
    let sig = Signature::new("tasks.add").set("link", Signature::new("tasks.only").to_value());
    let (_, m) = one(&app, sig, SendOptions::new().link(Signature::new("tasks.given"))).await;
    let names: Vec<Value> = callbacks(&m, "callbacks").as_array().unwrap().iter().map(|c| c["task"].clone()).collect();
    assert_eq!(names, vec![json!("tasks.only"), json!("tasks.given")]);
}

#[tokio::test]
async fn option_by_name_and_typed_setters_last_one_wins() {
    let app = app();
    let sig = || Signature::new("tasks.add");
    let (q, _) = one(&app, sig(), SendOptions::new().queue("typed").option("queue", "named")).await;
    assert_eq!(q, "named");
    let (q, _) = one(&app, sig(), SendOptions::new().option("queue", "named").queue("typed")).await;
    assert_eq!(q, "typed");
    let (_, m) = one(&app, sig(), SendOptions::new().option("group_id", "g1").option("group_index", 4)).await;
    assert_eq!((m.headers["group"].clone(), m.headers["group_index"].clone()), (json!("g1"), json!(4)));
    let opts = SendOptions::new().option("link", json!([Signature::new("tasks.a").to_value()]));
    let (_, m) = one(&app, sig(), opts.link(Signature::new("tasks.b"))).await;
    let names: Vec<Value> = callbacks(&m, "callbacks").as_array().unwrap().iter().map(|c| c["task"].clone()).collect();
    assert_eq!(names, vec![json!("tasks.a"), json!("tasks.b")]);
}

#[tokio::test]
async fn a_canvas_carries_the_options_to_its_members() {
    let app = app();
    let group = qcore::group([Signature::new("tasks.a"), Signature::new("tasks.b")]);
    let eta = Utc.with_ymd_and_hms(2031, 1, 1, 0, 0, 0).unwrap();
    let prepared = app.prepare(group, SendOptions::new().queue("gq").priority(4).eta(eta)).await.unwrap();
    assert_eq!(prepared.messages.len(), 2);
    for (q, m) in &prepared.messages {
        assert_eq!(q, "gq");
        assert_eq!(m.properties.priority, 4);
        assert_eq!(m.headers["eta"], json!("2031-01-01T00:00:00+00:00"));
    }
}
