//! `worker --metrics-addr HOST:PORT`: `/metrics` (Prometheus text),
//! `/healthz` and `/readyz`.
//!
//! The task counters and histograms are fed by the worker's in-process
//! event stream ([`qworker::WorkerHandle::events`]), read by the same task
//! that writes the log line per task, so the worker's hot path is unchanged.
//! The gauges (active, prefetched), broker reconnects and dropped events
//! are read from [`qworker::WorkerHandle::stats`] when `/metrics` is
//! scraped.
//!
//! Task names label the series; a name the binary does not register (a
//! message for another worker, or a typo) is counted under
//! `<unregistered>`, so a producer cannot grow the series without bound.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use qcore::event::{Event, EventData};
use qworker::WorkerHandle;

/// The label of a task's series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    task: String,
}

/// The label of a queue's depth.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

/// How long a scrape waits for the broker to tell a queue's depth.
const QUEUE_LEN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The label of the dropped-events counter: which reader fell behind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabel {
    reader: &'static str,
}

/// Seconds: 1 ms to about 4.5 hours, doubling.
fn seconds_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 24))
}

/// The worker's metric families.
pub(super) struct Metrics {
    registry: Registry,
    received: Family<TaskLabel, Counter>,
    started: Family<TaskLabel, Counter>,
    succeeded: Family<TaskLabel, Counter>,
    failed: Family<TaskLabel, Counter>,
    retried: Family<TaskLabel, Counter>,
    rejected: Family<TaskLabel, Counter>,
    revoked: Family<TaskLabel, Counter>,
    runtime: Family<TaskLabel, Histogram, fn() -> Histogram>,
    latency: Family<TaskLabel, Histogram, fn() -> Histogram>,
    active: Gauge,
    prefetched: Gauge,
    ready: Gauge,
    reconnects: Counter,
    dropped: Family<DropLabel, Counter>,
    queue_messages: Family<QueueLabel, Gauge>,
    /// Last values read from the worker's stats (counters only go up by the difference).
    seen_reconnects: AtomicU64,
    seen_dropped: AtomicU64,
    registered: HashSet<String>,
}

