//! Idle consumers wait by blocking peeks (`BLMOVE key key RIGHT RIGHT`):
//! they wake at once on any of their keys, take nothing while waiting, and
//! coexist with kombu's `BRPOP` consumers on the same list.

mod common;

use std::time::{Duration, Instant};

use common::{prefix, raw, redis, redis_url};
use qcore::{Broker, ConsumeOptions, Message, TaskMessageBuilder};
use qredis::{RedisBroker, RedisOptions};

fn task(id: &str, priority: u8) -> Message {
    let mut m = TaskMessageBuilder { id: id.into(), task: "tests.block".into(), ..Default::default() }.build().unwrap();
    m.properties.priority = priority;
    m
}

/// The fallback re-check runs only every `idle_block` (default 5 s); a
/// delivery well under that proves the wake-up came from the blocking peek.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_consumer_wakes_at_once_on_any_key() {
    let p = prefix("wake");
    let b = RedisBroker::connect(&redis_url(), RedisOptions::default().global_keyprefix(&p)).await.unwrap();
    let mut consumer = b.consume(&["a".into(), "b".into()], ConsumeOptions::new(4)).await.unwrap();
    for (queue, priority, id) in [("a", 0, "m1"), ("b", 0, "m2"), ("a", 9, "m3"), ("b", 5, "m4")] {
        let recv = tokio::spawn(async move {
            let d = consumer.recv().await.unwrap().unwrap();
            d.acker.ack().await.unwrap();
            (consumer, d.message.task_id().unwrap_or_default().to_string())
        });
        // Let the consumer find nothing and block (a negative window, not a sync point).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = Instant::now();
        b.publish(queue, &task(id, priority)).await.unwrap();
        let (c, got) = tokio::time::timeout(Duration::from_secs(3), recv).await.expect("woke within 3 s").unwrap();
        assert_eq!(got, id);
        assert!(sent.elapsed() < Duration::from_secs(2), "{id} took {:?}", sent.elapsed());
        consumer = c;
    }
}

/// A kombu consumer blocked in `BRPOP` on the same key still gets messages
/// while qtask's blocking peek waits there too; nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coexists_with_kombu_brpop_consumers() {
    let p = prefix("brpop");
    let b = RedisBroker::connect(&redis_url(), RedisOptions::default().global_keyprefix(&p)).await.unwrap();
    let mut consumer = b.consume(&["q".into()], ConsumeOptions::new(1)).await.unwrap();
    let ours = tokio::spawn(async move {
        let d = consumer.recv().await.unwrap().unwrap();
        d.acker.ack().await.unwrap();
        d.message.task_id().unwrap_or_default().to_string()
    });
    let key = format!("{p}q");
    let kombu = tokio::spawn(async move {
        let mut c = raw(&redis_url()).await;
        let (_, env): (String, Vec<u8>) =
            redis::cmd("BRPOP").arg(&key).arg(format!("{key}\x06\x163")).arg(10).query_async(&mut c).await.unwrap();
        qredis::envelope::decode(&env).unwrap().message.task_id().unwrap_or_default().to_string()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.publish("q", &task("x1", 0)).await.unwrap();
    b.publish("q", &task("x2", 0)).await.unwrap();
    let mut got = vec![
        tokio::time::timeout(Duration::from_secs(5), ours).await.unwrap().unwrap(),
        tokio::time::timeout(Duration::from_secs(5), kombu).await.unwrap().unwrap(),
    ];
    got.sort();
    assert_eq!(got, vec!["x1".to_string(), "x2".to_string()]);
    assert_eq!(b.queue_len("q").await.unwrap(), 0);
}
