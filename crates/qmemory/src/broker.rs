//! [`MemoryBroker`]: queues, acks, dead letters and fanout in process memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qcore::broker::topic_matches;
use qcore::{
    Acker, Broker, BrokerError, Capabilities, ConsumeOptions, Consumer, DeadLetter, DeadLetters, Delivery, ErrorKind,
    Message, Priorities, Subscription,
};
use tokio::sync::{mpsc, Notify};

/// Priority levels: Celery's 0–9, 9 delivered first (as on AMQP).
const LEVELS: usize = 10;

/// Messages a slow fanout subscriber may fall behind before new ones are
/// dropped for it (fanout is not persistent, as on AMQP and Redis pub/sub).
const SUBSCRIPTION_BUFFER: usize = 65_536;

/// An in-process [`Broker`]: for tests, eager mode and single-process apps.
///
/// It keeps the whole [`Broker`] contract:
///
/// * **At least once.** Each delivery is tracked as unacked by the consumer
///   that received it. When a [`Consumer`] is dropped, its unacked deliveries
///   go back to the front of their queues at once, marked `redelivered`.
/// * **Order:** FIFO per queue and priority level. **Priorities** are Celery's
///   AMQP numbers: [`Properties::priority`](qcore::Properties::priority) 0–9,
///   **higher first**; values above 9 count as 9.
/// * **Prefetch:** a consumer never holds more than
///   [`ConsumeOptions::prefetch`] unacked deliveries. A consumer of several
///   queues takes them in turn, so earlier queues are not favoured.
/// * [`Acker::reject`] with `requeue` puts the message at the back of its
///   queue (`redelivered`); without, drops it. [`Acker::dead_letter`] parks it
///   with its reason, see [`Broker::dead_letters`].
/// * [`Acker::defer`] hands the message to a timer that puts it back in its
///   queue at the due time (as a fresh delivery, `redelivered = false`:
///   it was handed back, not abandoned). Deferred messages are not counted
///   by [`Broker::queue_len`] nor removed by [`Broker::purge`].
/// * Fanout: [`Broker::subscribe`] with AMQP topic patterns (`#`, `*`); like
///   AMQP, only current subscribers receive a message.
/// * The `expiration` property is not enforced: the worker revokes expired
///   tasks itself, storing REVOKED, which a silent drop would not.
///
/// Publishing to, or consuming from, a queue that was not declared creates it.
/// Cloning gives another handle on the same broker.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use qcore::{Broker, ConsumeOptions, Message};
/// let broker = qmemory::MemoryBroker::new();
/// broker.publish("celery", &Message { body: b"[[], {}, {}]".to_vec(), ..Message::default() }).await?;
/// let mut consumer = broker.consume(&["celery".to_string()], ConsumeOptions::new(1)).await?;
/// let delivery = consumer.recv().await?.expect("a delivery");
/// assert_eq!(delivery.message.body, b"[[], {}, {}]");
/// delivery.acker.ack().await?;
/// assert_eq!(broker.queue_len("celery").await?, 0);
/// # Ok::<(), qcore::BrokerError>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement that can panic, so a
        // poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    /// Deliveries not settled yet, by delivery tag.
    unacked: HashMap<u64, Unacked>,
    consumers: HashMap<u64, ConsumerSlot>,
    exchanges: HashMap<String, Vec<Subscriber>>,
    next_tag: u64,
    next_consumer: u64,
}

struct Entry {
    message: Message,
    redelivered: bool,
}

#[derive(Default)]
struct Queue {
    /// One FIFO per priority level, index = priority.
    levels: [VecDeque<Entry>; LEVELS],
    dead: Vec<DeadLetter>,
    /// Consumers reading this queue, woken when a message arrives.
    consumers: Vec<u64>,
}

impl Queue {
    fn len(&self) -> usize {
        self.levels.iter().map(VecDeque::len).sum()
    }

    fn push_back(&mut self, entry: Entry) {
        let level = level_of(&entry.message);
        self.levels[level].push_back(entry);
    }

    fn push_front(&mut self, entry: Entry) {
        let level = level_of(&entry.message);
        self.levels[level].push_front(entry);
    }

    fn pop(&mut self) -> Option<Entry> {
        self.levels.iter_mut().rev().find_map(VecDeque::pop_front)
    }
}

fn level_of(message: &Message) -> usize {
    usize::from(message.properties.priority).min(LEVELS - 1)
}

struct Unacked {
    consumer: u64,
    queue: String,
    message: Message,
}

struct ConsumerSlot {
    notify: Arc<Notify>,
    held: usize,
}

struct Subscriber {
    pattern: String,
    tx: mpsc::Sender<(String, Message)>,
}

impl State {
    fn queue(&mut self, name: &str) -> &mut Queue {
        self.queues.entry(name.to_string()).or_default()
    }

