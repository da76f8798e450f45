//! `qtask-bench`: the qtask side of `cargo xtask bench redis` (built with
//! `--release`; xtask starts the workers and prints the table).
//!
//! ```text
//! qtask-bench enqueue    --broker URL --queue Q --n N         one producer, sequential apply_async of tasks.noop
//! qtask-bench prefill    --broker URL --queue Q --n N         N tasks.noop, pipelined
//! qtask-bench drain-wait --broker URL --from S --queue Q --n N [--results]
//!                        RENAME S → Q (the worker already waits on Q), then time until Q
//!                        and `unacked` are empty (and N results are stored with --results)
//! qtask-bench enqueue-concurrent --broker URL --queue Q --n N  N delay futures in flight from one task
//! qtask-bench send-many  --broker URL --queue Q --n N         App::send_many of N tasks.noop (one batch)
//! qtask-bench group      --broker URL --queue Q --n N         one group of N tasks.noop
//! qtask-bench raw-ceiling --broker URL --queue Q --n N        the broker's sequential ceiling: one LPUSH
//!                        per round trip (Redis), one publish awaiting its confirm (RabbitMQ)
//! qtask-bench roundtrip  --broker URL --queue Q --calls M     sequential delay().get() latencies
//! qtask-bench ack-only   --broker URL --queue Q --n N --prefetch P
//!                        the broker's ceiling: consume N messages and ack each at once, no
//!                        worker and no task (timed from the first delivery)
//! ```
//!
//! `--confirm each|pipelined` sets `broker_transport_options.confirm_publish`
//! (RabbitMQ). Each prints one JSON object on stdout. `--backend URL` stores results
//! elsewhere than the broker (default: the broker URL). On RabbitMQ
//! (`--broker amqp://…`, for `cargo xtask bench amqp`) `prefill` fills the
//! worker's queue before the worker starts and `drain-wait` (no `--from`)
//! times from the first message taken until the queue is empty (and N
//! results are stored in the Redis `--backend` with `--results`; that Redis
//! must be private to the run, as its key count is taken for the results).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use integration_tests::redis_cmd;
use qtask::{task, App, Config, Message, SendOptions};
use serde_json::{json, Value};

/// Do nothing (the producer-side declaration of the benchmark task).
#[task(name = "tasks.noop")]
async fn noop() -> Value {
    Value::Null
}

#[derive(Debug, Default)]
struct Args {
    command: String,
    broker: String,
    queue: String,
    from: String,
    backend: Option<String>,
    n: usize,
    calls: usize,
    results: bool,
    prefetch: usize,
    /// `broker_transport_options.confirm_publish` (`each` or `pipelined`).
    confirm: Option<String>,
}

fn parse() -> Result<Args> {
    let mut a = Args { n: 5000, calls: 500, prefetch: 8, ..Default::default() };
    let mut it = std::env::args().skip(1);
    a.command =
        it.next().ok_or_else(|| anyhow!("usage: qtask-bench enqueue|prefill|drain-wait|roundtrip|ack-only ..."))?;
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--broker" => a.broker = value()?,
            "--queue" => a.queue = value()?,
            "--from" => a.from = value()?,
            "--backend" => a.backend = Some(value()?),
            "--n" => a.n = value()?.parse().context("--n")?,
            "--calls" => a.calls = value()?.parse().context("--calls")?,
            "--results" => a.results = true,
            "--prefetch" => a.prefetch = value()?.parse().context("--prefetch")?,
            "--confirm" => a.confirm = Some(value()?),
            other => bail!("unknown argument {other}"),
        }
    }
    if a.broker.is_empty() || a.queue.is_empty() {
        bail!("--broker and --queue are required");
    }
    Ok(a)
}

async fn app(a: &Args, backend: bool) -> Result<App> {
    let mut cfg = Config::default();
    cfg.broker_url = Some(a.broker.clone());
    if backend {
        cfg.result_backend = Some(a.backend.clone().unwrap_or_else(|| a.broker.clone()));
    }
    cfg.task_default_queue = a.queue.clone();
    if let Some(mode) = &a.confirm {
        cfg.set(
            "broker_transport_options",
            [("confirm_publish", mode.as_str())].into_iter().collect::<qtask::config::Value>(),
        )?;
    }
    Ok(qtask::app_from_config(cfg).await?)
}

async fn enqueue(a: &Args) -> Result<Value> {
    let app = app(a, false).await?;
    app.delay(noop::s()).await?; // connect and declare outside the timing
    app.flush().await?;
    let t = Instant::now();
    for _ in 0..a.n {
        app.delay(noop::s()).await?;
    }
    // Until the broker holds every one (RabbitMQ: every confirm is in).
    app.flush().await?;
    let s = t.elapsed().as_secs_f64();
    Ok(json!({"n": a.n, "seconds": s, "rate": a.n as f64 / s}))
}

