//! RabbitMQ faults with real worker processes on the shared RabbitMQ (each
//! test owns its queue names): a worker killed with SIGKILL in the middle of
//! acks_late tasks, and a worker whose connections the broker closes
//! (`rabbitmqctl close_connection`) under load.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use integration_tests::{
    amqp_url, interop_worker_bin, rabbitmqctl, redis_monitor, redis_url, spawn_interop_worker, unique, wait_for,
    RedisServer, WorkerOpts,
};
use qtask::{task, App, Config, SendOptions, State};

#[task(name = "tasks.sleep")]
async fn sleep(seconds: f64) -> f64 {
    seconds
}

#[task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

async fn app_on(queue: &str, backend: &str) -> Result<App> {
    let mut cfg = Config::default();
    cfg.broker_url = Some(amqp_url());
    cfg.result_backend = Some(backend.to_string());
    cfg.task_default_queue = queue.to_string();
    Ok(qtask::app_from_config(cfg).await?)
}

/// How many times each task id's SUCCESS was written (Redis backend store
/// script calls seen by MONITOR; a run that finds SUCCESS already stored
/// still calls it).
fn success_writes(lines: &[String]) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for l in lines {
        if !l.contains("\"EVALSHA\"") || !l.contains("\\\"status\\\": \\\"SUCCESS\\\"") {
            continue;
        }
        if let Some(i) = l.find("celery-task-meta-") {
            let id: String = l[i + "celery-task-meta-".len()..].chars().take_while(|c| *c != '"').collect();
            *n.entry(id).or_default() += 1;
        }
    }
    n
}

/// kill -9 of a worker in the middle of acks_late tasks: RabbitMQ hands the
/// unacknowledged messages back as soon as the connection drops, a new
/// worker runs them, and every task's SUCCESS is written exactly once
/// (results in a private Redis whose every command is monitored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_killed_acks_late_worker_tasks_complete_exactly_once() -> Result<()> {
    let redis = RedisServer::start(false)?;
    let backend = redis.url();
    let monitor = redis_monitor(&backend)?;
    let queue = unique("amqp_kill");
    let app = app_on(&queue, &backend).await?;
    let opts = WorkerOpts {
        backend: Some(backend.clone()),
        concurrency: Some(4),
        prefetch_multiplier: Some(1),
        acks_late: true,
        env: vec![("QTASK_TASK_TRACK_STARTED".to_string(), "true".to_string())],
    };
    let mut first = spawn_interop_worker(interop_worker_bin!(), &amqp_url(), &[&queue], &opts)?;

    let mut results = Vec::new();
    for _ in 0..8 {
        results.push(app.delay(sleep::s(2.0)).await?);
    }
    // The first worker holds 4 (prefetch = concurrency = 4) and runs them.
    wait_for("4 tasks STARTED on the first worker", Duration::from_secs(20), || {
        let results = results.clone();
        async move {
            let mut started = 0;
            for r in &results {
                if r.state().await? == State::Started {
                    started += 1;
                }
            }
            Ok(started == 4)
        }
    })
    .await?;
    first.signal("KILL")?;
    first.wait_exit(Duration::from_secs(10))?;

    let _second = spawn_interop_worker(
        interop_worker_bin!(),
        &amqp_url(),
        &[&queue],
        &WorkerOpts { concurrency: Some(8), ..opts },
    )?;
    for r in &results {
        assert_eq!(r.get(Duration::from_secs(60)).await?, 2.0);
    }
    let writes = success_writes(&monitor.lock().unwrap_or_else(|p| p.into_inner()));
    for r in &results {
        assert_eq!(writes.get(r.id()).copied(), Some(1), "SUCCESS writes of {}: {writes:?}", r.id());
    }
    Ok(())
}

/// The connections (by pid, which `close_connection` takes on RabbitMQ
/// 3.10) whose client properties contain `needle` (qamqp's
/// `connection_name` is `qtask <worker_hostname>/publish|consume`).
fn connections_of(needle: &str) -> Result<Vec<String>> {
    let out = rabbitmqctl(&["list_connections", "pid", "client_properties"])?;
    Ok(out.lines().filter(|l| l.contains(needle)).filter_map(|l| l.split('\t').next()).map(str::to_owned).collect())
}

/// The broker force-closes the worker's connections twice while tasks are
/// being published and run: the worker reconnects by itself and every task
/// reaches SUCCESS (nothing lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_worker_resumes_after_connection_close_under_load() -> Result<()> {
    let queue = unique("amqp_close");
    let node = unique("closeme");
    let app = app_on(&queue, &redis_url()).await?;
    let opts = WorkerOpts {
        backend: Some(redis_url()),
        concurrency: Some(4),
        env: vec![("QTASK_WORKER_HOSTNAME".to_string(), node.clone())],
        ..Default::default()
    };
    let worker = spawn_interop_worker(interop_worker_bin!(), &amqp_url(), &[&queue], &opts)?;
    let names = connections_of(&node)?;
    assert!(!names.is_empty(), "no connection named after {node}");

    let n = 300;
    let producer = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..n {
                results.push(app.apply_async(add::s(i, 1), SendOptions::new()).await?);
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            anyhow::Ok(results)
        })
    };
    for round in 0..2 {
        // Close whatever connections the worker has now (the consuming one
        // at least), then wait until it has reconnected.
        let names = connections_of(&node)?;
        assert!(!names.is_empty(), "round {round}: worker has no connection");
        for name in &names {
            rabbitmqctl(&["close_connection", name, "test"])?;
        }
        wait_for("the worker to reconnect", Duration::from_secs(30), || {
            let node = node.clone();
            let old = names.clone();
            async move { Ok(connections_of(&node)?.iter().any(|c| !old.contains(c))) }
        })
        .await?;
    }
    let results = producer.await??;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.get(Duration::from_secs(60)).await?, i as i64 + 1, "task {i}");
    }
    drop(worker);
    Ok(())
}
