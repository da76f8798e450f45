//! Fault tests, each against a redis-server of its own: killed consumers,
//! a server restart under load, long tasks kept fresh, deferred messages
//! with two consumers.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, RedisServer};
use qcore::{
    Broker, ConsumeOptions, Consumer, Delivery, ErrorKind, Message, ResultBackend, ResultMeta, State,
    TaskMessageBuilder,
};
use qredis::{RedisBackend, RedisBackendOptions};
use qredis::{RedisBroker, RedisOptions};
use tokio::sync::mpsc;

fn task(id: &str) -> Message {
    TaskMessageBuilder { id: id.into(), task: "tests.fault".into(), origin: "faults@test".into(), ..Default::default() }
        .build()
        .unwrap()
}

fn id(d: &Delivery) -> String {
    d.message.task_id().unwrap_or_default().to_string()
}

fn opts(vis_ms: u64) -> RedisOptions {
    RedisOptions::default()
        .visibility_timeout(Duration::from_millis(vis_ms))
        .defer_poll_interval(Duration::from_millis(50))
}

/// Read a consumer in a task of its own; deliveries (or errors) go to a channel.
fn pump(mut consumer: Box<dyn Consumer>) -> (mpsc::UnboundedReceiver<Delivery>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match consumer.recv().await {
                Ok(Some(d)) => {
                    if tx.send(d).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(_) => {} // the consumer backs off and reconnects by itself
            }
        }
    });
    (rx, task)
}

/// (1) A consumer holding deliveries disappears without acking (kill -9):
/// another consumer gets each of them after the visibility timeout, marked
/// redelivered, exactly once once acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_consumers_deliveries_come_back_exactly_once() {
    let server = RedisServer::start(false);
    let a = RedisBroker::connect(&server.url(), opts(1000)).await.unwrap();
    let items: Vec<(String, Message)> = (0..20).map(|i| ("q".to_string(), task(&format!("m{i}")))).collect();
    a.publish_many(&items).await.unwrap();
    let mut dying = a.consume(&["q".into()], ConsumeOptions::new(8)).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(dying.recv().await.unwrap().unwrap());
    }
    let held_ids: HashSet<String> = held.iter().map(id).collect();
    // "kill -9": nothing is settled, nothing refreshed any more.
    drop(held);
    drop(dying);
    drop(a);

    let b = RedisBroker::connect(&server.url(), opts(1000)).await.unwrap();
    let (mut rx, task) = pump(b.consume(&["q".into()], ConsumeOptions::new(50)).await.unwrap());
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 20 {
        let d = tokio::time::timeout_at(deadline, rx.recv()).await.expect("all 20 messages within 30 s").unwrap();
        assert_eq!(d.redelivered, held_ids.contains(&id(&d)), "redelivered flag of {}", id(&d));
        *seen.entry(id(&d)).or_default() += 1;
        d.acker.ack().await.unwrap();
    }
    // Nothing comes twice, even after more restore scans.
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(2500), rx.recv()).await {
        panic!("{} delivered again after it was acked", id(&d));
    }
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert_eq!(b.unacked_len().await.unwrap(), 0);
    task.abort();
}

