//! The Redis [`Broker`]: kombu's Redis transport layout, with qtask's
//! reliability additions (see the crate docs).

mod acker;
mod consumer;
mod fanout;
mod maintenance;
mod reply;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use deadpool_redis::redis::{self, Value};
use qcore::{
    Broker, BrokerError, Capabilities, ConsumeOptions, Consumer, DeadLetter, DeadLetters, ErrorKind, Message,
    Priorities, Properties, Subscription,
};
use tokio::sync::{mpsc, oneshot};

use crate::conn::{map_err, with_conn, with_conn_read, Conn};
use crate::envelope;
use crate::keys::{binding_member, priority_step, Keys, DELIVERIES_HEADER, PRIORITY_STEPS};
use crate::url;

/// Options of [`RedisBroker`]. `RedisOptions::default()` is right for
/// production; tests shorten the visibility timeout and set a key prefix.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Age after which a delivery made by a qtask consumer that stopped
    /// refreshing it (process killed, connection lost) is given to another
    /// consumer. Live consumers refresh their deliveries every third of
    /// this, so long tasks are never redelivered. Default 30 s.
    pub visibility_timeout: Duration,
    /// Age after which a delivery made by a **kombu** (Python) consumer,
    /// which never refreshes its entries, is restored by qtask. Default
    /// 3600 s, kombu's own `visibility_timeout` default.
    pub foreign_visibility_timeout: Duration,
    /// How often each consumer scans for expired deliveries. Default: a
    /// third of `visibility_timeout`.
    pub restore_interval: Option<Duration>,
    /// After this many deliveries that ended without an ack (the consumer
    /// died each time), a message is dead-lettered as poison instead of
    /// being restored again. `None`: never. Default 10.
    pub max_deliveries: Option<u32>,
    /// Prefix of every key and channel (kombu's `global_keyprefix`). Default empty.
    pub global_keyprefix: String,
    /// Time allowed to open a connection. Default 5 s.
    pub connect_timeout: Duration,
    /// Time allowed for one command's reply. Default 30 s.
    pub response_timeout: Duration,
    /// Longest sleep of the deferred-message mover. Default 1 s.
    pub defer_poll_interval: Duration,
    /// How long an idle consumer blocks waiting for a message before it
    /// checks again anyway. Default 5 s.
    pub idle_block: Duration,
    /// Celery's `task_queues`: a listed queue's binding is written, as
    /// kombu writes it, under its exchange with its routing key (so a
    /// Python producer that publishes to that exchange finds the queue);
    /// tasks still go straight to the queue's list.
    pub task_queues: Vec<qcore::config::TaskQueue>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            visibility_timeout: Duration::from_secs(30),
            foreign_visibility_timeout: Duration::from_secs(3600),
            restore_interval: None,
            max_deliveries: Some(10),
            global_keyprefix: String::new(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            defer_poll_interval: Duration::from_secs(1),
            idle_block: Duration::from_secs(5),
            task_queues: Vec::new(),
        }
    }
}

impl RedisOptions {
    /// Set the visibility timeout of qtask's own deliveries.
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.visibility_timeout = d;
        self
    }

    /// Set the age after which kombu consumers' deliveries are restored.
    pub fn foreign_visibility_timeout(mut self, d: Duration) -> Self {
        self.foreign_visibility_timeout = d;
        self
    }

    /// Set the restore scan interval.
    pub fn restore_interval(mut self, d: Duration) -> Self {
        self.restore_interval = Some(d);
        self
    }

    /// Set (or disable with `None`) the poison-message limit.
    pub fn max_deliveries(mut self, n: Option<u32>) -> Self {
        self.max_deliveries = n;
        self
    }

    /// Set the key prefix (kombu's `global_keyprefix`).
    pub fn global_keyprefix(mut self, prefix: impl Into<String>) -> Self {
        self.global_keyprefix = prefix.into();
        self
    }

    /// Set the deferred-message mover's longest sleep.
    pub fn defer_poll_interval(mut self, d: Duration) -> Self {
        self.defer_poll_interval = d;
        self
    }

    /// Options from a qtask [`Config`](qcore::Config), the one place the
    /// broker's settings are read: the visibility timeout (qtask's
    /// `visibility_timeout`, else `broker_transport_options.visibility_timeout`),
    /// `max_deliveries`, `broker_transport_options.global_keyprefix` and
    /// `task_queues`.
    pub fn from_config(config: &qcore::Config) -> Self {
        let mut o = RedisOptions { task_queues: config.task_queues.clone(), ..RedisOptions::default() };
        if let Some(p) = &config.broker_transport_options.global_keyprefix {
            o.global_keyprefix = p.clone();
        }
        if let Some(v) = config.broker_visibility_timeout() {
            o.visibility_timeout = v;
        }
        if config.max_deliveries.is_some() {
            o.max_deliveries = config.max_deliveries;
        }
        o
    }

    pub(crate) fn effective_restore_interval(&self) -> Duration {
        self.restore_interval.unwrap_or(self.visibility_timeout / 3).max(Duration::from_millis(50))
    }

    pub(crate) fn effective_foreign_timeout(&self) -> Duration {
        self.foreign_visibility_timeout.max(self.visibility_timeout)
    }
}

