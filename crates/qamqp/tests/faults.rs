//! Connection loss, crashed consumers, acks on dead channels.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{broker, close_connections, connection_open, list, row, unique, wait_until};
use qamqp::AmqpOptions;
use qcore::{Broker, ConsumeOptions, Message, Properties};
use serde_json::json;

fn task(id: &str) -> Message {
    let mut m = Message {
        properties: Properties { correlation_id: Some(id.into()), ..Properties::default() },
        body: br#"[[], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#.to_vec(),
        ..Message::default()
    };
    m.headers.insert("lang".into(), json!("py"));
    m.headers.insert("task".into(), json!("tests.noop"));
    m.headers.insert("id".into(), json!(id));
    m
}

fn unacked(q: &str) -> u64 {
    let rows = list("list_queues", &["name", "messages_unacknowledged"]);
    row(&rows, q)["messages_unacknowledged"].as_u64().unwrap_or(u64::MAX)
}

#[derive(Default)]
struct Seen {
    /// id -> deliveries seen, and whether each later one was flagged redelivered.
    deliveries: HashMap<String, Vec<bool>>,
    acked: usize,
    after_close: usize,
    errors: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_resumes_after_its_connection_is_force_closed_under_load() {
    const N: usize = 3000;
    const PREFETCH: usize = 20;
    let name = unique("qamqp-fault-load");
    let consumer_side = broker(AmqpOptions::default().connection_name(&name)).await;
    let publisher = broker(AmqpOptions::default()).await;
    let q = unique("fault.load");
    publisher.declare_queue(&q).await.unwrap();
    let ids: Vec<String> = (0..N).map(|i| format!("{q}-{i:05}")).collect();
    let first: Vec<(String, Message)> = ids[..N / 2].iter().map(|id| (q.clone(), task(id))).collect();
    for chunk in first.chunks(250) {
        publisher.publish_many(chunk).await.unwrap();
    }
    // The second half is published while the consumer runs and loses its connection.
    let rest: Vec<(String, Message)> = ids[N / 2..].iter().map(|id| (q.clone(), task(id))).collect();
    let bg_publisher = publisher.clone();
    let background = tokio::spawn(async move {
        for chunk in rest.chunks(50) {
            bg_publisher.publish_many(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let seen = Arc::new(Mutex::new(Seen::default()));
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut consumer = consumer_side.consume(std::slice::from_ref(&q), ConsumeOptions::new(PREFETCH)).await.unwrap();
    let (seen2, closed2) = (seen.clone(), closed.clone());
    let worker = tokio::spawn(async move {
        loop {
            match consumer.recv().await {
                Ok(Some(d)) => {
                    let id = d.message.task_id().unwrap_or_default().to_string();
                    {
                        let mut s = seen2.lock().unwrap();
                        s.deliveries.entry(id).or_default().push(d.redelivered);
                        if closed2.load(std::sync::atomic::Ordering::SeqCst) {
                            s.after_close += 1;
                        }
                    }
                    // Some work, so the load lasts while the connection is cut.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    // Acks on the lost channel are ignored, never an error.
                    d.acker.ack().await.unwrap();
                    seen2.lock().unwrap().acked += 1;
                }
                Ok(None) => return,
                Err(_) => seen2.lock().unwrap().errors += 1,
            }
        }
    });

    wait_until(Duration::from_secs(30), "500 messages acked", || async { seen.lock().unwrap().acked >= 500 }).await;
    let n = close_connections(&format!("{name}/consume"));
    assert_eq!(n, 1, "the consumer connection should be listed once");
    closed.store(true, std::sync::atomic::Ordering::SeqCst);

    wait_until(Duration::from_secs(90), "every message delivered", || async {
        let s = seen.lock().unwrap();
        s.deliveries.len() == N
    })
    .await;
    background.await.unwrap();
    wait_until(Duration::from_secs(30), "queue drained and nothing unacked", || async {
        publisher.queue_len(&q).await.unwrap() == 0 && unacked(&q) == 0
    })
    .await;
    // The consumer owns its connection: check it is back before dropping it.
    assert!(connection_open(&format!("{name}/consume")), "the consumer reconnected under the same name");
    worker.abort();
    let s = seen.lock().unwrap();
    assert!(s.after_close > 0, "nothing was delivered after the connection was closed");
    let dups: Vec<(&String, &Vec<bool>)> = s.deliveries.iter().filter(|(_, v)| v.len() > 1).collect();
    // Only what was in flight when the connection died comes again: at most
    // the prefetch window plus the acks sent but not yet processed.
    assert!(dups.len() <= 2 * PREFETCH, "{} duplicates: {:?}", dups.len(), dups);
    for (id, flags) in &dups {
        assert!(flags[1..].iter().all(|r| *r), "{id}: a repeated delivery not flagged redelivered: {flags:?}");
    }
    for id in &ids {
        assert!(s.deliveries.contains_key(id), "{id} lost");
    }
    eprintln!(
        "force-close under load: {N} messages, {} duplicates (redelivered in-flight), {} recv errors",
        dups.len(),
        s.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_deliveries_of_a_vanished_consumer_go_to_another() {
    let q = unique("fault.crash");
    let a = broker(AmqpOptions::default()).await;
    a.declare_queue(&q).await.unwrap();
    let ids: Vec<String> = (0..5).map(|i| format!("{q}-{i}")).collect();
    let msgs: Vec<(String, Message)> = ids.iter().map(|id| (q.clone(), task(id))).collect();
    a.publish_many(&msgs).await.unwrap();
    let mut ca = a.consume(std::slice::from_ref(&q), ConsumeOptions::new(5)).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(tokio::time::timeout(Duration::from_secs(10), ca.recv()).await.unwrap().unwrap().unwrap());
    }
    assert_eq!(unacked(&q), 5);
    let b = broker(AmqpOptions::default()).await;
    let mut cb = b.consume(std::slice::from_ref(&q), ConsumeOptions::new(10)).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), cb.recv()).await.is_err(),
        "held deliveries must not go to another consumer"
    );
    // The first worker dies: no ack, no reject, its connection goes away.
    drop(held);
    drop(ca);
    drop(a);
    let mut got = Vec::new();
    for _ in 0..5 {
        let d = tokio::time::timeout(Duration::from_secs(10), cb.recv()).await.unwrap().unwrap().unwrap();
        assert!(d.redelivered, "not flagged redelivered");
        got.push(d.message.task_id().unwrap_or_default().to_string());
        d.acker.ack().await.unwrap();
    }
    got.sort();
    assert_eq!(got, ids);
    assert!(tokio::time::timeout(Duration::from_millis(300), cb.recv()).await.is_err(), "delivered twice");
    assert_eq!(b.queue_len(&q).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_a_delivery_of_a_lost_connection_is_ignored() {
    let name = unique("qamqp-fault-ack");
    let b = broker(AmqpOptions::default().connection_name(&name)).await;
    let q = unique("fault.ack");
    b.declare_queue(&q).await.unwrap();
    b.publish(&q, &task("one")).await.unwrap();
    b.publish(&q, &task("two")).await.unwrap();
    let mut c = b.consume(std::slice::from_ref(&q), ConsumeOptions::new(2)).await.unwrap();
    let d1 = c.recv().await.unwrap().unwrap();
    let d2 = c.recv().await.unwrap().unwrap();
    assert_eq!(close_connections(&format!("{name}/consume")), 1);
    wait_until(Duration::from_secs(10), "both messages back in the queue", || async {
        b.queue_len(&q).await.unwrap() == 2
    })
    .await;
    d1.acker.ack().await.expect("ack of a lost delivery is not an error");
    d2.acker.dead_letter("test").await.expect("dead_letter of a lost delivery is not an error");
    // Nothing was parked: the message is RabbitMQ's again.
    assert!(b.dead_letters().expect("a dead-letter place").list(&q, 10).await.unwrap().is_empty());
    // The same consumer object resumes and gets both again.
    let mut again = Vec::new();
    for _ in 0..2 {
        let d =
            tokio::time::timeout(Duration::from_secs(20), c.recv()).await.unwrap_or_else(|_| panic!("no redelivery"));
        let d = match d {
            Ok(Some(d)) => d,
            other => panic!("recv: {other:?}"),
        };
        again.push(d.message.task_id().unwrap_or_default().to_string());
        d.acker.ack().await.unwrap();
    }
    again.sort();
    assert_eq!(again, ["one", "two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_and_subscription_recover_after_connection_loss() {
    let name = unique("qamqp-fault-pub");
    let b = broker(AmqpOptions::default().connection_name(&name)).await;
    let q = unique("fault.pub");
    b.declare_queue(&q).await.unwrap();
    b.publish(&q, &task("before")).await.unwrap();
    let mut sub = b.subscribe("celeryev", "worker.#").await.unwrap();
    assert_eq!(close_connections(&format!("{name}/publish")), 1);
    assert_eq!(close_connections(&format!("{name}/consume")), 1);
    // The next publish reconnects by itself (a retry on a fresh channel).
    b.publish(&q, &task("after")).await.unwrap();
    b.flush().await.unwrap();
    assert_eq!(b.queue_len(&q).await.unwrap(), 2);
    // The subscription declares its queue again; events sent meanwhile are
    // lost (no persistence), so keep sending until one arrives.
    let ev = Message { body: br#"{"type": "worker-heartbeat"}"#.to_vec(), ..Message::default() };
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        let mut recv = Box::pin(async { sub.recv().await });
        loop {
            b.publish_fanout("celeryev", "worker.heartbeat", &ev).await.unwrap();
            tokio::select! {
                r = &mut recv => break r,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    })
    .await
    .expect("the subscription resumed");
    let got = match got {
        Ok(Some(x)) => x,
        other => panic!("subscription recv: {other:?}"),
    };
    assert_eq!(got.0, "worker.heartbeat");
}
