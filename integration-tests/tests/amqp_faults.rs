//! RabbitMQ faults with real worker processes on the shared RabbitMQ (each
//! test owns its queue names): a worker killed with SIGKILL in the middle of
//! acks_late tasks, and a worker whose connections the broker closes
//! (`rabbitmqctl close_connection`) under load.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use integration_tests::faults::{retrying_producer, stored_results, wait_started};
use integration_tests::tasks::{add, sleep};
use integration_tests::{
    amqp_url, interop_worker_bin, monitor_caught_up, rabbitmqctl, redis_monitor, redis_url, spawn_interop_worker,
    unique, wait_for, RedisServer, WorkerOpts,
};
use qtask::{App, Config, SendOptions};

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
        threads: None,
        env: vec![("QTASK_TASK_TRACK_STARTED".to_string(), "true".to_string())],
    };
    let mut first = spawn_interop_worker(interop_worker_bin!(), &amqp_url(), &[&queue], &opts)?;

    let mut results = Vec::new();
    for _ in 0..8 {
        results.push(app.delay(sleep::s(2.0)).await?);
    }
    // The first worker holds 4 (prefetch = concurrency = 4) and runs them.
    wait_started("4 tasks STARTED on the first worker", &results, 4, Duration::from_secs(20)).await?;
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
    monitor_caught_up(&backend, &monitor).await?;
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

#[path = "../../crates/qamqp/tests/common/rabbit_node.rs"]
mod rabbit_node;

/// RabbitMQ itself killed (SIGKILL of a private node: no clean shutdown)
/// and started again on the same ports and data directory while a producer
/// publishes durable tasks and an acks_late worker consumes them. The
/// worker is not restarted: it reconnects by itself, and every task whose
/// publish was confirmed reaches SUCCESS (confirmed persistent messages of
/// durable queues survive the kill).
///
/// Delivery is at least once: a task delivered and not yet acked when the
/// node died comes back (it was run, or even stored, but the ack went down
/// with the connection) and runs again; so may the one task whose publish
/// was in flight (its confirm lost, the publish retried). Hence at most
/// prefetch (4) + 1 tasks see a second SUCCESS write, and none a third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_worker_resumes_after_rabbitmq_restart_under_load() -> Result<()> {
    let mut node = rabbit_node::RabbitNode::start()?;
    let redis = RedisServer::start(false)?;
    let backend = redis.url();
    let monitor = redis_monitor(&backend)?;
    let queue = unique("amqp_restart");
    let mut cfg = Config::default();
    cfg.broker_url = Some(node.url());
    cfg.result_backend = Some(backend.clone());
    cfg.task_default_queue = queue.clone();
    let app = qtask::app_from_config(cfg).await?;
    let opts = WorkerOpts {
        backend: Some(backend.clone()),
        concurrency: Some(4),
        prefetch_multiplier: Some(1),
        acks_late: true,
        ..Default::default()
    };
    let mut worker = spawn_interop_worker(interop_worker_bin!(), &node.url(), &[&queue], &opts)?;

    // 300 tasks, one every 10 ms; a publish that fails while RabbitMQ is
    // down is retried (as an application would) until one is confirmed.
    let producer = retrying_producer(app, 300, Duration::from_millis(10), Duration::from_millis(50));

    // Kill once the worker has stored some results, with the producer
    // still going.
    wait_for("the first results", Duration::from_secs(30), || {
        let n = stored_results(&backend);
        async move { Ok(n? >= 20) }
    })
    .await?;
    node.kill();
    // RabbitMQ stays down for a while: the fault itself, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.restart()?;

    let (sent, failed_publishes) = producer.await?;
    assert_eq!(sent.len(), 300);
    assert!(failed_publishes > 0, "the producer never saw RabbitMQ down");
    for (i, r) in &sent {
        let v = r.get(Duration::from_secs(90)).await.map_err(|e| anyhow::anyhow!("task {i} ({}): {e}", r.id()))?;
        assert_eq!(v, 2 * i);
    }
    assert!(worker.is_running(), "the worker exited:\n{}", worker.log());
    monitor_caught_up(&backend, &monitor).await?;
    let writes = success_writes(&monitor.lock().unwrap_or_else(|p| p.into_inner()));
    let mut twice = Vec::new();
    for (i, r) in &sent {
        match writes.get(r.id()).copied() {
            Some(1) => {}
            Some(2) => twice.push(*i),
            n => panic!("task {i} ({}): {n:?} SUCCESS writes", r.id()),
        }
    }
    assert!(twice.len() <= 5, "more tasks ran twice than were in flight at the kill: {twice:?}");
    drop(worker);
    Ok(())
}