/// One ack waiting to be sent in a batch.
pub(crate) struct AckReq {
    tag: String,
    token: String,
    reply: oneshot::Sender<Result<bool, BrokerError>>,
}

/// State shared by the broker handle, its consumers and ackers.
pub(crate) struct Inner {
    pub(crate) conn: Arc<Conn>,
    pub(crate) keys: Keys,
    pub(crate) opts: RedisOptions,
    pub(crate) display: String,
    declared: Mutex<HashSet<String>>,
    acks: mpsc::UnboundedSender<AckReq>,
}

impl Inner {
    /// Queue an ack in the next batch; true if it removed our delivery.
    pub(crate) async fn ack(&self, tag: &str, token: &str) -> Result<bool, BrokerError> {
        let (reply, rx) = oneshot::channel();
        self.acks
            .send(AckReq { tag: tag.to_string(), token: token.to_string(), reply })
            .map_err(|_| BrokerError::new(ErrorKind::Closed, "broker is shut down"))?;
        rx.await.map_err(|_| BrokerError::new(ErrorKind::Closed, "broker is shut down"))?
    }
}

/// Send queued acks in batches: one `EVALSHA` (atomic) per batch.
async fn ack_batcher(conn: Arc<Conn>, keys: Keys, mut rx: mpsc::UnboundedReceiver<AckReq>) {
    let (index, unacked, owner) = (keys.unacked_index(), keys.unacked(), keys.owner());
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut inv = crate::scripts::ACK_MANY.prepare_invoke();
        inv.key(&index).key(&unacked).key(&owner);
        for r in &batch {
            inv.arg(&r.tag).arg(&r.token);
        }
        let res: Result<Vec<i64>, BrokerError> =
            with_conn!(conn, BrokerError, "ack", |c| inv.invoke_async::<Vec<i64>>(c));
        match res {
            Ok(flags) => {
                for (i, r) in batch.into_iter().enumerate() {
                    let _ = r.reply.send(Ok(flags.get(i).copied().unwrap_or(0) == 1));
                }
            }
            Err(e) => {
                for r in batch {
                    let _ = r.reply.send(Err(BrokerError::new(e.kind(), e.to_string())));
                }
            }
        }
    }
}

/// The current time as kombu writes it (UNIX seconds, float).
pub(crate) fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A Redis broker laid out exactly as kombu 5.7's Redis transport.
///
/// Cheap to clone (one shared connection inside). See the crate docs for
/// the key layout and the reliability design.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker").field("url", &self.inner.display).finish()
    }
}

