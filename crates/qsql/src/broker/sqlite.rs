//! The SQLite broker: one database file shared by the processes of one
//! machine, claims in `BEGIN IMMEDIATE` transactions, wakeups by polling.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qcore::broker::topic_matches;
use qcore::{
    Acker, Broker, BrokerError, Capabilities, ConsumeOptions, Consumer, DeadLetter, DeadLetters, Delivery, ErrorKind,
    Message, Priorities, Subscription,
};
use serde_json::Value;
use sqlx::sqlite::SqlitePool;
use tokio::sync::{broadcast, watch, Semaphore};

use super::codec::{decode_message, headers_json, properties_json};
use super::lease::{claim_token, spawn_renewer, Inflight, Lease};
use crate::connect;
use crate::error::broker as db_err;
use crate::options::{parse_url, DbUrl, SqlOptions};
use crate::schema;
use crate::util::{now_ms, to_ms};

/// First and longest pause between polls of an idle consumer.
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(50);

/// In-process wakeups and fanout, shared by every broker on one file.
#[derive(Debug)]
struct Hub {
    wake: watch::Sender<u64>,
    fanout: Mutex<HashMap<String, broadcast::Sender<(String, Message)>>>,
}

impl Hub {
    fn poke(&self) {
        self.wake.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn exchange(&self, name: &str) -> Option<broadcast::Sender<(String, Message)>> {
        let mut m = self.fanout.lock().ok()?;
        Some(m.entry(name.to_string()).or_insert_with(|| broadcast::channel(4096).0).clone())
    }
}

fn hub_for(path: &Path) -> Arc<Hub> {
    static HUBS: OnceLock<Mutex<HashMap<PathBuf, Weak<Hub>>>> = OnceLock::new();
    let new = || Arc::new(Hub { wake: watch::channel(0).0, fanout: Mutex::new(HashMap::new()) });
    let Ok(mut hubs) = HUBS.get_or_init(Default::default).lock() else { return new() };
    hubs.retain(|_, h| h.strong_count() > 0);
    if let Some(h) = hubs.get(path).and_then(Weak::upgrade) {
        return h;
    }
    let h = new();
    hubs.insert(path.to_path_buf(), Arc::downgrade(&h));
    h
}

#[derive(Debug)]
struct Shared {
    pool: SqlitePool,
    hub: Arc<Hub>,
    visibility_ms: i64,
    max_deliveries: Option<u32>,
    display: String,
}

/// A broker in one SQLite file: the zero-setup default
/// (`sqlite://qtask.db`), for one machine.
///
/// Several processes (workers, producers) can use the same file: the
/// database runs in WAL mode with a busy timeout, and consumers claim
/// messages with a single `UPDATE … RETURNING` inside a `BEGIN IMMEDIATE`
/// transaction, so no message is delivered twice or lost. Leases,
/// priorities (higher first), defer, dead letters and `max_deliveries` work
/// as on [`PgBroker`](crate::PgBroker).
///
/// The file uses WAL with `synchronous = NORMAL`: a crashed process loses
/// nothing; a power loss may lose the last commits.
///
/// Idle consumers poll (every 1 ms, backing off to 50 ms) and are woken at
/// once by publishers in the same process. **Fanout (events, remote
/// control) reaches subscribers in the same process only.**
#[derive(Debug, Clone)]
pub struct SqliteBroker {
    shared: Arc<Shared>,
}

impl SqliteBroker {
    /// Open (creating if missing) `sqlite://path/to/file.db` and apply migrations.
    pub async fn connect(url: &str, opts: SqlOptions) -> Result<Self, BrokerError> {
        let parsed = parse_url(url, None).map_err(|m| BrokerError::new(ErrorKind::Config, m))?;
        let (path, display) =
            match parsed {
                DbUrl::Sqlite { path, display } => (path, display),
                DbUrl::SqliteMemory => return Err(BrokerError::new(
                    ErrorKind::Config,
                    "the SQLite broker needs a file (sqlite://path/to/file.db); use memory:// for an in-process broker",
                )),
                DbUrl::Postgres { .. } => {
                    return Err(BrokerError::new(ErrorKind::Config, "SqliteBroker needs a sqlite:// URL; use PgBroker"))
                }
            };
        let pool = connect::sqlite_file_pool(&path, opts.max_connections)
            .await
            .map_err(|e| db_err("opening SQLite database", e))?;
        schema::migrate_sqlite(&pool, false).await.map_err(|e| db_err("creating tables", e))?;
        let canonical = std::fs::canonicalize(&path).unwrap_or(path);
        Ok(SqliteBroker {
            shared: Arc::new(Shared {
                pool,
                hub: hub_for(&canonical),
                visibility_ms: i64::try_from(opts.visibility_timeout.as_millis()).unwrap_or(i64::MAX / 4).max(100),
                max_deliveries: opts.max_deliveries,
                display,
            }),
        })
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.shared.pool
    }
}

const PUBLISH: &str =
    "INSERT INTO qtask_messages (queue, priority, headers, properties, body, available_at, published_at) \
                       VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)";

fn queues_json(queues: &[String]) -> String {
    Value::Array(queues.iter().map(|q| Value::String(q.clone())).collect()).to_string()
}

#[async_trait]
impl Broker for SqliteBroker {
    async fn declare_queue(&self, _queue: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn publish(&self, queue: &str, message: &Message) -> Result<(), BrokerError> {
        sqlx::query(PUBLISH)
            .bind(queue)
            .bind(i64::from(message.properties.priority))
            .bind(headers_json(message))
            .bind(properties_json(&message.properties))
            .bind(&message.body)
            .bind(now_ms())
            .execute(&self.shared.pool)
            .await
            .map_err(|e| db_err("publishing", e))?;
        self.shared.hub.poke();
        Ok(())
    }

    async fn publish_many(&self, items: &[(String, Message)]) -> Result<(), BrokerError> {
        let err = |e| db_err("publishing", e);
        let mut tx = self.shared.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        let now = now_ms();
        for (queue, message) in items {
            sqlx::query(PUBLISH)
                .bind(queue)
                .bind(i64::from(message.properties.priority))
                .bind(headers_json(message))
                .bind(properties_json(&message.properties))
                .bind(&message.body)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        self.shared.hub.poke();
        Ok(())
    }

    async fn consume(&self, queues: &[String], options: ConsumeOptions) -> Result<Box<dyn Consumer>, BrokerError> {
        if queues.is_empty() {
            return Err(BrokerError::new(ErrorKind::Config, "consume needs at least one queue"));
        }
        let shared = self.shared.clone();
        let inflight = Arc::new(Inflight::default());
        let renew_shared = shared.clone();
        let every = Duration::from_millis(u64::try_from(shared.visibility_ms / 3).unwrap_or(1000).max(10));
        spawn_renewer(Arc::downgrade(&inflight), every, move |ids, tokens| {
            let s = renew_shared.clone();
            async move {
                let pairs: Vec<Value> =
                    ids.into_iter().zip(tokens).map(|(i, t)| Value::Array(vec![i.into(), t.into()])).collect();
                let until = now_ms() + s.visibility_ms;
                sqlx::query(
                    "UPDATE qtask_messages SET lease_until = ?1, available_at = ?1 \
                     WHERE (id, consumer) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?2))",
                )
                .bind(until)
                .bind(Value::Array(pairs).to_string())
                .execute(&s.pool)
                .await
                .map(|r| r.rows_affected())
            }
        });
        let tag = if options.tag.is_empty() { "qtask".to_string() } else { options.tag.clone() };
        Ok(Box::new(SqliteConsumer {
            tag: format!("{tag}/{}", uuid::Uuid::new_v4().simple()),
            seq: 0,
            permits: Arc::new(Semaphore::new(options.prefetch.max(1))),
            prefetch: options.prefetch.max(1),
            queues_json: queues_json(queues),
            wake: shared.hub.wake.subscribe(),
            shared,
            inflight,
            buffer: VecDeque::new(),
            backoff: POLL_MIN,
        }))
    }

    async fn queue_len(&self, queue: &str) -> Result<u64, BrokerError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM qtask_messages WHERE queue = ?1 AND (lease_until IS NULL OR lease_until < ?2)",
        )
        .bind(queue)
        .bind(now_ms())
        .fetch_one(&self.shared.pool)
        .await
        .map_err(|e| db_err("counting messages", e))?;
        Ok(n.max(0) as u64)
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let r =
            sqlx::query("DELETE FROM qtask_messages WHERE queue = ?1 AND (lease_until IS NULL OR lease_until < ?2)")
                .bind(queue)
                .bind(now_ms())
                .execute(&self.shared.pool)
                .await
                .map_err(|e| db_err("purging", e))?;
        Ok(r.rows_affected())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none().priorities(Priorities::HigherFirst).defer(true)
    }

    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }

    async fn publish_fanout(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
        if let Some(tx) = self.shared.hub.exchange(exchange) {
            // No subscriber is not an error: fanout messages are not kept.
            let _ = tx.send((routing_key.to_string(), message.clone()));
        }
        Ok(())
    }

    async fn subscribe(&self, exchange: &str, pattern: &str) -> Result<Box<dyn Subscription>, BrokerError> {
        let tx = self
            .shared
            .hub
            .exchange(exchange)
            .ok_or_else(|| BrokerError::new(ErrorKind::Other, "fanout registry poisoned"))?;
        Ok(Box::new(LocalSubscription { rx: tx.subscribe(), pattern: pattern.to_string() }))
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        sqlx::query("SELECT 1").execute(&self.shared.pool).await.map_err(|e| db_err("ping", e))?;
        Ok(())
    }

    fn describe(&self) -> String {
        self.shared.display.clone()
    }
}

/// Dead letters are rows of `qtask_dead_letters`.
#[async_trait]
impl DeadLetters for SqliteBroker {
    async fn list(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let rows: Vec<(String, String, String, Vec<u8>, String)> = sqlx::query_as(
            "SELECT queue, headers, properties, body, reason FROM qtask_dead_letters WHERE queue = ?1 ORDER BY id LIMIT ?2",
        )
        .bind(queue)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.shared.pool)
        .await
        .map_err(|e| db_err("reading dead letters", e))?;
        Ok(rows.into_iter().map(|(q, h, p, b, reason)| super::dead_letter_from(q, &h, &p, b, reason)).collect())
    }

    async fn count(&self, queue: &str) -> Result<u64, BrokerError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM qtask_dead_letters WHERE queue = ?1")
            .bind(queue)
            .fetch_one(&self.shared.pool)
            .await
            .map_err(|e| db_err("counting dead letters", e))?;
        Ok(n.max(0) as u64)
    }

    /// One `BEGIN IMMEDIATE` transaction (no other writer meanwhile): the
    /// oldest rows whose headers and properties can be read are inserted as
    /// new messages (due now, delivery count 0, so they are counted afresh)
    /// and deleted; rows that cannot be read stay parked.
    async fn redrive(&self, queue: &str, limit: usize) -> Result<u64, BrokerError> {
        const BATCH: usize = 500;
        let err = |e| db_err("redriving dead letters", e);
        let mut tx = self.shared.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        let now = now_ms();
        let (mut moved, mut after) = (0usize, 0i64);
        while moved < limit {
            let want = (limit - moved).min(BATCH);
            let rows: Vec<(i64, String, String)> = sqlx::query_as(
                "SELECT id, headers, properties FROM qtask_dead_letters WHERE queue = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )
            .bind(queue)
            .bind(after)
            .bind(want as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
            let Some(last) = rows.last() else { break };
            after = last.0;
            // [[id, priority], ...] of the rows that can be read, oldest first.
            let picked: Vec<Value> = rows
                .iter()
                .filter_map(|(id, h, p)| {
                    decode_message(h, p, Vec::new())
                        .ok()
                        .map(|m| Value::from(vec![*id, i64::from(m.properties.priority)]))
                })
                .collect();
            if !picked.is_empty() {
                let picked = Value::Array(picked).to_string();
                let r = sqlx::query(
                    "INSERT INTO qtask_messages (queue, priority, headers, properties, body, available_at, published_at) \
                     SELECT d.queue, json_extract(j.value, '$[1]'), d.headers, d.properties, d.body, ?2, ?2 \
                     FROM json_each(?1) j JOIN qtask_dead_letters d ON d.id = json_extract(j.value, '$[0]') \
                     ORDER BY d.id",
                )
                .bind(&picked)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
                sqlx::query(
                    "DELETE FROM qtask_dead_letters WHERE id IN (SELECT json_extract(value, '$[0]') FROM json_each(?1))",
                )
                .bind(&picked)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
                moved += usize::try_from(r.rows_affected()).unwrap_or(0);
            }
            if rows.len() < want {
                break;
            }
        }
        tx.commit().await.map_err(err)?;
        if moved > 0 {
            self.shared.hub.poke();
        }
        Ok(moved as u64)
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let r = sqlx::query("DELETE FROM qtask_dead_letters WHERE queue = ?1")
            .bind(queue)
            .execute(&self.shared.pool)
            .await
            .map_err(|e| db_err("purging dead letters", e))?;
        Ok(r.rows_affected())
    }
}

struct LocalSubscription {
    rx: broadcast::Receiver<(String, Message)>,
    pattern: String,
}

#[async_trait]
impl Subscription for LocalSubscription {
    async fn recv(&mut self) -> Result<Option<(String, Message)>, BrokerError> {
        loop {
            match self.rx.recv().await {
                Ok((rk, m)) if topic_matches(&self.pattern, &rk) => return Ok(Some((rk, m))),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "fanout subscriber too slow; messages skipped");
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(None),
            }
        }
    }
}

