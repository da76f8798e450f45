//! `qtask-sql-bench`: the qtask side of `cargo xtask bench postgres|sqlite`
//! (built with `--release`; xtask starts the workers and prints the table).
//!
//! ```text
//! qtask-sql-bench enqueue    --broker URL --queue Q --n N     one producer, sequential apply_async of tasks.noop
//! qtask-sql-bench prefill    --broker URL --queue Q --n N     N tasks.noop, batched
//! qtask-sql-bench drain-wait --db URL --layout qtask|kombu --from S --queue Q --n N [--results] [--broker URL]
//!                            move every waiting message of S to Q in one UPDATE (the worker
//!                            already waits on Q), then time until Q is empty (and N SUCCESS
//!                            rows are in celery_taskmeta with --results). With --broker, one
//!                            more tasks.noop is published to Q through qtask right after the
//!                            UPDATE: its NOTIFY wakes an idle PostgreSQL consumer as any
//!                            publish would (a bare UPDATE wakes nobody); N counts it.
//! qtask-sql-bench roundtrip  --broker URL --queue Q --calls M  sequential delay().get() latencies
//! qtask-sql-bench createdb   --db URL --name NAME              CREATE DATABASE (PostgreSQL)
//! qtask-sql-bench dropdb     --db URL --name NAME              DROP DATABASE (PostgreSQL)
//! ```
//!
//! `--db` is a `postgres://…` or `sqlite://path` URL of the database holding
//! the queue: qtask's `qtask_messages` (`--layout qtask`) or kombu's
//! SQLAlchemy transport tables `kombu_queue` / `kombu_message` (`--layout
//! kombu`, Python Celery). Each command prints one JSON object on stdout.

use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use qtask::sqlx::{self, postgres::PgPool, sqlite::SqliteConnectOptions, sqlite::SqlitePool};
use qtask::{task, App, Config, Message};
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
    db: String,
    layout: String,
    name: String,
    queue: String,
    from: String,
    n: usize,
    calls: usize,
    results: bool,
}

