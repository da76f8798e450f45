//! The Redis [`ResultBackend`], with Celery's keys and chord join.

mod pubsub;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, Value};
use qcore::backend::poll_until_ready;
use qcore::{BackendError, ChordJoin, ChordPart, ErrorKind, ResultBackend, ResultCodec, ResultMeta, State};
use serde_json::{json, Value as Json};
use tokio::sync::{mpsc, oneshot, OnceCell};

use crate::conn::{map_err, with_conn, with_conn_read, Conn};
use crate::keys::Keys;
use crate::scripts;
use crate::url;
use pubsub::{Event, Hub};

/// Options of [`RedisBackend`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisBackendOptions {
    /// Prefix of every key (Celery's `result_backend_transport_options`
    /// `global_keyprefix`). Default empty.
    pub global_keyprefix: String,
    /// Time allowed to open a connection. Default 5 s.
    pub connect_timeout: Duration,
    /// Time allowed for one command's reply. Default 30 s.
    pub response_timeout: Duration,
    /// How documents are written and read (`result_serializer`,
    /// `result_accept_content`). Default: JSON, reading JSON and msgpack.
    pub codec: ResultCodec,
}

impl Default for RedisBackendOptions {
    fn default() -> Self {
        RedisBackendOptions {
            global_keyprefix: String::new(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            codec: ResultCodec::default(),
        }
    }
}

impl RedisBackendOptions {
    /// Set the key prefix.
    pub fn global_keyprefix(mut self, prefix: impl Into<String>) -> Self {
        self.global_keyprefix = prefix.into();
        self
    }

    /// Set how documents are written and read.
    pub fn codec(mut self, codec: ResultCodec) -> Self {
        self.codec = codec;
        self
    }

    /// Options from a qtask [`Config`](qcore::Config), the one place the
    /// backend's settings are read: `result_backend_transport_options.global_keyprefix`,
    /// `result_serializer` and `result_accept_content` (see [`ResultCodec::from_config`]).
    pub fn from_config(config: &qcore::Config) -> Self {
        let mut o = RedisBackendOptions { codec: ResultCodec::from_config(config), ..Default::default() };
        if let Some(p) = &config.result_backend_transport_options.global_keyprefix {
            o.global_keyprefix = p.clone();
        }
        o
    }
}

struct Inner {
    conn: Arc<Conn>,
    keys: Keys,
    opts: RedisBackendOptions,
    display: String,
    hub: OnceCell<Arc<Hub>>,
    stores: std::sync::Mutex<Option<mpsc::UnboundedSender<StoreReq>>>,
}

/// One result document waiting to be written in a batch.
struct StoreReq {
    key: String,
    doc: Vec<u8>,
    mode: &'static str,
    value: u128,
    reply: oneshot::Sender<Result<bool, BackendError>>,
}

/// Most documents written by one script call.
const STORE_BATCH: usize = 256;

/// Write queued result documents in batches: the store script calls of
/// concurrent tasks pipelined together, so that they share a round trip. A store is answered only
/// after its batch was written.
async fn store_batcher(conn: Arc<Conn>, mut rx: mpsc::UnboundedReceiver<StoreReq>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < STORE_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // One EVALSHA of the store script per document (each guarded and
        // published on its own, as a single store), all pipelined in one
        // write and one round trip.
        let script = &*scripts::STORE_RESULT;
        let mut pipe = redis::pipe();
        for r in &batch {
            pipe.cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(1)
                .arg(&r.key)
                .arg(&r.doc)
                .arg(r.mode)
                .arg(r.value.to_string());
        }
        let res: Result<Vec<i64>, BackendError> = with_conn!(conn, BackendError, "store result", |c| async {
            match pipe.query_async::<Vec<i64>>(&mut *c).await {
                // Not loaded (server restarted or flushed): no call ran; load and send again.
                Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
                    script.load_async(&mut *c).await?;
                    pipe.query_async::<Vec<i64>>(&mut *c).await
                }
                r => r,
            }
        });
        match res {
            Ok(flags) => {
                for (i, r) in batch.into_iter().enumerate() {
                    let _ = r.reply.send(Ok(flags.get(i).copied().unwrap_or(0) == 1));
                }
            }
            Err(e) => {
                for r in batch {
                    let _ = r.reply.send(Err(BackendError::new(e.kind(), e.to_string())));
                }
            }
        }
    }
}