    /// Wake every consumer of `queue` (each re-checks; a stored permit covers
    /// a consumer that is between its check and its wait).
    fn wake_queue(&self, queue: &str) {
        if let Some(q) = self.queues.get(queue) {
            for id in &q.consumers {
                if let Some(c) = self.consumers.get(id) {
                    c.notify.notify_one();
                }
            }
        }
    }

    fn enqueue(&mut self, queue: &str, entry: Entry) {
        self.queue(queue).push_back(entry);
        self.wake_queue(queue);
    }

    /// Remove an unacked delivery, freeing its consumer's prefetch slot.
    fn settle(&mut self, tag: u64) -> Option<Unacked> {
        let u = self.unacked.remove(&tag)?;
        if let Some(c) = self.consumers.get_mut(&u.consumer) {
            c.held = c.held.saturating_sub(1);
            c.notify.notify_one();
        }
        Some(u)
    }
}

impl MemoryBroker {
    /// A new, empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deliveries handed out and not settled yet, over all queues.
    pub fn unacked_len(&self) -> usize {
        self.shared.lock().unacked.len()
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.shared.lock().queue(queue);
        Ok(())
    }

    async fn publish(&self, queue: &str, message: &Message) -> Result<(), BrokerError> {
        self.shared.lock().enqueue(queue, Entry { message: message.clone(), redelivered: false });
        Ok(())
    }

    async fn publish_many(&self, items: &[(String, Message)]) -> Result<(), BrokerError> {
        let mut state = self.shared.lock();
        for (queue, message) in items {
            state.queue(queue).push_back(Entry { message: message.clone(), redelivered: false });
        }
        for (queue, _) in items {
            state.wake_queue(queue);
        }
        Ok(())
    }

    async fn consume(&self, queues: &[String], options: ConsumeOptions) -> Result<Box<dyn Consumer>, BrokerError> {
        if queues.is_empty() {
            return Err(BrokerError::new(ErrorKind::Config, "consume needs at least one queue"));
        }
        let mut queues = queues.to_vec();
        queues.dedup();
        let notify = Arc::new(Notify::new());
        let mut state = self.shared.lock();
        let id = state.next_consumer;
        state.next_consumer += 1;
        state.consumers.insert(id, ConsumerSlot { notify: notify.clone(), held: 0 });
        for q in &queues {
            state.queue(q).consumers.push(id);
        }
        tracing::debug!(consumer = id, tag = %options.tag, ?queues, "memory consumer started");
        Ok(Box::new(MemoryConsumer {
            shared: self.shared.clone(),
            id,
            queues,
            prefetch: options.prefetch.max(1),
            next_queue: 0,
            notify,
        }))
    }

    async fn queue_len(&self, queue: &str) -> Result<u64, BrokerError> {
        Ok(self.shared.lock().queues.get(queue).map_or(0, |q| q.len() as u64))
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let mut state = self.shared.lock();
        let Some(q) = state.queues.get_mut(queue) else {
            return Ok(0);
        };
        let n = q.len() as u64;
        for level in &mut q.levels {
            level.clear();
        }
        Ok(n)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none().priorities(Priorities::HigherFirst).defer(true)
    }

    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }

    async fn publish_fanout(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
        let mut state = self.shared.lock();
        let Some(subs) = state.exchanges.get_mut(exchange) else {
            return Ok(());
        };
        subs.retain(|s| !s.tx.is_closed());
        for s in subs.iter().filter(|s| topic_matches(&s.pattern, routing_key)) {
            if s.tx.try_send((routing_key.to_string(), message.clone())).is_err() {
                tracing::warn!(exchange, routing_key, "memory fanout subscriber is full; message dropped for it");
            }
        }
        Ok(())
    }

    async fn subscribe(&self, exchange: &str, pattern: &str) -> Result<Box<dyn Subscription>, BrokerError> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let mut state = self.shared.lock();
        state.exchanges.entry(exchange.to_string()).or_default().push(Subscriber { pattern: pattern.to_string(), tx });
        Ok(Box::new(MemorySubscription { rx }))
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "memory://".into()
    }
}

#[async_trait]
impl DeadLetters for MemoryBroker {
    async fn list(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let state = self.shared.lock();
        Ok(state.queues.get(queue).map(|q| q.dead.iter().take(limit).cloned().collect()).unwrap_or_default())
    }

    async fn count(&self, queue: &str) -> Result<u64, BrokerError> {
        Ok(self.shared.lock().queues.get(queue).map_or(0, |q| q.dead.len() as u64))
    }

    async fn redrive(&self, queue: &str, limit: usize) -> Result<u64, BrokerError> {
        let mut state = self.shared.lock();
        let Some(q) = state.queues.get_mut(queue) else {
            return Ok(0);
        };
        let moved: Vec<DeadLetter> = q.dead.drain(..limit.min(q.dead.len())).collect();
        let n = moved.len() as u64;
        for d in moved {
            q.push_back(Entry { message: d.message, redelivered: false });
        }
        if n > 0 {
            state.wake_queue(queue);
        }
        Ok(n)
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let mut state = self.shared.lock();
        Ok(state.queues.get_mut(queue).map_or(0, |q| std::mem::take(&mut q.dead).len() as u64))
    }
}