fn parse() -> Result<Args> {
    let mut a = Args { n: 2000, calls: 200, layout: "qtask".into(), ..Default::default() };
    let mut it = std::env::args().skip(1);
    a.command = it
        .next()
        .ok_or_else(|| anyhow!("usage: qtask-sql-bench enqueue|prefill|drain-wait|roundtrip|createdb|dropdb ..."))?;
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--broker" => a.broker = value()?,
            "--db" => a.db = value()?,
            "--layout" => a.layout = value()?,
            "--name" => a.name = value()?,
            "--queue" => a.queue = value()?,
            "--from" => a.from = value()?,
            "--n" => a.n = value()?.parse().context("--n")?,
            "--calls" => a.calls = value()?.parse().context("--calls")?,
            "--results" => a.results = true,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

async fn app(a: &Args, backend: bool) -> Result<App> {
    if a.broker.is_empty() || a.queue.is_empty() {
        bail!("--broker and --queue are required");
    }
    let mut cfg = Config::default();
    cfg.broker_url = Some(a.broker.clone());
    if backend {
        cfg.result_backend = Some(a.broker.clone());
    }
    cfg.task_default_queue = a.queue.clone();
    Ok(qtask::app_from_config(cfg).await?)
}

async fn enqueue(a: &Args) -> Result<Value> {
    let app = app(a, false).await?;
    app.delay(noop::s()).await?; // connect and create tables outside the timing
    app.broker().purge(&a.queue).await?;
    let t = Instant::now();
    for _ in 0..a.n {
        app.delay(noop::s()).await?;
    }
    let s = t.elapsed().as_secs_f64();
    Ok(json!({"n": a.n, "seconds": s, "rate": a.n as f64 / s}))
}

async fn prefill(a: &Args) -> Result<Value> {
    let app = app(a, false).await?;
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

/// The database holding the queue.
enum Db {
    Pg(PgPool),
    Lite(SqlitePool),
}

impl Db {
    async fn connect(url: &str) -> Result<Db> {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?.busy_timeout(Duration::from_secs(30));
            Ok(Db::Lite(sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?))
        } else {
            Ok(Db::Pg(sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(url).await?))
        }
    }

    /// Run `sql` with two text parameters; rows affected.
    async fn exec(&self, sql: &str, p1: &str, p2: &str) -> Result<u64> {
        Ok(match self {
            Db::Pg(p) => sqlx::query(&sql.replace("?1", "$1").replace("?2", "$2"))
                .bind(p1)
                .bind(p2)
                .execute(p)
                .await?
                .rows_affected(),
            Db::Lite(p) => sqlx::query(sql).bind(p1).bind(p2).execute(p).await?.rows_affected(),
        })
    }

    /// A COUNT with one text parameter.
    async fn count(&self, sql: &str, p1: &str) -> Result<i64> {
        Ok(match self {
            Db::Pg(p) => sqlx::query_scalar(&sql.replace("?1", "$1")).bind(p1).fetch_one(p).await?,
            Db::Lite(p) => sqlx::query_scalar(sql).bind(p1).fetch_one(p).await?,
        })
    }
}

async fn drain_wait(a: &Args) -> Result<Value> {
    let db = Db::connect(&a.db).await?;
    let (move_sql, pending_sql) = match a.layout.as_str() {
        "qtask" => (
            "UPDATE qtask_messages SET queue = ?2 WHERE queue = ?1",
            "SELECT COUNT(*) FROM qtask_messages WHERE queue = ?1",
        ),
        // kombu keeps delivered messages with visible = false; its unacked
        // ones (at most the prefetch) live in the worker's memory.
        "kombu" => (
            "UPDATE kombu_message SET queue_id = (SELECT id FROM kombu_queue WHERE name = ?2) \
             WHERE queue_id = (SELECT id FROM kombu_queue WHERE name = ?1)",
            "SELECT COUNT(*) FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id \
             WHERE q.name = ?1 AND m.visible",
        ),
        other => bail!("unknown --layout {other} (qtask or kombu)"),
    };
    let stored_sql = "SELECT COUNT(*) FROM celery_taskmeta WHERE status = ?1";
    let waker = if a.broker.is_empty() { None } else { Some(app(a, false).await?) };
    let expected_moved = if waker.is_some() { a.n - 1 } else { a.n };
    let t = Instant::now();
    let moved = db.exec(move_sql, &a.from, &a.queue).await?;
    if let Some(app) = &waker {
        app.delay(noop::s()).await?;
    }
    if moved as usize != expected_moved {
        bail!("moved {moved} messages from {}, expected {expected_moved}", a.from);
    }
    let deadline = t + Duration::from_secs(900);
    loop {
        let pending = db.count(pending_sql, &a.queue).await?;
        if pending == 0 && (!a.results || db.count(stored_sql, "SUCCESS").await? >= a.n as i64) {
            break;
        }
        if Instant::now() > deadline {
            bail!("not drained after 900 s: {pending} pending");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = t.elapsed().as_secs_f64();
    Ok(json!({"n": a.n, "seconds": s, "rate": a.n as f64 / s}))
}

async fn roundtrip(a: &Args) -> Result<Value> {
    let app = app(a, true).await?;
    for _ in 0..10 {
        app.delay(noop::s()).await?.get(Duration::from_secs(30)).await?;
    }
    let mut lat = Vec::with_capacity(a.calls);
    for _ in 0..a.calls {
        let t = Instant::now();
        app.delay(noop::s()).await?.get(Duration::from_secs(30)).await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    let at = |p: f64| lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or(f64::NAN);
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    Ok(json!({"calls": lat.len(), "p50_ms": at(0.5), "p99_ms": at(0.99), "mean_ms": mean}))
}

async fn database(a: &Args, create: bool) -> Result<Value> {
    let ok = !a.name.is_empty() && a.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        bail!("--name must be lower-case letters, digits and _");
    }
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&a.db).await?;
    let sql = if create {
        format!("CREATE DATABASE {}", a.name)
    } else {
        format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", a.name)
    };
    sqlx::query(&sql).execute(&pool).await?;
    Ok(json!({"ok": 1}))
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let out = rt.block_on(async {
        match a.command.as_str() {
            "enqueue" => enqueue(&a).await,
            "prefill" => prefill(&a).await,
            "drain-wait" => drain_wait(&a).await,
            "roundtrip" => roundtrip(&a).await,
            "createdb" => database(&a, true).await,
            "dropdb" => database(&a, false).await,
            other => Err(anyhow!("unknown command {other}")),
        }
    });
    match out {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qtask-sql-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
