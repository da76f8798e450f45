//! The SQL adapters through the facade on PostgreSQL: URLs (`postgres://`,
//! `postgresql://`, Celery's `db+postgresql://`), and enqueue on commit:
//! `app.send_in_tx` (the message is written in the caller's transaction)
//! and `AfterCommit` (sent after the commit, dropped on rollback); chords
//! joined by `celery.chord_unlock` (the database backend has no native join).

mod sql_common;

use std::time::Duration;

use anyhow::Result;
use integration_tests::unique;
use qtask::sqlx;
use qtask::{chain, chord, task, AfterCommit, App, Config, Error, SendInTx, Signature, State, TaskError, Worker};
use sql_common::{pg_base, PgSchema};

#[task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[task(name = "tasks.xsum")]
async fn xsum(numbers: Vec<i64>) -> i64 {
    numbers.iter().sum()
}

#[task(name = "tasks.fail")]
async fn fail(message: String) -> Result<i64, TaskError> {
    Err(TaskError::value_error(message))
}

async fn app_on(schema: &PgSchema, queue: &str) -> Result<App> {
    let mut cfg = Config::default();
    cfg.broker_url = Some(schema.url());
    cfg.result_backend = Some(schema.url());
    cfg.task_default_queue = queue.to_string();
    let app = qtask::app_from_config(cfg).await?;
    app.register(add).register(xsum).register(fail);
    Ok(app)
}

async fn orders(pool: &sqlx::PgPool, schema: &PgSchema) -> Result<i64> {
    Ok(sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}.orders", schema.name)).fetch_one(pool).await?)
}

#[tokio::test]
async fn postgres_urls_give_a_working_app() -> Result<()> {
    let schema = PgSchema::new("facade");
    let queue = unique("q");
    let app = app_on(&schema, &queue).await?;
    assert!(app.broker().describe().starts_with("postgres://"), "{}", app.broker().describe());
    let worker = Worker::builder(app.clone()).concurrency(2).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());
    let r = app.delay(add::s(2, 3)).await?;
    assert_eq!(r.get(Duration::from_secs(20)).await?, 5);
    stop.shutdown();
    running.await??;

    // postgresql:// and Celery's db+postgresql(+psycopg2):// reach the same tables.
    let alt = schema.url().replacen("postgres://", "postgresql://", 1);
    assert!(qtask::connect(&alt).await?.describe().starts_with("postgresql://"));
    for url in [format!("db+{alt}"), format!("db+{}", alt.replacen("postgresql://", "postgresql+psycopg2://", 1))] {
        let backend = qtask::connect_backend(&url).await?;
        let meta = backend.get(r.id()).await?.expect("the result is in the schema's celery_taskmeta");
        assert_eq!((meta.status, meta.result), (State::Success, serde_json::json!(5)));
    }
    Ok(())
}

#[tokio::test]
async fn send_in_tx_exists_iff_the_transaction_commits() -> Result<()> {
    let schema = PgSchema::new("sendtx");
    let queue = unique("q");
    let app = app_on(&schema, &queue).await?;
    let pool = qtask::pg_broker(&app).expect("a postgres:// app has a PgBroker").pool().clone();
    sqlx::query(&format!("CREATE TABLE {}.orders (id int PRIMARY KEY)", schema.name)).execute(&pool).await?;
    let insert = format!("INSERT INTO {}.orders (id) VALUES ($1)", schema.name);

    // Rolled back: neither the order nor the task.
    let mut tx = pool.begin().await?;
    sqlx::query(&insert).bind(1).execute(&mut *tx).await?;
    let rolled_back = app.send_in_tx(&mut tx, add::s(1, 1)).await?;
    assert_eq!(app.broker().queue_len(&queue).await?, 0, "visible before the commit");
    tx.rollback().await?;
    // A transaction dropped without commit rolls back too.
    {
        let mut tx = pool.begin().await?;
        app.send_in_tx(&mut tx, add::s(1, 2)).await?;
    }
    assert_eq!(app.broker().queue_len(&queue).await?, 0);
    assert_eq!(orders(&pool, &schema).await?, 0);

    // Committed: the order and exactly one message; a chain is one message too.
    let mut tx = pool.begin().await?;
    sqlx::query(&insert).bind(2).execute(&mut *tx).await?;
    let committed = app.send_in_tx(&mut tx, add::s(2, 3)).await?;
    let chained = app.send_in_tx(&mut tx, chain([add::s(1, 1).into(), add::sig().arg(10)])).await?;
    assert_eq!(app.broker().queue_len(&queue).await?, 0, "visible before the commit");
    tx.commit().await?;
    assert_eq!(app.broker().queue_len(&queue).await?, 2);
    assert_eq!(orders(&pool, &schema).await?, 1);

    let worker = Worker::builder(app.clone()).concurrency(2).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());
    assert_eq!(committed.get(Duration::from_secs(20)).await?, 5);
    assert_eq!(chained.get(Duration::from_secs(20)).await?, serde_json::json!(12));
    stop.shutdown();
    running.await??;
    assert_eq!(app.broker().queue_len(&queue).await?, 0);
    assert_eq!(rolled_back.meta().await?.status, State::Pending, "the rolled-back task ran");
    Ok(())
}