/// (2) The server is killed and started again (same port, AOF with fsync
/// always) while a producer and a consumer run: both resume by themselves
/// and every message whose publish returned Ok is consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_server_restart_under_load() {
    const N: usize = 600;
    let mut server = RedisServer::start(true);
    let producer = RedisBroker::connect(&server.url(), opts(1000)).await.unwrap();
    let consumer = RedisBroker::connect(&server.url(), opts(1000)).await.unwrap();
    let published: Arc<Mutex<HashSet<String>>> = Arc::default();
    let consumed: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let errors = Arc::new(Mutex::new(0usize));

    let pub_task = {
        let published = published.clone();
        let errors = errors.clone();
        tokio::spawn(async move {
            for i in 0..N {
                let m = task(&format!("load-{i}"));
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    match producer.publish("load", &m).await {
                        Ok(()) => break,
                        Err(e) => {
                            assert!(e.is_retryable(), "publish failed with a non-retryable error: {e}");
                            *errors.lock().unwrap() += 1;
                            assert!(tokio::time::Instant::now() < deadline, "publish never recovered: {e}");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                published.lock().unwrap().insert(format!("load-{i}"));
                // Spread the load over a few seconds so the restart hits it.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let (mut rx, cons_task) = pump(consumer.consume(&["load".into()], ConsumeOptions::new(16)).await.unwrap());
    let ack_task = {
        let consumed = consumed.clone();
        tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                *consumed.lock().unwrap().entry(id(&d)).or_default() += 1;
                // A lost ack only means a redelivery (at least once).
                let _ = d.acker.ack().await;
            }
        })
    };

    eventually(Duration::from_secs(30), "a third consumed before the restart", || {
        let n = consumed.lock().unwrap().len();
        async move { n >= N / 3 }
    })
    .await;
    let before = published.lock().unwrap().len();
    assert!(before < N, "the producer finished before the restart: the test would prove nothing");
    server.restart();

    let all_published = {
        let published = published.clone();
        move || published.lock().unwrap().len() == N
    };
    eventually(Duration::from_secs(90), "every message published after the restart", || {
        let done = all_published();
        async move { done }
    })
    .await;
    pub_task.await.unwrap();
    eventually(Duration::from_secs(90), "every published message consumed", || {
        let published = published.lock().unwrap().clone();
        let consumed = consumed.lock().unwrap();
        let missing = published.iter().filter(|id| !consumed.contains_key(*id)).count();
        async move { missing == 0 }
    })
    .await;
    let errors = *errors.lock().unwrap();
    assert!(errors > 0, "the producer never saw the server go away");
    let dups = consumed.lock().unwrap().values().filter(|n| **n > 1).count();
    eprintln!("restart after {before} published; {errors} publish errors retried; {dups} redelivered duplicates");
    cons_task.abort();
    ack_task.abort();
}

/// (3) A long task's delivery, kept fresh by its live consumer alone (no
/// caller renews anything), is not restored past the visibility timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshed_delivery_is_not_restored_while_its_consumer_lives() {
    let server = RedisServer::start(false);
    let a = RedisBroker::connect(&server.url(), opts(1000)).await.unwrap();
    a.publish("long", &task("long-1")).await.unwrap();
    let mut worker = a.consume(&["long".into()], ConsumeOptions::new(1)).await.unwrap();
    let d = worker.recv().await.unwrap().unwrap();
    let mut raw = common::raw(&server.url()).await;
    let tag: Vec<String> = common::redis::cmd("HKEYS").arg("unacked").query_async(&mut raw).await.unwrap();
    let first: f64 =
        common::redis::cmd("ZSCORE").arg("unacked_index").arg(&tag[0]).query_async(&mut raw).await.unwrap();

    // Another worker scans for expired deliveries all along.
    let b = RedisBroker::connect(&server.url(), opts(1000)).await.unwrap();
    let (mut rx, task_b) = pump(b.consume(&["long".into()], ConsumeOptions::new(1)).await.unwrap());
    // Three and a half visibility timeouts of "work".
    if let Ok(Some(stolen)) = tokio::time::timeout(Duration::from_millis(3500), rx.recv()).await {
        panic!("{} was restored while its consumer was alive", id(&stolen));
    }
    let later: f64 =
        common::redis::cmd("ZSCORE").arg("unacked_index").arg(&tag[0]).query_async(&mut raw).await.unwrap();
    assert!(later > first + 1.0, "unacked_index score was not refreshed ({first} -> {later})");
    d.acker.ack().await.unwrap();
    assert_eq!(a.unacked_len().await.unwrap(), 0);
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await {
        panic!("{} delivered after it was acked", id(&d));
    }
    task_b.abort();
    drop(worker);
}

/// (4) Deferred messages come back when due, each exactly once, with two
/// consumers (and two movers) running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_messages_move_back_exactly_once_with_two_consumers() {
    const N: usize = 30;
    let server = RedisServer::start(false);
    let a = RedisBroker::connect(&server.url(), opts(2000)).await.unwrap();
    let b = RedisBroker::connect(&server.url(), opts(2000)).await.unwrap();
    let items: Vec<(String, Message)> = (0..N).map(|i| ("eta".to_string(), task(&format!("eta-{i}")))).collect();
    a.publish_many(&items).await.unwrap();

    // id -> due time once deferred; id -> (final deliveries, came back before due)
    let due: Arc<Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>> = Arc::default();
    let finals: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let early = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for broker in [&a, &b] {
        let (mut rx, pump_task) = pump(broker.consume(&["eta".into()], ConsumeOptions::new(10)).await.unwrap());
        tasks.push(pump_task);
        let (due, finals, early) = (due.clone(), finals.clone(), early.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                let key = id(&d);
                let when = due.lock().unwrap().get(&key).copied();
                match when {
                    None => {
                        let until = chrono::Utc::now() + chrono::Duration::milliseconds(700);
                        due.lock().unwrap().insert(key, until);
                        d.acker.defer(until).await.unwrap();
                    }
                    Some(until) => {
                        if chrono::Utc::now() < until - chrono::Duration::milliseconds(2) {
                            early.lock().unwrap().push(key.clone());
                        }
                        *finals.lock().unwrap().entry(key).or_default() += 1;
                        d.acker.ack().await.unwrap();
                    }
                }
            }
        }));
    }
    eventually(Duration::from_secs(30), "every deferred message delivered again", || {
        let n = finals.lock().unwrap().len();
        async move { n == N }
    })
    .await;
    // An observation window of many mover periods: nothing moves twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let finals = finals.lock().unwrap().clone();
    assert!(finals.values().all(|n| *n == 1), "a deferred message came back more than once: {finals:?}");
    assert!(early.lock().unwrap().is_empty(), "came back before due: {:?}", early.lock().unwrap());
    assert_eq!(a.delayed_len().await.unwrap(), 0);
    assert_eq!(a.unacked_len().await.unwrap(), 0);
    for t in tasks {
        t.abort();
    }
}

