//! Faults on the PostgreSQL broker: a worker killed with SIGKILL in the
//! middle of a task (acks_late) loses nothing: the message comes back when
//! its lease (visibility timeout) runs out and another worker runs it to
//! success, once.

mod sql_common;

use std::time::Duration;

use anyhow::Result;
use integration_tests::{interop_worker_bin, spawn_interop_worker, unique, wait_for, WorkerOpts};
use qtask::sqlx;
use qtask::{Config, SendOptions, State};
use serde_json::json;
use sql_common::PgSchema;

fn worker_opts(url: &str, hostname: &str) -> WorkerOpts {
    WorkerOpts {
        backend: Some(url.to_string()),
        concurrency: Some(1),
        acks_late: true,
        threads: None,
        env: vec![
            ("QTASK_VISIBILITY_TIMEOUT".into(), "2".into()),
            ("QTASK_TASK_TRACK_STARTED".into(), "true".into()),
            ("QTASK_WORKER_HOSTNAME".into(), hostname.into()),
        ],
        ..WorkerOpts::default()
    }
}

/// `(delivered_count, consumer)` of the task's row in `qtask_messages`, if it is there.
async fn row(pool: &sqlx::PgPool, schema: &PgSchema, task_id: &str) -> Result<Option<(i64, Option<String>)>> {
    let sql = format!(
        "SELECT delivered_count::int8, consumer FROM {}.qtask_messages WHERE headers::jsonb->>'id' = $1",
        schema.name
    );
    Ok(sqlx::query_as(&sql).bind(task_id).fetch_optional(pool).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_task_runs_again_after_the_lease_expires() -> Result<()> {
    let schema = PgSchema::new("fault_kill");
    let url = schema.url();
    let queue = unique("q");
    let mut cfg = Config::default();
    cfg.broker_url = Some(url.clone());
    cfg.result_backend = Some(url.clone());
    let app = qtask::app_from_config(cfg).await?;
    let pool = schema.pool().await?;

    let mut w1 = spawn_interop_worker(interop_worker_bin!(), &url, &[&queue], &worker_opts(&url, "w1@sqlfault"))?;
    let r = app
        .send_task("tasks.sleep", vec![json!(3.0)], Default::default(), SendOptions::new().queue(queue.clone()))
        .await?;
    let id = r.id().to_string();
    wait_for("STARTED on w1", Duration::from_secs(30), || async { Ok(r.state().await? == State::Started) }).await?;
    let (delivered, _) = row(&pool, &schema, &id).await?.expect("an unacked task keeps its row");
    assert_eq!(delivered, 1);

    w1.signal("KILL")?;
    w1.wait_exit(Duration::from_secs(10))?;
    assert_eq!(r.state().await?, State::Started, "w1 finished the task before it was killed");

    let w2 = spawn_interop_worker(interop_worker_bin!(), &url, &[&queue], &worker_opts(&url, "w2@sqlfault"))?;
    // The lease of w1 runs out (2 s) and w2 claims the message: a second delivery.
    wait_for("the redelivery to w2", Duration::from_secs(30), || async {
        Ok(row(&pool, &schema, &id).await?.is_some_and(|(n, _)| n == 2))
    })
    .await?;
    assert_eq!(r.get(Duration::from_secs(30)).await?, json!(3.0));
    let meta = r.meta().await?;
    assert_eq!(meta.worker.as_deref(), Some("w2@sqlfault"), "{meta:?}");

    // Acked: the row is gone, so it cannot run a third time; nothing dead-lettered.
    assert_eq!(row(&pool, &schema, &id).await?, None);
    assert_eq!(app.broker().queue_len(&queue).await?, 0);
    assert!(app.broker().dead_letters().expect("a dead-letter place").list(&queue, 10).await?.is_empty());
    let left: i64 =
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}.qtask_messages", schema.name)).fetch_one(&pool).await?;
    assert_eq!(left, 0);
    drop(w2);
    Ok(())
}