#[tokio::test]
async fn after_commit_sends_on_commit_only() -> Result<()> {
    let schema = PgSchema::new("aftercommit");
    let queue = unique("q");
    let app = app_on(&schema, &queue).await?;
    let pool = schema.pool().await?;
    // The app's migrations created the schema.
    sqlx::query(&format!("CREATE TABLE {}.orders (id int PRIMARY KEY)", schema.name)).execute(&pool).await?;
    let insert = format!("INSERT INTO {}.orders (id) VALUES ($1)", schema.name);

    let mut tx = pool.begin().await?;
    let mut on_commit = AfterCommit::new(&app);
    sqlx::query(&insert).bind(1).execute(&mut *tx).await?;
    on_commit.delay(add::s(1, 1)).await?;
    tx.rollback().await?;
    on_commit.rolled_back();
    assert_eq!(app.broker().queue_len(&queue).await?, 0);

    let mut tx = pool.begin().await?;
    let mut on_commit = AfterCommit::new(&app);
    sqlx::query(&insert).bind(2).execute(&mut *tx).await?;
    let r = on_commit.delay(add::s(4, 5)).await?;
    assert_eq!(app.broker().queue_len(&queue).await?, 0);
    tx.commit().await?;
    on_commit.committed().await?;
    assert_eq!(app.broker().queue_len(&queue).await?, 1);
    assert_eq!(orders(&pool, &schema).await?, 1);

    let worker = Worker::builder(app.clone()).concurrency(1).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());
    assert_eq!(r.get(Duration::from_secs(20)).await?, 9);
    stop.shutdown();
    running.await??;
    Ok(())
}

#[tokio::test]
async fn send_in_tx_needs_the_postgres_broker() -> Result<()> {
    let app = qtask::app("memory://").await?;
    let pool = sqlx::PgPool::connect(&pg_base()).await?;
    let mut tx = pool.begin().await?;
    match app.send_in_tx(&mut tx, add::s(1, 1)).await {
        Err(Error::Config(m)) => assert!(m.contains("PostgreSQL broker") && m.contains("AfterCommit"), "{m}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    Ok(())
}

/// qtask alone on PostgreSQL: a chord is joined by the `celery.chord_unlock`
/// task the producer sends (no counter is registered, header tasks do not
/// count themselves); a failed header task fails the body with Celery's
/// `ChordError` and calls the body's errback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chords_are_joined_by_chord_unlock() -> Result<()> {
    let schema = PgSchema::new("chordunlock");
    let queue = unique("q");
    let app = app_on(&schema, &queue).await?;
    assert_eq!(app.backend().expect("a backend").capabilities().chords, qtask::ChordSupport::Unlock);
    let worker = Worker::builder(app.clone()).concurrency(4).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());
    let t = Duration::from_secs(30);

    let header: Vec<Signature> = (0..5).map(|i| add::s(i, i).into()).collect();
    let r = app.delay(chord(header, xsum::sig())).await?;
    assert_eq!(r.get(t).await?, serde_json::json!(20));

    let failing = Signature::from(fail::s("boom".to_string())).task_id(unique("bad"));
    let bad_id = failing.id().unwrap_or_default().to_string();
    let mut errback = Signature::from(add::s(2, 2)).task_id(unique("eb"));
    errback.immutable = true;
    let eb_id = errback.id().unwrap_or_default().to_string();
    let body = xsum::sig().link_error(errback);
    let r = app.delay(chord(vec![add::s(1, 1).into(), failing], body)).await?;
    match r.get(t).await {
        Err(Error::TaskFailed { state, exc, .. }) => {
            assert_eq!((state.as_str(), exc.exc_type.as_str()), ("FAILURE", "ChordError"));
            assert_eq!(exc.message(), format!("Dependency {bad_id} raised ValueError('boom')"));
        }
        other => panic!("expected ChordError, got {other:?}"),
    }
    assert_eq!(app.result::<i64>(eb_id).get(t).await?, 4, "the body's errback ran");

    // A header that never finishes, with Celery's max_retries: the unlock
    // task gives up after its retries and fails the body (not left PENDING).
    let body = xsum::sig().task_id(unique("body"));
    let body_id = body.id().unwrap_or_default().to_string();
    let mut kwargs = serde_json::Map::new();
    kwargs.insert("interval".into(), serde_json::json!(0.05));
    kwargs.insert("max_retries".into(), serde_json::json!(2));
    kwargs.insert("result".into(), serde_json::json!([[[unique("never-sent"), null], null]]));
    let gid = unique("g");
    app.send_task("celery.chord_unlock", vec![gid.into(), body.to_value()], kwargs, qtask::SendOptions::new()).await?;
    match app.result::<serde_json::Value>(body_id).get(t).await {
        Err(Error::TaskFailed { exc, .. }) => {
            assert_eq!(exc.exc_type, "ChordError");
            assert!(exc.message().starts_with("chord_unlock could not be retried"), "{exc}");
        }
        other => panic!("expected ChordError, got {other:?}"),
    }
    stop.shutdown();
    running.await??;
    Ok(())
}
