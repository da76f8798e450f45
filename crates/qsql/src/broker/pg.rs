//! The PostgreSQL broker: one table of messages, claimed with
//! `FOR UPDATE SKIP LOCKED`, woken by `LISTEN`/`NOTIFY`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qcore::broker::topic_matches;
use qcore::{
    Acker, Broker, BrokerError, Capabilities, ConsumeOptions, Consumer, DeadLetter, DeadLetters, Delivery, ErrorKind,
    Message, Priorities, Subscription,
};
use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Postgres, Transaction};
use tokio::sync::{mpsc, watch, Semaphore};

use super::codec::{decode_fanout, decode_message, fanout_payload, headers_json, properties_json};
use super::lease::{claim_token, spawn_renewer, Inflight, Lease};
use crate::connect;
use crate::error::broker as db_err;
use crate::options::{parse_url, DbUrl, SqlOptions};
use crate::schema;
use crate::util::{fnv64, Names};

/// Largest NOTIFY payload sent inline; larger fanout messages go through
/// the `qtask_fanout` table (PostgreSQL's limit is 8000 bytes).
const NOTIFY_INLINE_MAX: usize = 7900;

#[derive(Debug)]
struct Sql {
    publish: String,
    publish_many_head: String,
    claim: String,
    next_due: String,
    ack: String,
    requeue: String,
    defer: String,
    dead_letter: String,
    renew: String,
    queue_len: String,
    purge: String,
    dead_letters: String,
    dead_count: String,
    redrive_pick: String,
    redrive_move: String,
    dead_purge: String,
    fanout_insert: String,
    fanout_fetch: String,
    fanout_gc: String,
}

impl Sql {
    fn new(n: &Names) -> Sql {
        let m = n.t("qtask_messages");
        let dl = n.t("qtask_dead_letters");
        let f = n.t("qtask_fanout");
        let lease = "now() + make_interval(secs => $3)";
        Sql {
            publish: format!(
                "WITH ins AS (INSERT INTO {m} (queue, priority, headers, properties, body) \
                 VALUES ($1, $2, $3::json, $4::json, $5) RETURNING queue) \
                 SELECT pg_notify($6, queue) FROM ins"
            ),
            publish_many_head: format!("INSERT INTO {m} (queue, priority, headers, properties, body) "),
            claim: format!(
                "WITH c AS (SELECT id, available_at AS due FROM {m} \
                   WHERE queue = ANY($1) AND available_at <= now() \
                   ORDER BY priority DESC, available_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE {m} m SET delivered_count = m.delivered_count + 1, lease_until = {lease}, \
                   available_at = {lease}, consumer = $4 \
                 FROM c WHERE m.id = c.id \
                 RETURNING m.id, m.queue, m.priority, m.headers::text, m.properties::text, m.body, m.delivered_count, c.due"
            ),
            next_due: format!(
                "SELECT EXTRACT(EPOCH FROM (MIN(available_at) - now()))::float8 FROM {m} WHERE queue = ANY($1)"
            ),
            ack: format!("DELETE FROM {m} WHERE id = $1 AND consumer = $2"),
            requeue: format!(
                "WITH u AS (UPDATE {m} SET available_at = now(), lease_until = NULL, consumer = NULL \
                 WHERE id = $1 AND consumer = $2 RETURNING queue) SELECT pg_notify($3, queue) FROM u"
            ),
            defer: format!(
                "WITH u AS (UPDATE {m} SET available_at = $3, lease_until = NULL, consumer = NULL, \
                 delivered_count = GREATEST(delivered_count - 1, 0) \
                 WHERE id = $1 AND consumer = $2 RETURNING queue) SELECT pg_notify($4, queue) FROM u"
            ),
            dead_letter: format!(
                "WITH d AS (DELETE FROM {m} WHERE id = $1 AND consumer = $2 RETURNING *) \
                 INSERT INTO {dl} (queue, headers, properties, body, reason, delivered_count, original_id) \
                 SELECT queue, headers::text, properties::text, body, $3, delivered_count, id FROM d"
            ),
            renew: format!(
                "UPDATE {m} m SET lease_until = {lease}, available_at = {lease} \
                 FROM UNNEST($1::int8[], $2::text[]) AS r(id, token) WHERE m.id = r.id AND m.consumer = r.token"
            ),
            queue_len: format!(
                "SELECT COUNT(*) FROM {m} WHERE queue = $1 AND (lease_until IS NULL OR lease_until < now())"
            ),
            purge: format!("DELETE FROM {m} WHERE queue = $1 AND (lease_until IS NULL OR lease_until < now())"),
            dead_letters: format!(
                "SELECT queue, headers, properties, body, reason FROM {dl} WHERE queue = $1 ORDER BY id LIMIT $2"
            ),
            dead_count: format!("SELECT COUNT(*) FROM {dl} WHERE queue = $1"),
            redrive_pick: format!(
                "SELECT id, headers, properties FROM {dl} WHERE queue = $1 AND id > $2 \
                 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED"
            ),
            redrive_move: format!(
                "WITH d AS (DELETE FROM {dl} WHERE id = ANY($1) RETURNING id, queue, headers, properties, body), \
                 ins AS (INSERT INTO {m} (queue, priority, headers, properties, body) \
                   SELECT d.queue, r.priority, d.headers::json, d.properties::json, d.body \
                   FROM d JOIN UNNEST($1::int8[], $2::int2[]) AS r(id, priority) ON r.id = d.id \
                   ORDER BY d.id RETURNING 1) \
                 SELECT COUNT(*) FROM ins"
            ),
            dead_purge: format!("DELETE FROM {dl} WHERE queue = $1"),
            fanout_insert: format!(
                "WITH ins AS (INSERT INTO {f} (payload) VALUES ($2) RETURNING id) SELECT pg_notify($1, '@' || id) FROM ins"
            ),
            fanout_fetch: format!("SELECT payload FROM {f} WHERE id = $1"),
            fanout_gc: format!("DELETE FROM {f} WHERE created_at < now() - interval '5 minutes'"),
        }
    }
}

