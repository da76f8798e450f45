//! The consumer: atomic pop-and-record fetches, blocking peeks to wait
//! without taking anything, prefetch accounting, reconnect with backoff.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, Value};
use qcore::{BrokerError, ConsumeOptions, Consumer, Delivery, ErrorKind};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::acker::RedisAcker;
use super::maintenance::{self, dead_record};
use super::{now_secs, Inner};
use crate::conn::{backoff, with_conn, Conn};
use crate::envelope;
use crate::keys::PRIORITY_STEPS;
use crate::scripts;

/// Longest wait for half the prefetch window to be free before refilling
/// the part that is.
const REFILL_WAIT: Duration = Duration::from_millis(2);

/// What a consumer and its ackers share: the deliveries it holds.
pub(crate) struct ConsumerState {
    /// Owner token written to `qtask.unacked_owner` for every delivery.
    pub(crate) token: String,
    in_flight: Mutex<HashSet<String>>,
    room: Notify,
    /// False once the consumer is dropped (its ackers may live on).
    pub(crate) alive: AtomicBool,
}

impl ConsumerState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    pub(crate) fn holds(&self, tag: &str) -> bool {
        self.lock().contains(tag)
    }

    fn count(&self) -> usize {
        self.lock().len()
    }

    fn hold(&self, tags: impl IntoIterator<Item = String>) {
        self.lock().extend(tags);
    }

    /// Stop holding (refreshing) `tag` and make room for another delivery.
    pub(crate) fn release(&self, tag: &str) {
        if self.lock().remove(tag) {
            self.room.notify_one();
        }
    }
}

/// A message popped from a queue and recorded as unacked.
struct Fetched {
    queue: usize,
    tag: String,
    env: Vec<u8>,
}

pub(crate) struct RedisConsumer {
    inner: Arc<Inner>,
    state: Arc<ConsumerState>,
    queues: Vec<String>,
    rotation: usize,
    prefetch: usize,
    buffer: VecDeque<Fetched>,
    pending: Option<JoinHandle<Result<Vec<Fetched>, BrokerError>>>,
    arm: watch::Sender<u64>,
    generation: u64,
    wake: Arc<Notify>,
    waiters: Vec<JoinHandle<()>>,
    failures: u32,
    retry_at: Option<Instant>,
}

impl RedisConsumer {
    pub(crate) fn start(inner: Arc<Inner>, queues: Vec<String>, options: ConsumeOptions) -> Self {
        let state = Arc::new(ConsumerState {
            token: format!("{}:{}", uuid::Uuid::new_v4().simple(), options.tag),
            in_flight: Mutex::new(HashSet::new()),
            room: Notify::new(),
            alive: AtomicBool::new(true),
        });
        tokio::spawn(maintenance::run(inner.clone(), Arc::downgrade(&state)));
        let (arm, arm_rx) = watch::channel(0u64);
        let wake = Arc::new(Notify::new());
        let block = inner.opts.idle_block.max(Duration::from_millis(100));
        let mut waiters = Vec::new();
        for q in &queues {
            for key in inner.keys.queue_keys(q) {
                waiters.push(tokio::spawn(waiter(inner.conn.clone(), key, arm_rx.clone(), wake.clone(), block)));
            }
        }
        RedisConsumer {
            inner,
            state,
            queues,
            rotation: 0,
            prefetch: options.prefetch.max(1),
            buffer: VecDeque::new(),
            pending: None,
            arm,
            generation: 0,
            wake,
            waiters,
            failures: 0,
            retry_at: None,
        }
    }

