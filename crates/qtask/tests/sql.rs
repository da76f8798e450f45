//! The SQLite adapters through the facade (URLs, Celery's `db+sqlite`
//! spelling) and `AfterCommit` (send after commit, drop on rollback).

use std::path::PathBuf;
use std::time::Duration;

use qtask::{task, AfterCommit, Config, Worker};

#[task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("qtask-sql-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_broker_and_celery_spelled_backend() {
    let dir = temp_dir();
    let mut cfg = Config::default();
    cfg.broker_url = Some(format!("sqlite://{}/broker.db", dir.display()));
    // SQLAlchemy's spelling: four slashes for an absolute path.
    cfg.result_backend = Some(format!("db+sqlite:///{}/results.db", dir.display()));
    let app = qtask::app_from_config(cfg).await.unwrap();
    assert!(dir.join("broker.db").exists() && dir.join("results.db").exists());
    app.register(add);
    let worker = Worker::builder(app.clone()).concurrency(2).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());
    let r = app.delay(add::s(20, 22)).await.unwrap();
    assert_eq!(r.get(Duration::from_secs(20)).await.unwrap(), 42);
    stop.shutdown();
    running.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unsupported_database_urls_are_clear_errors() {
    let e = qtask::connect_backend("db+mysql://u:pw@h/db").await.err().unwrap().to_string();
    assert!(e.contains("unsupported result backend URL") && !e.contains("pw"), "{e}");
    let e = qtask::connect("sqlite://").await.err().unwrap().to_string();
    assert!(e.contains("no file path"), "{e}");
    let e = qtask::connect("sqlite::memory:").await.err().unwrap().to_string();
    assert!(e.contains("needs a file"), "{e}");
}

/// Rollback: nothing is sent. Commit: each queued task exactly once.
async fn after_commit_on(app: &qtask::App, queue: &str) {
    app.broker().purge(queue).await.unwrap();
    let mut rolled = AfterCommit::new(app);
    rolled.delay(add::s(1, 1)).await.unwrap();
    assert_eq!(rolled.len(), 1);
    rolled.rolled_back();
    let mut dropped = AfterCommit::new(app);
    dropped.delay(add::s(1, 2)).await.unwrap();
    drop(dropped);
    assert_eq!(app.broker().queue_len(queue).await.unwrap(), 0);

    let mut on_commit = AfterCommit::new(app);
    let handle = on_commit.delay(add::s(2, 3)).await.unwrap();
    assert_eq!(app.broker().queue_len(queue).await.unwrap(), 0, "sent before the commit");
    on_commit.committed().await.unwrap();
    assert_eq!(app.broker().queue_len(queue).await.unwrap(), 1);

    app.register(add);
    let worker = Worker::builder(app.clone()).concurrency(1).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());
    assert_eq!(handle.get(Duration::from_secs(20)).await.unwrap(), 5);
    stop.shutdown();
    running.await.unwrap().unwrap();
    assert_eq!(app.broker().queue_len(queue).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_commit_on_memory() {
    let app = qtask::app("memory://").await.unwrap();
    after_commit_on(&app, "celery").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_commit_on_sqlite() {
    let dir = temp_dir();
    let app = qtask::app(&format!("sqlite://{}/q.db", dir.display())).await.unwrap();
    after_commit_on(&app, "celery").await;
    let _ = std::fs::remove_dir_all(&dir);
}
