//! Poison messages, dead letters and deferred (ETA) delivery.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{broker, ctl, list, row, unique, vhost, wait_until};
use qamqp::AmqpOptions;
use qcore::{Broker, ConsumeOptions, Consumer, Delivery, Message, Properties};
use serde_json::json;

fn task(id: &str) -> Message {
    let mut m = Message {
        properties: Properties {
            correlation_id: Some(id.into()),
            reply_to: Some("reply-queue".into()),
            expiration: Some("600000".into()),
            ..Properties::default()
        },
        body: br#"[[1], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#.to_vec(),
        ..Message::default()
    };
    m.headers.insert("lang".into(), json!("py"));
    m.headers.insert("task".into(), json!("tests.poison"));
    m.headers.insert("id".into(), json!(id));
    m.headers.insert("retries".into(), json!(0));
    m
}

async fn next(c: &mut Box<dyn Consumer>, within: Duration) -> Option<Delivery> {
    match tokio::time::timeout(within, c.recv()).await {
        Ok(Ok(Some(d))) => Some(d),
        Ok(other) => panic!("recv: {other:?}"),
        Err(_) => None,
    }
}

fn queue_row(q: &str) -> serde_json::Value {
    let rows = list("list_queues", &["name", "messages", "messages_unacknowledged", "durable", "arguments"]);
    row(&rows, q).clone()
}

/// Wait until `q` holds `ready` messages and `unacked` unacknowledged ones
/// (acks are asynchronous in AMQP: the broker counts them a moment later).
async fn wait_counts(q: &str, ready: u64, unacked: u64) {
    wait_until(Duration::from_secs(10), &format!("{q}: {ready} ready, {unacked} unacked"), || async {
        let rows = list("list_queues", &["name", "messages_ready", "messages_unacknowledged"]);
        rows.iter().any(|r| r["name"] == q && r["messages_ready"] == ready && r["messages_unacknowledged"] == unacked)
    })
    .await;
}

/// A message that kills every worker that takes it (no ack, the connection
/// goes away) is parked after `max_deliveries` on a classic queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_looping_message_is_dead_lettered_on_classic_queues() {
    let opts = AmqpOptions::default().max_deliveries(Some(3));
    let q = unique("poison.crash");
    let producer = broker(opts.clone()).await;
    producer.declare_queue(&q).await.unwrap();
    let sent = task("poison-1");
    producer.publish(&q, &sent).await.unwrap();
    let mut crashes = 0;
    loop {
        let worker = broker(opts.clone()).await;
        let mut c = worker.consume(std::slice::from_ref(&q), ConsumeOptions::new(1)).await.unwrap();
        match next(&mut c, Duration::from_secs(3)).await {
            Some(d) => {
                crashes += 1;
                assert_eq!(d.redelivered, crashes > 1);
                assert_eq!(d.message.headers, sent.headers, "bookkeeping headers are not shown");
                // The worker dies holding it.
                drop(d);
                drop(c);
                drop(worker);
            }
            None => break,
        }
        assert!(crashes <= 3, "delivered more than max_deliveries times");
    }
    assert_eq!(crashes, 3);
    let parked = producer.dead_letters().expect("a dead-letter place").list(&q, 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].message.headers, sent.headers);
    assert_eq!(parked[0].message.body, sent.body);
    assert_eq!(parked[0].message.properties, sent.properties);
    assert!(parked[0].reason.contains("delivered 4 times"), "{}", parked[0].reason);
    assert_eq!(producer.queue_len(&q).await.unwrap(), 0);
    // Browsing does not consume: the dead letter is still there, durable.
    assert_eq!(producer.dead_letters().expect("a dead-letter place").list(&q, 10).await.unwrap().len(), 1);
    let dead = queue_row(&format!("{q}.dead"));
    assert_eq!((&dead["durable"], &dead["messages"], &dead["arguments"]), (&json!(true), &json!(1), &json!([])));
}

/// Requeued again and again: parked too, on classic and quorum queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_loop_is_dead_lettered_classic_and_quorum() {
    for opts in [AmqpOptions::default(), AmqpOptions::default().quorum()] {
        let opts = opts.max_deliveries(Some(2));
        let b = broker(opts).await;
        let q = unique("poison.requeue");
        b.declare_queue(&q).await.unwrap();
        b.publish(&q, &task("requeued")).await.unwrap();
        let mut c = b.consume(std::slice::from_ref(&q), ConsumeOptions::new(1)).await.unwrap();
        for n in 1..=2 {
            let d = next(&mut c, Duration::from_secs(10)).await.expect("delivery");
            assert_eq!(d.redelivered, n > 1);
            d.acker.reject(true).await.unwrap();
        }
        assert!(next(&mut c, Duration::from_millis(500)).await.is_none(), "a third delivery");
        let parked = b.dead_letters().expect("a dead-letter place").list(&q, 10).await.unwrap();
        assert_eq!(parked.len(), 1, "{:?}", b.options().queue_type);
        assert!(parked[0].reason.contains("delivered 3 times"), "{}", parked[0].reason);
        assert_eq!(parked[0].message.headers, task("requeued").headers);
        // Redriven, it is counted afresh: two deliveries again, then parked again.
        let dead = b.dead_letters().expect("a dead-letter place");
        assert_eq!(dead.redrive(&q, 10).await.unwrap(), 1);
        assert_eq!(dead.count(&q).await.unwrap(), 0);
        for n in 1..=2 {
            let d = next(&mut c, Duration::from_secs(10)).await.expect("redriven delivery");
            assert_eq!(d.redelivered, n > 1, "{:?}", b.options().queue_type);
            assert_eq!(d.message.headers, task("requeued").headers);
            d.acker.reject(true).await.unwrap();
        }
        assert!(next(&mut c, Duration::from_millis(500)).await.is_none(), "a third delivery after the redrive");
        let parked = dead.list(&q, 10).await.unwrap();
        assert_eq!(parked.len(), 1);
        assert!(parked[0].reason.contains("delivered 3 times"), "{}", parked[0].reason);
        assert_eq!(dead.purge(&q).await.unwrap(), 1);
        assert_eq!(dead.count(&q).await.unwrap(), 0);
    }
}