#[derive(Debug)]
struct Shared {
    /// Durable commits: publishes, fanout, LISTEN connections.
    pool: PgPool,
    /// `synchronous_commit = off`: claims, settlements and lease renewals.
    /// Losing one of these in a server crash only delivers a message again.
    fast: PgPool,
    names: Names,
    sql: Sql,
    /// Channel announcing new or returned messages; payload = queue name.
    channel: String,
    visibility: Duration,
    max_deliveries: Option<u32>,
    idle_poll: Duration,
    display: String,
}

impl Shared {
    fn vis_secs(&self) -> f64 {
        self.visibility.as_secs_f64()
    }

    fn fanout_channel(&self, exchange: &str) -> String {
        format!("qtask_fx_{:016x}", fnv64(&format!("{}\u{0}{exchange}", self.names.schema_key)))
    }
}

/// A broker on PostgreSQL.
///
/// Messages live in `qtask_messages` (in the schema given by `?schema=` or
/// [`SqlOptions::schema`]): headers and properties as JSON, the body as
/// bytes, priority, `available_at`, `delivered_count`, and the lease
/// (`lease_until`, `consumer`).
///
/// * **Consume:** up to `prefetch` due rows are claimed with
///   `SELECT … FOR UPDATE SKIP LOCKED` (highest priority first, 0–9, then
///   oldest) and leased for the visibility timeout. Consumers renew the
///   leases of their unsettled deliveries, so a running task is never
///   handed out twice while its worker lives; the deliveries of a worker
///   that died come back when their lease runs out (`redelivered = true`),
///   and are dead-lettered after [`max_deliveries`](SqlOptions::max_deliveries).
/// * **Settle:** ack deletes the row, reject(requeue) makes it due again,
///   dead-letter moves it to `qtask_dead_letters` with the reason,
///   [`defer`](Acker::defer) makes it due at the given time.
/// * **Dead letters** ([`DeadLetters`]): listed, counted, purged, and
///   redriven in one transaction (back to the end of their queue as new
///   messages; rows whose headers or properties cannot be read stay).
/// * **Wakeups:** publishing sends `NOTIFY` (at commit), so idle consumers
///   wake at once; a consumer also sleeps exactly until the next delayed or
///   leased message is due, and checks at least every
///   [`idle_poll`](SqlOptions::idle_poll).
/// * **Fanout** (events, remote control): `NOTIFY` on a channel per
///   exchange. Payloads above 7900 bytes go through the small
///   `qtask_fanout` table (kept 5 minutes) with a reference in the
///   notification. As with AMQP fanout, only current subscribers receive.
/// * **Enqueue on commit:** [`PgBroker::publish_in_tx`].
/// * **Durability:** publishes commit durably. Claims, settlements (ack,
///   reject, defer, dead-letter) and lease renewals commit with
///   `synchronous_commit = off` on a second pool: a server crash may forget
///   the last few of them, which only delivers those messages again (at
///   least once, never lost), and it makes consuming several times faster.
///
/// Each consumer and each subscription holds one connection for `LISTEN`.
#[derive(Debug, Clone)]
pub struct PgBroker {
    shared: Arc<Shared>,
}