/// (5) While the server is down, calls fail with Connection errors (ping
/// tells readiness); a result waiter blocked across the outage is woken by
/// a store made after the server came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_reported_and_result_waiters_resume() {
    let mut server = RedisServer::start(true);
    let broker = RedisBroker::connect(&server.url(), opts(1000)).await.unwrap();
    let waiting = RedisBackend::connect(&server.url(), RedisBackendOptions::default()).await.unwrap();
    let storing = RedisBackend::connect(&server.url(), RedisBackendOptions::default()).await.unwrap();
    let waiter = {
        let b = waiting.clone();
        tokio::spawn(async move { b.wait("outage-1", Duration::from_secs(60)).await })
    };
    let mut raw = common::raw(&server.url()).await;
    eventually(Duration::from_secs(10), "the waiter is subscribed", || {
        let mut raw = raw.clone();
        async move {
            let (_, n): (String, u64) = common::redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("celery-task-meta-outage-1")
                .query_async(&mut raw)
                .await
                .unwrap();
            n == 1
        }
    })
    .await;
    server.kill();
    let e = broker.ping().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    let e = broker.publish("q", &task("during")).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let e = storing.get("outage-1").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    server.resume();
    eventually(Duration::from_secs(20), "ping after the restart", || {
        let b = broker.clone();
        async move { b.ping().await.is_ok() }
    })
    .await;
    raw = common::raw(&server.url()).await;
    assert!(!waiter.is_finished(), "the waiter gave up during the outage: {:?}", waiter.await);
    eventually(Duration::from_secs(20), "the waiter subscribed again", || {
        let mut raw = raw.clone();
        async move {
            let (_, n): (String, u64) = common::redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("celery-task-meta-outage-1")
                .query_async(&mut raw)
                .await
                .unwrap();
            n == 1
        }
    })
    .await;
    let meta = ResultMeta::new("outage-1", State::Success, serde_json::json!(42));
    storing.store(&meta, Some(Duration::from_secs(60))).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(got.status, State::Success);
    assert_eq!(got.result, serde_json::json!(42));
}

/// (6) A read on a shared connection that broke while it sat idle (the
/// server restarted and the client had not noticed) is tried once more on
/// a fresh connection: every read succeeds right after each restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_right_after_an_unseen_restart_succeed() {
    let mut server = RedisServer::start(true);
    let broker = RedisBroker::connect(&server.url(), opts(1000)).await.unwrap();
    let backend = RedisBackend::connect(&server.url(), RedisBackendOptions::default()).await.unwrap();
    broker.declare_queue("reads").await.unwrap();
    broker.publish("reads", &task("r1")).await.unwrap();
    backend.store(&ResultMeta::new("read-1", State::Success, serde_json::json!(7)), None).await.unwrap();
    backend.save_group("group-1", &["read-1".to_string()], None).await.unwrap();
    let ids = ["read-1".to_string(), "none".to_string()];

    // Each read runs first after a restart, on the connection the last read
    // left in the pool.
    server.restart();
    let got = backend.get("read-1").await.expect("get after a restart");
    assert_eq!(got.map(|m| m.result), Some(serde_json::json!(7)));
    server.restart();
    let many = backend.get_many(&ids).await.expect("get_many after a restart");
    assert_eq!(many.iter().map(Option::is_some).collect::<Vec<_>>(), [true, false]);
    server.restart();
    assert_eq!(backend.get_group("group-1").await.expect("get_group after a restart"), Some(vec!["read-1".into()]));
    server.restart();
    backend.ping().await.expect("ping after a restart");
    server.restart();
    assert_eq!(broker.queue_len("reads").await.expect("queue_len after a restart"), 1);
    server.restart();
    assert!(broker
        .dead_letters()
        .expect("a dead-letter place")
        .list("reads", 10)
        .await
        .expect("dead_letters after a restart")
        .is_empty());
    server.restart();
    assert_eq!(broker.unacked_len().await.expect("unacked_len after a restart"), 0);
    server.restart();
    assert_eq!(broker.delayed_len().await.expect("delayed_len after a restart"), 0);
}