impl RedisBroker {
    /// Connect to `url` (`redis://[[user]:password@]host[:port][/db]`, or
    /// `rediss://` with the `tls` feature). Fails with
    /// [`ErrorKind::Config`] for a bad URL and [`ErrorKind::Connection`] when
    /// the server cannot be reached.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self, BrokerError> {
        let broker = Self::lazy(url, options)?;
        broker.ping().await?;
        Ok(broker)
    }

    /// Like [`connect`](Self::connect) but without contacting the server:
    /// the first command dials. Must be called inside a tokio runtime.
    pub fn lazy(url: &str, options: RedisOptions) -> Result<Self, BrokerError> {
        let parsed = url::parse(url).map_err(|e| BrokerError::new(e.kind(), e.0))?;
        let conn = Conn::new(&parsed, options.connect_timeout, options.response_timeout)
            .map_err(|e| map_err::<BrokerError>("invalid redis connection settings", e))?;
        let conn = Arc::new(conn);
        let keys = Keys::new(&options.global_keyprefix, parsed.db);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::runtime::Handle::try_current()
            .map_err(|_| BrokerError::new(ErrorKind::Config, "RedisBroker needs a tokio runtime"))?
            .spawn(ack_batcher(conn.clone(), keys.clone(), rx));
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                conn,
                keys,
                opts: options,
                display: parsed.display,
                declared: Mutex::new(HashSet::new()),
                acks: tx,
            }),
        })
    }

    /// The options in force.
    pub fn options(&self) -> &RedisOptions {
        &self.inner.opts
    }

    /// Number of deferred messages waiting for their due time (all queues).
    pub async fn delayed_len(&self) -> Result<u64, BrokerError> {
        let key = self.inner.keys.delayed();
        with_conn_read!(self.inner.conn, BrokerError, "ZCARD delayed", |c| redis::cmd("ZCARD")
            .arg(&key)
            .query_async::<u64>(c))
    }

    /// Number of unacked deliveries (all queues, all consumers, kombu's too).
    pub async fn unacked_len(&self) -> Result<u64, BrokerError> {
        let key = self.inner.keys.unacked();
        with_conn_read!(self.inner.conn, BrokerError, "HLEN unacked", |c| redis::cmd("HLEN")
            .arg(&key)
            .query_async::<u64>(c))
    }

    /// Run one restore scan now (normally every consumer does it
    /// periodically); returns how many deliveries were restored or
    /// dead-lettered.
    pub async fn restore_expired(&self) -> Result<u64, BrokerError> {
        maintenance::restore_scan(&self.inner).await
    }

    fn binding_cmds(&self, pipe: &mut redis::Pipeline, queue: &str) {
        let (exchange, key) = match self.inner.opts.task_queues.iter().find(|d| d.name == queue) {
            Some(d) => (d.exchange.as_str(), d.routing_key.as_str()),
            None => (queue, queue),
        };
        let member = binding_member(key, "", queue);
        pipe.cmd("SADD").arg(self.inner.keys.binding(exchange)).arg(&member).ignore();
        pipe.cmd("SADD").arg(self.inner.keys.binding_permanent(exchange)).arg(&member).ignore();
    }

    fn needs_binding(&self, queue: &str) -> bool {
        !self.inner.declared.lock().unwrap_or_else(|p| p.into_inner()).contains(queue)
    }

    fn mark_bound(&self, queues: impl IntoIterator<Item = String>) {
        self.inner.declared.lock().unwrap_or_else(|p| p.into_inner()).extend(queues);
    }
}

/// Dead-letter records read per round trip of a redrive.
const REDRIVE_BATCH: usize = 100;

/// What a redrive puts back on the queue for a dead-letter record: the
/// envelope inside, without qtask's restore counter (a redriven message
/// gets `max_deliveries` afresh), and the index (1–4) of the priority list
/// in [`Keys::queue_keys`] it goes to. `None` for a record without an
/// envelope (an unparseable message parked as `raw`): it stays parked.
fn redrive_envelope(raw: &[u8]) -> Option<(Vec<u8>, usize)> {
    let v: serde_json::Value = serde_json::from_slice(raw).ok()?;
    let mut env = v.get("envelope")?.clone();
    if !env.is_object() {
        return None;
    }
    if let Some(serde_json::Value::Object(h)) = env.get_mut("headers") {
        h.remove(DELIVERIES_HEADER);
    }
    let priority = env.get("properties").and_then(|p| p.get("priority")).and_then(|p| p.as_u64()).unwrap_or(0);
    let step = priority_step(priority.min(255) as u8);
    let index = PRIORITY_STEPS.iter().position(|s| *s == step).unwrap_or(0) + 1;
    Some((qcore::json::to_vec(&env).ok()?, index))
}