struct SqliteConsumer {
    shared: Arc<Shared>,
    queues_json: String,
    tag: String,
    seq: u64,
    permits: Arc<Semaphore>,
    prefetch: usize,
    inflight: Arc<Inflight>,
    buffer: VecDeque<Delivery>,
    wake: watch::Receiver<u64>,
    backoff: Duration,
}

type ClaimRow = (i64, String, i64, String, String, Vec<u8>, i64);

impl SqliteConsumer {
    async fn claim(&mut self, n: usize) -> Result<(Vec<ClaimRow>, String), BrokerError> {
        self.seq += 1;
        let token = claim_token(&self.tag, self.seq);
        let err = |e| db_err("claiming messages", e);
        let now = now_ms();
        let mut tx = self.shared.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        let mut rows: Vec<ClaimRow> = sqlx::query_as(
            "UPDATE qtask_messages SET delivered_count = delivered_count + 1, lease_until = ?1, available_at = ?1, consumer = ?2 \
             WHERE id IN (SELECT id FROM qtask_messages \
                          WHERE queue IN (SELECT value FROM json_each(?3)) AND available_at <= ?4 \
                          ORDER BY priority DESC, available_at, id LIMIT ?5) \
             RETURNING id, queue, priority, headers, properties, body, delivered_count",
        )
        .bind(now + self.shared.visibility_ms)
        .bind(&token)
        .bind(&self.queues_json)
        .bind(now)
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        rows.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        Ok((rows, token))
    }

