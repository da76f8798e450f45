//! qtask beat on django-celery-beat 2.9's own tables (`qtask::beat::DjangoStore`,
//! what `qtask beat --scheduler django --db URL` runs), on PostgreSQL (a
//! database of its own per test) and SQLite (a file of its own). Django
//! creates the tables (`migrate`) and every row through its ORM
//! (`integration-tests/python/dcb.py`, a long-running helper fed JSON
//! lines), including `QuerySet.update()`, which bypasses Django's change
//! signals. The beat publishes to Redis (queues of this test); the test
//! reads what it fires, and a Python Celery 5.7 worker runs one entry.
//!
//! "Within a second" is checked on the messages, not on a clock: an entry
//! fires every second, so after an edit at most a few messages (counted
//! against a second entry, the "ticker") may still follow the old row.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use integration_tests::{python, python_dir, redis_url, spawn_python_worker, unique, wait_for, PyEnv};
use qtask::beat::{Beat, DjangoStore, Store};
use qtask::{App, ConsumeOptions, Consumer, Message};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// Messages that may follow an edit before the beat applies it: the edit
/// is picked up within a second, the entry fires every second, and a fire
/// may be in flight.
const STALE_AT_MOST: usize = 3;

/// The Django ORM in a Python process.
struct Django {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Django {
    fn start(db: &str) -> Result<Django> {
        let mut child = tokio::process::Command::new(python())
            .arg(python_dir().join("dcb.py"))
            .env("QTASK_DJANGO_DB", db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start dcb.py")?;
        let stdin = child.stdin.take().context("stdin")?;
        let lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        Ok(Django { child, stdin, lines })
    }

    async fn call(&mut self, cmd: Value) -> Result<Value> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .context("dcb.py did not answer within 60 s")??
            .context("dcb.py exited")?;
        let v: Value = serde_json::from_str(&line)?;
        if let Some(e) = v.get("error") {
            bail!("dcb.py {cmd}: {e}");
        }
        Ok(v)
    }
}

/// A consumer of one queue that acks what it receives.
struct Queue {
    consumer: Box<dyn Consumer>,
    name: String,
}

impl Queue {
    async fn new(app: &App, name: &str) -> Result<Queue> {
        let consumer = app.broker().consume(&[name.to_string()], ConsumeOptions::new(10)).await?;
        Ok(Queue { consumer, name: name.to_string() })
    }

    async fn next(&mut self) -> Result<Message> {
        let d = tokio::time::timeout(Duration::from_secs(30), self.consumer.recv())
            .await
            .with_context(|| format!("no message on {} within 30 s", self.name))??
            .context("the consumer ended")?;
        d.acker.ack().await?;
        Ok(d.message)
    }

    /// Messages until one satisfies `pred`: how many came before it (an
    /// error after 30 that do not).
    async fn until(&mut self, mut pred: impl FnMut(&Message) -> bool) -> Result<usize> {
        for before in 0..30 {
            if pred(&self.next().await?) {
                return Ok(before);
            }
        }
        bail!("30 messages on {} and none of them the one expected", self.name)
    }
}

fn header<'a>(m: &'a Message, k: &str) -> &'a Value {
    m.headers.get(k).unwrap_or(&Value::Null)
}