fn decode_dead_letter(queue: &str, raw: &[u8]) -> DeadLetter {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(raw).ok();
    let reason = parsed
        .as_ref()
        .and_then(|v| v.get("reason"))
        .and_then(|r| r.as_str())
        .unwrap_or("unreadable dead-letter record")
        .to_string();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("envelope"))
        .and_then(|e| envelope::decode_value(e.clone()).ok())
        .map(|e| e.message);
    let message = message.unwrap_or_else(|| {
        // A malformed envelope was parked as raw text: hand it out as the body.
        let body = parsed
            .as_ref()
            .and_then(|v| v.get("raw"))
            .and_then(|r| r.as_str())
            .map(|s| s.as_bytes().to_vec())
            .unwrap_or_else(|| raw.to_vec());
        Message {
            body,
            properties: Properties {
                content_type: "application/x-qtask-raw-envelope".into(),
                content_encoding: "binary".into(),
                ..Properties::default()
            },
            ..Message::default()
        }
    });
    DeadLetter { message, queue: queue.to_string(), reason }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.binding_cmds(&mut pipe, queue);
        with_conn!(self.inner.conn, BrokerError, "declare queue", |c| pipe.query_async::<()>(c))?;
        self.mark_bound([queue.to_string()]);
        Ok(())
    }

    async fn publish(&self, queue: &str, message: &Message) -> Result<(), BrokerError> {
        let tag = uuid::Uuid::new_v4().to_string();
        let env = envelope::encode(message, "", queue, &tag);
        let key = self.inner.keys.queue(queue, message.properties.priority);
        if self.needs_binding(queue) {
            let mut pipe = redis::pipe();
            self.binding_cmds(&mut pipe, queue);
            pipe.cmd("LPUSH").arg(&key).arg(&env).ignore();
            with_conn!(self.inner.conn, BrokerError, "publish", |c| pipe.query_async::<()>(c))?;
            self.mark_bound([queue.to_string()]);
        } else {
            with_conn!(self.inner.conn, BrokerError, "publish", |c| redis::cmd("LPUSH")
                .arg(&key)
                .arg(&env)
                .query_async::<i64>(c))?;
        }
        Ok(())
    }

    async fn publish_many(&self, items: &[(String, Message)]) -> Result<(), BrokerError> {
        let mut new_queues = HashSet::new();
        for chunk in items.chunks(1000) {
            let mut pipe = redis::pipe();
            for (queue, message) in chunk {
                if !new_queues.contains(queue) && self.needs_binding(queue) {
                    self.binding_cmds(&mut pipe, queue);
                    new_queues.insert(queue.clone());
                }
                let tag = uuid::Uuid::new_v4().to_string();
                let env = envelope::encode(message, "", queue, &tag);
                pipe.cmd("LPUSH").arg(self.inner.keys.queue(queue, message.properties.priority)).arg(env).ignore();
            }
            with_conn!(self.inner.conn, BrokerError, "publish", |c| pipe.query_async::<()>(c))?;
        }
        self.mark_bound(new_queues);
        Ok(())
    }

    async fn consume(&self, queues: &[String], options: ConsumeOptions) -> Result<Box<dyn Consumer>, BrokerError> {
        if queues.is_empty() {
            return Err(BrokerError::new(ErrorKind::Config, "consume needs at least one queue"));
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for q in queues {
            self.binding_cmds(&mut pipe, q);
        }
        with_conn!(self.inner.conn, BrokerError, "declare queues", |c| pipe.query_async::<()>(c))?;
        self.mark_bound(queues.iter().cloned());
        Ok(Box::new(consumer::RedisConsumer::start(self.inner.clone(), queues.to_vec(), options)))
    }

    async fn queue_len(&self, queue: &str) -> Result<u64, BrokerError> {
        let mut pipe = redis::pipe();
        for k in self.inner.keys.queue_keys(queue) {
            pipe.cmd("LLEN").arg(k);
        }
        let lens: Vec<u64> = with_conn_read!(self.inner.conn, BrokerError, "queue length", |c| pipe.query_async(c))?;
        Ok(lens.iter().sum())
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let keys = self.inner.keys.queue_keys(queue);
        for k in &keys {
            pipe.cmd("LLEN").arg(k);
        }
        for k in &keys {
            pipe.cmd("DEL").arg(k).ignore();
        }
        let lens: Vec<u64> = with_conn!(self.inner.conn, BrokerError, "purge", |c| pipe.query_async(c))?;
        Ok(lens.iter().sum())
    }

    fn capabilities(&self) -> Capabilities {
        // kombu's priority steps: 0 is taken first.
        Capabilities::none().priorities(Priorities::LowerFirst).defer(true)
    }

    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }

    async fn publish_fanout(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
        if exchange == qcore::control::REPLY_EXCHANGE {
            return reply::publish(&self.inner, routing_key, message).await;
        }
        let tag = uuid::Uuid::new_v4().to_string();
        let env = envelope::encode(message, exchange, routing_key, &tag);
        let channel = self.inner.keys.fanout_channel(exchange, routing_key);
        with_conn!(self.inner.conn, BrokerError, "publish fanout", |c| redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(&env)
            .query_async::<i64>(c))?;
        Ok(())
    }

    /// `celery.pidbox` and `celeryev` are pub/sub; `reply.celery.pidbox` is
    /// a direct exchange, so a subscription to it with a routing key is the
    /// client's reply list (see `reply.rs`).
    async fn subscribe(&self, exchange: &str, pattern: &str) -> Result<Box<dyn Subscription>, BrokerError> {
        if exchange == qcore::control::REPLY_EXCHANGE {
            return Ok(Box::new(reply::ReplySubscription::open(self.inner.clone(), pattern).await?));
        }
        let sub = fanout::RedisSubscription::open(self.inner.clone(), exchange, pattern).await?;
        Ok(Box::new(sub))
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        let v: Value =
            with_conn!(self.inner.conn, BrokerError, "ping", |c| redis::cmd("PING").query_async::<Value>(c))?;
        match v {
            Value::SimpleString(s) if s == "PONG" => Ok(()),
            Value::Okay => Ok(()),
            other => Err(BrokerError::new(ErrorKind::Protocol, format!("unexpected PING reply {other:?}"))),
        }
    }

    fn describe(&self) -> String {
        self.inner.display.clone()
    }
}

