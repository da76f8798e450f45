//! The task consumer's own connection (`amqp://`) against the real
//! RabbitMQ: it is one connection per consumer, under the consumer's name;
//! heartbeats keep an idle one open; a consumer the broker cancels (its
//! queue deleted) subscribes again. (A connection closed by the broker is in
//! `faults.rs`; handshake refusals and channel errors are unit tests of
//! `src/direct.rs`.)

mod common;

use std::time::Duration;

use common::{ctl, list, unique, url, vhost, wait_until};
use qamqp::{AmqpBroker, AmqpOptions};
use qcore::{Broker, ConsumeOptions, Consumer, Delivery, Message, TaskMessageBuilder};
use serde_json::Value;

fn task(id: &str) -> Message {
    match (TaskMessageBuilder { id: id.into(), task: "tests.direct".into(), ..Default::default() }).build() {
        Ok(m) => m,
        Err(e) => panic!("building a message: {e}"),
    }
}

async fn next(c: &mut Box<dyn Consumer>, within: Duration) -> Delivery {
    match tokio::time::timeout(within, c.recv()).await {
        Ok(Ok(Some(d))) => d,
        Ok(other) => panic!("recv: {other:?}"),
        Err(_) => panic!("no delivery within {within:?}"),
    }
}

/// The connections named `name`: (client properties, connected_at).
fn connections(name: &str) -> Vec<(Value, Value)> {
    let out = ctl(&["-q", "--formatter", "json", "list_connections", "client_properties", "connected_at"]);
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("list_connections: {e}: {out}"));
    rows.into_iter()
        .filter(|r| r.to_string().contains(&format!("\"{name}\"")))
        .map(|r| (r["client_properties"].clone(), r["connected_at"].clone()))
        .collect()
}

fn consumers_of(q: &str) -> usize {
    list("list_consumers", &["queue_name"]).iter().filter(|r| r["queue_name"] == q).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_consumer_has_its_own_named_connection_and_heartbeats_keep_it_open() {
    let name = unique("qamqp-direct-hb");
    // A heartbeat of 1 s: RabbitMQ closes a connection that sends nothing for
    // two intervals, and the consumer gives up on one that is silent as long.
    let b = AmqpBroker::connect(&format!("{}?heartbeat=1", url()), AmqpOptions::default().connection_name(&name))
        .await
        .expect("connect");
    let q = unique("direct.hb");
    b.declare_queue(&q).await.expect("declare");
    let mut c = b.consume(std::slice::from_ref(&q), ConsumeOptions::new(4)).await.expect("consume");
    let before = connections(&format!("{name}/consume"));
    // The publishing connection has another name; subscriptions and rpc
    // replies would share lapin's consume connection, none is open here.
    assert_eq!(before.len(), 1, "one consumer connection: {before:?}");
    // rabbitmqctl lists the table as [name, type, value] triples.
    let props = before[0].0.to_string();
    assert!(props.contains(r#"["product","longstr","qtask"]"#), "{props}");
    assert!(props.contains(r#"["consumer_cancel_notify","bool",true]"#), "{props}");

    // Idle for several heartbeat intervals: the scenario under test, not a wait.
    tokio::time::sleep(Duration::from_secs(4)).await;
    b.publish(&q, &task("after-idle")).await.expect("publish");
    let d = next(&mut c, Duration::from_secs(10)).await;
    assert_eq!(d.message.task_id(), Some("after-idle"));
    assert!(!d.redelivered);
    d.acker.ack().await.expect("ack");
    let after = connections(&format!("{name}/consume"));
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(before[0].1, after[0].1, "the consumer's connection was replaced while idle");

    c.close().await.expect("close");
    wait_until(Duration::from_secs(10), "the consumer's connection closed", || async {
        connections(&format!("{name}/consume")).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_cancelled_by_the_broker_subscribes_again() {
    let b = common::broker(AmqpOptions::default()).await;
    let q = unique("direct.cancel");
    b.declare_queue(&q).await.expect("declare");
    b.publish(&q, &task("first")).await.expect("publish");
    let mut c = b.consume(std::slice::from_ref(&q), ConsumeOptions::new(4)).await.expect("consume");
    let d = next(&mut c, Duration::from_secs(10)).await;
    assert_eq!(d.message.task_id(), Some("first"));
    d.acker.ack().await.expect("ack");

    // Deleting the queue cancels the consumer (basic.cancel from the broker).
    ctl(&["-q", "delete_queue", "-p", vhost(), &q]);
    // recv notices the cancel, declares the queue again and consumes it.
    let recv = tokio::spawn(async move {
        let d = next(&mut c, Duration::from_secs(30)).await;
        let id = d.message.task_id().map(str::to_owned);
        d.acker.ack().await.expect("ack");
        (c, id)
    });
    wait_until(Duration::from_secs(20), "the queue declared and consumed again", || async { consumers_of(&q) == 1 })
        .await;
    b.publish(&q, &task("second")).await.expect("publish");
    let (mut c, id) = recv.await.expect("recv task");
    assert_eq!(id.as_deref(), Some("second"));
    c.close().await.expect("close");
}