async fn scenario(db: &str) -> Result<()> {
    let url = redis_url();
    let q = |p: &str| unique(&format!("dcb_{p}"));
    let (q_main, q_moved, q_tick, q_once, q_work, q_never) =
        (q("main"), q("moved"), q("tick"), q("once"), q("work"), q("never"));
    let mut dj = Django::start(db)?;
    dj.call(json!({"op": "migrate"})).await?;
    let every_second = |name: &str, queue: &str, args: Value| {
        json!({"op": "interval", "name": name, "task": "tasks.add", "every": 1, "period": "seconds",
               "args": args, "queue": queue})
    };
    dj.call(every_second("ticker", &q_tick, json!([0, 0]))).await?;
    let mut main = every_second("main", &q_main, json!([2, 3]));
    main["headers"] = json!({"x-tenant": "acme"});
    main["priority"] = json!(3);
    dj.call(main).await?;
    dj.call(every_second("py", &q_work, json!([4, 4]))).await?;
    dj.call(json!({"op": "crontab", "name": "nightly", "task": "tasks.add", "minute": "0", "hour": "2",
                   "timezone": "Europe/Paris", "queue": q_never}))
        .await?;
    dj.call(json!({"op": "solar", "name": "sunrise", "task": "tasks.add", "event": "sunrise",
                   "latitude": "48.85", "longitude": "2.35", "queue": q_never}))
        .await?;
    let past = (chrono::Utc::now() - chrono::TimeDelta::seconds(5)).to_rfc3339();
    dj.call(json!({"op": "clocked", "name": "once", "task": "tasks.add", "clocked_time": past,
                   "args": [1, 1], "queue": q_once}))
        .await?;

    let app = qtask::app(&url).await?;
    let mut worker = spawn_python_worker(&PyEnv::new(&url, &q_work), &[&q_work], None)?;
    // Queues whose messages are counted (q_moved, q_once) have no consumer.
    let (mut main_q, mut tick_q) = (Queue::new(&app, &q_main).await?, Queue::new(&app, &q_tick).await?);
    let store = DjangoStore::connect(db).await?;
    assert!(store.describe().starts_with("django-celery-beat tables at"), "{}", store.describe());
    let beat = Beat::builder(app.clone()).store(Arc::new(store)).spawn().await?;
    let status = beat.wait_for(Duration::from_secs(10), |s| s.ticks >= 1).await?;
    assert_eq!(status.entries, 6, "interval, crontab, solar and clocked rows all read: {status:?}");

    // A message as django-celery-beat's ModelEntry sends it.
    let m = main_q.next().await?;
    assert_eq!(header(&m, "periodic_task_name"), &json!("main"));
    assert_eq!(header(&m, "x-tenant"), &json!("acme"));
    assert_eq!(header(&m, "celery_beat_task"), &json!(true));
    assert_eq!(header(&m, "task"), &json!("tasks.add"));
    assert_eq!(header(&m, "argsrepr"), &json!("[2, 3]"));
    assert_eq!(m.properties.priority, 3);

    // The clocked one-off: sent once, then disabled in Django's table.
    let mut disabled = false;
    for _ in 0..30 {
        let row = dj.call(json!({"op": "get", "name": "once"})).await?;
        if row["enabled"] == json!(false) {
            disabled = true;
            break;
        }
        tick_q.next().await?;
    }
    assert!(disabled, "the one-off row was not disabled");

    // model.save(): new args.
    dj.call(json!({"op": "save", "name": "main", "fields": {"args": [7, 7]}})).await?;
    let stale = main_q.until(|m| header(m, "argsrepr") == &json!("[7, 7]")).await?;
    assert!(stale <= STALE_AT_MOST, "{stale} messages with the old args after save()");
    eprintln!("beat_django {db}: {stale} message(s) with the old args after save() returned");

    // QuerySet.update(): no signal, no date_changed; another queue.
    dj.call(json!({"op": "update", "name": "main", "fields": {"queue": q_moved}})).await?;
    let broker = app.broker().clone();
    wait_for("main on the queue set by update()", Duration::from_secs(30), || {
        let (b, q) = (broker.clone(), q_moved.clone());
        async move { Ok(b.queue_len(&q).await? >= 1) }
    })
    .await?;

    // QuerySet.update(enabled=False): it stops.
    dj.call(json!({"op": "update", "name": "main", "fields": {"enabled": false}})).await?;
    for _ in 0..4 {
        tick_q.next().await?;
    }
    let after_disable = app.broker().queue_len(&q_moved).await?;
    assert!(after_disable >= 1, "main fired to the queue set by update()");
    eprintln!("beat_django {db}: {after_disable} message(s) on the queue set by update() when 4 ticks passed after update(enabled=False)");
    for _ in 0..3 {
        tick_q.next().await?;
    }
    assert_eq!(app.broker().queue_len(&q_moved).await?, after_disable, "main still fires after update(enabled=False)");

    // The Python worker runs the "py" entry; then delete() stops it.
    wait_for("the Python worker runs the py entry", Duration::from_secs(60), || {
        let runs = worker.log().matches("succeeded in").count();
        async move { Ok(runs >= 1) }
    })
    .await?;
    assert!(worker.log().contains(": 8"), "the worker computed 4 + 4:\n{}", worker.log());
    dj.call(json!({"op": "delete", "name": "py"})).await?;
    for _ in 0..4 {
        tick_q.next().await?;
    }
    let q_work_len = app.broker().queue_len(&q_work).await?;
    let runs = worker.log().matches("succeeded in").count() as u64 + q_work_len;
    for _ in 0..3 {
        tick_q.next().await?;
    }
    let runs_later = worker.log().matches("succeeded in").count() as u64 + app.broker().queue_len(&q_work).await?;
    assert_eq!(runs_later, runs, "py still fires after delete()");

    // Run state written as Django's beat writes it, without a change.
    let row = dj.call(json!({"op": "get", "name": "ticker"})).await?;
    assert!(row["total_run_count"].as_u64().is_some_and(|n| n >= 5), "{row}");
    assert!(row["last_run_at"].is_string(), "{row}");
    assert_eq!(app.broker().queue_len(&q_once).await?, 1, "the one-off fired once");
    let status = beat.status();
    assert_eq!(status.entries, 5, "py deleted: {status:?}");
    assert_eq!(status.failed, 0, "{status:?}");

    beat.stop().await?;
    worker.terminate(Duration::from_secs(20))?;
    let _ = dj.child.kill().await;
    for queue in [&q_main, &q_moved, &q_tick, &q_once, &q_work, &q_never] {
        app.broker().purge(queue).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_celery_beat_tables_on_sqlite() -> Result<()> {
    let dir = std::env::temp_dir().join(unique("dcb_sqlite"));
    std::fs::create_dir_all(&dir)?;
    let db = format!("sqlite://{}", dir.join("django.sqlite3").display());
    scenario(&db).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_celery_beat_tables_on_postgres() -> Result<()> {
    let base = std::env::var("QTASK_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = unique("dcb");
    let admin = qtask::sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&base).await?;
    qtask::sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
    let (root, _) = base.rsplit_once('/').context("a database URL")?;
    let result = scenario(&format!("{root}/{name}")).await;
    qtask::sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await?;
    result
}

/// The command line: `qtask beat --scheduler django --db URL` runs a row
/// Django created, with `periodic_task_name`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qtask_beat_scheduler_django_command() -> Result<()> {
    let url = redis_url();
    let dir = std::env::temp_dir().join(unique("dcb_cli"));
    std::fs::create_dir_all(&dir)?;
    let db = format!("sqlite://{}", dir.join("django.sqlite3").display());
    let queue = unique("dcb_cli");
    let mut dj = Django::start(&db)?;
    dj.call(json!({"op": "migrate"})).await?;
    dj.call(json!({"op": "interval", "name": "from-django", "task": "tasks.add", "every": 1, "period": "seconds",
                   "args": [5, 5], "queue": queue}))
        .await?;
    let mut cmd = std::process::Command::new(integration_tests::qtask_cli()?);
    cmd.args(["--broker", &url, "beat", "--scheduler", "django", "--db", &db, "-l", "info"]);
    let mut beat = integration_tests::Proc::spawn("qtask beat --scheduler django", cmd)?;
    let app = qtask::app(&url).await?;
    let mut q = Queue::new(&app, &queue).await?;
    let m = q.next().await?;
    assert_eq!(header(&m, "periodic_task_name"), &json!("from-django"));
    assert_eq!(header(&m, "argsrepr"), &json!("[5, 5]"));
    assert!(beat.log().contains("django-celery-beat tables at"), "{}", beat.log());
    beat.terminate(Duration::from_secs(20))?;
    let _ = dj.child.kill().await;
    app.broker().purge(&queue).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
