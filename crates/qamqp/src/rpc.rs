//! [`RpcBackend`]: Celery's `rpc://` result backend.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use qcore::{
    BackendCapabilities, BackendError, BrokerError, ChordJoin, ChordPart, ChordSupport, ContentType, ErrorKind,
    Message, Properties, ResultBackend, ResultMeta, State,
};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::core::Core;
use crate::error::to_backend;
use crate::fields::short;
use crate::options::{backoff, AmqpOptions};
use crate::props;
use crate::url::AmqpUrl;

/// Settings of an [`RpcBackend`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RpcOptions {
    /// Name of this process's reply queue; the [`App`](qcore::App) sends it
    /// as the `reply_to` of every task. Default: a fresh uuid4 (Celery uses
    /// a per-process uuid too).
    pub reply_queue: Option<String>,
    /// `x-expires` of the reply queue (Celery: `result_expires`, 1 day):
    /// RabbitMQ deletes it once unused that long. `None`: no expiry, and the
    /// queue is auto-delete instead.
    pub expires: Option<Duration>,
    /// Send results persistent (`delivery_mode` 2, Celery's
    /// `result_persistent`); default transient (1), like Celery.
    pub persistent: bool,
    /// Serializer of the result messages (Celery's `result_serializer`).
    pub serializer: ContentType,
    /// Serializers of replies read (Celery's `result_accept_content`, else
    /// `accept_content`; `None`: JSON and msgpack). A reply in another one
    /// is logged and not delivered, as Celery refuses it.
    pub accept: Option<Vec<ContentType>>,
    /// Most results kept in memory; the oldest are dropped beyond it.
    pub cache_max: usize,
}

impl Default for RpcOptions {
    fn default() -> Self {
        RpcOptions {
            reply_queue: None,
            expires: Some(Duration::from_secs(86_400)),
            persistent: false,
            serializer: ContentType::Json,
            accept: None,
            cache_max: 10_000,
        }
    }
}

impl RpcOptions {
    /// Use this reply queue name.
    pub fn reply_queue(mut self, name: impl Into<String>) -> Self {
        self.reply_queue = Some(name.into());
        self
    }

    /// Set the reply queue's `x-expires` (`None`: auto-delete instead).
    pub fn expires(mut self, d: Option<Duration>) -> Self {
        self.expires = d;
        self
    }

    /// Send results persistent.
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// Serialize results with `ct`.
    pub fn serializer(mut self, ct: ContentType) -> Self {
        self.serializer = ct;
        self
    }

    /// Read only replies in these serializers (`None`: all).
    pub fn accept(mut self, accept: Option<Vec<ContentType>>) -> Self {
        self.accept = accept;
        self
    }

    /// Keep at most `n` results in memory.
    pub fn cache_max(mut self, n: usize) -> Self {
        self.cache_max = n.max(1);
        self
    }
}

#[derive(Default)]
struct Cache {
    metas: HashMap<String, ResultMeta>,
    order: VecDeque<String>,
}

impl Cache {
    /// Keep the latest state, except that SUCCESS is never replaced.
    fn put(&mut self, meta: ResultMeta, max: usize) {
        match self.metas.get_mut(&meta.task_id) {
            Some(old) if old.status == State::Success => {}
            Some(old) => *old = meta,
            None => {
                self.order.push_back(meta.task_id.clone());
                self.metas.insert(meta.task_id.clone(), meta);
                while self.order.len() > max {
                    if let Some(oldest) = self.order.pop_front() {
                        self.metas.remove(&oldest);
                    }
                }
            }
        }
    }
}

struct Inner {
    core: Arc<Core>,
    opts: RpcOptions,
    queue: String,
    cache: StdMutex<Cache>,
    changes: watch::Sender<u64>,
}

struct ReaderGuard(JoinHandle<()>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Celery's `rpc://` result backend: results travel as messages to the
/// caller's own reply queue.
///
/// * The reply queue (name = [`reply_queue`](Self::reply_queue), which the
///   [`App`](qcore::App) sends as every task's `reply_to`) is declared when
///   the backend is created, so it exists before any task is sent: non-durable,
///   `x-expires` = [`RpcOptions::expires`] (an `I` 86400000 by default, as
///   Celery declares it). It is not auto-delete as Celery's is: a consumer
///   that reconnects would otherwise lose the queue and every result sent
///   meanwhile (nobody else declares this private queue, so the difference
///   is invisible to Celery).
/// * A worker stores a state by publishing `{"task_id", "status", "result",
///   "traceback", "children"}` (Celery's field order and serializer) to the
///   default exchange with routing key = the request's `reply_to`,
///   `correlation_id` = task id, `delivery_mode` 1 (2 if
///   [`persistent`](RpcOptions::persistent)), without a confirm wait beyond
///   the broker's. Requests without `reply_to` are not answered (Celery
///   skips them too).
/// * The caller consumes its reply queue in the background from creation on
///   and keeps the latest state per task id in memory
///   ([`cache_max`](RpcOptions::cache_max) results): [`get`](ResultBackend::get)
///   reads that cache and [`wait`](ResultBackend::wait) is woken by the
///   next message (push, no polling). Python workers' replies are read the same way.
///
/// What `rpc://` cannot do (as in Celery): a state is only visible to the
/// process that sent the task (another process, or this one after a
/// restart, sees PENDING); results are not kept once read and do not
/// survive a broker restart unless persistent; no groups
/// (`save_group`/`get_group`) and no chords (`chord_init`/`chord_part`
/// return [`ErrorKind::Unsupported`]); the ttl of a store is ignored; a
/// store without a `reply_to` lands in this process's own cache.
#[derive(Clone)]
pub struct RpcBackend {
    inner: Arc<Inner>,
    _reader: Arc<ReaderGuard>,
}

impl std::fmt::Debug for RpcBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcBackend").field("reply_queue", &self.inner.queue).finish_non_exhaustive()
    }
}

