//! Publisher confirms: a publish returns once the broker has the message,
//! and a `basic.nack` is an error.

mod common;

use common::{broker, unique, url};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use qamqp::AmqpOptions;
use qcore::{Broker, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_returns_after_the_confirm_and_a_nack_is_an_error() {
    let b = broker(AmqpOptions::default()).await;
    // A queue that refuses a second message: RabbitMQ nacks the publish.
    let q = unique("confirm.full");
    let conn = lapin::Connection::connect(&url(), Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    ch.queue_declare(q.as_str().into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await
        .unwrap();
    let m = Message { body: b"[[], {}, {}]".to_vec(), ..Message::default() };
    b.publish(&q, &m).await.unwrap();
    // Confirmed means enqueued: visible at once from another channel.
    assert_eq!(b.queue_len(&q).await.unwrap(), 1);
    let e = b.publish(&q, &m).await.expect_err("the broker nacks a publish to a full queue");
    assert!(e.to_string().contains("nack"), "{e}");
    let e = b.publish_many(&[(q.clone(), m.clone())]).await.expect_err("and in a batch");
    assert!(e.to_string().contains("nack"), "{e}");
    // The publishing channel is still usable.
    let other = unique("confirm.ok");
    b.declare_queue(&other).await.unwrap();
    b.publish(&other, &m).await.unwrap();
    assert_eq!(b.queue_len(&other).await.unwrap(), 1);
}
