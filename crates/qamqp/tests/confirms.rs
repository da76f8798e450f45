//! Publisher confirms: with `confirm_publish = each` a publish returns once
//! the broker has the message and a `basic.nack` is an error; pipelined (the
//! default), a publish returns once written, `flush` waits for the confirms,
//! reports nacks, and messages whose confirm was lost with the connection
//! are written again.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{broker, unique, url, wait_until};
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use qamqp::{AmqpBroker, AmqpOptions, ConfirmPublish};
use qcore::{Broker, Message, Properties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A queue that takes one message and refuses more: RabbitMQ nacks them.
async fn full_after_one() -> String {
    let q = unique("confirm.full");
    let conn = lapin::Connection::connect(&url(), Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    ch.queue_declare(q.as_str().into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await
        .unwrap();
    q
}

fn task(id: &str) -> Message {
    Message {
        properties: Properties { correlation_id: Some(id.into()), ..Properties::default() },
        body: b"[[], {}, {}]".to_vec(),
        ..Message::default()
    }
}

/// Every message of `q`, taken off it: correlation id -> how many times.
async fn drain_ids(q: &str) -> HashMap<String, usize> {
    let conn = lapin::Connection::connect(&url(), Default::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut seen = HashMap::new();
    while let Some(got) = ch.basic_get(q.into(), BasicGetOptions { no_ack: true }).await.unwrap() {
        let id = got.delivery.properties.correlation_id().as_ref().map(|s| s.to_string()).unwrap_or_default();
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_returns_after_the_confirm_and_a_nack_is_an_error() {
    let b = broker(AmqpOptions::default().confirm_publish(ConfirmPublish::Each)).await;
    let q = full_after_one().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_are_all_there_after_flush() {
    let b = broker(AmqpOptions::default()).await;
    let q = unique("confirm.pipelined");
    b.declare_queue(&q).await.unwrap();
    // Sequential, then many at once from one task, then a batch.
    for i in 0..300 {
        b.publish(&q, &task(&format!("seq-{i}"))).await.unwrap();
    }
    let mut set = tokio::task::JoinSet::new();
    for i in 0..300 {
        let (b, q) = (b.clone(), q.clone());
        set.spawn(async move { b.publish(&q, &task(&format!("conc-{i}"))).await });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    let batch: Vec<_> = (0..300).map(|i| (q.clone(), task(&format!("many-{i}")))).collect();
    b.publish_many(&batch).await.unwrap();
    b.flush().await.unwrap();
    // Confirmed means enqueued: all visible from another channel.
    assert_eq!(b.queue_len(&q).await.unwrap(), 900);
    let seen = drain_ids(&q).await;
    assert_eq!(seen.len(), 900);
    assert!(seen.values().all(|&n| n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_nacks_are_reported_by_flush_once() {
    let b = broker(AmqpOptions::default()).await;
    let q = full_after_one().await;
    for i in 0..3 {
        // Returns once written: the nack comes later.
        b.publish(&q, &task(&format!("n-{i}"))).await.unwrap();
    }
    let e = b.flush().await.expect_err("two of the three are nacked");
    assert!(e.to_string().contains("2 published message(s)"), "{e}");
    assert!(e.to_string().contains("basic.nack"), "{e}");
    assert_eq!(b.queue_len(&q).await.unwrap(), 1);
    // Reported once; the channel is still usable.
    b.flush().await.unwrap();
    let other = unique("confirm.ok");
    b.declare_queue(&other).await.unwrap();
    b.publish(&other, &task("ok")).await.unwrap();
    b.flush().await.unwrap();
    assert_eq!(b.queue_len(&other).await.unwrap(), 1);
}

/// A TCP proxy in front of RabbitMQ that can swallow what the server sends
/// (so publisher confirms never arrive) and cut every connection.
struct Proxy {
    port: u16,
    swallow: Arc<AtomicBool>,
    pumps: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let swallow = Arc::new(AtomicBool::new(false));
        let pumps: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (swallow, pumps) = (swallow.clone(), pumps.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let server = TcpStream::connect(&upstream).await.unwrap();
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    let swallow = swallow.clone();
                    let down = tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if !swallow.load(Ordering::SeqCst) && cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                    pumps.lock().unwrap().extend([up, down]);
                }
            }
        });
        Proxy { port, swallow, pumps, accept }
    }

    /// Drop the bytes the server sends from now on.
    fn swallow_replies(&self) {
        self.swallow.store(true, Ordering::SeqCst);
    }

    /// Close every proxied connection; later connections pass everything.
    fn cut(&self) {
        for pump in self.pumps.lock().unwrap().drain(..) {
            pump.abort();
        }
        self.swallow.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// `url` with its host and port replaced by 127.0.0.1:`port`, and the
/// host:port it named.
fn through(url: &str, port: u16) -> (String, String) {
    let start = url.find('@').map_or_else(|| url.find("://").unwrap() + 3, |i| i + 1);
    let end = start + url[start..].find('/').unwrap_or(url.len() - start);
    let upstream = url[start..end].to_string();
    let upstream = if upstream.contains(':') { upstream } else { format!("{upstream}:5672") };
    (format!("{}127.0.0.1:{port}{}", &url[..start], &url[end..]), upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_whose_confirm_is_lost_with_the_connection_are_published_again() {
    const N: usize = 200;
    let (_, upstream) = through(&url(), 0);
    let proxy = Proxy::start(upstream).await;
    let (proxied, _) = through(&url(), proxy.port);
    let b = AmqpBroker::connect(&proxied, AmqpOptions::default()).await.unwrap();
    let direct = broker(AmqpOptions::default()).await;
    let q = unique("confirm.lost");
    b.declare_queue(&q).await.unwrap();
    b.publish(&q, &task("before")).await.unwrap();
    b.flush().await.unwrap();

    // RabbitMQ gets every message, but no confirm reaches the publisher.
    proxy.swallow_replies();
    for i in 0..N {
        b.publish(&q, &task(&format!("lost-{i}"))).await.unwrap();
    }
    wait_until(Duration::from_secs(30), "RabbitMQ has every message", || {
        let (direct, q) = (direct.clone(), q.clone());
        async move { direct.queue_len(&q).await.unwrap() == N as u64 + 1 }
    })
    .await;
    proxy.cut();

    // flush waits until every one is confirmed: written again on a new connection.
    tokio::time::timeout(Duration::from_secs(60), b.flush()).await.expect("flush returns").unwrap();
    let seen = drain_ids(&q).await;
    assert_eq!(seen.get("before"), Some(&1));
    for i in 0..N {
        // At least once: the first copy and the one written again.
        assert_eq!(seen.get(&format!("lost-{i}")), Some(&2), "lost-{i}");
    }
    assert_eq!(seen.len(), N + 1);
}