async fn enqueue_concurrent(a: &Args) -> Result<Value> {
    let app = app(a, false).await?;
    app.delay(noop::s()).await?;
    app.flush().await?;
    let t = Instant::now();
    let sends = (0..a.n).map(|_| app.delay(noop::s()));
    for r in futures_util::future::join_all(sends).await {
        r?;
    }
    app.flush().await?;
    let s = t.elapsed().as_secs_f64();
    Ok(json!({"n": a.n, "seconds": s, "rate": a.n as f64 / s}))
}

async fn send_many(a: &Args) -> Result<Value> {
    let app = app(a, false).await?;
    app.delay(noop::s()).await?;
    app.flush().await?;
    let t = Instant::now();
    let sigs: Vec<qtask::Signature> = (0..a.n).map(|_| noop::s().into()).collect();
    app.send_many(sigs).await?;
    app.flush().await?;
    let s = t.elapsed().as_secs_f64();
    Ok(json!({"n": a.n, "seconds": s, "rate": a.n as f64 / s}))
}

async fn group_of(a: &Args) -> Result<Value> {
    let app = app(a, false).await?;
    app.delay(noop::s()).await?;
    app.flush().await?;
    let t = Instant::now();
    app.delay(qtask::group((0..a.n).map(|_| noop::s().into()))).await?;
    app.flush().await?;
    let s = t.elapsed().as_secs_f64();
    Ok(json!({"n": a.n, "seconds": s, "rate": a.n as f64 / s}))
}

/// A typical task message's body and headers weigh about this much.
const RAW_PAYLOAD: usize = 700;

