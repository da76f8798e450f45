//! The [`Broker`] cases. Each takes a [`BrokerFactory`], uses its own queue
//! and exchange names, and panics with a message saying what broke the
//! contract. Normally run through [`broker_conformance!`](crate::broker_conformance).
//!
//! Consumers and subscriptions are read by a forwarding task per consumer
//! (see [`Probe`]), so the cases never cancel a `recv` in flight: the
//! contract does not promise that `recv` is cancel safe.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use qcore::{Broker, ConsumeOptions, ContentType, DeadLetters, Delivery, ErrorKind, Message, Properties};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{unique, BrokerCapabilities, BrokerFactory, Priorities};

async fn new_broker(f: &dyn BrokerFactory) -> Arc<dyn Broker> {
    match f.broker().await {
        Ok(b) => b,
        Err(e) => panic!("the factory could not create a broker: {e}"),
    }
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what} failed: {e}"),
    }
}

/// A queue name for one case.
fn queue(case: &str) -> String {
    unique(&format!("qconf.{case}"))
}

/// A task message as Celery sends it, with unknown headers of every JSON
/// type, and the given id.
pub fn sample_message(id: &str) -> Message {
    let mut headers = Map::new();
    for (k, v) in [
        ("lang", json!("py")),
        ("task", json!("qconformance.sample")),
        ("id", json!(id)),
        ("shadow", Value::Null),
        ("eta", Value::Null),
        ("expires", Value::Null),
        ("group", Value::Null),
        ("group_index", Value::Null),
        ("retries", json!(0)),
        ("timelimit", json!([null, null])),
        ("root_id", json!(id)),
        ("parent_id", Value::Null),
        ("argsrepr", json!("(2, 3)")),
        ("kwargsrepr", json!("{'s': 'é☃'}")),
        ("origin", json!("gen42@qconformance")),
        ("ignore_result", json!(false)),
        ("x-unknown", json!({"nested": [1, -7, 2.5, "é☃", null, true, {"deep": []}]})),
        ("x-big", json!(1u64 << 40)),
        ("traceparent", json!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")),
    ] {
        headers.insert(k.into(), v);
    }
    let body = br#"[[2, 3], {"s": "\u00e9\u2603 \"q\""}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#;
    Message {
        headers,
        properties: Properties {
            correlation_id: Some(id.to_string()),
            reply_to: Some("7c1a3b56-0f4c-3c3e-9a57-6fa4b4f1d2aa".into()),
            ..Properties::default()
        },
        body: body.to_vec(),
    }
}

fn with_priority(mut m: Message, p: u8) -> Message {
    m.properties.priority = p;
    m
}

fn id_of(d: &Delivery) -> String {
    d.message.task_id().unwrap_or("<no id>").to_string()
}

fn assert_same_message(got: &Message, sent: &Message, what: &str) {
    assert_eq!(got.headers, sent.headers, "{what}: headers changed");
    assert_eq!(got.body, sent.body, "{what}: body bytes changed");
    let (g, s) = (&got.properties, &sent.properties);
    assert_eq!(g.content_type, s.content_type, "{what}: content_type changed");
    assert_eq!(g.content_encoding, s.content_encoding, "{what}: content_encoding changed");
    assert_eq!(g.correlation_id, s.correlation_id, "{what}: correlation_id changed");
    assert_eq!(g.reply_to, s.reply_to, "{what}: reply_to changed");
    assert_eq!(g.delivery_mode, s.delivery_mode, "{what}: delivery_mode changed");
    assert_eq!(g.priority, s.priority, "{what}: priority changed");
    assert_eq!(g.expiration, s.expiration, "{what}: expiration changed");
}

/// A consumer read by its own task, its deliveries forwarded to a channel
/// that can be awaited with a timeout. Dropping the probe drops the consumer.
pub struct Probe {
    rx: mpsc::UnboundedReceiver<Delivery>,
    task: JoinHandle<()>,
    name: String,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Probe {
    /// Start consuming `queues` with `prefetch`.
    pub async fn start(broker: &Arc<dyn Broker>, queues: &[String], prefetch: usize, name: &str) -> Probe {
        let mut consumer =
            ok(broker.consume(queues, ConsumeOptions::new(prefetch).tag(name)).await, &format!("consume ({name})"));
        let (tx, rx) = mpsc::unbounded_channel();
        let task_name = name.to_string();
        let task = tokio::spawn(async move {
            loop {
                match consumer.recv().await {
                    Ok(Some(d)) => {
                        if tx.send(d).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    // Transient errors are the adapter's to retry; report them.
                    Err(e) => panic!("consumer {task_name}: recv failed: {e}"),
                }
            }
        });
        Probe { rx, task, name: name.to_string() }
    }

    /// The next delivery, failing the case if none comes within `within`.
    pub async fn next(&mut self, within: Duration, what: &str) -> Delivery {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Ok(Some(d)) => d,
            Ok(None) => panic!("{what}: consumer {} stopped (recv failed or closed)", self.name),
            Err(_) => panic!("{what}: consumer {} got no delivery within {within:?}", self.name),
        }
    }

    /// Fail the case if a delivery comes within `within`.
    pub async fn expect_none(&mut self, within: Duration, what: &str) {
        if let Ok(Some(d)) = tokio::time::timeout(within, self.rx.recv()).await {
            panic!(
                "{what}: consumer {} got an unexpected delivery of {} (redelivered: {})",
                self.name,
                id_of(&d),
                d.redelivered
            );
        }
    }

    /// Stop consuming and wait until the consumer is dropped, without
    /// settling anything it holds.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_len(broker: &Arc<dyn Broker>, q: &str, want: u64, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    let mut interval = Duration::from_millis(2);
    loop {
        let n = ok(broker.queue_len(q).await, "queue_len");
        if n == want {
            return;
        }
        if Instant::now() >= deadline {
            panic!("{what}: queue_len is {n}, expected {want} within {within:?}");
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}

async fn publish(broker: &Arc<dyn Broker>, q: &str, m: &Message) {
    ok(broker.publish(q, m).await, "publish");
}

async fn declared(f: &dyn BrokerFactory, case: &str) -> (Arc<dyn Broker>, String, BrokerCapabilities) {
    let broker = new_broker(f).await;
    let caps = f.capabilities();
    check_declared(&broker, &caps);
    let q = queue(case);
    ok(broker.declare_queue(&q).await, "declare_queue");
    ok(broker.declare_queue(&q).await, "declare_queue again (must be idempotent)");
    (broker, q, caps)
}

/// The broker still declares what the factory expects of it.
fn check_declared(broker: &Arc<dyn Broker>, caps: &BrokerCapabilities) {
    let declared = broker.capabilities();
    if let Some(p) = caps.priorities {
        assert_eq!(declared.priorities, p, "the broker declares another priority order than expected");
    }
    if let Some(d) = caps.defer {
        assert_eq!(declared.defer, d, "the broker's declared defer capability is not the expected one");
    }
    if let Some(d) = caps.dead_letters {
        assert_eq!(broker.dead_letters().is_some(), d, "the broker's dead-letter capability is not the expected one");
    }
}

/// The broker's dead-letter place. `None` (the case does not apply) only
/// when the factory says outright that the broker has none
/// (`.dead_letters(false)`); a broker without one whose factory says
/// nothing fails the case, so a lost capability is never a silent pass.
fn dead_place<'b>(broker: &'b Arc<dyn Broker>, caps: &BrokerCapabilities) -> Option<&'b dyn DeadLetters> {
    let place = broker.dead_letters();
    if place.is_none() {
        assert_eq!(
            caps.dead_letters,
            Some(false),
            "the broker offers no dead-letter place: its factory must declare `.dead_letters(false)` for the dead-letter \
             cases not to apply"
        );
    }
    place
}

/// Headers (known and unknown), properties and body bytes arrive exactly as
/// published, for JSON and msgpack bodies.
pub async fn round_trip_keeps_message(f: &dyn BrokerFactory) {
    let (broker, q, caps) = declared(f, "round_trip").await;
    let json_msg = sample_message(&unique("id"));
    let mut msgpack = sample_message(&unique("id"));
    msgpack.properties.content_type = ContentType::Msgpack.mime().into();
    msgpack.properties.content_encoding = ContentType::Msgpack.encoding().into();
    msgpack.body =
        ok(ContentType::Msgpack.encode(&json!([[2, 3], {"b": [0, 255, -1]}, {"chain": null}])), "msgpack encode");
    publish(&broker, &q, &json_msg).await;
    publish(&broker, &q, &msgpack).await;
    let mut p = Probe::start(&broker, std::slice::from_ref(&q), 2, "rt").await;
    for sent in [&json_msg, &msgpack] {
        let d = p.next(caps.patience, "round trip").await;
        assert_same_message(&d.message, sent, "round trip");
        assert_eq!(d.queue, q, "delivery.queue is not the queue published to");
        assert!(!d.redelivered, "a first delivery is marked redelivered");
        ok(d.acker.ack().await, "ack");
    }
}

/// Messages of one queue and priority come out in publish order.
pub async fn fifo_per_queue(f: &dyn BrokerFactory) {
    let (broker, q, caps) = declared(f, "fifo").await;
    let ids: Vec<String> = (0..20).map(|i| format!("{}-{i:02}", unique("fifo"))).collect();
    for id in &ids {
        publish(&broker, &q, &sample_message(id)).await;
    }
    let mut p = Probe::start(&broker, std::slice::from_ref(&q), 5, "fifo").await;
    let mut got = Vec::new();
    for _ in &ids {
        let d = p.next(caps.patience, "fifo").await;
        got.push(id_of(&d));
        ok(d.acker.ack().await, "ack");
    }
    assert_eq!(got, ids, "deliveries are not in publish order");
}

/// One consumer reads several queues, and each delivery names its queue.
pub async fn consume_from_several_queues(f: &dyn BrokerFactory) {
    let broker = new_broker(f).await;
    let caps = f.capabilities();
    let queues: Vec<String> = (0..3).map(|i| queue(&format!("multi{i}"))).collect();
    let mut sent = HashMap::new();
    for q in &queues {
        ok(broker.declare_queue(q).await, "declare_queue");
        for _ in 0..2 {
            let id = unique("multi");
            publish(&broker, q, &sample_message(&id)).await;
            sent.insert(id, q.clone());
        }
    }
    let mut p = Probe::start(&broker, &queues, 10, "multi").await;
    let mut seen = HashSet::new();
    for _ in 0..sent.len() {
        let d = p.next(caps.patience, "consume from several queues").await;
        let id = id_of(&d);
        let Some(q) = sent.get(&id) else { panic!("unexpected message {id}") };
        assert_eq!(&d.queue, q, "delivery of {id} names the wrong queue");
        assert!(seen.insert(id.clone()), "{id} delivered twice");
        ok(d.acker.ack().await, "ack");
    }
    p.expect_none(caps.quiet, "after every message of every queue").await;
}

/// An acked message is never delivered again, and further settlement calls
/// on its acker are harmless no-ops.
pub async fn ack_removes_for_good(f: &dyn BrokerFactory) {
    let (broker, q, caps) = declared(f, "ack").await;
    let id = unique("ack");
    publish(&broker, &q, &sample_message(&id)).await;
    let mut p = Probe::start(&broker, std::slice::from_ref(&q), 1, "ack").await;
    let d = p.next(caps.patience, "ack").await;
    assert_eq!(id_of(&d), id);
    ok(d.acker.ack().await, "ack");
    ok(d.acker.ack().await, "a second ack (must be idempotent)");
    ok(d.acker.reject(true).await, "reject(requeue) after ack (must be a no-op)");
    p.stop().await;
    let mut p2 = Probe::start(&broker, std::slice::from_ref(&q), 1, "ack-after").await;
    p2.expect_none(caps.redelivery_after + caps.quiet, "an acked message").await;
    assert_eq!(ok(broker.queue_len(&q).await, "queue_len"), 0, "queue_len after ack");
}

/// `reject(true)` gives the message back; it comes again marked redelivered.
pub async fn reject_requeue_redelivers(f: &dyn BrokerFactory) {
    let (broker, q, caps) = declared(f, "requeue").await;
    let m = sample_message(&unique("requeue"));
    publish(&broker, &q, &m).await;
    let mut p = Probe::start(&broker, std::slice::from_ref(&q), 1, "requeue").await;
    let d = p.next(caps.patience, "first delivery").await;
    assert!(!d.redelivered, "a first delivery is marked redelivered");
    ok(d.acker.reject(true).await, "reject(requeue)");
    let d2 = p.next(caps.patience, "delivery after reject(requeue)").await;
    assert_eq!(d2.message.task_id(), m.task_id(), "another message came instead of the requeued one");
    assert!(d2.redelivered, "a requeued message is not marked redelivered");
    assert_eq!(d2.message.body, m.body, "a requeued message lost its body");
    ok(d2.acker.ack().await, "ack");
    p.expect_none(caps.quiet, "after acking the requeued message").await;
}

/// `reject(false)` drops the message.
pub async fn reject_without_requeue_drops(f: &dyn BrokerFactory) {
    let (broker, q, caps) = declared(f, "drop").await;
    publish(&broker, &q, &sample_message(&unique("drop"))).await;
    let mut p = Probe::start(&broker, std::slice::from_ref(&q), 1, "drop").await;
    let d = p.next(caps.patience, "delivery").await;
    ok(d.acker.reject(false).await, "reject(false)");
    p.expect_none(caps.redelivery_after + caps.quiet, "a message rejected without requeue").await;
    assert_eq!(ok(broker.queue_len(&q).await, "queue_len"), 0, "queue_len after reject(false)");
}

/// `dead_letter` parks the message with its reason; the dead-letter place
/// lists them oldest first and respects `limit`; a parked message is not
/// delivered. Brokers without a dead-letter place: not applicable.
pub async fn dead_letter_parks_with_reason(f: &dyn BrokerFactory) {
    let (broker, q, caps) = declared(f, "dead").await;
    let Some(dead) = dead_place(&broker, &caps) else { return };
    let first = sample_message(&unique("dead"));
    let second = sample_message(&unique("dead"));
    publish(&broker, &q, &first).await;
    publish(&broker, &q, &second).await;
    let mut p = Probe::start(&broker, std::slice::from_ref(&q), 1, "dead").await;
    for (m, reason) in [(&first, "malformed body: expected a list"), (&second, "unknown task 'nope'")] {
        let d = p.next(caps.patience, "delivery").await;
        assert_eq!(d.message.task_id(), m.task_id(), "fifo");
        ok(d.acker.dead_letter(reason).await, "dead_letter");
        ok(d.acker.ack().await, "ack after dead_letter (must be a no-op)");
    }
    p.expect_none(caps.redelivery_after + caps.quiet, "a dead-lettered message").await;
    let parked = ok(dead.list(&q, 10).await, "dead_letters().list");
    assert_eq!(parked.len(), 2, "dead_letters should hold both messages");
    assert_same_message(&parked[0].message, &first, "dead letter");
    assert_eq!(parked[0].reason, "malformed body: expected a list");
    assert_eq!(parked[0].queue, q);
    assert_eq!(parked[1].message.task_id(), second.task_id(), "dead letters are not oldest first");
    assert_eq!(parked[1].reason, "unknown task 'nope'");
    let limited = ok(dead.list(&q, 1).await, "dead_letters().list with limit 1");
    assert_eq!(limited.len(), 1, "dead_letters ignores its limit");
    assert_eq!(limited[0].message.task_id(), first.task_id());
    assert!(ok(dead.list(&q, 0).await, "list with limit 0").is_empty());
    assert!(ok(dead.list(&queue("dead-other"), 10).await, "dead_letters().list").is_empty());
}

/// The dead-letter place counts what it holds, redrives the oldest messages
/// back to the end of their queue unchanged (they are delivered again), and
/// purges the rest; other queues' dead letters are untouched.
pub async fn dead_letters_count_redrive_purge(f: &dyn BrokerFactory) {
    let (broker, q, caps) = declared(f, "redrive").await;
    let Some(dead) = dead_place(&broker, &caps) else { return };
    let other = queue("redrive-other");
    ok(broker.declare_queue(&other).await, "declare_queue");
    assert_eq!(ok(dead.count(&q).await, "count of an empty place"), 0);
    assert_eq!(ok(dead.redrive(&q, 10).await, "redrive of an empty place"), 0);
    assert_eq!(ok(dead.purge(&q).await, "purge of an empty place"), 0);

    let sent: Vec<Message> = (0..3).map(|i| sample_message(&format!("{}-{i}", unique("redrive")))).collect();
    for m in &sent {
        publish(&broker, &q, m).await;
    }
    let kept = sample_message(&unique("redrive-other"));
    publish(&broker, &other, &kept).await;
    let mut p = Probe::start(&broker, &[q.clone(), other.clone()], 1, "redrive").await;
    for _ in 0..4 {
        let d = p.next(caps.patience, "delivery to park").await;
        ok(d.acker.dead_letter("parked by the redrive case").await, "dead_letter");
    }
    p.stop().await;
    assert_eq!(ok(dead.count(&q).await, "count"), 3, "count after parking three");
    assert_eq!(ok(dead.count(&other).await, "count"), 1, "count of the other queue");

    assert_eq!(ok(dead.redrive(&q, 2).await, "redrive 2"), 2, "redrive moves at most `limit`");
    assert_eq!(ok(dead.count(&q).await, "count"), 1, "count after redriving two");
    wait_len(&broker, &q, 2, caps.patience, "the queue after redriving two").await;
    let left = ok(dead.list(&q, 10).await, "list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].message.task_id(), sent[2].task_id(), "redrive takes the oldest first");

    let mut p = Probe::start(&broker, std::slice::from_ref(&q), 1, "redriven").await;
    for m in &sent[..2] {
        let d = p.next(caps.patience, "redriven delivery").await;
        assert_same_message(&d.message, m, "redriven message (oldest first)");
        ok(d.acker.ack().await, "ack");
    }
    p.expect_none(caps.quiet, "more than the redriven messages").await;
    p.stop().await;

    assert_eq!(ok(dead.purge(&q).await, "purge"), 1, "purge returns how many it deleted");
    assert_eq!(ok(dead.count(&q).await, "count"), 0, "count after purge");
    assert!(ok(dead.list(&q, 10).await, "list").is_empty(), "list after purge");
    assert_eq!(ok(dead.count(&other).await, "count"), 1, "purge touched another queue's dead letters");
    let still = ok(dead.list(&other, 10).await, "list");
    assert_same_message(&still[0].message, &kept, "the other queue's dead letter");
}

/// A consumer that goes away without acking: its delivery is given to
/// another consumer within `redelivery_after`, marked redelivered.
pub async fn dropped_consumer_redelivers(f: &dyn BrokerFactory) {
    let (broker, q, caps) = declared(f, "crash").await;
    let m = sample_message(&unique("crash"));
    publish(&broker, &q, &m).await;
    let mut a = Probe::start(&broker, std::slice::from_ref(&q), 1, "crashing").await;
    let d = a.next(caps.patience, "first delivery").await;
    assert_eq!(d.message.task_id(), m.task_id());
    // A second worker on its own connection.
    let other = new_broker(f).await;
    let mut b = Probe::start(&other, std::slice::from_ref(&q), 1, "survivor").await;
    drop(d);
    a.stop().await;
    let d2 = b.next(caps.redelivery_after + caps.patience, "redelivery after the consumer was dropped").await;
    assert_eq!(d2.message.task_id(), m.task_id(), "another message came instead of the unacked one");
    assert!(d2.redelivered, "a message restored from a dropped consumer is not marked redelivered");
    assert_same_message(&d2.message, &m, "redelivered message");
    ok(d2.acker.ack().await, "ack");
    b.expect_none(caps.redelivery_after + caps.quiet, "after acking the redelivered message").await;
}

/// A consumer never holds more than `prefetch` unacked deliveries; the rest
/// stay available to other consumers.
pub async fn prefetch_is_respected(f: &dyn BrokerFactory) {
    let (broker, q, caps) = declared(f, "prefetch").await;
    let msgs: Vec<(String, Message)> = (0..10).map(|_| (q.clone(), sample_message(&unique("pf")))).collect();
    ok(broker.publish_many(&msgs).await, "publish_many");
    let mut a = Probe::start(&broker, std::slice::from_ref(&q), 3, "prefetch3").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(a.next(caps.patience, "prefetch 3").await);
    }
    a.expect_none(caps.quiet, "a consumer holding `prefetch` unacked deliveries").await;
    wait_len(&broker, &q, 7, caps.patience, "queue_len while 3 are unacked (unacked are not counted)").await;
    let mut b = Probe::start(&broker, std::slice::from_ref(&q), 10, "prefetch10").await;
    let mut rest = Vec::new();
    for _ in 0..7 {
        rest.push(b.next(caps.patience, "the other consumer gets the rest").await);
    }
    let mut all: Vec<String> = held.iter().chain(rest.iter()).map(id_of).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 10, "a message was delivered to both consumers");
    // Room for one more at A: it gets exactly one of B's when B goes away.
    ok(held.remove(0).acker.ack().await, "ack");
    drop(rest);
    b.stop().await;
    held.push(a.next(caps.redelivery_after + caps.patience, "a freed prefetch slot is refilled").await);
    a.expect_none(caps.quiet, "a consumer holding `prefetch` unacked deliveries again").await;
    wait_len(&broker, &q, 6, caps.patience, "queue_len after the refill").await;
    for d in held {
        ok(d.acker.ack().await, "ack");
    }
}

/// `queue_len` counts waiting messages (not unacked ones); `purge` deletes
/// them and says how many.
pub async fn queue_len_and_purge(f: &dyn BrokerFactory) {
    let (broker, q, caps) = declared(f, "purge").await;
    assert_eq!(ok(broker.queue_len(&q).await, "queue_len"), 0, "a new queue is not empty");
    let msgs: Vec<(String, Message)> = (0..5).map(|_| (q.clone(), sample_message(&unique("purge")))).collect();
    ok(broker.publish_many(&msgs).await, "publish_many");
    wait_len(&broker, &q, 5, caps.patience, "after publishing 5").await;
    assert_eq!(ok(broker.purge(&q).await, "purge"), 5, "purge should report 5 messages");
    assert_eq!(ok(broker.queue_len(&q).await, "queue_len"), 0, "queue_len after purge");
    let mut p = Probe::start(&broker, std::slice::from_ref(&q), 1, "purge").await;
    p.expect_none(caps.quiet, "a purged queue").await;
    // Unacked deliveries are neither counted nor purged.
    let kept = sample_message(&unique("kept"));
    publish(&broker, &q, &kept).await;
    let d = p.next(caps.patience, "delivery after purge").await;
    publish(&broker, &q, &sample_message(&unique("waiting"))).await;
    wait_len(&broker, &q, 1, caps.patience, "one waiting, one unacked").await;
    assert_eq!(ok(broker.purge(&q).await, "purge"), 1, "purge must not count unacked deliveries");
    assert_eq!(d.message.task_id(), kept.task_id());
    ok(d.acker.ack().await, "ack of a delivery held across a purge");
    p.expect_none(caps.redelivery_after + caps.quiet, "after purge and ack").await;
}

/// Priorities order delivery as declared (FIFO within a level); without
/// support, plain FIFO.
pub async fn priorities(f: &dyn BrokerFactory) {
    let (broker, q, caps) = declared(f, "prio").await;
    let id = |n: &str| format!("{}-{n}", unique("prio"));
    let (low_a, high_a, low_b, high_b) = (id("0a"), id("9a"), id("0b"), id("9b"));
    for (i, p) in [(&low_a, 0), (&high_a, 9), (&low_b, 0), (&high_b, 9)] {
        publish(&broker, &q, &with_priority(sample_message(i), p)).await;
    }
    wait_len(&broker, &q, 4, caps.patience, "after publishing 4").await;
    let declared = broker.capabilities().priorities;
    let want: Vec<&String> = match declared {
        Priorities::HigherFirst => vec![&high_a, &high_b, &low_a, &low_b],
        Priorities::LowerFirst => vec![&low_a, &low_b, &high_a, &high_b],
        _ => vec![&low_a, &high_a, &low_b, &high_b],
    };
    let mut p = Probe::start(&broker, std::slice::from_ref(&q), 1, "prio").await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let d = p.next(caps.patience, "priorities").await;
        got.push(id_of(&d));
        ok(d.acker.ack().await, "ack");
    }
    let want: Vec<String> = want.into_iter().cloned().collect();
    assert_eq!(got, want, "delivery order does not follow the declared {declared:?}");
}