/// A consumer of a [`MemoryBroker`]; dropping it returns its unacked
/// deliveries to their queues.
struct MemoryConsumer {
    shared: Arc<Shared>,
    id: u64,
    queues: Vec<String>,
    prefetch: usize,
    /// Where the next look starts, so no queue is favoured.
    next_queue: usize,
    notify: Arc<Notify>,
}

impl MemoryConsumer {
    fn try_take(&mut self) -> Option<Delivery> {
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        let held = state.consumers.get(&self.id).map_or(0, |c| c.held);
        if held >= self.prefetch {
            return None;
        }
        let n = self.queues.len();
        for i in 0..n {
            let qi = (self.next_queue + i) % n;
            let name = &self.queues[qi];
            let Some(entry) = state.queues.get_mut(name).and_then(Queue::pop) else {
                continue;
            };
            self.next_queue = (qi + 1) % n;
            let tag = state.next_tag;
            state.next_tag += 1;
            state
                .unacked
                .insert(tag, Unacked { consumer: self.id, queue: name.clone(), message: entry.message.clone() });
            if let Some(c) = state.consumers.get_mut(&self.id) {
                c.held += 1;
            }
            let acker = MemoryAcker { shared: Arc::downgrade(&self.shared), tag };
            return Some(Delivery {
                message: entry.message,
                queue: name.clone(),
                redelivered: entry.redelivered,
                acker: Arc::new(acker),
            });
        }
        None
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn recv(&mut self) -> Result<Option<Delivery>, BrokerError> {
        // Cancel safe: taking is synchronous, and a wake-up that arrives
        // between the look and the wait is kept as the Notify's permit.
        loop {
            if let Some(d) = self.try_take() {
                return Ok(Some(d));
            }
            self.notify.notified().await;
        }
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.consumers.remove(&self.id);
        for q in &self.queues {
            if let Some(queue) = state.queues.get_mut(q) {
                queue.consumers.retain(|c| *c != self.id);
            }
        }
        let mut tags: Vec<u64> = state.unacked.iter().filter(|(_, u)| u.consumer == self.id).map(|(t, _)| *t).collect();
        if tags.is_empty() {
            return;
        }
        // Newest first to the front, so the oldest ends up first again.
        tags.sort_unstable_by(|a, b| b.cmp(a));
        let mut touched = Vec::new();
        for tag in tags {
            if let Some(u) = state.unacked.remove(&tag) {
                state.queue(&u.queue).push_front(Entry { message: u.message, redelivered: true });
                if !touched.contains(&u.queue) {
                    touched.push(u.queue);
                }
            }
        }
        tracing::debug!(consumer = self.id, "memory consumer dropped; unacked deliveries restored");
        for q in &touched {
            state.wake_queue(q);
        }
    }
}

/// The acknowledgement handle of one [`MemoryBroker`] delivery.
struct MemoryAcker {
    shared: Weak<Shared>,
    tag: u64,
}

impl MemoryAcker {
    /// Settle the delivery and apply `then` to it; a no-op if it was settled
    /// already (or restored when its consumer was dropped).
    fn settle(&self, then: impl FnOnce(&mut State, Unacked)) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut state = shared.lock();
        if let Some(u) = state.settle(self.tag) {
            then(&mut state, u);
        }
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.settle(|_, _| {});
        Ok(())
    }

    async fn reject(&self, requeue: bool) -> Result<(), BrokerError> {
        self.settle(|state, u| {
            if requeue {
                state.enqueue(&u.queue, Entry { message: u.message, redelivered: true });
            }
        });
        Ok(())
    }

    async fn dead_letter(&self, reason: &str) -> Result<(), BrokerError> {
        self.settle(|state, u| {
            tracing::warn!(queue = %u.queue, task_id = ?u.message.task_id(), reason, "message dead-lettered");
            let dl = DeadLetter { message: u.message, queue: u.queue.clone(), reason: reason.to_string() };
            state.queue(&u.queue).dead.push(dl);
        });
        Ok(())
    }

    async fn defer(&self, until: DateTime<Utc>) -> Result<(), BrokerError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| BrokerError::with_source(ErrorKind::Other, "defer needs a tokio runtime", e))?;
        let weak = self.shared.clone();
        self.settle(move |_, u| {
            let wait = (until - Utc::now()).to_std().unwrap_or_default();
            runtime.spawn(async move {
                tokio::time::sleep(wait).await;
                // Dropped with the broker: nobody could consume it any more.
                if let Some(shared) = weak.upgrade() {
                    shared.lock().enqueue(&u.queue, Entry { message: u.message, redelivered: false });
                }
            });
        });
        Ok(())
    }
}

struct MemorySubscription {
    rx: mpsc::Receiver<(String, Message)>,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn recv(&mut self) -> Result<Option<(String, Message)>, BrokerError> {
        Ok(self.rx.recv().await)
    }
}