/// One LPUSH per round trip on a plain socket (Redis), or one persistent
/// publish awaiting its confirm on a confirm channel (RabbitMQ, lapin).
async fn raw_ceiling(a: &Args) -> Result<Value> {
    let payload = vec![b'x'; RAW_PAYLOAD];
    if a.broker.starts_with("amqp") {
        use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
        let conn = lapin::Connection::connect(&a.broker, lapin::ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let opts = QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(a.queue.as_str().into(), opts, Default::default()).await?;
        let props = lapin::BasicProperties::default().with_delivery_mode(2);
        let publish = || async {
            ch.basic_publish(
                "".into(),
                a.queue.as_str().into(),
                BasicPublishOptions::default(),
                &payload,
                props.clone(),
            )
            .await?
            .await
        };
        publish().await?;
        let t = Instant::now();
        for _ in 0..a.n {
            publish().await?;
        }
        let s = t.elapsed().as_secs_f64();
        return Ok(json!({"n": a.n, "seconds": s, "rate": a.n as f64 / s}));
    }
    let rest = a.broker.strip_prefix("redis://").ok_or_else(|| anyhow!("not a redis URL"))?;
    let (hostport, _) = rest.split_once('/').unwrap_or((rest, "0"));
    let hostport = if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:6379") };
    let mut stream = std::net::TcpStream::connect(&hostport)?;
    stream.set_nodelay(true)?;
    let mut cmd =
        format!("*3\r\n$5\r\nLPUSH\r\n${}\r\n{}\r\n${}\r\n", a.queue.len(), a.queue, payload.len()).into_bytes();
    cmd.extend_from_slice(&payload);
    cmd.extend_from_slice(b"\r\n");
    let mut buf = [0u8; 64];
    let mut push = || -> Result<()> {
        use std::io::{Read, Write};
        stream.write_all(&cmd)?;
        // The reply is one short line (":<length>\r\n").
        let mut got = 0;
        while got == 0 || buf[got - 1] != b'\n' {
            let n = stream.read(&mut buf[got..])?;
            if n == 0 {
                bail!("redis closed the connection");
            }
            got += n;
        }
        Ok(())
    };
    push()?;
    let t = Instant::now();
    for _ in 0..a.n {
        push()?;
    }
    let s = t.elapsed().as_secs_f64();
    Ok(json!({"n": a.n, "seconds": s, "rate": a.n as f64 / s}))
}

async fn prefill(a: &Args) -> Result<Value> {
    let app = app(a, false).await?;
    app.broker().declare_queue(&a.queue).await?;
    let mut batch: Vec<(String, Message)> = Vec::with_capacity(1000);
    for i in 0..a.n {
        let msg = qtask::TaskMessageBuilder {
            id: uuid::Uuid::new_v4().to_string(),
            task: "tasks.noop".into(),
            origin: app.origin().to_string(),
            ..Default::default()
        }
        .build()?;
        batch.push((a.queue.clone(), msg));
        if batch.len() == 1000 || i + 1 == a.n {
            app.broker().publish_many(&batch).await?;
            batch.clear();
        }
    }
    Ok(json!({"n": a.n}))
}

/// RabbitMQ: the worker starts on a filled queue; time from the first
/// message taken (the ready count drops) until none is left (and N results
/// are in the Redis backend with `--results`).
async fn drain_wait_amqp(a: &Args) -> Result<Value> {
    let app = app(a, false).await?;
    let backend = a.backend.clone().unwrap_or_default();
    // The backend is a private Redis holding nothing but this run's
    // results: DBSIZE counts them in O(1) (KEYS would scan them all every
    // poll, on the cores the worker and the broker use).
    let stored = || -> Result<i64> { Ok(redis_cmd(&backend, &["DBSIZE"])?.int()) };
    let deadline = Instant::now() + Duration::from_secs(600);
    let n = a.n as u64;
    while app.broker().queue_len(&a.queue).await? >= n {
        if Instant::now() > deadline {
            bail!("no worker took a message from {} within 600 s", a.queue);
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let t = Instant::now();
    loop {
        if app.broker().queue_len(&a.queue).await? == 0 && (!a.results || stored()? >= a.n as i64) {
            break;
        }
        if Instant::now() > deadline {
            bail!("not drained after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let s = t.elapsed().as_secs_f64();
    Ok(json!({"n": a.n, "seconds": s, "rate": a.n as f64 / s}))
}

fn drain_wait(a: &Args) -> Result<Value> {
    let url = &a.broker;
    let pending = || -> Result<i64> {
        Ok(redis_cmd(url, &["LLEN", &a.queue])?.int() + redis_cmd(url, &["HLEN", "unacked"])?.int())
    };
    let stored = || -> Result<i64> {
        Ok(redis_cmd(url, &["EVAL", "return #redis.call('KEYS', 'celery-task-meta-*')", "0"])?.int())
    };
    let t = Instant::now();
    redis_cmd(url, &["RENAME", &a.from, &a.queue])?;
    let deadline = t + Duration::from_secs(600);
    loop {
        if pending()? == 0 && (!a.results || stored()? >= a.n as i64) {
            break;
        }
        if Instant::now() > deadline {
            bail!("not drained after 600 s: {} pending", pending()?);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = t.elapsed().as_secs_f64();
    Ok(json!({"n": a.n, "seconds": s, "rate": a.n as f64 / s}))
}

async fn roundtrip(a: &Args) -> Result<Value> {
    let app = app(a, true).await?;
    for _ in 0..20 {
        app.delay(noop::s()).await?.get(Duration::from_secs(30)).await?;
    }
    let mut lat = Vec::with_capacity(a.calls);
    for _ in 0..a.calls {
        let t = Instant::now();
        app.apply_async(noop::s(), SendOptions::new()).await?.get(Duration::from_secs(30)).await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(percentiles(lat))
}

fn percentiles(mut lat: Vec<f64>) -> Value {
    lat.sort_by(f64::total_cmp);
    let at = |p: f64| lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or(f64::NAN);
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    json!({"calls": lat.len(), "p50_ms": at(0.5), "p99_ms": at(0.99), "mean_ms": mean})
}

/// The broker's own ceiling for a prefetch window: what a consumer that
/// does nothing but ack reaches (the worker's drain rate is measured
/// against it).
async fn ack_only(a: &Args) -> Result<Value> {
    let broker = qtask::connect(&a.broker).await?;
    let mut consumer = broker.consume(std::slice::from_ref(&a.queue), qtask::ConsumeOptions::new(a.prefetch)).await?;
    let mut start = None;
    for i in 0..a.n {
        let d = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .map_err(|_| anyhow!("no message within 60 s after {i} of {}", a.n))??
            .ok_or_else(|| anyhow!("the consumer closed after {i} messages"))?;
        start.get_or_insert_with(Instant::now);
        d.acker.ack().await?;
    }
    let s = start.map(|t| t.elapsed().as_secs_f64()).unwrap_or_default();
    consumer.close().await?;
    Ok(json!({"n": a.n, "seconds": s, "rate": a.n as f64 / s}))
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // ack-only runs as the benchmarked worker does (interop-worker --threads 1).
    let rt = if a.command == "ack-only" {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let out = rt.block_on(async {
        match a.command.as_str() {
            "enqueue" => enqueue(&a).await,
            "enqueue-concurrent" => enqueue_concurrent(&a).await,
            "send-many" => send_many(&a).await,
            "group" => group_of(&a).await,
            "raw-ceiling" => raw_ceiling(&a).await,
            "prefill" => prefill(&a).await,
            "drain-wait" if a.broker.starts_with("amqp") => drain_wait_amqp(&a).await,
            "drain-wait" => drain_wait(&a),
            "roundtrip" => roundtrip(&a).await,
            "ack-only" => ack_only(&a).await,
            other => Err(anyhow!("unknown command {other}")),
        }
    });
    match out {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qtask-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