/// `defer`: the message comes back no sooner than the due time, to exactly
/// one of two consumers. A broker that does not declare it: an
/// `Unsupported` error.
pub async fn defer(f: &dyn BrokerFactory) {
    let (broker, q, caps) = declared(f, "defer").await;
    let m = sample_message(&unique("defer"));
    publish(&broker, &q, &m).await;
    let mut a = Probe::start(&broker, std::slice::from_ref(&q), 1, "defer-a").await;
    let d = a.next(caps.patience, "first delivery").await;
    let until = Utc::now() + chrono::Duration::milliseconds(800);
    let r = d.acker.defer(until).await;
    if !broker.capabilities().defer {
        match r {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Unsupported, "defer without support: wrong error kind ({e})"),
            Ok(()) => panic!("defer succeeded although the capabilities say it is unsupported"),
        }
        ok(d.acker.ack().await, "ack");
        return;
    }
    ok(r, "defer");
    drop(d);
    let other = new_broker(f).await;
    let mut b = Probe::start(&other, std::slice::from_ref(&q), 1, "defer-b").await;
    let within = caps.patience + Duration::from_millis(800);
    let (d2, mut rest) = tokio::select! {
        d = a.next(within, "deferred delivery") => (d, b),
        d = b.next(within, "deferred delivery") => (d, a),
    };
    let now = Utc::now();
    // Brokers keep due times in milliseconds: allow rounding.
    assert!(
        now >= until - chrono::Duration::milliseconds(2),
        "a deferred message came back {} ms before its due time",
        (until - now).num_milliseconds()
    );
    assert_same_message(&d2.message, &m, "deferred message");
    ok(d2.acker.ack().await, "ack");
    rest.expect_none(caps.redelivery_after + caps.quiet, "the other consumer, after a deferred message was acked")
        .await;
}