/// Dead letters live in `qtask.dead.<queue>` (a list, oldest first).
#[async_trait]
impl DeadLetters for RedisBroker {
    async fn list(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = self.inner.keys.dead(queue);
        let stop = i64::try_from(limit).unwrap_or(i64::MAX).saturating_sub(1);
        let raws: Vec<Vec<u8>> =
            with_conn_read!(self.inner.conn, BrokerError, "dead letters", |c| redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(stop)
                .query_async(c))?;
        Ok(raws.iter().map(|r| decode_dead_letter(queue, r)).collect())
    }

    async fn count(&self, queue: &str) -> Result<u64, BrokerError> {
        let key = self.inner.keys.dead(queue);
        with_conn_read!(self.inner.conn, BrokerError, "count dead letters", |c| redis::cmd("LLEN")
            .arg(&key)
            .query_async::<u64>(c))
    }

    /// Batches of the REDRIVE script: each batch moves its records in one
    /// atomic step, so no record is ever out of both the dead list and the
    /// queue, and concurrent redrivers never move one record twice.
    async fn redrive(&self, queue: &str, limit: usize) -> Result<u64, BrokerError> {
        let keys = &self.inner.keys;
        let dead = keys.dead(queue);
        let lists = keys.queue_keys(queue);
        let (mut moved, mut remaining, mut skip, mut stale) = (0u64, limit, 0usize, 0u32);
        while remaining > 0 {
            let n = remaining.min(REDRIVE_BATCH);
            let raws: Vec<Vec<u8>> =
                with_conn_read!(self.inner.conn, BrokerError, "read dead letters", |c| redis::cmd("LRANGE")
                    .arg(&dead)
                    .arg(skip)
                    .arg(skip + n - 1)
                    .query_async(c))?;
            if raws.is_empty() {
                break;
            }
            let mut inv = crate::scripts::REDRIVE.prepare_invoke();
            inv.key(&dead);
            for k in &lists {
                inv.key(k);
            }
            inv.arg(skip).arg(raws.len());
            for raw in &raws {
                match redrive_envelope(raw) {
                    Some((env, dest)) => inv.arg(raw).arg(env).arg(dest),
                    None => inv.arg(raw).arg("").arg(0),
                };
            }
            let (m, matched, kept): (u64, usize, usize) =
                with_conn!(self.inner.conn, BrokerError, "redrive dead letters", |c| inv.invoke_async(c))?;
            moved += m;
            remaining = remaining.saturating_sub(m as usize);
            skip += kept;
            if matched == raws.len() {
                if raws.len() < n {
                    break; // the end of the list
                }
                stale = 0;
            } else {
                // Another redriver or a purge changed the list since it was
                // read: read again (giving up if it keeps changing).
                stale = if m == 0 && kept == 0 { stale + 1 } else { 0 };
                if stale >= 10 {
                    break;
                }
            }
        }
        Ok(moved)
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let key = self.inner.keys.dead(queue);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("LLEN").arg(&key);
        pipe.cmd("DEL").arg(&key).ignore();
        let (n,): (u64,) = with_conn!(self.inner.conn, BrokerError, "purge dead letters", |c| pipe.query_async(c))?;
        Ok(n)
    }
}
