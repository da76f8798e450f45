//! qtask quickstart: define tasks, run a worker in this process, enqueue a
//! task, a chain and a chord, and watch progress.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! With nothing configured it runs on the embedded default: the SQLite
//! database `qtask.db` in the working directory holds the queue and the
//! results, so it needs no server. Set `QTASK_BROKER_URL` /
//! `QTASK_RESULT_BACKEND` to use another broker (`redis://…`,
//! `postgres://…`, `amqp://…`, `memory://`).
//!
//! It uses its own queue, `quickstart`, and empties it first, so it can be
//! run again on the same `qtask.db`, also after a run that was killed
//! half-way (whose messages would otherwise wait there).

use std::time::Duration;

use qtask::{chain, chord, task, Config, State, TaskContext, TaskError, Worker};

/// Add two numbers.
#[task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

/// Multiply two numbers (a plain fn: it runs on the blocking pool).
#[task(name = "tasks.mul")]
fn mul(x: i64, y: i64) -> i64 {
    x * y
}

/// Sum a list.
#[task(name = "tasks.xsum")]
async fn xsum(numbers: Vec<i64>) -> i64 {
    numbers.iter().sum()
}

/// Work in steps, reporting PROGRESS after each.
#[task(name = "tasks.progress")]
async fn progress(ctx: TaskContext, steps: u64) -> Result<u64, TaskError> {
    for i in 1..=steps {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ctx.progress(i, steps).await.map_err(|e| TaskError::fail("BackendError", e.to_string()))?;
    }
    Ok(steps)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("QTASK_LOG").unwrap_or_else(|_| "warn".into())).init();

    let mut cfg = Config::from_env()?;
    cfg.task_default_queue = "quickstart".into();
    let app = qtask::app_from_config(cfg).await?;
    app.register(add).register(mul).register(xsum).register(progress);
    println!("broker: {}", app.broker().describe());
    let stale = app.broker().purge("quickstart").await?;
    if stale > 0 {
        println!("(removed {stale} messages left by an earlier run)");
    }

    // A worker in this process (in production it runs in its own).
    let worker = Worker::builder(app.clone()).concurrency(4).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());
    let timeout = Duration::from_secs(30);

    let r = app.delay(add::s(2, 3)).await?;
    println!("add(2, 3) = {}", r.get(timeout).await?);

    let r = app.delay(mul::s(6, 7)).await?;
    println!("mul(6, 7) = {}", r.get(timeout).await?);

    // chain: add(1, 2) -> add(_, 3) -> mul(_, 10)  == ((1 + 2) + 3) * 10
    let c = chain([add::s(1, 2).into(), add::sig().arg(3), mul::sig().arg(10)]);
    let r = app.delay(c).await?;
    println!("chain add(1,2) | add(3) | mul(10) = {}", r.get(timeout).await?);

    // chord: xsum([add(i, i) for i in 0..10])
    let header: Vec<qtask::Signature> = (0..10).map(|i| add::s(i, i).into()).collect();
    let r = app.delay(chord(header, xsum::sig())).await?;
    println!("chord xsum(add(i, i) for i in 0..10) = {}", r.get(timeout).await?);

    // Progress: poll the state while it runs.
    let r = app.delay(progress::s(5)).await?;
    loop {
        let meta = r.meta().await?;
        match meta.status {
            State::Success => {
                println!("progress: done, result {}", meta.result);
                break;
            }
            State::Custom(ref s) if s == "PROGRESS" => println!("progress: {}", meta.result),
            ref other if other.is_ready() => anyhow::bail!("progress task ended in {other}"),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }

    stop.shutdown();
    running.await??;
    Ok(())
}