struct SubProbe {
    rx: mpsc::UnboundedReceiver<(String, Message)>,
    task: JoinHandle<()>,
    name: &'static str,
}

impl Drop for SubProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SubProbe {
    async fn start(broker: &Arc<dyn Broker>, exchange: &str, pattern: &str, name: &'static str) -> SubProbe {
        let mut sub = ok(broker.subscribe(exchange, pattern).await, "subscribe");
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(Some(item)) = sub.recv().await {
                if tx.send(item).is_err() {
                    return;
                }
            }
        });
        SubProbe { rx, task, name }
    }

    async fn next(&mut self, within: Duration) -> (String, Message) {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Ok(Some(x)) => x,
            Ok(None) => panic!("subscription {} ended", self.name),
            Err(_) => panic!("subscription {} got nothing within {within:?}", self.name),
        }
    }

    async fn expect_none(&mut self, within: Duration) {
        if let Ok(Some((key, _))) = tokio::time::timeout(within, self.rx.recv()).await {
            panic!("subscription {} got a message with routing key {key} it does not match", self.name);
        }
    }
}

/// Fanout reaches every current subscriber whose pattern matches, in
/// publish order, and no other.
pub async fn fanout_topic_patterns(f: &dyn BrokerFactory) {
    let broker = new_broker(f).await;
    let caps = f.capabilities();
    let exchange = unique("qconf.ev");
    let other_exchange = unique("qconf.ev");
    let mut all = SubProbe::start(&broker, &exchange, "#", "#").await;
    let mut workers = SubProbe::start(&broker, &exchange, "worker.*", "worker.*").await;
    let mut tasks = SubProbe::start(&broker, &exchange, "task.*", "task.*").await;
    let mut elsewhere = SubProbe::start(&broker, &other_exchange, "#", "# on another exchange").await;
    // A subscriber on another connection.
    let other = new_broker(f).await;
    let mut remote = SubProbe::start(&other, &exchange, "#", "# on another connection").await;
    let keys = ["worker.heartbeat", "task.sent", "worker.online", "task.received"];
    let mut sent = Vec::new();
    for key in keys {
        let mut m = sample_message(&unique("ev"));
        m.properties.delivery_mode = 1;
        ok(broker.publish_fanout(&exchange, key, &m).await, "publish_fanout");
        sent.push((key.to_string(), m));
    }
    for (probe, want) in [
        (&mut all, vec![0, 1, 2, 3]),
        (&mut remote, vec![0, 1, 2, 3]),
        (&mut workers, vec![0, 2]),
        (&mut tasks, vec![1, 3]),
    ] {
        for i in want {
            let (key, m) = probe.next(caps.patience).await;
            assert_eq!(key, sent[i].0, "subscription {}: wrong routing key or order", probe.name);
            assert_eq!(m.headers, sent[i].1.headers, "fanout message headers changed");
            assert_eq!(m.body, sent[i].1.body, "fanout message body changed");
        }
    }
    for probe in [&mut all, &mut remote, &mut workers, &mut tasks, &mut elsewhere] {
        probe.expect_none(caps.quiet).await;
    }
}

