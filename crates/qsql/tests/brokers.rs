//! Broker behaviour beyond the shared suite: multi-connection SQLite
//! safety, PostgreSQL leases and wakeups, enqueue on commit, poison and
//! malformed messages, large fanout messages.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{PgSchema, TempDb};
use qcore::{Broker, ConsumeOptions, Consumer, Delivery, Message};
use qsql::{PgBroker, SqlOptions, SqliteBroker};
use serde_json::json;
use sqlx::Connection;

fn message(id: &str) -> Message {
    let mut m = Message::default();
    m.headers.insert("lang".into(), "py".into());
    m.headers.insert("task".into(), "tests.noop".into());
    m.headers.insert("id".into(), id.into());
    m.properties.correlation_id = Some(id.into());
    m.body = br#"[[], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#.to_vec();
    m
}

fn id_of(d: &Delivery) -> String {
    d.message.task_id().unwrap_or_default().to_string()
}

async fn next(c: &mut Box<dyn Consumer>, within: Duration, what: &str) -> Delivery {
    match tokio::time::timeout(within, c.recv()).await {
        Ok(Ok(Some(d))) => d,
        Ok(other) => panic!("{what}: recv ended: {other:?}"),
        Err(_) => panic!("{what}: nothing within {within:?}"),
    }
}

/// A consumer read by its own task (recv is not promised to be cancel
/// safe), its deliveries forwarded to a channel. Dropping it drops the consumer.
struct Probe {
    rx: tokio::sync::mpsc::UnboundedReceiver<Delivery>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    async fn start(broker: &dyn Broker, queue: &str, prefetch: usize) -> Probe {
        let mut c = broker.consume(&[queue.to_string()], ConsumeOptions::new(prefetch)).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(d) = c.recv().await.unwrap() {
                if tx.send(d).is_err() {
                    return;
                }
            }
        });
        Probe { rx, task }
    }

    async fn next(&mut self, within: Duration, what: &str) -> Delivery {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Ok(Some(d)) => d,
            Ok(None) => panic!("{what}: consumer stopped"),
            Err(_) => panic!("{what}: nothing within {within:?}"),
        }
    }

    async fn expect_none(&mut self, within: Duration, what: &str) {
        if let Ok(Some(d)) = tokio::time::timeout(within, self.rx.recv()).await {
            panic!("{what}: unexpected delivery of {}", id_of(&d));
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// 500 messages, 4 consumers with their own runtimes, threads and
/// connections on one SQLite file, published while they consume: each
/// message is delivered exactly once.
#[test]
fn sqlite_concurrent_consumers_each_message_exactly_once() {
    const N: usize = 500;
    let db = TempDb::new();
    let url = db.url();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let publisher = rt.block_on(SqliteBroker::connect(&url, SqlOptions::new())).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(usize, String)>();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 0..4 {
        let (url, tx, done) = (url.clone(), tx.clone(), done.clone());
        threads.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let opts = SqlOptions::new().max_connections(2).visibility_timeout(Duration::from_secs(2));
                let broker = SqliteBroker::connect(&url, opts).await.unwrap();
                let mut c = broker.consume(&["q".to_string()], ConsumeOptions::new(8)).await.unwrap();
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    let Ok(r) = tokio::time::timeout(Duration::from_millis(200), c.recv()).await else {
                        // A cancelled recv may have claimed rows it never
                        // returned: start over with a fresh consumer.
                        c = broker.consume(&["q".to_string()], ConsumeOptions::new(8)).await.unwrap();
                        continue;
                    };
                    let d = r.unwrap().unwrap();
                    tx.send((i, id_of(&d))).unwrap();
                    d.acker.ack().await.unwrap();
                }
            });
        }));
    }
    drop(tx);
    rt.block_on(async {
        for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
            let batch: Vec<(String, Message)> =
                chunk.iter().map(|i| ("q".to_string(), message(&format!("m{i}")))).collect();
            publisher.publish_many(&batch).await.unwrap();
        }
    });
    let mut seen = HashSet::new();
    let mut per = [0usize; 4];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < N {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let (i, id) = rx.recv_timeout(left).unwrap_or_else(|_| panic!("only {} of {N} delivered", seen.len()));
        assert!(seen.insert(id.clone()), "{id} delivered twice");
        per[i] += 1;
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    for t in threads {
        t.join().unwrap();
    }
    assert!(rx.try_recv().is_err(), "a message was delivered again after all were acked");
    assert_eq!(rt.block_on(publisher.queue_len("q")).unwrap(), 0);
    assert!(per.iter().filter(|n| **n > 0).count() >= 2, "one consumer took everything: {per:?}");
}

