//! The `rpc://` result backend against RabbitMQ: Celery's reply format,
//! the caller's reply queue, what it cannot do.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{broker, close_connections, list, row, unique, url, wait_until};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use qamqp::{AmqpOptions, RpcBackend, RpcOptions};
use qcore::{
    App, BackendCapabilities, Broker, ChordSupport, ConsumeOptions, ContentType, ErrorKind, ResultBackend, ResultMeta,
    SendOptions, State,
};
use serde_json::json;

async fn backend() -> RpcBackend {
    RpcBackend::connect(&url(), RpcOptions::default()).await.unwrap()
}

fn meta(id: &str, status: State, result: serde_json::Value) -> ResultMeta {
    ResultMeta::new(id, status, result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_reach_the_caller_and_success_is_final() {
    let caller = backend().await;
    let worker = backend().await;
    assert_eq!(caller.reply_to().as_deref(), Some(caller.reply_queue()));
    let id = unique("rpc-task");
    assert!(caller.get(&id).await.unwrap().is_none(), "PENDING before anything arrives");
    worker.store_for(&meta(&id, State::Started, json!({"pid": 1})), None, Some(caller.reply_queue())).await.unwrap();
    wait_until(Duration::from_secs(10), "STARTED arrives", || async {
        caller.get(&id).await.unwrap().is_some_and(|m| m.status == State::Started)
    })
    .await;
    assert!(worker.get(&id).await.unwrap().is_none(), "the state is only visible to the caller");
    let waiting = {
        let caller = caller.clone();
        let id = id.clone();
        tokio::spawn(async move { caller.wait(&id, Duration::from_secs(10)).await })
    };
    worker.store_for(&meta(&id, State::Success, json!(5)), None, Some(caller.reply_queue())).await.unwrap();
    let done = waiting.await.unwrap().unwrap();
    assert_eq!((done.status, done.result), (State::Success, json!(5)));
    // A redelivered task cannot turn SUCCESS back into FAILURE.
    worker
        .store_for(&meta(&id, State::Failure, json!({"exc_type": "X"})), None, Some(caller.reply_queue()))
        .await
        .unwrap();
    // Replies arrive in order: once this marker is read, so was the FAILURE.
    let marker = unique("marker");
    worker.store_for(&meta(&marker, State::Success, json!(1)), None, Some(caller.reply_queue())).await.unwrap();
    caller.wait(&marker, Duration::from_secs(10)).await.unwrap();
    assert_eq!(caller.get(&id).await.unwrap().unwrap().status, State::Success);
    caller.forget(&id).await.unwrap();
    assert!(caller.get(&id).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_queue_and_reply_message_are_celerys() {
    let caller = RpcBackend::connect(&url(), RpcOptions::default()).await.unwrap();
    let queues = list("list_queues", &["name", "durable", "auto_delete", "exclusive", "arguments"]);
    let r = row(&queues, caller.reply_queue());
    assert_eq!(r["durable"], false);
    assert_eq!(r["exclusive"], false);
    assert_eq!(r["auto_delete"], false, "kept across reconnects; x-expires cleans it up");
    assert_eq!(r["arguments"], json!([["x-expires", "signedint", 86_400_000]]), "Celery's result_expires in ms");

    // What a worker sends: read it raw from a queue nobody consumes.
    let raw_q = unique("rpc-raw");
    let conn = lapin::Connection::connect(&url(), Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(raw_q.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    let worker = backend().await;
    let mut m = meta("3f1c2a", State::Success, json!(5));
    m.date_done = None;
    worker.store_for(&m, None, Some(&raw_q)).await.unwrap();
    let got = ch.basic_get(raw_q.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap().expect("a reply");
    let d = got.delivery;
    assert_eq!(
        String::from_utf8(d.data).unwrap(),
        r#"{"task_id": "3f1c2a", "status": "SUCCESS", "result": 5, "traceback": null, "children": []}"#
    );
    assert_eq!((d.exchange.as_str(), d.routing_key.as_str()), ("", raw_q.as_str()));
    let p = &d.properties;
    assert_eq!(p.bitmask(), 0xfc00, "content_type, content_encoding, headers, delivery_mode, priority, correlation_id");
    assert_eq!(p.correlation_id().as_ref().map(|s| s.as_str()), Some("3f1c2a"));
    assert_eq!(*p.delivery_mode(), Some(1));
    assert_eq!(p.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_sent_by_celery_are_read() {
    let caller = backend().await;
    let conn = lapin::Connection::connect(&url(), Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let json_body = br#"{"task_id": "py-1", "status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}, "traceback": "Traceback...", "children": []}"#;
    let msgpack_body = ContentType::Msgpack
        .encode(&json!({"task_id": "py-2", "status": "SUCCESS", "result": [1, 2], "traceback": null, "children": []}))
        .unwrap();
    for (id, ct, enc, body) in [
        ("py-1", "application/json", "utf-8", json_body.to_vec()),
        ("py-2", "application/x-msgpack", "binary", msgpack_body),
    ] {
        let props = BasicProperties::default()
            .with_content_type(ct.into())
            .with_content_encoding(enc.into())
            .with_headers(FieldTable::default())
            .with_delivery_mode(1)
            .with_priority(0)
            .with_correlation_id(id.into());
        ch.basic_publish("".into(), caller.reply_queue().into(), BasicPublishOptions::default(), &body, props)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let failed = caller.wait("py-1", Duration::from_secs(10)).await.unwrap();
    assert_eq!(failed.status, State::Failure);
    assert_eq!(failed.exception().unwrap().message(), "boom");
    assert_eq!(failed.traceback.as_deref(), Some("Traceback..."));
    let ok = caller.wait("py-2", Duration::from_secs(10)).await.unwrap();
    assert_eq!(ok.result, json!([1, 2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_rpc_cannot_do() {
    let b = backend().await;
    let e = b.wait("never-sent", Duration::from_millis(200)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert_eq!(b.save_group("g", &["a".into()], None).await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(b.get_group("g").await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(b.chord_init("g", 2, None).await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(b.capabilities(), BackendCapabilities::all().groups(false).chords(ChordSupport::Unsupported));
    assert!(b.describe().starts_with("rpc://"));
    assert!(!b.describe().contains("guest:guest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_sent_while_the_caller_reconnects_are_kept() {
    let name = unique("qamqp-rpc-conn");
    let amqp = broker(AmqpOptions::default().connection_name(&name)).await;
    let caller = amqp.rpc_backend(RpcOptions::default()).await.unwrap();
    let worker = backend().await;
    assert_eq!(close_connections(&format!("{name}/consume")), 1);
    let id = unique("rpc-gap");
    worker.store_for(&meta(&id, State::Success, json!("kept")), None, Some(caller.reply_queue())).await.unwrap();
    let got = caller.wait(&id, Duration::from_secs(20)).await.unwrap();
    assert_eq!(got.result, json!("kept"));
}

/// An App on this backend sends its tasks with the reply queue as
/// `reply_to`; a worker answering there makes `AsyncResult::get` work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_round_trip() {
    let amqp = broker(AmqpOptions::default()).await;
    let rpc = amqp.rpc_backend(RpcOptions::default()).await.unwrap();
    let queue = unique("rpc.app");
    let mut cfg = qcore::Config::default();
    cfg.task_default_queue = queue.clone();
    let app = App::builder().broker(Arc::new(amqp.clone())).backend(Arc::new(rpc.clone())).config(cfg).build().unwrap();
    assert_eq!(app.reply_to(), rpc.reply_queue());
    let res = app.send_task("tests.add", vec![json!(2), json!(3)], Default::default(), SendOptions::new()).await;
    let res = match res {
        Ok(r) => r,
        Err(e) => panic!("send: {e}"),
    };
    // A worker elsewhere: its own rpc backend, answering the message's reply_to.
    let worker_rpc = backend().await;
    let mut c = amqp.consume(std::slice::from_ref(&queue), ConsumeOptions::new(1)).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), c.recv()).await.unwrap().unwrap().unwrap();
    let reply_to = d.message.properties.reply_to.clone();
    assert_eq!(reply_to.as_deref(), Some(rpc.reply_queue()));
    let id = d.message.task_id().unwrap_or_default().to_string();
    worker_rpc.store_for(&meta(&id, State::Success, json!(5)), None, reply_to.as_deref()).await.unwrap();
    d.acker.ack().await.unwrap();
    let value: serde_json::Value = res.get(Duration::from_secs(10)).await.unwrap();
    assert_eq!(value, json!(5));
}

/// A chord on an rpc backend is refused before anything is published (the
/// backend says it cannot join), not found out by a worker later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chord_is_refused_before_it_is_sent() {
    let amqp = broker(AmqpOptions::default()).await;
    let rpc = amqp.rpc_backend(RpcOptions::default()).await.unwrap();
    let queue = unique("rpc.chord");
    let mut cfg = qcore::Config::default();
    cfg.task_default_queue = queue.clone();
    let app = App::builder().broker(Arc::new(amqp.clone())).backend(Arc::new(rpc)).config(cfg).build().unwrap();
    let header =
        vec![qcore::Signature::new("tests.add").arg(1).arg(1), qcore::Signature::new("tests.add").arg(2).arg(2)];
    let e = app.apply_async(qcore::chord(header, qcore::Signature::new("tests.xsum")), SendOptions::new()).await;
    let e = e.expect_err("a chord on rpc:// is an error");
    assert!(matches!(&e, qcore::Error::Backend(b) if b.kind() == ErrorKind::Unsupported), "{e}");
    assert!(e.to_string().contains("cannot join chords"), "{e}");
    amqp.declare_queue(&queue).await.unwrap();
    assert_eq!(amqp.queue_len(&queue).await.unwrap(), 0, "no header task was published");
}

/// `result_accept_content`: a reply in a serializer it does not list is not
/// delivered (Celery refuses it); one it lists is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_outside_result_accept_content_are_refused() {
    let mut cfg = qcore::Config::default();
    cfg.set("result_accept_content", qcore::config::Value::List(vec!["json".into()])).unwrap();
    let opts = RpcOptions::from_config(&cfg);
    assert_eq!(opts.accept, Some(vec![ContentType::Json]));
    let caller = RpcBackend::connect(&url(), opts).await.unwrap();
    let conn = lapin::Connection::connect(&url(), Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    for (id, ct, body) in [
        (
            "acc-msgpack",
            "application/x-msgpack",
            ContentType::Msgpack.encode(&json!({"task_id": "acc-msgpack", "status": "SUCCESS", "result": 1})).unwrap(),
        ),
        ("acc-json", "application/json", br#"{"task_id": "acc-json", "status": "SUCCESS", "result": 2}"#.to_vec()),
    ] {
        let props = BasicProperties::default().with_content_type(ct.into()).with_correlation_id(id.into());
        ch.basic_publish("".into(), caller.reply_queue().into(), BasicPublishOptions::default(), &body, props)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Replies arrive in order: once the JSON one is in, the msgpack one was refused.
    assert_eq!(caller.wait("acc-json", Duration::from_secs(10)).await.unwrap().result, json!(2));
    assert_eq!(caller.get("acc-msgpack").await.unwrap(), None, "a msgpack reply was delivered");
}