impl PgBroker {
    /// Connect to `postgres://…` (optionally `?schema=name`) and apply
    /// migrations.
    pub async fn connect(url: &str, opts: SqlOptions) -> Result<Self, BrokerError> {
        let parsed = parse_url(url, opts.schema.as_deref()).map_err(|m| BrokerError::new(ErrorKind::Config, m))?;
        let DbUrl::Postgres { options, schema, display } = parsed else {
            return Err(BrokerError::new(ErrorKind::Config, format!("PgBroker needs a postgres:// URL, got {url:?}")));
        };
        let pool = connect::pg_pool(&options, opts.max_connections)
            .await
            .map_err(|e| db_err("connecting to PostgreSQL", e))?;
        let fast_options = options.as_ref().clone().options([("synchronous_commit", "off")]);
        let fast = connect::pg_pool(&fast_options, opts.max_connections)
            .await
            .map_err(|e| db_err("connecting to PostgreSQL", e))?;
        let names = Names::new(schema.as_deref());
        schema::migrate_pg(&pool, &names, schema.as_deref(), false).await.map_err(|e| db_err("creating tables", e))?;
        Ok(PgBroker {
            shared: Arc::new(Shared {
                fast,
                sql: Sql::new(&names),
                channel: names.channel("queue"),
                names,
                pool,
                visibility: opts.visibility_timeout.max(Duration::from_millis(100)),
                max_deliveries: opts.max_deliveries,
                idle_poll: opts.idle_poll.max(Duration::from_millis(10)),
                display,
            }),
        })
    }

    /// The connection pool (to run transactions for
    /// [`publish_in_tx`](Self::publish_in_tx) on the same database).
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// Publish inside the caller's transaction: the message exists if and
    /// only if the transaction commits, and consumers are woken at commit
    /// (`NOTIFY` is transactional).
    ///
    /// ```no_run
    /// # async fn demo(broker: qsql::PgBroker, msg: qcore::Message) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = broker.pool().begin().await?;
    /// sqlx::query("INSERT INTO orders (id) VALUES (1)").execute(&mut *tx).await?;
    /// broker.publish_in_tx(&mut tx, "celery", &msg).await?;
    /// tx.commit().await?; // the task is sent now, together with the order
    /// # Ok(()) }
    /// ```
    pub async fn publish_in_tx(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        queue: &str,
        message: &Message,
    ) -> Result<(), BrokerError> {
        self.publish_query(queue, message).execute(&mut **tx).await.map_err(|e| db_err("publishing", e))?;
        Ok(())
    }

    fn publish_query<'q>(
        &'q self,
        queue: &'q str,
        message: &'q Message,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(&self.shared.sql.publish)
            .bind(queue)
            .bind(i16::from(message.properties.priority))
            .bind(headers_json(message))
            .bind(properties_json(&message.properties))
            .bind(&message.body)
            .bind(&self.shared.channel)
    }
}

#[async_trait]
impl Broker for PgBroker {
    async fn declare_queue(&self, _queue: &str) -> Result<(), BrokerError> {
        // Queues are rows' `queue` values: nothing to create.
        Ok(())
    }

    async fn publish(&self, queue: &str, message: &Message) -> Result<(), BrokerError> {
        self.publish_query(queue, message).execute(&self.shared.pool).await.map_err(|e| db_err("publishing", e))?;
        Ok(())
    }

