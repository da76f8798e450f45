//! Publish (with confirms) and consume+ack throughput against a RabbitMQ.
//!
//! ```text
//! cargo run --release -p qamqp --example throughput [amqp-url] [messages] [transient]
//! ```
//!
//! Without a URL it uses the tests' server: `QTASK_TEST_AMQP_URL`, else
//! `amqp://guest:guest@127.0.0.1:5672/%2f`.
//!
//! Uses a fresh queue and deletes it at the end.

use std::sync::Arc;
use std::time::Instant;

use lapin::options::QueueDeleteOptions;
use qamqp::{AmqpBroker, AmqpOptions};
use qcore::{Broker, ConsumeOptions, Message, TaskMessageBuilder};

fn task(i: usize) -> anyhow::Result<Message> {
    Ok(TaskMessageBuilder {
        id: uuid::Uuid::new_v4().to_string(),
        task: "bench.add".into(),
        args: vec![i.into(), 2.into()],
        origin: "gen1@bench".into(),
        reply_to: Some(uuid::Uuid::new_v4().to_string()),
        ..TaskMessageBuilder::default()
    }
    .build()?)
}

fn rate(n: usize, since: Instant) -> String {
    let s = since.elapsed().as_secs_f64();
    format!("{n} msgs in {s:.2}s = {:.0} msg/s", n as f64 / s)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| {
        std::env::var("QTASK_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
    });
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20_000);
    // `transient`: delivery_mode 1 (no fsync before the confirm), to see
    // what persistence costs.
    let transient = args.next().as_deref() == Some("transient");
    let broker = Arc::new(AmqpBroker::connect(&url, AmqpOptions::default()).await?);
    let q = format!("qamqp.bench.{}", uuid::Uuid::new_v4().simple());
    broker.declare_queue(&q).await?;
    let mut msgs: Vec<Message> = (0..n).map(task).collect::<anyhow::Result<_>>()?;
    if transient {
        msgs.iter_mut().for_each(|m| m.properties.delivery_mode = 1);
    }

    let seq = n.min(5_000);
    let t = Instant::now();
    for m in &msgs[..seq] {
        broker.publish(&q, m).await?;
    }
    println!("publish, one at a time, confirm each:   {}", rate(seq, t));

    let t = Instant::now();
    let per = n / 32;
    let mut tasks = Vec::new();
    for c in 0..32 {
        let (b, q) = (broker.clone(), q.clone());
        let chunk: Vec<Message> = msgs[c * per..(c + 1) * per].to_vec();
        tasks.push(tokio::spawn(async move {
            for m in &chunk {
                b.publish(&q, m).await?;
            }
            Ok::<_, qcore::BrokerError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!("publish, 32 concurrent publishers:      {}", rate(per * 32, t));

    let t = Instant::now();
    let items: Vec<(String, Message)> = msgs.iter().map(|m| (q.clone(), m.clone())).collect();
    for chunk in items.chunks(500) {
        broker.publish_many(chunk).await?;
    }
    println!("publish_many, batches of 500:           {}", rate(n, t));

    let total = seq + per * 32 + n;
    let mut consumer = broker.consume(std::slice::from_ref(&q), ConsumeOptions::new(200)).await?;
    let t = Instant::now();
    for _ in 0..total {
        let Some(d) = consumer.recv().await? else { anyhow::bail!("consumer closed") };
        d.acker.ack().await?;
    }
    println!("consume + ack, prefetch 200:            {}", rate(total, t));

    let conn = lapin::Connection::connect(&url, Default::default()).await?;
    conn.create_channel().await?.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await?;
    conn.create_channel().await?.exchange_delete(q.as_str().into(), Default::default()).await?;
    Ok(())
}