async fn pg_broker(schema: &PgSchema, opts: SqlOptions) -> PgBroker {
    PgBroker::connect(&schema.url(), opts).await.expect("PostgreSQL at QTASK_TEST_PG_URL (default 127.0.0.1:5432)")
}

/// What a consumer holds unsettled, the delivery handed out (a running
/// task) and the one still prefetched in its buffer, is not given to another
/// consumer however long it is held: the adapter renews the leases by
/// itself (the worker renews nothing). Once the holder is gone, both come
/// back after the lease.
async fn leases_are_renewed_while_held_and_expire_when_dropped(
    holder: Arc<dyn Broker>,
    other: Arc<dyn Broker>,
    lease: Duration,
) {
    holder.publish("q", &message("running")).await.unwrap();
    holder.publish("q", &message("prefetched")).await.unwrap();
    // Prefetch 2: the first recv claims both messages and hands out one.
    let mut a = holder.consume(&["q".into()], ConsumeOptions::new(2)).await.unwrap();
    let running = next(&mut a, Duration::from_secs(10), "first delivery").await;
    assert_eq!(id_of(&running), "running");
    let mut b = Probe::start(other.as_ref(), "q", 2).await;
    // Four lease periods: without renewal B would get both.
    b.expect_none(lease * 4, "a held delivery handed to another consumer").await;
    let t0 = std::time::Instant::now();
    drop(running);
    drop(a);
    let mut ids = HashSet::new();
    for _ in 0..2 {
        let again = b.next(lease * 2 + Duration::from_secs(5), "redelivery after the holder went away").await;
        assert!(again.redelivered, "{} not marked redelivered", id_of(&again));
        ids.insert(id_of(&again));
        again.acker.ack().await.unwrap();
    }
    assert_eq!(ids, HashSet::from(["running".to_string(), "prefetched".to_string()]));
    assert!(t0.elapsed() <= lease * 2 + Duration::from_secs(1), "redelivered only after {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_leases_are_renewed_while_held_and_expire_when_dropped() {
    let schema = PgSchema::new();
    let lease = Duration::from_millis(600);
    let holder = pg_broker(&schema, SqlOptions::new().visibility_timeout(lease)).await;
    let other = pg_broker(&schema, SqlOptions::new().visibility_timeout(lease)).await;
    leases_are_renewed_while_held_and_expire_when_dropped(Arc::new(holder), Arc::new(other), lease).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_leases_are_renewed_while_held_and_expire_when_dropped() {
    let db = TempDb::new();
    let lease = Duration::from_millis(600);
    let holder = SqliteBroker::connect(&db.url(), SqlOptions::new().visibility_timeout(lease)).await.unwrap();
    let other = SqliteBroker::connect(&db.url(), SqlOptions::new().visibility_timeout(lease)).await.unwrap();
    leases_are_renewed_while_held_and_expire_when_dropped(Arc::new(holder), Arc::new(other), lease).await;
}

/// An idle consumer is woken by NOTIFY, not by its safety-net poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_idle_consumer_wakes_on_publish() {
    let schema = PgSchema::new();
    let broker = pg_broker(&schema, SqlOptions::new().idle_poll(Duration::from_secs(60))).await;
    let mut c = broker.consume(&["q".into()], ConsumeOptions::new(1)).await.unwrap();
    let h = tokio::spawn(async move {
        let d = c.recv().await;
        (std::time::Instant::now(), d)
    });
    // Let the consumer go idle (if it has not, the check is only weaker).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = std::time::Instant::now();
    broker.publish("q", &message("wake")).await.unwrap();
    let (at, d) = tokio::time::timeout(Duration::from_secs(10), h).await.expect("woken within 10 s").unwrap();
    let d = d.unwrap().unwrap();
    assert_eq!(id_of(&d), "wake");
    assert!(at.duration_since(sent) < Duration::from_secs(5), "woke after {:?}", at.duration_since(sent));
    d.acker.ack().await.unwrap();
}

/// `publish_in_tx`: nothing after a rollback, exactly one after a commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_publish_in_tx_is_sent_iff_committed() {
    let schema = PgSchema::new();
    let broker = pg_broker(&schema, SqlOptions::new()).await;
    let mut tx = broker.pool().begin().await.unwrap();
    broker.publish_in_tx(&mut tx, "q", &message("rolled-back")).await.unwrap();
    assert_eq!(broker.queue_len("q").await.unwrap(), 0, "visible before commit");
    tx.rollback().await.unwrap();
    assert_eq!(broker.queue_len("q").await.unwrap(), 0, "a rolled back message exists");

    // The caller's own connection and transaction, not the broker's pool.
    let mut conn = sqlx::PgConnection::connect(&common::pg_url()).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    broker.publish_in_tx(&mut tx, "q", &message("committed")).await.unwrap();
    let mut c = broker.consume(&["q".into()], ConsumeOptions::new(5)).await.unwrap();
    tx.commit().await.unwrap();
    let d = next(&mut c, Duration::from_secs(10), "committed message").await;
    assert_eq!(id_of(&d), "committed");
    d.acker.ack().await.unwrap();
    assert_eq!(broker.queue_len("q").await.unwrap(), 0);
}

