//! Throughput of the Redis broker on a local server (no assertions).
//!
//! ```text
//! cargo run -p qredis --release --example redis_throughput [redis://127.0.0.1:6379/0] [messages]
//! ```
//!
//! Without a URL it uses the tests' server: `QTASK_TEST_REDIS_URL`, else
//! `redis://127.0.0.1:6379/0`.
//!
//! Measures `publish_many` (pipelined), concurrent single publishes, and
//! consume + ack (acks sequential, and concurrent as a worker runs them).
//! Uses a key prefix of its own and deletes its keys at the end.

use std::sync::Arc;
use std::time::Instant;

use deadpool_redis::redis;
use qcore::{Broker, ConsumeOptions, Message, TaskMessageBuilder};
use qredis::{RedisBroker, RedisOptions};

fn msg(i: usize) -> Message {
    TaskMessageBuilder {
        id: format!("{i:08}-0000-4000-8000-000000000000"),
        task: "bench.add".into(),
        args: vec![serde_json::json!(i), serde_json::json!(2)],
        origin: "bench@localhost".into(),
        ..Default::default()
    }
    .build()
    .unwrap_or_default()
}

fn rate(n: usize, t: std::time::Duration) -> String {
    format!("{:>9.0} msg/s  ({n} in {:.2} s)", n as f64 / t.as_secs_f64(), t.as_secs_f64())
}

async fn consume_ack(broker: &RedisBroker, queue: &str, n: usize, concurrent: bool) -> anyhow::Result<String> {
    let mut consumer = broker.consume(&[queue.to_string()], ConsumeOptions::new(256)).await?;
    let start = Instant::now();
    let mut acks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let d = consumer.recv().await?.ok_or_else(|| anyhow::anyhow!("consumer closed"))?;
        if concurrent {
            acks.spawn(async move { d.acker.ack().await });
        } else {
            d.acker.ack().await?;
        }
        while let Some(r) = acks.try_join_next() {
            r??;
        }
    }
    while let Some(r) = acks.join_next().await {
        r??;
    }
    Ok(rate(n, start.elapsed()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| {
        std::env::var("QTASK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_string())
    });
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(50_000);
    let prefix = format!("qredis-bench.{}:", uuid::Uuid::new_v4().simple());
    let broker = RedisBroker::connect(&url, RedisOptions::default().global_keyprefix(&prefix)).await?;
    let q = "bench".to_string();
    let items: Vec<(String, Message)> = (0..n).map(|i| (q.clone(), msg(i))).collect();

    let start = Instant::now();
    for chunk in items.chunks(1000) {
        broker.publish_many(chunk).await?;
    }
    println!("publish_many (1000/batch):        {}", rate(n, start.elapsed()));
    println!("consume + ack (sequential acks):  {}", consume_ack(&broker, &q, n, false).await?);

    let shared = Arc::new(broker.clone());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..32 {
        let (b, q) = (shared.clone(), q.clone());
        tasks.spawn(async move {
            let mut i = w;
            while i < n {
                b.publish(&q, &msg(i)).await?;
                i += 32;
            }
            Ok::<_, qcore::BrokerError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    println!("publish (32 concurrent callers):  {}", rate(n, start.elapsed()));
    println!("consume + ack (concurrent acks):  {}", consume_ack(&broker, &q, n, true).await?);

    // Clean up this run's keys.
    let client = redis::Client::open(url.as_str())?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut c).await?;
    if !keys.is_empty() {
        redis::cmd("DEL").arg(&keys).query_async::<i64>(&mut c).await?;
    }
    Ok(())
}
