//! Coalesced acks on the real RabbitMQ: a batch never settles a delivery
//! that is still running or not yet seen, and `close` sends what is pending.

mod common;

use std::time::Duration;

use common::{broker, list, unique, wait_until};
use qamqp::AmqpOptions;
use qcore::{Broker, ConsumeOptions, Consumer, Delivery, Message, TaskMessageBuilder};

fn task(i: usize) -> Message {
    match (TaskMessageBuilder { id: format!("ack-{i}"), task: "tests.ack".into(), ..Default::default() }).build() {
        Ok(m) => m,
        Err(e) => panic!("building a message: {e}"),
    }
}

async fn next(c: &mut Box<dyn Consumer>, within: Duration) -> Option<Delivery> {
    match tokio::time::timeout(within, c.recv()).await {
        Ok(Ok(Some(d))) => Some(d),
        Ok(other) => panic!("recv: {other:?}"),
        Err(_) => None,
    }
}

async fn wait_counts(q: &str, ready: u64, unacked: u64) {
    wait_until(Duration::from_secs(10), &format!("{q}: {ready} ready, {unacked} unacked"), || async {
        let rows = list("list_queues", &["name", "messages_ready", "messages_unacknowledged"]);
        rows.iter().any(|r| r["name"] == q && r["messages_ready"] == ready && r["messages_unacknowledged"] == unacked)
    })
    .await;
}

async fn fill(b: &qamqp::AmqpBroker, queues: &[&str], per_queue: usize) {
    let mut items = Vec::new();
    for (qi, q) in queues.iter().enumerate() {
        b.declare_queue(q).await.expect("declare");
        items.extend((0..per_queue).map(|i| (q.to_string(), task(qi * 1000 + i))));
    }
    b.publish_many(&items).await.expect("publish_many");
}

/// Deliveries acked around one that is still running are settled, the
/// running one stays unacked (a multiple ack would have taken it), and it
/// goes to another consumer when this one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_around_a_running_delivery_leave_it_unacked() {
    let q = unique("acks.hole");
    let b = broker(AmqpOptions::default()).await;
    fill(&b, &[&q], 12).await;
    let mut c = b.consume(std::slice::from_ref(&q), ConsumeOptions::new(12)).await.expect("consume");
    let mut got = Vec::new();
    for _ in 0..12 {
        got.push(next(&mut c, Duration::from_secs(10)).await.expect("a delivery"));
    }
    // Hold the third; ack the others, last first.
    let held = got.remove(2);
    for d in got.iter().rev() {
        d.acker.ack().await.expect("ack");
    }
    wait_counts(&q, 0, 1).await;
    let held_id = held.message.task_id().map(str::to_owned);
    drop(held);
    c.close().await.expect("close");
    wait_counts(&q, 1, 0).await;
    let mut again = b.consume(std::slice::from_ref(&q), ConsumeOptions::new(4)).await.expect("consume");
    let d = next(&mut again, Duration::from_secs(10)).await.expect("the held delivery comes back");
    assert_eq!(d.message.task_id().map(str::to_owned), held_id);
    assert!(d.redelivered);
    d.acker.ack().await.expect("ack");
    assert!(next(&mut again, Duration::from_millis(300)).await.is_none(), "only the held delivery comes back");
    again.close().await.expect("close");
    wait_counts(&q, 0, 0).await;
}

/// With several queues on one channel, deliveries can be read out of tag
/// order; acking everything read so far must not settle a delivery still
/// waiting in the other queue's stream. Every message is handled exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_queues_every_message_once() {
    let (qa, qb) = (unique("acks.a"), unique("acks.b"));
    let b = broker(AmqpOptions::default()).await;
    fill(&b, &[&qa, &qb], 150).await;
    let mut c = b.consume(&[qa.clone(), qb.clone()], ConsumeOptions::new(16)).await.expect("consume");
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 300 {
        let d = next(&mut c, Duration::from_secs(10)).await.expect("a delivery");
        assert!(!d.redelivered, "a delivery came twice: {:?}", d.message.task_id());
        assert!(seen.insert(d.message.task_id().map(str::to_owned)), "duplicate {:?}", d.message.task_id());
        d.acker.ack().await.expect("ack");
    }
    c.close().await.expect("close");
    wait_counts(&qa, 0, 0).await;
    wait_counts(&qb, 0, 0).await;
}

/// `close` sends the acks still waiting for their batch: nothing comes back
/// to the next consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_sends_pending_acks() {
    let q = unique("acks.close");
    let b = broker(AmqpOptions::default()).await;
    fill(&b, &[&q], 3).await;
    // `close` right after the acks: whatever the batcher has not written yet
    // goes out before the channel closes (otherwise RabbitMQ would requeue).
    let mut c = b.consume(std::slice::from_ref(&q), ConsumeOptions::new(64)).await.expect("consume");
    for _ in 0..3 {
        let d = next(&mut c, Duration::from_secs(10)).await.expect("a delivery");
        d.acker.ack().await.expect("ack");
    }
    c.close().await.expect("close");
    wait_counts(&q, 0, 0).await;
    let mut again = b.consume(std::slice::from_ref(&q), ConsumeOptions::new(4)).await.expect("consume");
    assert!(next(&mut again, Duration::from_millis(500)).await.is_none(), "an acked message came back");
}