/// The Redis result backend: `celery-task-meta-<id>` documents written with
/// `SETEX` + `PUBLISH`, `celery-taskset-meta-<gid>` groups, and Celery's
/// native chord join keys. Cheap to clone.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend").field("url", &self.inner.display).finish()
    }
}

/// `(mode, value)` for the store script: `ex` whole seconds, `px`
/// milliseconds, or no expiry.
fn expiry(ttl: Option<Duration>) -> (&'static str, u128) {
    match ttl {
        // Celery writes without expiry when `result_expires` is 0/None.
        None => ("", 0),
        Some(t) if t.is_zero() => ("", 0),
        Some(t) if t.subsec_nanos() == 0 && t.as_secs() > 0 => ("ex", u128::from(t.as_secs())),
        Some(t) => ("px", t.as_millis().max(1)),
    }
}

/// Whole seconds for `EXPIRE`/`EX` (at least 1); 0 = none.
fn ttl_secs(ttl: Option<Duration>) -> u64 {
    ttl.filter(|t| !t.is_zero()).map(|t| t.as_secs_f64().ceil().max(1.0) as u64).unwrap_or(0)
}

fn part_from(codec: &ResultCodec, elem: &[u8], score: f64) -> ChordPart {
    let index = if score.is_finite() && score >= 0.0 { score as u64 } else { 0 };
    match codec.decode::<Json>("chord result", elem) {
        Ok(Json::Array(a)) if a.len() >= 4 => ChordPart {
            task_id: a[1].as_str().unwrap_or_default().to_string(),
            index,
            status: State::parse(a[2].as_str().unwrap_or("FAILURE")),
            result: a[3].clone(),
        },
        _ => ChordPart {
            task_id: String::new(),
            index,
            status: State::Failure,
            result: json!({"exc_type": "ChordError", "exc_message": [format!("unreadable chord result {:?}", String::from_utf8_lossy(elem))], "exc_module": "celery.exceptions"}),
        },
    }
}

fn bulk(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Int(n)) => *n,
        _ => 0,
    }
}

impl RedisBackend {
    /// Connect to `url` (`redis://...` as for the broker). Fails with
    /// [`ErrorKind::Config`] for a bad URL and [`ErrorKind::Connection`]
    /// when the server cannot be reached.
    pub async fn connect(url: &str, options: RedisBackendOptions) -> Result<Self, BackendError> {
        let backend = Self::lazy(url, options)?;
        backend.ping().await?;
        Ok(backend)
    }

    /// Like [`connect`](Self::connect) but without contacting the server.
    pub fn lazy(url: &str, options: RedisBackendOptions) -> Result<Self, BackendError> {
        let parsed = url::parse(url).map_err(|e| BackendError::new(e.kind(), e.0))?;
        let conn = Conn::new(&parsed, options.connect_timeout, options.response_timeout)
            .map_err(|e| map_err::<BackendError>("invalid redis connection settings", e))?;
        Ok(RedisBackend {
            inner: Arc::new(Inner {
                conn: Arc::new(conn),
                keys: Keys::new(&options.global_keyprefix, parsed.db),
                opts: options,
                display: parsed.display,
                hub: OnceCell::new(),
                stores: std::sync::Mutex::new(None),
            }),
        })
    }

    /// Whether the server is reachable now (readiness).
    pub async fn ping(&self) -> Result<(), BackendError> {
        with_conn_read!(self.inner.conn, BackendError, "ping", |c| redis::cmd("PING").query_async::<Value>(c))?;
        Ok(())
    }

    async fn hub(&self) -> Arc<Hub> {
        self.inner
            .hub
            .get_or_init(|| async { Hub::start(self.inner.conn.clone(), self.inner.opts.connect_timeout) })
            .await
            .clone()
    }

    fn decode(&self, doc: &[u8]) -> Result<ResultMeta, BackendError> {
        self.inner.opts.codec.decode_meta(doc).map_err(|e| BackendError::new(ErrorKind::Serialization, e.to_string()))
    }

    async fn get_ready(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        Ok(self.get(task_id).await?.filter(|m| m.status.is_ready()))
    }
}

