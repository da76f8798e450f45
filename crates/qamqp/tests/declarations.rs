//! What qamqp declares on RabbitMQ, checked with `rabbitmqctl` against what
//! Celery declares (shared/celery-compat FACTS §3.1).

mod common;

use std::time::Duration;

use common::{broker, list, row, unique, url, with_password};
use qamqp::{AmqpBroker, AmqpOptions};
use qcore::config::{ExchangeType, TaskQueue};
use qcore::{Broker, ConsumeOptions, ErrorKind, Message, Properties};
use serde_json::{json, Value};

fn sorted(v: &Value) -> Vec<Value> {
    let mut a = v.as_array().cloned().unwrap_or_default();
    a.sort_by_key(|x| x.to_string());
    a
}

fn binding_exists(source: &str, dest: &str, key: &str) -> bool {
    list("list_bindings", &["source_name", "destination_name", "routing_key"])
        .iter()
        .any(|b| b["source_name"] == source && b["destination_name"] == dest && b["routing_key"] == key)
}

fn event(rk: &str) -> Message {
    let mut m = Message {
        properties: Properties { delivery_mode: 1, ..Properties::default() },
        body: format!(r#"{{"type": "{rk}"}}"#).into_bytes(),
        ..Message::default()
    };
    m.headers.insert("hostname".into(), json!("w1@test"));
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_queue_is_declared_as_celery_declares_it() {
    let b = broker(AmqpOptions::default()).await;
    let q = unique("decl.plain");
    b.declare_queue(&q).await.unwrap();
    b.declare_queue(&q).await.unwrap();
    let queues = list("list_queues", &["name", "durable", "auto_delete", "exclusive", "arguments"]);
    let r = row(&queues, &q);
    assert_eq!((&r["durable"], &r["auto_delete"], &r["exclusive"]), (&json!(true), &json!(false), &json!(false)));
    assert_eq!(r["arguments"], json!([]), "Celery declares no arguments by default");
    let exchanges = list("list_exchanges", &["name", "type", "durable", "auto_delete", "arguments"]);
    let x = row(&exchanges, &q);
    assert_eq!((&x["type"], &x["durable"], &x["auto_delete"]), (&json!("direct"), &json!(true), &json!(false)));
    assert!(binding_exists(&q, &q, &q), "binding exchange {q} -> queue {q} with routing key {q}");
    // Tasks go to the default exchange with routing key = queue.
    b.publish(&q, &Message { body: b"[[], {}, {}]".to_vec(), ..Message::default() }).await.unwrap();
    b.flush().await.unwrap();
    assert_eq!(b.queue_len(&q).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_queues_bind_to_their_exchange_with_their_routing_key() {
    // Seed 004: Queue('celery', Exchange('default'), routing_key='celery'),
    // Queue('high', Exchange('default'), routing_key='high'); and a queue on
    // a topic exchange.
    let (ex, high, low, topic_ex, topical) =
        (unique("decl.default"), unique("decl.high"), unique("decl.low"), unique("decl.tx"), unique("decl.topical"));
    let queues = vec![
        TaskQueue::new(high.clone()).exchange(ex.clone(), ExchangeType::Direct).routing_key("high"),
        TaskQueue::new(low.clone()).exchange(ex.clone(), ExchangeType::Direct).routing_key("low"),
        TaskQueue::new(topical.clone()).exchange(topic_ex.clone(), ExchangeType::Topic).routing_key("jobs.#"),
    ];
    let b = broker(AmqpOptions::default().task_queues(queues)).await;
    for q in [&high, &low, &topical] {
        b.declare_queue(q).await.unwrap();
    }
    let exchanges = list("list_exchanges", &["name", "type", "durable"]);
    assert_eq!((&row(&exchanges, &ex)["type"], &row(&exchanges, &ex)["durable"]), (&json!("direct"), &json!(true)));
    assert_eq!(row(&exchanges, &topic_ex)["type"], json!("topic"));
    assert!(binding_exists(&ex, &high, "high"), "{ex} -> {high} with routing key high");
    assert!(binding_exists(&ex, &low, "low"));
    assert!(binding_exists(&topic_ex, &topical, "jobs.#"));
    assert!(!binding_exists(&high, &high, &high), "no exchange of the queue's own name");
    // A direct-exchange queue is sent to through the default exchange (as
    // Celery does); a topic one through its exchange and routing key.
    let task = || Message { body: b"[[], {}, {}]".to_vec(), ..Message::default() };
    b.publish(&high, &task()).await.unwrap();
    b.publish(&topical, &task()).await.unwrap();
    b.flush().await.unwrap();
    assert_eq!(
        (b.queue_len(&high).await.unwrap(), b.queue_len(&low).await.unwrap(), b.queue_len(&topical).await.unwrap()),
        (1, 0, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_has_a_signed_int_x_max_priority() {
    let b = broker(AmqpOptions::default().queue_max_priority(10)).await;
    let q = unique("decl.prio");
    b.declare_queue(&q).await.unwrap();
    let queues = list("list_queues", &["name", "arguments"]);
    assert_eq!(row(&queues, &q)["arguments"], json!([["x-max-priority", "signedint", 10]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queue() {
    let b = broker(AmqpOptions::default().quorum().queue_max_priority(10)).await;
    let q = unique("decl.quorum");
    b.declare_queue(&q).await.unwrap();
    let queues = list("list_queues", &["name", "type", "durable", "arguments"]);
    let r = row(&queues, &q);
    assert_eq!(r["type"], "quorum");
    assert_eq!(r["durable"], true);
    assert_eq!(r["arguments"], json!([["x-queue-type", "longstr", "quorum"]]), "no x-max-priority on quorum queues");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_redeclaration_is_a_clear_error_and_the_broker_keeps_working() {
    let with_priority = broker(AmqpOptions::default().queue_max_priority(10)).await;
    let plain = broker(AmqpOptions::default()).await;
    let q = unique("decl.conflict");
    with_priority.declare_queue(&q).await.unwrap();
    let e = plain.declare_queue(&q).await.expect_err("x-max-priority differs");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let text = e.to_string();
    assert!(text.contains("PRECONDITION_FAILED") && text.contains(&q), "{text}");
    match plain.consume(std::slice::from_ref(&q), ConsumeOptions::new(1)).await {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Config, "{e}"),
        Ok(_) => panic!("consuming a queue declared with other arguments must fail"),
    }
    // The channel error did not end anything: the same broker goes on.
    plain.ping().await.unwrap();
    let other = unique("decl.after");
    plain.declare_queue(&other).await.unwrap();
    plain.publish(&q, &Message { body: b"[]".to_vec(), ..Message::default() }).await.unwrap();
    plain.publish(&other, &Message { body: b"[]".to_vec(), ..Message::default() }).await.unwrap();
    plain.flush().await.unwrap();
    assert_eq!(plain.queue_len(&q).await.unwrap(), 1);
    assert_eq!(plain.queue_len(&other).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_declare_celerys_exchanges_and_queues() {
    let node = format!("w1@{}", unique("decl-node"));
    let b = broker(AmqpOptions::default().node_name(&node)).await;
    let reply_id = uuid::Uuid::new_v4().to_string();
    let before: Vec<String> =
        list("list_queues", &["name"]).iter().filter_map(|r| r["name"].as_str().map(str::to_owned)).collect();
    let mut events = b.subscribe("celeryev", "#").await.unwrap();
    let mut pidbox = b.subscribe("celery.pidbox", "").await.unwrap();
    let mut replies = b.subscribe("reply.celery.pidbox", &reply_id).await.unwrap();

    let queues = list("list_queues", &["name", "durable", "auto_delete", "exclusive", "arguments"]);
    let ev_q: Vec<&Value> = queues
        .iter()
        .filter(|r| r["name"].as_str().is_some_and(|n| n.starts_with("celeryev.") && !before.iter().any(|b| b == n)))
        .collect();
    assert_eq!(ev_q.len(), 1, "{queues:?}");
    let ev_name = ev_q[0]["name"].as_str().unwrap_or_default().to_string();
    assert!(uuid::Uuid::parse_str(ev_name.trim_start_matches("celeryev.")).is_ok(), "{ev_name}");
    for (name, expires, ttl) in [
        (ev_name.clone(), 60_000, 5_000),
        (format!("{node}.celery.pidbox"), 10_000, 300_000),
        (format!("{reply_id}.reply.celery.pidbox"), 10_000, 300_000),
    ] {
        let r = row(&queues, &name);
        assert_eq!(
            (&r["durable"], &r["auto_delete"], &r["exclusive"]),
            (&json!(false), &json!(true), &json!(true)),
            "{name}"
        );
        assert_eq!(
            sorted(&r["arguments"]),
            sorted(&json!([["x-expires", "signedint", expires], ["x-message-ttl", "signedint", ttl]])),
            "{name}"
        );
    }
    let exchanges = list("list_exchanges", &["name", "type", "durable", "auto_delete"]);
    for (name, kind, durable) in
        [("celeryev", "topic", true), ("celery.pidbox", "fanout", false), ("reply.celery.pidbox", "direct", false)]
    {
        let x = row(&exchanges, name);
        assert_eq!(
            (&x["type"], &x["durable"], &x["auto_delete"]),
            (&json!(kind), &json!(durable), &json!(false)),
            "{name}"
        );
    }
    assert!(binding_exists("celeryev", &ev_name, "#"));
    assert!(binding_exists("celery.pidbox", &format!("{node}.celery.pidbox"), ""));
    assert!(binding_exists("reply.celery.pidbox", &format!("{reply_id}.reply.celery.pidbox"), &reply_id));

    // And messages flow through them.
    let within = Duration::from_secs(10);
    b.publish_fanout("celeryev", "worker.heartbeat", &event("worker-heartbeat")).await.unwrap();
    let (rk, m) = tokio::time::timeout(within, events.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(rk, "worker.heartbeat");
    assert_eq!(m.headers.get("hostname"), Some(&json!("w1@test")));
    b.publish_fanout("celery.pidbox", "", &event("ping")).await.unwrap();
    let (_, m) = tokio::time::timeout(within, pidbox.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(m.body, event("ping").body);
    b.publish_fanout("reply.celery.pidbox", &reply_id, &event("pong")).await.unwrap();
    b.publish_fanout("reply.celery.pidbox", "someone-else", &event("not-for-us")).await.unwrap();
    let (rk, m) = tokio::time::timeout(within, replies.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!((rk.as_str(), m.body), (reply_id.as_str(), event("pong").body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_node_name_still_gets_broadcasts() {
    let node = format!("dup@{}", unique("decl-node"));
    let first = broker(AmqpOptions::default().node_name(&node)).await;
    let second = AmqpBroker::connect(&url(), AmqpOptions::default().node_name(&node)).await.unwrap();
    let mut a = first.subscribe("celery.pidbox", "").await.unwrap();
    // The exclusive `<node>.celery.pidbox` belongs to the first connection.
    let mut b = second.subscribe("celery.pidbox", "").await.unwrap();
    first.publish_fanout("celery.pidbox", "", &event("ping")).await.unwrap();
    for sub in [&mut a, &mut b] {
        let (_, m) = tokio::time::timeout(Duration::from_secs(10), sub.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(m.body, event("ping").body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_urls_and_unreachable_servers() {
    for bad in ["amqp://u:secret@host:notaport/", "http://x", "amqp://u:secret@h/%zz"] {
        let e = AmqpBroker::connect(bad, AmqpOptions::default()).await.expect_err(bad);
        assert_eq!(e.kind(), ErrorKind::Config, "{bad}: {e}");
        assert!(!e.to_string().contains("secret"));
    }
    let e =
        AmqpBroker::connect(&with_password("wrong-password"), AmqpOptions::default()).await.expect_err("bad password");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let e = AmqpBroker::connect("amqp://guest:guest@127.0.0.1:1/?connection_timeout=2000", AmqpOptions::default())
        .await
        .expect_err("nothing listens on port 1");
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    let lazy = AmqpBroker::lazy("amqp://guest:secret@127.0.0.1:5672/%2f", AmqpOptions::default()).unwrap();
    assert_eq!(lazy.describe(), "amqp://guest:***@127.0.0.1:5672/%2F");
}