impl Metrics {
    /// The families, registered under `qtask_*`, for a worker running `registered` tasks.
    pub(super) fn new(registered: impl IntoIterator<Item = String>) -> Self {
        let mut registry = Registry::with_prefix("qtask");
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let f = Family::<TaskLabel, Counter>::default();
            registry.register(name, help, f.clone());
            f
        };
        let received = counter(&mut registry, "task_received", "Task messages received, by task name");
        let started = counter(&mut registry, "task_started", "Tasks started, by task name");
        let succeeded = counter(&mut registry, "task_succeeded", "Tasks that succeeded, by task name");
        let failed = counter(&mut registry, "task_failed", "Tasks that failed, by task name");
        let retried = counter(&mut registry, "task_retried", "Tasks that asked for a retry, by task name");
        let rejected = counter(&mut registry, "task_rejected", "Task messages rejected, by task name");
        let revoked = counter(&mut registry, "task_revoked", "Tasks revoked or expired, by task name");
        let runtime = Family::<TaskLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            seconds_buckets as fn() -> Histogram,
        );
        registry.register("task_runtime_seconds", "Run time of finished tasks, by task name", runtime.clone());
        let latency = Family::<TaskLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            seconds_buckets as fn() -> Histogram,
        );
        registry.register(
            "task_queue_latency_seconds",
            "Start time minus the time the message asked to run at (its ETA or countdown), by task name; \
             messages without one carry no send time and are not counted",
            latency.clone(),
        );
        let active = Gauge::default();
        registry.register("worker_active_tasks", "Tasks running now", active.clone());
        let prefetched = Gauge::default();
        registry.register(
            "worker_prefetched_tasks",
            "Messages received and not started (waiting for a slot, a rate limit or an ETA)",
            prefetched.clone(),
        );
        let ready = Gauge::default();
        registry.register("worker_ready", "1 while connected to the broker and consuming (as /readyz)", ready.clone());
        let reconnects = Counter::default();
        registry.register(
            "broker_reconnects",
            "Times the worker lost the broker and started consuming again",
            reconnects.clone(),
        );
        let dropped = Family::<DropLabel, Counter>::default();
        registry.register(
            "events_dropped",
            "Events dropped because a reader fell behind (publisher: to the broker; metrics: this endpoint)",
            dropped.clone(),
        );
        let queue_messages = Family::<QueueLabel, Gauge>::default();
        registry.register(
            "queue_messages",
            "Messages waiting in each queue the worker consumes, read from the broker at scrape time \
             (the autoscaling signal); absent when the broker did not answer",
            queue_messages.clone(),
        );
        Metrics {
            registry,
            queue_messages,
            received,
            started,
            succeeded,
            failed,
            retried,
            rejected,
            revoked,
            runtime,
            latency,
            active,
            prefetched,
            ready,
            reconnects,
            dropped,
            seen_reconnects: AtomicU64::new(0),
            seen_dropped: AtomicU64::new(0),
            registered: registered.into_iter().collect(),
        }
    }

    fn label(&self, name: &str) -> TaskLabel {
        let task = if self.registered.contains(name) { name.to_string() } else { "<unregistered>".to_string() };
        TaskLabel { task }
    }

    /// Events the task observer could not read (it fell behind).
    pub(super) fn lagged(&self, n: u64) {
        self.dropped.get_or_create(&DropLabel { reader: "metrics" }).inc_by(n);
    }

    /// Read the depth of `queues` from the broker (each within [`QUEUE_LEN_WAIT`]).
    async fn read_queues(&self, app: &qcore::App, queues: &[String]) {
        self.queue_messages.clear();
        for q in queues {
            match tokio::time::timeout(QUEUE_LEN_WAIT, app.broker().queue_len(q)).await {
                Ok(Ok(n)) => {
                    self.queue_messages.get_or_create(&QueueLabel { queue: q.clone() }).set(n as i64);
                }
                Ok(Err(e)) => tracing::debug!(queue = %q, error = %e, "cannot read the queue's depth"),
                Err(_) => tracing::debug!(queue = %q, "the broker did not tell the queue's depth in time"),
            }
        }
    }

    /// The exposition, with the gauges read from `stats` now.
    fn render(&self, stats: &qworker::WorkerStats, ready: bool) -> String {
        self.active.set(stats.active as i64);
        self.prefetched.set(stats.reserved.saturating_sub(stats.active) as i64);
        self.ready.set(i64::from(ready));
        let up = |seen: &AtomicU64, now: u64| now.saturating_sub(seen.swap(now, Ordering::Relaxed));
        self.reconnects.inc_by(up(&self.seen_reconnects, stats.reconnects));
        self.dropped
            .get_or_create(&DropLabel { reader: "publisher" })
            .inc_by(up(&self.seen_dropped, stats.events_dropped));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// Readiness: not shutting down, and connected to the broker: the last
/// receive succeeded, or (after a failure, while the consumer waits on an
/// idle queue and so cannot tell) the broker answers now.
async fn ready(app: &qcore::App, worker: &WorkerHandle) -> Result<(), &'static str> {
    let stats = worker.stats();
    if !stats.running {
        return Err("shutting down");
    }
    if stats.broker_ok {
        return Ok(());
    }
    let Some(queue) = worker.queues().into_iter().next() else {
        return Err("not connected to the broker");
    };
    match tokio::time::timeout(QUEUE_LEN_WAIT, app.broker().queue_len(&queue)).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err("not connected to the broker"),
    }
}

/// What the task observer keeps of a task between its events.
struct Seen {
    name: String,
    /// The ETA the message asked for (UNIX seconds).
    eta: Option<f64>,
    /// When it started (UNIX seconds, the event's timestamp).
    started: Option<f64>,
}

/// Most tasks the observer remembers between received and finished (a task
/// retried on another worker never finishes here); past it, the memory is
/// cleared and the names of tasks in flight are lost.
const SEEN_MAX: usize = 100_000;

/// How the task lines are written.
#[derive(Debug, Clone, Copy)]
pub(super) struct TaskLog {
    /// Fields `task_id` and `task_name` on every line (JSON logs).
    pub(super) fields: bool,
}

macro_rules! task_line {
    ($log:expr, $id:expr, $name:expr, $($fmt:tt)+) => {
        if $log.fields {
            tracing::info!(target: "qtask::worker::task", task_id = %$id, task_name = %$name, $($fmt)+)
        } else {
            tracing::info!(target: "qtask::worker::task", $($fmt)+)
        }
    };
}

