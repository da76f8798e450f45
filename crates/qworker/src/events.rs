//! The worker's events: Celery's monitoring events ([`qcore::event`]),
//! built in one place ([`Events`]) and sent to two readers: the broker's
//! `celeryev` exchange (what Flower and `celery events` read), and the
//! in-process [`WorkerHandle::events`](crate::WorkerHandle::events) channel
//! (tests, embedding applications).
//!
//! Which events go to the broker:
//! * `worker-online`, `worker-heartbeat` (every [`HEARTBEAT`]) and
//!   `worker-offline`, unless heartbeats are off (`--without-heartbeat`,
//!   [`WorkerBuilder::heartbeat`](crate::WorkerBuilder::heartbeat)), as
//!   Celery's worker sends them whether task events are on or not;
//! * the `task-*` events only while task events are on
//!   (`worker_send_task_events`, `-E`,
//!   [`WorkerBuilder::send_events`](crate::WorkerBuilder::send_events), the
//!   `enable_events` / `disable_events` control commands), batched under
//!   `task.multi` as Celery's worker batches them.
//!
//! **Invariant:** with task events off and no in-process reader, a task
//! event is not even built: [`Events::task`] checks two flags and returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qcore::event::{Event, EventData, EventSender, WorkerInfo, EVENT_EXCHANGE, TASK_MULTI};
use qcore::Broker;
use tokio::sync::{broadcast, mpsc};

/// Seconds between `worker-heartbeat` events (Celery's `freq`).
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);

/// Most events in one publication.
const BATCH: usize = 1000;

/// How long the publisher gathers events before it publishes them.
const LINGER: Duration = Duration::from_millis(100);

/// How many events may wait for the publisher; beyond that they are
/// dropped with a warning (events are best effort, as in Celery).
const OUTBOX: usize = 10_000;

/// The worker's event source.
pub(crate) struct Events {
    /// Stamps node, pid, utcoffset and the Lamport clock (shared with the
    /// control replies).
    pub(crate) sender: Arc<EventSender>,
    /// Task events go to the broker.
    task_events: AtomicBool,
    /// Worker events go to the broker.
    worker_events: bool,
    /// In-process readers.
    local: broadcast::Sender<Event>,
    /// To the publisher task.
    outbox: mpsc::Sender<Out>,
    outbox_rx: std::sync::Mutex<Option<mpsc::Receiver<Out>>>,
    dropped: std::sync::atomic::AtomicU64,
}

impl Events {
    pub(crate) fn new(sender: Arc<EventSender>, task_events: bool, worker_events: bool) -> Self {
        let (local, _) = broadcast::channel(4096);
        let (outbox, rx) = mpsc::channel(OUTBOX);
        Events {
            sender,
            task_events: AtomicBool::new(task_events),
            worker_events,
            local,
            outbox,
            outbox_rx: std::sync::Mutex::new(Some(rx)),
            dropped: Default::default(),
        }
    }

    /// Subscribe in process.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.local.subscribe()
    }

    /// Whether task events go to the broker.
    pub(crate) fn task_events(&self) -> bool {
        self.task_events.load(Ordering::Relaxed)
    }

    /// Switch task events (`enable_events` / `disable_events`); returns
    /// whether they were on.
    pub(crate) fn set_task_events(&self, on: bool) -> bool {
        self.task_events.swap(on, Ordering::Relaxed)
    }

    /// A task event: built only if someone reads it.
    #[inline]
    pub(crate) fn task(&self, data: impl FnOnce() -> EventData) {
        let publish = self.task_events.load(Ordering::Relaxed);
        if !publish && self.local.receiver_count() == 0 {
            return;
        }
        self.send(self.sender.event(data()), publish);
    }

    /// A worker event (`worker-online`, `-heartbeat`, `-offline`).
    pub(crate) fn worker(&self, data: EventData) {
        if !self.worker_events && self.local.receiver_count() == 0 {
            return;
        }
        self.send(self.sender.event(data), self.worker_events);
    }

    fn send(&self, event: Event, publish: bool) {
        if self.local.receiver_count() > 0 {
            let _ = self.local.send(event.clone());
        }
        if publish {
            if let Err(mpsc::error::TrySendError::Full(_)) = self.outbox.try_send(Out::Event(event)) {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(dropped = n + 1, "the event publisher is behind; dropping events");
                }
            }
        }
    }

    /// Events dropped so far because the publisher was behind.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Wait (at most `limit`) until everything emitted so far is published
    /// (the last `worker-offline` before the process exits).
    pub(crate) async fn flush(&self, limit: Duration) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.outbox.send(Out::Flush(tx)).await.is_ok() {
            let _ = tokio::time::timeout(limit, rx).await;
        }
    }

    /// Start the publisher (once): it sends what the worker emits to
    /// `celeryev`, task events batched.
    pub(crate) fn start_publisher(&self, broker: Arc<dyn Broker>) -> Option<tokio::task::JoinHandle<()>> {
        let rx = self.outbox_rx.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        Some(tokio::spawn(publish_loop(broker, rx)))
    }
}

/// What the publisher is handed (an event is moved in as it is: boxing it
/// would cost an allocation per event).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Out {
    Event(Event),
    /// Answered once everything before it is published.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The worker-* fields now.
pub(crate) fn worker_info(active: u64, processed: u64) -> WorkerInfo {
    WorkerInfo::new(HEARTBEAT, active, processed, loadavg())
}

/// The 1, 5, 15 minute load averages, rounded to two decimals as Celery
/// does (zeros where the system does not say).
pub(crate) fn loadavg() -> [f64; 3] {
    let mut out = [0.0; 3];
    if let Ok(s) = std::fs::read_to_string("/proc/loadavg") {
        for (o, v) in out.iter_mut().zip(s.split_whitespace()) {
            *o = v.parse::<f64>().map(|x| (x * 100.0).ceil() / 100.0).unwrap_or(0.0);
        }
    }
    out
}

/// Publish events as they come: everything waiting is taken at once, task
/// events go as one `task.multi` list, worker events alone.
async fn publish_loop(broker: Arc<dyn Broker>, mut rx: mpsc::Receiver<Out>) {
    let mut batch = Vec::new();
    let mut tasks = Vec::new();
    let mut flushed = Vec::new();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // Gather what comes within LINGER (as Celery's worker buffers its
        // task events), so a busy worker sends a few large `task.multi`
        // messages rather than one per task.
        let until = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH && !batch.iter().any(|o| matches!(o, Out::Flush(_))) {
            match tokio::time::timeout_at(until, rx.recv_many(&mut batch, BATCH)).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        for out in batch.drain(..) {
            let event = match out {
                Out::Event(e) => e,
                Out::Flush(tx) => {
                    flushed.push(tx);
                    continue;
                }
            };
            if event.kind().is_batched() {
                tasks.push(event);
            } else {
                if !tasks.is_empty() {
                    publish(&*broker, TASK_MULTI, Event::batch_to_message(&tasks)).await;
                    tasks.clear();
                }
                publish(&*broker, &event.routing_key(), event.to_message()).await;
            }
        }
        if !tasks.is_empty() {
            publish(&*broker, TASK_MULTI, Event::batch_to_message(&tasks)).await;
            tasks.clear();
        }
        for tx in flushed.drain(..) {
            let _ = tx.send(());
        }
    }
}

async fn publish(broker: &dyn Broker, routing_key: &str, msg: Result<qcore::Message, qcore::ProtocolError>) {
    let r = match msg {
        Ok(m) => broker.publish_fanout(EVENT_EXCHANGE, routing_key, &m).await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode an event");
            return;
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, routing_key, "cannot publish an event");
    }
}