impl RpcBackend {
    /// An `rpc://` backend on the broker at `broker_url` (Celery's rpc
    /// backend uses the broker connection settings), with connections of
    /// its own. [`AmqpBroker::rpc_backend`](crate::AmqpBroker::rpc_backend)
    /// shares the broker's instead.
    pub async fn connect(broker_url: &str, options: RpcOptions) -> Result<Self, BackendError> {
        let url = AmqpUrl::parse(broker_url).map_err(to_backend)?;
        let core = Core::new(url, AmqpOptions::default().connection_name("qtask-rpc"));
        Self::with_core(core, options).await
    }

    pub(crate) async fn with_core(core: Arc<Core>, opts: RpcOptions) -> Result<Self, BackendError> {
        let queue = opts.reply_queue.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let name = short(&queue, "reply queue name").map_err(to_backend)?;
        let (changes, _) = watch::channel(0u64);
        let inner = Arc::new(Inner { core, opts, queue, cache: StdMutex::new(Cache::default()), changes });
        // Declare and start consuming now: the queue must exist before the
        // first task is sent, or its result would be dropped as unroutable.
        let first = open_reader(&inner, &name).await.map_err(to_backend)?;
        let reader = tokio::spawn(read_loop(Arc::downgrade(&inner), name, Some(first)));
        Ok(RpcBackend { inner, _reader: Arc::new(ReaderGuard(reader)) })
    }

    /// The reply queue: use it as the `reply_to` of the tasks whose results
    /// this backend should see.
    pub fn reply_queue(&self) -> &str {
        &self.inner.queue
    }

    /// Send `meta` to the reply queue `reply_to` (the request's `reply_to`
    /// property), as Celery's rpc backend does on the worker side. Results
    /// addressed to this backend's own queue, or to no queue at all, go
    /// straight to its own cache.
    pub async fn store_reply(&self, meta: &ResultMeta, reply_to: Option<&str>) -> Result<(), BackendError> {
        let reply_to = reply_to.filter(|r| !r.is_empty());
        let Some(reply_to) = reply_to.filter(|r| *r != self.inner.queue) else {
            // Addressed to this process, or to nobody (a message without
            // reply_to, eager mode): keep it here.
            self.inner.put(meta.clone());
            return Ok(());
        };
        let message = self.inner.reply_message(meta).map_err(to_backend)?;
        let make = || props::encode(&message);
        self.inner.core.publish("", reply_to, &message.body, &make).await.map_err(to_backend)
    }
}

impl Inner {
    fn put(&self, meta: ResultMeta) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).put(meta, self.opts.cache_max);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn get(&self, id: &str) -> Option<ResultMeta> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).metas.get(id).cloned()
    }

    /// Celery's `_to_result` body and kombu's properties for it.
    fn reply_message(&self, meta: &ResultMeta) -> Result<Message, BrokerError> {
        let mut body = Map::new();
        body.insert("task_id".into(), Value::String(meta.task_id.clone()));
        body.insert("status".into(), Value::String(meta.status.to_string()));
        body.insert("result".into(), meta.result.clone());
        body.insert("traceback".into(), meta.traceback.clone().map_or(Value::Null, Value::String));
        body.insert("children".into(), meta.children.clone().map_or(Value::Null, Value::Array));
        let ct = self.opts.serializer;
        Ok(Message {
            headers: Map::new(),
            properties: Properties {
                content_type: ct.mime().into(),
                content_encoding: ct.encoding().into(),
                correlation_id: Some(meta.task_id.clone()),
                delivery_mode: if self.opts.persistent { 2 } else { 1 },
                ..Properties::default()
            },
            body: ct.encode(&body)?,
        })
    }

    fn on_message(&self, d: lapin::message::Delivery) {
        let (message, _) = props::decode(&d.properties, d.data);
        let accept = self.opts.accept.as_deref();
        let decoded = message.content_type().map_err(|e| e.to_string()).and_then(|ct| {
            if accept.is_some_and(|a| !a.contains(&ct)) {
                return Err(format!("{} is not in result_accept_content (it falls back to accept_content)", ct.mime()));
            }
            ct.decode::<Value>(&message.body).map_err(|e| e.to_string())
        });
        let mut value = match decoded {
            Ok(Value::Object(m)) => m,
            Ok(other) => {
                tracing::error!(body = %other, "ignoring an rpc reply that is not a map");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "ignoring an rpc reply that cannot be decoded");
                return;
            }
        };
        if let Some(id) = message.properties.correlation_id.clone() {
            value.entry("task_id").or_insert(Value::String(id));
        }
        match serde_json::from_value::<ResultMeta>(Value::Object(value)) {
            Ok(meta) => self.put(meta),
            Err(e) => tracing::error!(error = %e, "ignoring an rpc reply that is not a result document"),
        }
    }
}