/// Read the worker's events: log a line per task received and finished (as
/// Celery's worker does: `Task NAME[ID] succeeded in 0.01s: 5`) and count
/// them in the metrics.
pub(super) async fn observe(
    mut events: tokio::sync::broadcast::Receiver<Event>,
    log: Option<TaskLog>,
    metrics: Option<Arc<Metrics>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut seen: HashMap<String, Seen> = HashMap::new();
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!("{n} task events were not logged or counted (the observer fell behind)");
                if let Some(m) = &metrics {
                    m.lagged(n);
                }
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let Some(id) = ev.task_id() else { continue };
        if let EventData::TaskReceived(f) = &ev.data {
            if let Some(log) = log {
                task_line!(log, id, f.name, "Task {}[{id}] received", f.name);
            }
            if let Some(m) = &metrics {
                m.received.get_or_create(&m.label(&f.name)).inc();
            }
            if seen.len() >= SEEN_MAX {
                seen.clear();
            }
            let eta = f.eta.as_deref().and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok());
            let eta = eta.map(|e| e.timestamp_micros() as f64 / 1e6);
            seen.insert(id.to_string(), Seen { name: f.name.clone(), eta, started: None });
            continue;
        }
        let finished = !matches!(ev.data, EventData::TaskStarted(_) | EventData::TaskRetried(_));
        let entry = if finished { seen.remove(id) } else { None };
        let (name, eta, started) = match (&entry, seen.get_mut(id)) {
            (Some(s), _) => (s.name.as_str(), s.eta, s.started),
            (None, Some(s)) => {
                if matches!(ev.data, EventData::TaskStarted(_)) {
                    s.started = Some(ev.timestamp);
                }
                (s.name.as_str(), s.eta, s.started)
            }
            (None, None) => ("?", None, None),
        };
        if let Some(m) = &metrics {
            observe_metrics(m, &ev, name, eta, started);
        }
        let Some(log) = log else { continue };
        match &ev.data {
            EventData::TaskSucceeded(f) => {
                task_line!(log, id, name, "Task {name}[{id}] succeeded in {}s: {}", f.runtime, f.result)
            }
            EventData::TaskFailed(f) => task_line!(log, id, name, "Task {name}[{id}] failed: {}", f.exception),
            EventData::TaskRetried(f) => task_line!(log, id, name, "Task {name}[{id}] retry: {}", f.exception),
            EventData::TaskRevoked(f) => {
                let how = match (f.terminated, f.expired) {
                    (true, _) => "terminated",
                    (_, true) => "expired",
                    _ => "revoked",
                };
                task_line!(log, id, name, "Task {name}[{id}] {how}")
            }
            EventData::TaskRejected(f) => {
                let what = if f.requeue { "rejected (requeued)" } else { "rejected" };
                task_line!(log, id, name, "Task {name}[{id}] {what}")
            }
            _ => {}
        }
    }
}

fn observe_metrics(m: &Metrics, ev: &Event, name: &str, eta: Option<f64>, started: Option<f64>) {
    let label = m.label(name);
    match &ev.data {
        EventData::TaskStarted(_) => {
            m.started.get_or_create(&label).inc();
            if let Some(eta) = eta {
                m.latency.get_or_create(&label).observe((ev.timestamp - eta).max(0.0));
            }
        }
        EventData::TaskSucceeded(f) => {
            m.succeeded.get_or_create(&label).inc();
            m.runtime.get_or_create(&label).observe(f.runtime.max(0.0));
        }
        EventData::TaskFailed(_) => {
            m.failed.get_or_create(&label).inc();
            if let Some(s) = started {
                m.runtime.get_or_create(&label).observe((ev.timestamp - s).max(0.0));
            }
        }
        EventData::TaskRetried(_) => {
            m.retried.get_or_create(&label).inc();
        }
        EventData::TaskRejected(_) => {
            m.rejected.get_or_create(&label).inc();
        }
        EventData::TaskRevoked(_) => {
            m.revoked.get_or_create(&label).inc();
        }
        _ => {}
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until dropped.
/// `alive` is true while the worker loop runs.
pub(super) async fn serve(
    app: qcore::App,
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    worker: WorkerHandle,
    alive: Arc<AtomicBool>,
) {
    let (w, a) = (worker.clone(), app.clone());
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let (m, w, app) = (metrics.clone(), w.clone(), a.clone());
                async move {
                    m.read_queues(&app, &w.queues()).await;
                    let ready = ready(&app, &w).await.is_ok();
                    (
                        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                        m.render(&w.stats(), ready),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let alive = alive.load(Ordering::Relaxed);
                async move {
                    if alive {
                        (StatusCode::OK, "ok\n").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "the worker loop has stopped\n").into_response()
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let (app, worker) = (app.clone(), worker.clone());
                async move {
                    match ready(&app, &worker).await {
                        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, router).await {
        tracing::warn!(error = %e, "the metrics endpoint stopped");
    }
}