async fn poison_is_dead_lettered(broker: Arc<dyn Broker>) {
    broker.publish("q", &message("poison")).await.unwrap();
    for round in 1..=2 {
        let mut c = broker.consume(&["q".into()], ConsumeOptions::new(1)).await.unwrap();
        let d = next(&mut c, Duration::from_secs(10), "delivery").await;
        assert_eq!(d.redelivered, round > 1);
        // The "worker" dies: the delivery is neither acked nor renewed.
        drop(d);
        drop(c);
    }
    // A third consumer claims the message once its lease expires and parks it.
    let mut c = Probe::start(broker.as_ref(), "q", 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let dead = broker.dead_letters().expect("a dead-letter place").list("q", 10).await.unwrap();
        if let Some(d) = dead.first() {
            assert_eq!(d.message.task_id(), Some("poison"));
            assert!(d.reason.contains("max_deliveries = 2"), "{}", d.reason);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "poison message not dead-lettered");
        c.expect_none(Duration::from_millis(100), "a poison message delivered a third time").await;
    }
    c.expect_none(Duration::from_millis(500), "a poison message delivered a third time").await;
    assert_eq!(broker.queue_len("q").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_poison_messages_are_dead_lettered_after_max_deliveries() {
    let schema = PgSchema::new();
    let opts = SqlOptions::new().visibility_timeout(Duration::from_millis(300)).max_deliveries(2);
    poison_is_dead_lettered(Arc::new(pg_broker(&schema, opts).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_poison_messages_are_dead_lettered_after_max_deliveries() {
    let db = TempDb::new();
    let opts = SqlOptions::new().visibility_timeout(Duration::from_millis(300)).max_deliveries(2);
    poison_is_dead_lettered(Arc::new(SqliteBroker::connect(&db.url(), opts).await.unwrap())).await;
}

/// A row whose headers are not a JSON object is dead-lettered with the
/// reason, never dropped, and the consumer goes on with the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rows_are_dead_lettered() {
    let schema = PgSchema::new();
    let pg = pg_broker(&schema, SqlOptions::new()).await;
    sqlx::query(&format!(
        "INSERT INTO \"{}\".qtask_messages (queue, headers, properties, body) VALUES ('q', '[1, 2]', '{{}}', '\\x00')",
        schema.name
    ))
    .execute(pg.pool())
    .await
    .unwrap();
    let db = TempDb::new();
    let lite = SqliteBroker::connect(&db.url(), SqlOptions::new()).await.unwrap();
    sqlx::query(
        "INSERT INTO qtask_messages (queue, headers, properties, body, available_at, published_at) \
         VALUES ('q', 'not json', '{}', x'00', 0, 0)",
    )
    .execute(lite.pool())
    .await
    .unwrap();
    for broker in [Arc::new(pg) as Arc<dyn Broker>, Arc::new(lite)] {
        broker.publish("q", &message("good")).await.unwrap();
        let mut c = broker.consume(&["q".into()], ConsumeOptions::new(4)).await.unwrap();
        let d = next(&mut c, Duration::from_secs(10), "the good message after the malformed one").await;
        assert_eq!(id_of(&d), "good");
        d.acker.ack().await.unwrap();
        let dead = broker.dead_letters().expect("a dead-letter place").list("q", 10).await.unwrap();
        assert_eq!(dead.len(), 1, "{}", broker.describe());
        assert!(dead[0].reason.starts_with("malformed message: headers"), "{}", dead[0].reason);
        assert!(dead[0].message.headers.contains_key("x-qtask-raw-headers"));
        // It is not a message: a redrive leaves it parked.
        let place = broker.dead_letters().expect("a dead-letter place");
        assert_eq!(place.redrive("q", 10).await.unwrap(), 0, "{}", broker.describe());
        assert_eq!(place.count("q").await.unwrap(), 1);
        assert_eq!(broker.queue_len("q").await.unwrap(), 0);
        assert_eq!(place.purge("q").await.unwrap(), 1);
        assert_eq!(place.count("q").await.unwrap(), 0);
    }
}

/// Fanout messages above PostgreSQL's NOTIFY limit still arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_large_fanout_messages_arrive() {
    let schema = PgSchema::new();
    let broker = pg_broker(&schema, SqlOptions::new()).await;
    let mut sub = broker.subscribe("celeryev", "task.#").await.unwrap();
    let mut big = message("big");
    big.body = serde_json::to_vec(&json!([{"type": "task-succeeded", "result": "x".repeat(20_000)}])).unwrap();
    broker.publish_fanout("celeryev", "task.multi", &big).await.unwrap();
    broker.publish_fanout("celeryev", "task.multi", &message("small")).await.unwrap();
    let (rk, got) = tokio::time::timeout(Duration::from_secs(10), sub.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(rk, "task.multi");
    assert_eq!(got.body, big.body);
    let (_, small) = tokio::time::timeout(Duration::from_secs(10), sub.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(small.task_id(), Some("small"));
}

/// Dead letters are moved back to their queue in one transaction, each
/// exactly once even with redrives running at once, and come back as they
/// were sent, with their priority, as a first delivery (counted afresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_redriven() {
    const N: usize = 40;
    let schema = PgSchema::new();
    let opts = SqlOptions::new().max_deliveries(2);
    let pg = pg_broker(&schema, opts.clone()).await;
    let db = TempDb::new();
    let lite = SqliteBroker::connect(&db.url(), opts).await.unwrap();
    for broker in [Arc::new(pg) as Arc<dyn Broker>, Arc::new(lite)] {
        let place = broker.dead_letters().expect("a dead-letter place");
        let mut m = message("parked");
        m.properties.priority = 5;
        broker.publish("q", &m).await.unwrap();
        let mut c = broker.consume(&["q".into()], ConsumeOptions::new(1)).await.unwrap();
        let d = next(&mut c, Duration::from_secs(10), "delivery").await;
        d.acker.dead_letter("unknown task").await.unwrap();
        assert_eq!(place.redrive("q", 10).await.unwrap(), 1);
        assert!(place.list("q", 10).await.unwrap().is_empty());
        let d = next(&mut c, Duration::from_secs(10), "redriven message").await;
        assert_eq!(d.message, m);
        assert!(!d.redelivered, "a redriven message is delivered afresh ({})", broker.describe());
        d.acker.ack().await.unwrap();
        drop(c);

        // Many parked, four redrivers at once: each message moves once.
        let sent: Vec<Message> = (0..N).map(|i| message(&format!("many-{i}"))).collect();
        broker.publish_many(&sent.iter().map(|m| ("many".to_string(), m.clone())).collect::<Vec<_>>()).await.unwrap();
        let mut c = broker.consume(&["many".into()], ConsumeOptions::new(N)).await.unwrap();
        for _ in 0..N {
            let d = next(&mut c, Duration::from_secs(10), "delivery to park").await;
            d.acker.dead_letter("parked").await.unwrap();
        }
        drop(c);
        assert_eq!(place.count("many").await.unwrap(), N as u64);
        let redrivers: Vec<_> = (0..4)
            .map(|_| {
                let b = broker.clone();
                tokio::spawn(async move {
                    let mut moved = 0;
                    loop {
                        let place = b.dead_letters().expect("a dead-letter place");
                        let n = place.redrive("many", 3).await.unwrap();
                        moved += n;
                        if n == 0 && place.count("many").await.unwrap() == 0 {
                            return moved;
                        }
                    }
                })
            })
            .collect();
        let mut moved = 0;
        for r in redrivers {
            moved += r.await.unwrap();
        }
        assert_eq!(moved, N as u64, "{}", broker.describe());
        assert_eq!(broker.queue_len("many").await.unwrap(), N as u64);
        let mut c = broker.consume(&["many".into()], ConsumeOptions::new(N)).await.unwrap();
        let mut got = HashSet::new();
        for _ in 0..N {
            let d = next(&mut c, Duration::from_secs(10), "redriven delivery").await;
            assert!(got.insert(id_of(&d)), "{} delivered twice", id_of(&d));
            d.acker.ack().await.unwrap();
        }
        assert_eq!(broker.queue_len("many").await.unwrap(), 0);
    }
}