    /// Start an atomic fetch of up to `max` messages in a task of its own, so
    /// that cancelling `recv` never loses a fetched batch.
    fn spawn_fetch(&mut self, max: usize) -> JoinHandle<Result<Vec<Fetched>, BrokerError>> {
        let k = &self.inner.keys;
        let n = self.queues.len();
        let r = self.rotation % n;
        self.rotation = self.rotation.wrapping_add(1);
        let mut plan = Vec::with_capacity(n * PRIORITY_STEPS.len());
        let mut inv = scripts::FETCH.prepare_invoke();
        inv.key(k.unacked_index()).key(k.unacked()).key(k.owner());
        for step in PRIORITY_STEPS {
            for j in 0..n {
                let qi = (r + j) % n;
                inv.key(k.queue(&self.queues[qi], step));
                plan.push(qi);
            }
        }
        inv.arg(now_secs()).arg(max).arg(&self.state.token).arg(uuid::Uuid::new_v4().to_string()).arg(plan.len());
        for &qi in &plan {
            let q = &self.queues[qi];
            inv.arg(qcore::json::to_vec(q).unwrap_or_default()).arg(k.dead(q));
        }
        let inner = self.inner.clone();
        let state = self.state.clone();
        tokio::spawn(async move {
            let v: Value = with_conn!(inner.conn, BrokerError, "fetch messages", |c| inv.invoke_async::<Value>(c))?;
            let items = match v {
                Value::Array(items) => items,
                other => {
                    return Err(BrokerError::new(ErrorKind::Protocol, format!("unexpected fetch reply {other:?}")))
                }
            };
            let mut out = Vec::with_capacity(items.len() / 3);
            let mut it = items.into_iter();
            while let (Some(i), Some(tag), Some(env)) = (it.next(), it.next(), it.next()) {
                let (Value::Int(i), Value::BulkString(tag), Value::BulkString(env)) = (i, tag, env) else {
                    return Err(BrokerError::new(ErrorKind::Protocol, "unexpected fetch reply item"));
                };
                let queue = usize::try_from(i - 1).ok().and_then(|i| plan.get(i).copied()).unwrap_or(0);
                out.push(Fetched { queue, tag: String::from_utf8_lossy(&tag).into_owned(), env });
            }
            state.hold(out.iter().map(|f| f.tag.clone()));
            Ok(out)
        })
    }

    /// Turn a fetched envelope into a delivery; a malformed one is
    /// dead-lettered (in the background) and skipped.
    fn deliver(&self, f: Fetched) -> Option<Delivery> {
        let queue = self.queues[f.queue].clone();
        match envelope::decode(&f.env) {
            Ok(env) => {
                let priority = env.message.properties.priority;
                let acker =
                    RedisAcker::new(self.inner.clone(), self.state.clone(), f.tag, queue.clone(), priority, f.env);
                Some(Delivery { message: env.message, queue, redelivered: env.redelivered, acker: Arc::new(acker) })
            }
            Err(e) => {
                let reason = format!("malformed message: {e}");
                tracing::error!(queue = %queue, delivery_tag = %f.tag, %reason, "dead-lettering message");
                let (inner, state) = (self.inner.clone(), self.state.clone());
                tokio::spawn(async move {
                    let record = dead_record(&reason, &queue, &f.env);
                    let dest = inner.keys.dead(&queue);
                    let r =
                        maintenance::settle(&inner, &f.tag, "owner", &state.token, b"", "rpush", &dest, &record, 0.0)
                            .await;
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "dead-lettering failed; the message is restored after the visibility timeout");
                    }
                    state.release(&f.tag);
                });
                None
            }
        }
    }

    /// Wait until a waiter saw a message arrive (or `idle_block` passed).
    async fn idle_wait(&mut self) {
        self.generation = self.generation.wrapping_add(1).max(1);
        let _ = self.arm.send(self.generation);
        let fallback = self.inner.opts.idle_block + Duration::from_secs(1);
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(fallback) => {}
        }
    }
}