    async fn next_due(&self) -> Result<Option<i64>, BrokerError> {
        sqlx::query_scalar(
            "SELECT MIN(available_at) FROM qtask_messages WHERE queue IN (SELECT value FROM json_each(?1))",
        )
        .bind(&self.queues_json)
        .fetch_one(&self.shared.pool)
        .await
        .map_err(|e| db_err("checking due messages", e))
    }
}

#[async_trait]
impl Consumer for SqliteConsumer {
    async fn recv(&mut self) -> Result<Option<Delivery>, BrokerError> {
        loop {
            if let Some(d) = self.buffer.pop_front() {
                return Ok(Some(d));
            }
            let Ok(first) = self.permits.clone().acquire_owned().await else { return Ok(None) };
            let mut permits = vec![first];
            while permits.len() < self.prefetch {
                match self.permits.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            self.wake.borrow_and_update();
            // A read first: only take the write lock when something is due.
            let due = self.next_due().await?;
            let now = now_ms();
            let rows = match due {
                Some(d) if d <= now => {
                    let (rows, token) = self.claim(permits.len()).await?;
                    Some((rows, token))
                }
                _ => None,
            };
            let Some((rows, token)) = rows.filter(|(r, _)| !r.is_empty()) else {
                drop(permits);
                let mut wait = self.backoff;
                if let Some(d) = due.filter(|d| *d > now) {
                    wait = wait.min(Duration::from_millis(u64::try_from(d - now).unwrap_or(0)));
                }
                self.backoff = (self.backoff * 2).min(POLL_MAX);
                tokio::select! {
                    r = self.wake.changed() => {
                        if r.is_err() {
                            tokio::time::sleep(wait).await;
                        }
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            };
            self.backoff = POLL_MIN;
            for ((id, queue, _prio, headers, properties, body, delivered), permit) in rows.into_iter().zip(permits) {
                let lease = Lease::new(id, token.clone(), queue.clone(), permit, self.inflight.clone());
                let acker = Arc::new(SqliteAcker { shared: self.shared.clone(), lease });
                if let Some(max) = self.shared.max_deliveries {
                    if delivered > i64::from(max) {
                        let reason =
                            format!("delivered {delivered} times without being acked (max_deliveries = {max})");
                        tracing::warn!(id, queue, %reason, "dead-lettering message");
                        acker.dead_letter(&reason).await?;
                        continue;
                    }
                }
                match decode_message(&headers, &properties, body) {
                    Ok(message) => {
                        self.buffer.push_back(Delivery { message, queue, redelivered: delivered > 1, acker })
                    }
                    Err(why) => {
                        tracing::warn!(id, queue, reason = %why, "dead-lettering malformed message row");
                        acker.dead_letter(&format!("malformed message: {why}")).await?;
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
struct SqliteAcker {
    shared: Arc<Shared>,
    lease: Lease,
}

impl SqliteAcker {
    async fn exec(&self, what: &str, sql: &str, extra: Option<i64>) -> Result<u64, BrokerError> {
        let mut q = sqlx::query(sql).bind(self.lease.id).bind(&self.lease.token);
        if let Some(x) = extra {
            q = q.bind(x);
        }
        let r = q.execute(&self.shared.pool).await.map_err(|e| db_err(what, e))?;
        if r.rows_affected() == 0 {
            tracing::warn!(id = self.lease.id, queue = %self.lease.queue, "{what}: the lease had already passed to another consumer");
        }
        Ok(r.rows_affected())
    }
}

#[async_trait]
impl Acker for SqliteAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        if self.lease.is_settled() {
            return Ok(());
        }
        self.exec("ack", "DELETE FROM qtask_messages WHERE id = ?1 AND consumer = ?2", None).await?;
        self.lease.settle();
        Ok(())
    }

    async fn reject(&self, requeue: bool) -> Result<(), BrokerError> {
        if self.lease.is_settled() {
            return Ok(());
        }
        if !requeue {
            return self.ack().await;
        }
        self.exec(
            "reject",
            "UPDATE qtask_messages SET available_at = ?3, lease_until = NULL, consumer = NULL WHERE id = ?1 AND consumer = ?2",
            Some(now_ms()),
        )
        .await?;
        self.lease.settle();
        self.shared.hub.poke();
        Ok(())
    }

    async fn dead_letter(&self, reason: &str) -> Result<(), BrokerError> {
        if self.lease.is_settled() {
            return Ok(());
        }
        let err = |e| db_err("dead-letter", e);
        let mut tx = self.shared.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        sqlx::query(
            "INSERT INTO qtask_dead_letters (queue, headers, properties, body, reason, delivered_count, original_id, dead_at) \
             SELECT queue, headers, properties, body, ?3, delivered_count, id, ?4 FROM qtask_messages WHERE id = ?1 AND consumer = ?2",
        )
        .bind(self.lease.id)
        .bind(&self.lease.token)
        .bind(reason)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        sqlx::query("DELETE FROM qtask_messages WHERE id = ?1 AND consumer = ?2")
            .bind(self.lease.id)
            .bind(&self.lease.token)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        self.lease.settle();
        Ok(())
    }

    async fn defer(&self, until: DateTime<Utc>) -> Result<(), BrokerError> {
        if self.lease.is_settled() {
            return Ok(());
        }
        self.exec(
            "defer",
            "UPDATE qtask_messages SET available_at = ?3, lease_until = NULL, consumer = NULL, \
             delivered_count = MAX(delivered_count - 1, 0) WHERE id = ?1 AND consumer = ?2",
            Some(to_ms(&until)),
        )
        .await?;
        self.lease.settle();
        self.shared.hub.poke();
        Ok(())
    }
}