    async fn publish_many(&self, items: &[(String, Message)]) -> Result<(), BrokerError> {
        for chunk in items.chunks(1000) {
            let mut qb = sqlx::QueryBuilder::<Postgres>::new("WITH ins AS (");
            qb.push(&self.shared.sql.publish_many_head);
            qb.push_values(chunk, |mut b, (queue, m)| {
                b.push_bind(queue)
                    .push_bind(i16::from(m.properties.priority))
                    .push_bind(headers_json(m))
                    .push_unseparated("::json")
                    .push_bind(properties_json(&m.properties))
                    .push_unseparated("::json")
                    .push_bind(&m.body);
            });
            qb.push(" RETURNING queue) SELECT pg_notify(");
            qb.push_bind(&self.shared.channel);
            qb.push(", q) FROM (SELECT DISTINCT queue AS q FROM ins) d");
            qb.build().execute(&self.shared.pool).await.map_err(|e| db_err("publishing", e))?;
        }
        Ok(())
    }

    async fn consume(&self, queues: &[String], options: ConsumeOptions) -> Result<Box<dyn Consumer>, BrokerError> {
        if queues.is_empty() {
            return Err(BrokerError::new(ErrorKind::Config, "consume needs at least one queue"));
        }
        let shared = self.shared.clone();
        // LISTEN before the first claim, so nothing published after it is missed.
        let mut listener = PgListener::connect_with(&shared.pool).await.map_err(|e| db_err("LISTEN connection", e))?;
        listener.listen(&shared.channel).await.map_err(|e| db_err("LISTEN", e))?;
        let (wake_tx, wake_rx) = watch::channel(0u64);
        let (stop_tx, mut stop_rx) = watch::channel(());
        let wanted: HashSet<String> = queues.iter().cloned().collect();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stop_rx.changed() => return,
                    n = listener.try_recv() => n,
                };
                match next {
                    Ok(Some(n)) if !wanted.contains(n.payload()) => {}
                    Ok(_) => {
                        wake_tx.send_modify(|v| *v = v.wrapping_add(1));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "queue LISTEN connection failed; retrying");
                        wake_tx.send_modify(|v| *v = v.wrapping_add(1));
                        tokio::select! {
                            _ = stop_rx.changed() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        });
        let inflight = Arc::new(Inflight::default());
        let renew_shared = shared.clone();
        spawn_renewer(Arc::downgrade(&inflight), shared.visibility / 3, move |ids, tokens| {
            let s = renew_shared.clone();
            async move {
                sqlx::query(&s.sql.renew)
                    .bind(ids)
                    .bind(tokens)
                    .bind(s.vis_secs())
                    .execute(&s.fast)
                    .await
                    .map(|r| r.rows_affected())
            }
        });
        let tag = if options.tag.is_empty() { "qtask".to_string() } else { options.tag.clone() };
        Ok(Box::new(PgConsumer {
            tag: format!("{tag}/{}", uuid::Uuid::new_v4().simple()),
            seq: 0,
            permits: Arc::new(Semaphore::new(options.prefetch.max(1))),
            prefetch: options.prefetch.max(1),
            queues: queues.to_vec(),
            shared,
            inflight,
            buffer: VecDeque::new(),
            wake: wake_rx,
            _stop: stop_tx,
        }))
    }

    async fn queue_len(&self, queue: &str) -> Result<u64, BrokerError> {
        let n: i64 = sqlx::query_scalar(&self.shared.sql.queue_len)
            .bind(queue)
            .fetch_one(&self.shared.pool)
            .await
            .map_err(|e| db_err("counting messages", e))?;
        Ok(n.max(0) as u64)
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let r = sqlx::query(&self.shared.sql.purge)
            .bind(queue)
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
        let payload = fanout_payload(routing_key, message);
        let channel = self.shared.fanout_channel(exchange);
        if payload.len() <= NOTIFY_INLINE_MAX {
            sqlx::query("SELECT pg_notify($1, $2)").bind(&channel).bind(&payload).execute(&self.shared.pool).await
        } else {
            let _ = sqlx::query(&self.shared.sql.fanout_gc).execute(&self.shared.pool).await;
            sqlx::query(&self.shared.sql.fanout_insert).bind(&channel).bind(&payload).execute(&self.shared.pool).await
        }
        .map_err(|e| db_err("publishing fanout message", e))?;
        Ok(())
    }

    async fn subscribe(&self, exchange: &str, pattern: &str) -> Result<Box<dyn Subscription>, BrokerError> {
        let shared = self.shared.clone();
        let mut listener = PgListener::connect_with(&shared.pool).await.map_err(|e| db_err("LISTEN connection", e))?;
        listener.listen(&shared.fanout_channel(exchange)).await.map_err(|e| db_err("LISTEN", e))?;
        let (tx, rx) = mpsc::channel::<(String, Message)>(1024);
        let pattern = pattern.to_string();
        let exchange = exchange.to_string();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    n = listener.try_recv() => n,
                };
                let payload = match next {
                    Ok(Some(n)) => n.payload().to_string(),
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, exchange, "fanout LISTEN connection failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let payload = match payload.strip_prefix('@').map(str::parse::<i64>) {
                    Some(Ok(id)) => {
                        match sqlx::query_scalar::<_, String>(&shared.sql.fanout_fetch)
                            .bind(id)
                            .fetch_optional(&shared.pool)
                            .await
                        {
                            Ok(Some(p)) => p,
                            Ok(None) => continue,
                            Err(e) => {
                                tracing::warn!(error = %e, exchange, "reading large fanout message failed");
                                continue;
                            }
                        }
                    }
                    _ => payload,
                };
                match decode_fanout(&payload) {
                    Ok((rk, msg)) if topic_matches(&pattern, &rk) => {
                        if tx.send((rk, msg)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(exchange, error = %e, "dropping malformed fanout message"),
                }
            }
        });
        Ok(Box::new(super::ChannelSubscription { rx }))
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
impl DeadLetters for PgBroker {
    async fn list(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let rows: Vec<(String, String, String, Vec<u8>, String)> = sqlx::query_as(&self.shared.sql.dead_letters)
            .bind(queue)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.shared.pool)
            .await
            .map_err(|e| db_err("reading dead letters", e))?;
        Ok(rows.into_iter().map(|(q, h, p, b, reason)| super::dead_letter_from(q, &h, &p, b, reason)).collect())
    }

    async fn count(&self, queue: &str) -> Result<u64, BrokerError> {
        let n: i64 = sqlx::query_scalar(&self.shared.sql.dead_count)
            .bind(queue)
            .fetch_one(&self.shared.pool)
            .await
            .map_err(|e| db_err("counting dead letters", e))?;
        Ok(n.max(0) as u64)
    }

    /// One transaction: the oldest rows not locked by another redrive are
    /// locked, and those whose headers and properties can be read are
    /// deleted and inserted as new messages (due now, delivery count 0, so
    /// they are counted afresh) in one statement; rows that cannot be read
    /// stay parked. Consumers are notified at commit.
    async fn redrive(&self, queue: &str, limit: usize) -> Result<u64, BrokerError> {
        const BATCH: usize = 500;
        let err = |e| db_err("redriving dead letters", e);
        let mut tx = self.shared.pool.begin().await.map_err(err)?;
        let (mut moved, mut after) = (0usize, 0i64);
        while moved < limit {
            let want = (limit - moved).min(BATCH);
            let rows: Vec<(i64, String, String)> = sqlx::query_as(&self.shared.sql.redrive_pick)
                .bind(queue)
                .bind(after)
                .bind(want as i64)
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
            let Some(last) = rows.last() else { break };
            after = last.0;
            let (ids, priorities): (Vec<i64>, Vec<i16>) = rows
                .iter()
                .filter_map(|(id, h, p)| {
                    decode_message(h, p, Vec::new()).ok().map(|m| (*id, i16::from(m.properties.priority)))
                })
                .unzip();
            if !ids.is_empty() {
                let n: i64 = sqlx::query_scalar(&self.shared.sql.redrive_move)
                    .bind(&ids)
                    .bind(&priorities)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(err)?;
                moved += usize::try_from(n).unwrap_or(0);
            }
            if rows.len() < want {
                break;
            }
        }
        if moved > 0 {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.shared.channel)
                .bind(queue)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        Ok(moved as u64)
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let r = sqlx::query(&self.shared.sql.dead_purge)
            .bind(queue)
            .execute(&self.shared.pool)
            .await
            .map_err(|e| db_err("purging dead letters", e))?;
        Ok(r.rows_affected())
    }
}