/// A redrive into a queue deleted since it was declared does not drop the
/// message: the broker returns it (mandatory publish), the queue is
/// declared again and the message lands in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_into_a_deleted_queue_declares_it_again() {
    let b = broker(AmqpOptions::default()).await;
    let q = unique("redrive.deleted");
    b.declare_queue(&q).await.unwrap();
    b.publish(&q, &task("redriven")).await.unwrap();
    let mut c = b.consume(std::slice::from_ref(&q), ConsumeOptions::new(1)).await.unwrap();
    let d = next(&mut c, Duration::from_secs(10)).await.expect("delivery");
    d.acker.dead_letter("parked").await.unwrap();
    c.close().await.unwrap();
    drop(c);
    ctl(&["-q", "delete_queue", "-p", vhost(), &q]);
    let dead = b.dead_letters().expect("a dead-letter place");
    assert_eq!(dead.redrive(&q, 10).await.unwrap(), 1);
    assert_eq!(dead.count(&q).await.unwrap(), 0);
    assert_eq!(b.queue_len(&q).await.unwrap(), 1);
    let mut c = b.consume(std::slice::from_ref(&q), ConsumeOptions::new(1)).await.unwrap();
    let d = next(&mut c, Duration::from_secs(10)).await.expect("redriven delivery");
    assert_eq!(d.message.headers, task("redriven").headers);
    d.acker.ack().await.unwrap();
}

/// `defer` hands the message to a delay queue and acks it: nothing is held
/// unacked meanwhile, and it comes back on time with the same properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_message_waits_in_a_delay_queue_not_unacked() {
    let b = broker(AmqpOptions::default()).await;
    let q = unique("defer.wait");
    b.declare_queue(&q).await.unwrap();
    let sent = task("deferred");
    b.publish(&q, &sent).await.unwrap();
    let mut c = b.consume(std::slice::from_ref(&q), ConsumeOptions::new(1)).await.unwrap();
    let d = next(&mut c, Duration::from_secs(10)).await.unwrap();
    let until = Utc::now() + chrono::Duration::milliseconds(4000);
    d.acker.defer(until).await.unwrap();
    d.acker.ack().await.unwrap(); // no-op after a settlement
    wait_counts(&q, 0, 0).await;
    // 4000 ms = 2048 + 1024 + 512 + 256 + 128 + 32 (rounded up to 128).
    let bucket = queue_row("qtask.delay.2048");
    assert_eq!(bucket["durable"], true);
    let mut args = bucket["arguments"].as_array().cloned().unwrap_or_default();
    args.sort_by_key(|a| a.to_string());
    assert_eq!(
        args,
        vec![json!(["x-dead-letter-exchange", "longstr", ""]), json!(["x-message-ttl", "signedint", 2048])]
    );
    let back = next(&mut c, Duration::from_secs(10)).await.expect("the deferred message");
    let now = Utc::now();
    assert!(now >= until, "came back {} ms early", (until - now).num_milliseconds());
    assert!(now < until + chrono::Duration::milliseconds(1000), "came back late: {now} vs {until}");
    assert_eq!(back.message.headers, sent.headers, "no x-death or qtask headers");
    assert_eq!(back.message.properties, sent.properties, "expiration restored");
    assert!(!back.redelivered);
    back.acker.ack().await.unwrap();
    assert!(next(&mut c, Duration::from_millis(300)).await.is_none());
}

/// A long ETA sits in the broker (the 2^21 ms bucket for an hour), not in
/// the worker and not unacked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_eta_is_parked_in_the_broker() {
    let b = broker(AmqpOptions::default()).await;
    let q = unique("defer.long");
    b.declare_queue(&q).await.unwrap();
    b.publish(&q, &task("in-an-hour")).await.unwrap();
    let mut c = b.consume(std::slice::from_ref(&q), ConsumeOptions::new(1)).await.unwrap();
    let d = next(&mut c, Duration::from_secs(10)).await.unwrap();
    let id = d.message.task_id().unwrap_or_default().to_string();
    d.acker.defer(Utc::now() + chrono::Duration::hours(1)).await.unwrap();
    wait_counts(&q, 0, 0).await;
    // It waits in the hour's bucket (2^21 ms), the first hop of the hour.
    assert!(b.queue_len("qtask.delay.2097152").await.unwrap() >= 1, "{id} is not in the 2^21 ms bucket");
    assert!(next(&mut c, Duration::from_millis(300)).await.is_none());
}