#[async_trait]
impl ResultBackend for RedisBackend {
    async fn store(&self, meta: &ResultMeta, ttl: Option<Duration>) -> Result<(), BackendError> {
        let key = self.inner.keys.task_meta(&meta.task_id);
        let doc = self.inner.opts.codec.encode_meta(meta)?;
        let (mode, value) = expiry(ttl);
        // The batcher is started by the first store, inside the caller's
        // runtime (again if that runtime is gone); it ends when the backend
        // is dropped.
        let tx = {
            let mut g = self.inner.stores.lock().unwrap_or_else(|p| p.into_inner());
            match g.as_ref() {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(store_batcher(self.inner.conn.clone(), rx));
                    *g = Some(tx.clone());
                    tx
                }
            }
        };
        let (reply, rx) = oneshot::channel();
        let closed = || BackendError::new(ErrorKind::Closed, "result store batcher stopped");
        tx.send(StoreReq { key, doc, mode, value, reply }).map_err(|_| closed())?;
        let written = rx.await.map_err(|_| closed())??;
        if !written {
            tracing::debug!(task_id = %meta.task_id, state = %meta.status, "SUCCESS already stored; write skipped");
        }
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        let key = self.inner.keys.task_meta(task_id);
        let raw: Option<Vec<u8>> = with_conn_read!(self.inner.conn, BackendError, "get result", |c| redis::cmd("GET")
            .arg(&key)
            .query_async(c))?;
        raw.map(|r| self.decode(&r)).transpose()
    }

    async fn get_many(&self, task_ids: &[String]) -> Result<Vec<Option<ResultMeta>>, BackendError> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for id in task_ids {
            cmd.arg(self.inner.keys.task_meta(id));
        }
        let raws: Vec<Option<Vec<u8>>> =
            with_conn_read!(self.inner.conn, BackendError, "get results", |c| cmd.query_async(c))?;
        raws.into_iter().map(|r| r.map(|r| self.decode(&r)).transpose()).collect()
    }

    async fn wait(&self, task_id: &str, timeout: Duration) -> Result<ResultMeta, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || BackendError::new(ErrorKind::Timeout, format!("task {task_id} not ready after {timeout:?}"));
        let key = self.inner.keys.task_meta(task_id);
        let hub = self.hub().await;
        let mut waiter = match tokio::time::timeout_at(deadline, hub.subscribe(&key)).await {
            Ok(w) => w?,
            Err(_) => return Err(timed_out()),
        };
        // Subscribed first, then read: a store between the two is seen either
        // way. A read that fails while the server is away is retried when the
        // pub/sub connection is back (it sends a resync).
        let mut read = true;
        let mut last_error = None;
        loop {
            if read {
                read = false;
                match self.get_ready(task_id).await {
                    Ok(Some(m)) => return Ok(m),
                    Ok(None) => {}
                    Err(e) if e.is_retryable() => last_error = Some(e),
                    Err(e) => return Err(e),
                }
            }
            match tokio::time::timeout_at(deadline, waiter.rx.recv()).await {
                Err(_) => return Err(last_error.unwrap_or_else(timed_out)),
                Ok(None) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    return poll_until_ready(self, task_id, left).await;
                }
                Ok(Some(Event::Payload(p))) => match self.decode(&p) {
                    Ok(m) if m.status.is_ready() => return Ok(m),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(task_id, error = %e, "unreadable result published"),
                },
                Ok(Some(Event::Resync)) => read = true,
            }
        }
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        let key = self.inner.keys.task_meta(task_id);
        with_conn!(self.inner.conn, BackendError, "forget result", |c| redis::cmd("DEL")
            .arg(&key)
            .query_async::<i64>(c))?;
        Ok(())
    }

    async fn save_group(&self, group_id: &str, task_ids: &[String], ttl: Option<Duration>) -> Result<(), BackendError> {
        let members: Vec<Json> = task_ids.iter().map(|id| json!([[id, null], null])).collect();
        let doc = self.inner.opts.codec.encode(&json!({"result": [[group_id, null], members]}))?;
        let key = self.inner.keys.taskset_meta(group_id);
        let mut pipe = redis::pipe();
        pipe.atomic();
        match expiry(ttl) {
            ("ex", s) => pipe.cmd("SETEX").arg(&key).arg(s.to_string()).arg(&doc).ignore(),
            ("px", ms) => pipe.cmd("PSETEX").arg(&key).arg(ms.to_string()).arg(&doc).ignore(),
            _ => pipe.cmd("SET").arg(&key).arg(&doc).ignore(),
        };
        pipe.cmd("PUBLISH").arg(&key).arg(&doc).ignore();
        with_conn!(self.inner.conn, BackendError, "save group", |c| pipe.query_async::<()>(c))?;
        Ok(())
    }

    async fn get_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError> {
        let key = self.inner.keys.taskset_meta(group_id);
        let raw: Option<Vec<u8>> = with_conn_read!(self.inner.conn, BackendError, "get group", |c| redis::cmd("GET")
            .arg(&key)
            .query_async(c))?;
        let Some(raw) = raw else { return Ok(None) };
        let bad = || BackendError::new(ErrorKind::Serialization, format!("unreadable group document for {group_id}"));
        let doc: Json = self.inner.opts.codec.decode("group document", &raw)?;
        let members = doc.get("result").and_then(|r| r.get(1)).and_then(Json::as_array).ok_or_else(bad)?;
        members
            .iter()
            .map(|m| m.get(0).and_then(|t| t.get(0)).and_then(Json::as_str).map(str::to_owned).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    async fn chord_init(&self, group_id: &str, size: u64, ttl: Option<Duration>) -> Result<(), BackendError> {
        let base = self.inner.keys.taskset_meta(group_id);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("DEL").arg(format!("{base}.c")).ignore();
        let set = pipe.cmd("SET").arg(format!("{base}.s")).arg(size.to_string());
        match ttl_secs(ttl) {
            0 => set.ignore(),
            s => set.arg("EX").arg(s).ignore(),
        };
        with_conn!(self.inner.conn, BackendError, "chord init", |c| pipe.query_async::<()>(c))?;
        Ok(())
    }

    async fn chord_part(
        &self,
        group_id: &str,
        part: &ChordPart,
        ttl: Option<Duration>,
    ) -> Result<ChordJoin, BackendError> {
        let base = self.inner.keys.taskset_meta(group_id);
        let elem = self.inner.opts.codec.encode(&json!([1, part.task_id, part.status.as_str(), part.result]))?;
        let mut inv = scripts::CHORD_JOIN.prepare_invoke();
        for suffix in ["j", "t", "s", "d", "c"] {
            inv.key(format!("{base}.{suffix}"));
        }
        inv.arg(&part.task_id).arg(&elem).arg(part.index).arg(ttl_secs(ttl));
        let v: Vec<Value> =
            with_conn!(self.inner.conn, BackendError, "chord join", |c| inv.invoke_async::<Vec<Value>>(c))?;
        let (code, done, size) = (int(v.first()), int(v.get(1)), int(v.get(2)));
        match code {
            1 => {
                let mut parts: Vec<ChordPart> = v
                    .get(3..)
                    .unwrap_or_default()
                    .chunks(2)
                    .filter_map(|pair| {
                        let elem = bulk(pair.first()?)?;
                        let score =
                            bulk(pair.get(1)?).and_then(|s| std::str::from_utf8(s).ok()?.parse::<f64>().ok())?;
                        Some(part_from(&self.inner.opts.codec, elem, score))
                    })
                    .collect();
                parts.sort_by_key(|p| p.index);
                Ok(ChordJoin::Complete(parts))
            }
            0 => Ok(ChordJoin::Waiting { done: done.max(0) as u64, size: size.max(0) as u64 }),
            _ => Ok(ChordJoin::Duplicate),
        }
    }

    fn describe(&self) -> String {
        self.inner.display.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_follows_celery() {
        assert_eq!(expiry(Some(Duration::from_secs(86_400))), ("ex", 86_400));
        assert_eq!(expiry(Some(Duration::from_millis(1500))), ("px", 1500));
        assert_eq!(expiry(Some(Duration::ZERO)), ("", 0));
        assert_eq!(expiry(None), ("", 0));
        assert_eq!(ttl_secs(Some(Duration::from_millis(1500))), 2);
        assert_eq!(ttl_secs(Some(Duration::ZERO)), 0);
    }

    #[test]
    fn unreadable_chord_results_become_failures() {
        let codec = ResultCodec::default();
        let p = part_from(&codec, b"[1, \"t\", \"SUCCESS\", 5]", 2.0);
        assert_eq!((p.task_id.as_str(), p.index, p.status, p.result), ("t", 2, State::Success, json!(5)));
        let bad = part_from(&codec, b"garbage", 1.0);
        let packed = ResultCodec::new(qcore::ContentType::Msgpack).encode(&json!([1, "m", "SUCCESS", [1, 2]])).unwrap();
        let p = part_from(&codec, &packed, 0.0);
        assert_eq!((p.task_id.as_str(), p.status, p.result), ("m", State::Success, json!([1, 2])));
        assert_eq!(bad.status, State::Failure);
    }
}
