//! With no configuration at all, an app runs on the embedded SQLite
//! database `qtask.db` in the working directory (broker and results).
//!
//! This file holds a single test because it changes the process's working
//! directory.

use std::time::Duration;

use qtask::{task, Config, Worker};

#[task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_configuration_means_sqlite_qtask_db() {
    let dir = std::env::temp_dir().join(format!("qtask-default-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    std::env::set_current_dir(&dir).unwrap();
    assert_eq!(qtask::DEFAULT_URL, "sqlite://qtask.db");

    let app = qtask::app_from_config(Config::default()).await.unwrap();
    assert!(app.broker().describe().contains("qtask.db"), "{}", app.broker().describe());
    let backend = app.backend().expect("the default stores results").describe();
    assert!(backend.contains("qtask.db"), "{backend}");
    assert!(dir.join("qtask.db").exists());

    app.register(add);
    let worker = Worker::builder(app.clone()).concurrency(2).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());
    let r = app.delay(add::s(2, 3)).await.unwrap();
    assert_eq!(r.get(Duration::from_secs(20)).await.unwrap(), 5);

    // A second app on the same defaults (another process would do the same)
    // reads the stored result.
    let other = qtask::app_from_config(Config::default()).await.unwrap();
    assert_eq!(other.result::<i64>(r.id()).get(Duration::from_secs(5)).await.unwrap(), 5);

    // Only a broker configured: results are not stored (as in Celery).
    let mut cfg = Config::default();
    cfg.broker_url = Some("sqlite://qtask.db".into());
    assert!(qtask::app_from_config(cfg).await.unwrap().backend().is_none());

    stop.shutdown();
    running.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