#[async_trait]
impl Consumer for RedisConsumer {
    async fn recv(&mut self) -> Result<Option<Delivery>, BrokerError> {
        loop {
            while let Some(f) = self.buffer.pop_front() {
                if let Some(d) = self.deliver(f) {
                    return Ok(Some(d));
                }
            }
            if let Some(handle) = self.pending.as_mut() {
                let res = handle.await;
                self.pending = None;
                match res {
                    Ok(Ok(batch)) if batch.is_empty() => self.idle_wait().await,
                    Ok(Ok(batch)) => {
                        self.failures = 0;
                        self.buffer.extend(batch);
                    }
                    Ok(Err(e)) => {
                        self.failures = self.failures.saturating_add(1);
                        self.retry_at = Some(Instant::now() + backoff(self.failures));
                        return Err(e);
                    }
                    Err(e) => return Err(BrokerError::new(ErrorKind::Other, format!("fetch task failed: {e}"))),
                }
                continue;
            }
            while self.state.count() >= self.prefetch {
                self.state.room.notified().await;
            }
            // Refill in batches: wait (briefly) until at least half the
            // window is free, rather than fetching one or two per settled
            // delivery. Bounded, so that free slots never wait long.
            let low = (self.prefetch / 2).max(1);
            if self.prefetch - self.state.count().min(self.prefetch) < low {
                let deadline = Instant::now() + REFILL_WAIT;
                while self.prefetch - self.state.count().min(self.prefetch) < low {
                    if tokio::time::timeout_at(deadline, self.state.room.notified()).await.is_err() {
                        break;
                    }
                }
            }
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
                self.retry_at = None;
            }
            let room = self.prefetch - self.state.count().min(self.prefetch);
            if room == 0 {
                continue;
            }
            self.pending = Some(self.spawn_fetch(room));
        }
    }
}

impl Drop for RedisConsumer {
    fn drop(&mut self) {
        self.state.alive.store(false, Ordering::Release);
        for w in &self.waiters {
            w.abort();
        }
        // Fetched but never handed out: give them back at once instead of
        // waiting for the visibility timeout.
        let buffered: Vec<Fetched> = self.buffer.drain(..).collect();
        let pending = self.pending.take();
        if buffered.is_empty() && pending.is_none() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (inner, state, queues) = (self.inner.clone(), self.state.clone(), self.queues.clone());
        rt.spawn(async move {
            let mut items = buffered;
            if let Some(p) = pending {
                if let Ok(Ok(batch)) = p.await {
                    items.extend(batch);
                }
            }
            for f in items {
                let priority = envelope::decode(&f.env).map(|e| e.message.properties.priority).unwrap_or(0);
                let dest = inner.keys.queue(&queues[f.queue], priority);
                let r = maintenance::settle(&inner, &f.tag, "owner", &state.token, b"", "rpush", &dest, &f.env, 0.0).await;
                if let Err(e) = r {
                    tracing::debug!(error = %e, "returning a prefetched message failed; visibility timeout restores it");
                }
                state.release(&f.tag);
            }
        });
    }
}

/// Block until `key` is non-empty **without taking anything**:
/// `BLMOVE key key RIGHT RIGHT` pops the tail and pushes it back in the same
/// place atomically, so the list is unchanged and nothing can be lost. Armed
/// by the consumer when it found nothing; reports to `wake`.
async fn waiter(conn: Arc<Conn>, key: String, mut arm: watch::Receiver<u64>, wake: Arc<Notify>, block: Duration) {
    let mut c: Option<MultiplexedConnection> = None;
    let mut served = 0u64;
    let mut failures = 0u32;
    let timeout = format!("{:.3}", block.as_secs_f64());
    loop {
        let generation = match arm.wait_for(|g| *g != 0 && *g != served).await {
            Ok(g) => *g,
            Err(_) => return,
        };
        if c.is_none() {
            match conn.dedicated(block + Duration::from_secs(5)).await {
                Ok(x) => c = Some(x),
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::debug!(error = %e, "waiter cannot connect");
                    wake.notify_one();
                    tokio::time::sleep(backoff(failures)).await;
                    continue;
                }
            }
        }
        let Some(cx) = c.as_mut() else { continue };
        let r: redis::RedisResult<Option<Vec<u8>>> =
            redis::cmd("BLMOVE").arg(&key).arg(&key).arg("RIGHT").arg("RIGHT").arg(&timeout).query_async(cx).await;
        match r {
            Ok(Some(_)) => {
                served = generation;
                failures = 0;
                wake.notify_one();
            }
            Ok(None) => failures = 0,
            Err(e) => {
                c = None;
                failures = failures.saturating_add(1);
                tracing::debug!(error = %e, "waiter lost its connection");
                wake.notify_one();
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}
