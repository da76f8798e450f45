//! Quick throughput figures for the PostgreSQL and SQLite brokers:
//! publish (one by one and batched) and consume + ack.
//!
//! ```text
//! cargo run --release -p qsql --example sql_throughput [N]
//! ```
//! Needs the tests' PostgreSQL (`QTASK_TEST_PG_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test`); uses its own schema and a
//! temporary SQLite file, removed at the end.

use std::sync::Arc;
use std::time::Instant;

use qcore::{Broker, ConsumeOptions, Message};
use qsql::{PgBroker, SqlOptions, SqliteBroker};

fn message(i: usize) -> Message {
    let mut m = Message::default();
    let id = format!("{:08}-0000-4000-8000-{:012}", i, i);
    m.headers.insert("lang".into(), "py".into());
    m.headers.insert("task".into(), "tasks.add".into());
    m.headers.insert("id".into(), id.clone().into());
    m.headers.insert("root_id".into(), id.clone().into());
    m.headers.insert("argsrepr".into(), "(2, 3)".into());
    m.properties.correlation_id = Some(id);
    m.body = br#"[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#.to_vec();
    m
}

async fn run(name: &str, broker: Arc<dyn Broker>, n: usize) -> anyhow::Result<()> {
    let t = Instant::now();
    for i in 0..n {
        broker.publish("bench", &message(i)).await?;
    }
    let single = n as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut consumer = broker.consume(&["bench".to_string()], ConsumeOptions::new(64)).await?;
    for _ in 0..n {
        let d = consumer.recv().await?.ok_or_else(|| anyhow::anyhow!("consumer closed"))?;
        d.acker.ack().await?;
    }
    let consume = n as f64 / t.elapsed().as_secs_f64();

    let batch: Vec<(String, Message)> = (0..n).map(|i| ("bench2".to_string(), message(i))).collect();
    let t = Instant::now();
    for chunk in batch.chunks(100) {
        broker.publish_many(chunk).await?;
    }
    let batched = n as f64 / t.elapsed().as_secs_f64();

    // Four consumers acking concurrently.
    let t = Instant::now();
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..4 {
        let mut c = broker.consume(&["bench2".to_string()], ConsumeOptions::new(16)).await?;
        let acked = acked.clone();
        handles.push(tokio::spawn(async move {
            while acked.load(std::sync::atomic::Ordering::Relaxed) < n {
                let Ok(r) = tokio::time::timeout(std::time::Duration::from_millis(200), c.recv()).await else {
                    continue;
                };
                let d = r?.ok_or_else(|| anyhow::anyhow!("closed"))?;
                d.acker.ack().await?;
                acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let total = acked.load(std::sync::atomic::Ordering::Relaxed);
    let parallel = total as f64 / t.elapsed().as_secs_f64();
    println!(
        "{name:8} publish {single:8.0}/s   publish_many(100) {batched:8.0}/s   consume+ack {consume:8.0}/s   4 consumers {parallel:8.0}/s ({total} msgs)"
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let schema = format!("qtask_bench_{}", uuid::Uuid::new_v4().simple());
    let base =
        std::env::var("QTASK_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let url = format!("{base}{}schema={schema}", if base.contains('?') { '&' } else { '?' });
    let pg = PgBroker::connect(&url, SqlOptions::new()).await?;
    let pool = pg.pool().clone();
    run("postgres", Arc::new(pg), n).await?;
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE")).execute(&pool).await?;

    let path = std::env::temp_dir().join(format!("qsql-bench-{}.db", uuid::Uuid::new_v4().simple()));
    let lite = SqliteBroker::connect(&format!("sqlite://{}", path.display()), SqlOptions::new()).await?;
    run("sqlite", Arc::new(lite), n).await?;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(())
}
