//! Redis faults with real worker processes, each test on its own
//! `redis-server` (free port, killed at the end).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result};
use integration_tests::faults::{retrying_producer, stored_results, wait_started};
use integration_tests::tasks::sleep;
use integration_tests::{
    interop_worker_bin, monitor_caught_up, redis_monitor, spawn_interop_worker, wait_for, RedisServer, WorkerOpts,
};
use qtask::{App, Config};

async fn app_on(url: &str) -> Result<App> {
    let mut cfg = Config::default();
    cfg.broker_url = Some(url.to_string());
    cfg.result_backend = Some(url.to_string());
    Ok(qtask::app_from_config(cfg).await?)
}

/// How many runs wrote each task id's SUCCESS: store script calls seen by
/// MONITOR (a run that finds SUCCESS already stored still calls it),
/// counted by distinct document (its `date_done` differs per run), since a
/// call answered NOSCRIPT is sent again with the same arguments.
fn success_writes(lines: &[String]) -> HashMap<String, usize> {
    let mut docs: HashMap<String, HashSet<String>> = HashMap::new();
    for l in lines {
        let Some(cmd) = l.find("\"EVALSHA\"") else { continue };
        if !l.contains("\\\"status\\\": \\\"SUCCESS\\\"") {
            continue;
        }
        if let Some(i) = l.find("celery-task-meta-") {
            let id: String = l[i + "celery-task-meta-".len()..].chars().take_while(|c| *c != '"').collect();
            docs.entry(id).or_default().insert(l[cmd..].to_string());
        }
    }
    docs.into_iter().map(|(id, d)| (id, d.len())).collect()
}

/// kill -9 of a worker in the middle of acks_late tasks: a new worker gets
/// them back after the visibility timeout (2 s here, from
/// `QTASK_VISIBILITY_TIMEOUT`) and every task succeeds exactly once — also
/// the new worker's own 3 s tasks, which outlive the visibility timeout and
/// must not be handed out again while it runs them (lease refresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_acks_late_worker_tasks_complete_exactly_once() -> Result<()> {
    let server = RedisServer::start(false)?;
    let url = server.url();
    let monitor = redis_monitor(&url)?;
    let app = app_on(&url).await?;
    let env = vec![
        ("QTASK_VISIBILITY_TIMEOUT".to_string(), "2".to_string()),
        ("QTASK_TASK_TRACK_STARTED".to_string(), "true".to_string()),
    ];
    let opts = WorkerOpts {
        backend: Some(url.clone()),
        concurrency: Some(4),
        prefetch_multiplier: Some(1),
        acks_late: true,
        threads: None,
        env: env.clone(),
    };
    let mut first = spawn_interop_worker(interop_worker_bin!(), &url, &["celery"], &opts)?;

    let mut results = Vec::new();
    for _ in 0..8 {
        results.push(app.delay(sleep::s(3.0)).await?);
    }
    // The first worker holds 4 (prefetch = concurrency = 4) and runs them.
    wait_started("4 tasks STARTED on the first worker", &results, 4, Duration::from_secs(20)).await?;
    first.signal("KILL")?;
    first.wait_exit(Duration::from_secs(10))?;

    let _second =
        spawn_interop_worker(interop_worker_bin!(), &url, &["celery"], &WorkerOpts { concurrency: Some(8), ..opts })?;
    for r in &results {
        assert_eq!(r.get(Duration::from_secs(60)).await?, 3.0);
    }
    monitor_caught_up(&url, &monitor).await?;
    let writes = success_writes(&monitor.lock().unwrap_or_else(|p| p.into_inner()));
    for r in &results {
        assert_eq!(writes.get(r.id()).copied(), Some(1), "SUCCESS writes of {}: {writes:?}", r.id());
    }
    Ok(())
}

/// Redis killed and restarted (AOF, fsync always) while a producer
/// publishes and a worker consumes: the worker reconnects by itself and
/// every task whose publish succeeded reaches SUCCESS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_resumes_after_redis_restart_under_load() -> Result<()> {
    let mut server = RedisServer::start(true)?;
    let url = server.url();
    let opts = WorkerOpts {
        backend: Some(url.clone()),
        concurrency: Some(4),
        acks_late: true,
        threads: None,
        env: vec![("QTASK_VISIBILITY_TIMEOUT".to_string(), "2".to_string())],
        ..Default::default()
    };
    let mut worker = spawn_interop_worker(interop_worker_bin!(), &url, &["celery"], &opts)?;
    let app = app_on(&url).await?;

    // Publish 300 tasks, one every 5 ms; publishes that fail while Redis is
    // down are retried (as an application would) until they succeed.
    let producer = retrying_producer(app, 300, Duration::from_millis(5), Duration::from_millis(20));

    // Restart once the worker has finished some tasks.
    wait_for("the first results", Duration::from_secs(20), || {
        let n = stored_results(&url);
        async move { Ok(n? >= 20) }
    })
    .await?;
    server.kill();
    // Redis stays down for a while: the fault itself, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart()?;

    let (sent, failed_publishes) = producer.await?;
    assert_eq!(sent.len(), 300);
    assert!(failed_publishes > 0, "the producer never saw Redis down");
    for (i, r) in &sent {
        let v = r.get(Duration::from_secs(60)).await.with_context(|| format!("task {i} ({})", r.id()))?;
        assert_eq!(v, 2 * i);
    }
    assert!(worker.is_running(), "the worker exited:\n{}", worker.log());
    Ok(())
}