/// A consumer of one or more queues.
struct PgConsumer {
    shared: Arc<Shared>,
    queues: Vec<String>,
    tag: String,
    seq: u64,
    permits: Arc<Semaphore>,
    prefetch: usize,
    inflight: Arc<Inflight>,
    buffer: VecDeque<Delivery>,
    wake: watch::Receiver<u64>,
    _stop: watch::Sender<()>,
}

type ClaimRow = (i64, String, i16, String, String, Vec<u8>, i32, DateTime<Utc>);

impl PgConsumer {
    async fn claim(&mut self, n: usize) -> Result<(Vec<ClaimRow>, String), BrokerError> {
        self.seq += 1;
        let token = claim_token(&self.tag, self.seq);
        let mut rows: Vec<ClaimRow> = sqlx::query_as(&self.shared.sql.claim)
            .bind(&self.queues)
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .bind(self.shared.vis_secs())
            .bind(&token)
            .fetch_all(&self.shared.fast)
            .await
            .map_err(|e| db_err("claiming messages", e))?;
        rows.sort_by(|a, b| b.2.cmp(&a.2).then(a.7.cmp(&b.7)).then(a.0.cmp(&b.0)));
        Ok((rows, token))
    }

    async fn wait_idle(&mut self) -> Result<(), BrokerError> {
        let due: Option<f64> = sqlx::query_scalar(&self.shared.sql.next_due)
            .bind(&self.queues)
            .fetch_one(&self.shared.fast)
            .await
            .map_err(|e| db_err("checking due messages", e))?;
        let mut wait = self.shared.idle_poll;
        if let Some(secs) = due {
            // Due already (a row locked by another consumer's claim): look again soon.
            let secs = if secs <= 0.0 { 0.005 } else { secs };
            wait = wait.min(Duration::from_secs_f64(secs));
        }
        tokio::select! {
            r = self.wake.changed() => {
                if r.is_err() {
                    // The listener task is gone; fall back to the safety-net poll.
                    tokio::time::sleep(wait).await;
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
        Ok(())
    }
}

#[async_trait]
impl Consumer for PgConsumer {
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
            let (rows, token) = self.claim(permits.len()).await?;
            if rows.is_empty() {
                drop(permits);
                self.wait_idle().await?;
                continue;
            }
            for ((id, queue, _prio, headers, properties, body, delivered, _due), permit) in
                rows.into_iter().zip(permits)
            {
                let lease = Lease::new(id, token.clone(), queue.clone(), permit, self.inflight.clone());
                let acker = Arc::new(PgAcker { shared: self.shared.clone(), lease });
                if let Some(max) = self.shared.max_deliveries {
                    if i64::from(delivered) > i64::from(max) {
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

/// Acknowledgement handle of one PostgreSQL delivery.
#[derive(Debug)]
struct PgAcker {
    shared: Arc<Shared>,
    lease: Lease,
}

impl PgAcker {
    fn stale(&self, what: &str, rows: u64) {
        if rows == 0 {
            tracing::warn!(id = self.lease.id, queue = %self.lease.queue, "{what}: the lease had already passed to another consumer");
        }
    }
}

#[async_trait]
impl Acker for PgAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        if self.lease.is_settled() {
            return Ok(());
        }
        let r = sqlx::query(&self.shared.sql.ack)
            .bind(self.lease.id)
            .bind(&self.lease.token)
            .execute(&self.shared.fast)
            .await
            .map_err(|e| db_err("ack", e))?;
        self.stale("ack", r.rows_affected());
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
        sqlx::query(&self.shared.sql.requeue)
            .bind(self.lease.id)
            .bind(&self.lease.token)
            .bind(&self.shared.channel)
            .execute(&self.shared.fast)
            .await
            .map_err(|e| db_err("reject", e))?;
        self.lease.settle();
        Ok(())
    }

    async fn dead_letter(&self, reason: &str) -> Result<(), BrokerError> {
        if self.lease.is_settled() {
            return Ok(());
        }
        let r = sqlx::query(&self.shared.sql.dead_letter)
            .bind(self.lease.id)
            .bind(&self.lease.token)
            .bind(reason)
            .execute(&self.shared.fast)
            .await
            .map_err(|e| db_err("dead-letter", e))?;
        self.stale("dead-letter", r.rows_affected());
        self.lease.settle();
        Ok(())
    }

    async fn defer(&self, until: DateTime<Utc>) -> Result<(), BrokerError> {
        if self.lease.is_settled() {
            return Ok(());
        }
        sqlx::query(&self.shared.sql.defer)
            .bind(self.lease.id)
            .bind(&self.lease.token)
            .bind(until)
            .bind(&self.shared.channel)
            .execute(&self.shared.fast)
            .await
            .map_err(|e| db_err("defer", e))?;
        self.lease.settle();
        Ok(())
    }
}