async fn open_reader(inner: &Inner, name: &ShortString) -> Result<(lapin::Channel, lapin::Consumer), BrokerError> {
    let ch = inner.core.consume_link.channel().await?;
    let mut args = FieldTable::default();
    if let Some(exp) = inner.opts.expires {
        let ms = exp.as_millis().clamp(1, i32::MAX as u128) as i32;
        args.insert("x-expires".into(), AMQPValue::LongInt(ms));
    }
    let auto_delete = inner.opts.expires.is_none();
    ch.queue_declare(name.clone(), QueueDeclareOptions { auto_delete, ..Default::default() }, args)
        .await
        .map_err(|e| crate::error::broker_err(&format!("declaring the reply queue {:?}", inner.queue), e))?;
    let consumer = ch
        .basic_consume(
            name.clone(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .map_err(|e| crate::error::broker_err("consuming the reply queue", e))?;
    Ok((ch, consumer))
}

async fn read_loop(
    inner: std::sync::Weak<Inner>,
    name: ShortString,
    mut current: Option<(lapin::Channel, lapin::Consumer)>,
) {
    let mut failures = 0u32;
    loop {
        let Some((_ch, mut consumer)) = current.take() else {
            let Some(strong) = inner.upgrade() else { return };
            tokio::time::sleep(backoff(failures, strong.core.opts.reconnect_max_delay)).await;
            match open_reader(&strong, &name).await {
                Ok(c) => {
                    failures = 0;
                    current = Some(c);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "rpc reply queue: reconnecting");
                }
            }
            continue;
        };
        while let Some(item) = consumer.next().await {
            let Some(strong) = inner.upgrade() else { return };
            match item {
                Ok(d) => strong.on_message(d),
                Err(e) => {
                    tracing::warn!(error = %e, "rpc reply queue consumer lost its channel");
                    break;
                }
            }
        }
        failures = failures.saturating_add(1);
    }
}

fn unsupported(what: &str) -> BackendError {
    BackendError::new(
        ErrorKind::Unsupported,
        format!("the rpc result backend does not support {what} (as in Celery): use Redis, SQL or another store"),
    )
}

#[async_trait]
impl ResultBackend for RpcBackend {
    /// Results travel to the caller only: no groups, no chords (as in Celery).
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities::all().groups(false).chords(ChordSupport::Unsupported)
    }

    async fn store(&self, meta: &ResultMeta, _ttl: Option<Duration>) -> Result<(), BackendError> {
        self.inner.put(meta.clone());
        Ok(())
    }

    async fn store_for(
        &self,
        meta: &ResultMeta,
        _ttl: Option<Duration>,
        reply_to: Option<&str>,
    ) -> Result<(), BackendError> {
        self.store_reply(meta, reply_to).await
    }

    fn reply_to(&self) -> Option<String> {
        Some(self.inner.queue.clone())
    }

    async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        Ok(self.inner.get(task_id))
    }

    async fn wait(&self, task_id: &str, timeout: Duration) -> Result<ResultMeta, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.inner.changes.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(meta) = self.inner.get(task_id).filter(|m| m.status.is_ready()) {
                return Ok(meta);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Err(_) => {
                    return Err(BackendError::new(
                        ErrorKind::Timeout,
                        format!("task {task_id} not ready after {timeout:?}"),
                    ))
                }
                Ok(Err(_)) => return Err(BackendError::new(ErrorKind::Closed, "the rpc backend was closed")),
                Ok(Ok(())) => {}
            }
        }
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        let mut c = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        c.metas.remove(task_id);
        c.order.retain(|id| id != task_id);
        Ok(())
    }

    async fn save_group(&self, _group_id: &str, _ids: &[String], _ttl: Option<Duration>) -> Result<(), BackendError> {
        Err(unsupported("saving groups"))
    }

    async fn get_group(&self, _group_id: &str) -> Result<Option<Vec<String>>, BackendError> {
        Err(unsupported("saved groups"))
    }

    async fn chord_init(&self, _group_id: &str, _size: u64, _ttl: Option<Duration>) -> Result<(), BackendError> {
        Err(unsupported("chords"))
    }

    async fn chord_part(
        &self,
        _gid: &str,
        _part: &ChordPart,
        _ttl: Option<Duration>,
    ) -> Result<ChordJoin, BackendError> {
        Err(unsupported("chords"))
    }

    fn describe(&self) -> String {
        format!("rpc:// (reply queue {} on {})", self.inner.queue, self.inner.core.url.describe())
    }
}