/// `ping` succeeds on a reachable broker; `describe` says something.
pub async fn ping(f: &dyn BrokerFactory) {
    let broker = new_broker(f).await;
    ok(broker.ping().await, "ping");
    assert!(!broker.describe().is_empty(), "describe() is empty");
}

/// 200 messages, 4 consumers on 2 connections: every message is seen
/// exactly once (none is given to two consumers while unacked).
pub async fn concurrent_consumers_get_each_message_once(f: &dyn BrokerFactory) {
    let (broker, q, caps) = declared(f, "concurrent").await;
    let other = new_broker(f).await;
    let msgs: Vec<(String, Message)> = (0..200).map(|_| (q.clone(), sample_message(&unique("c")))).collect();
    let ids: HashSet<String> = msgs.iter().filter_map(|(_, m)| m.task_id().map(str::to_owned)).collect();
    ok(broker.publish_many(&msgs).await, "publish_many");
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, String)>();
    let mut handles = Vec::new();
    for i in 0..4 {
        let b = if i % 2 == 0 { broker.clone() } else { other.clone() };
        let mut consumer = ok(b.consume(std::slice::from_ref(&q), ConsumeOptions::new(5)).await, "consume");
        let tx = tx.clone();
        handles.push(tokio::spawn(async move {
            while let Ok(Some(d)) = consumer.recv().await {
                // Hold it a moment so the others run while it is unacked.
                tokio::task::yield_now().await;
                let _ = tx.send((i, id_of(&d)));
                if d.acker.ack().await.is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut per_consumer = [0usize; 4];
    let deadline = Instant::now() + caps.patience * 3;
    while seen.len() < ids.len() {
        let Ok(Some((i, id))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            panic!("only {} of {} messages delivered in time", seen.len(), ids.len());
        };
        assert!(ids.contains(&id), "unexpected message {id}");
        per_consumer[i] += 1;
        if seen.insert(id.clone(), i).is_some() {
            panic!("message {id} delivered twice");
        }
    }
    if let Ok(Some((i, id))) = tokio::time::timeout(caps.quiet, rx.recv()).await {
        panic!("message {id} delivered again (to consumer {i}) after all were acked");
    }
    for h in handles {
        h.abort();
    }
    assert_eq!(per_consumer.iter().sum::<usize>(), 200, "{per_consumer:?}");
}
