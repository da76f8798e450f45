//! The worker loop: consume, reserve, dispatch, shut down.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot, watch, Semaphore};
use tokio::task::JoinSet;

use qcore::{App, ConsumeOptions, Consumer, Error, RequestInfo};
use serde_json::{json, Map, Value};

use qcore::event::{Event, EventData, EventSender};

use crate::events::{worker_info, Events, HEARTBEAT};
use crate::execute;
use crate::ratelimit::RateLimiter;

/// Lifecycle phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    /// Stop taking work; let running tasks finish.
    Warm,
    /// Abort everything; return unacked messages.
    Cold,
}

/// How many revoked ids a worker remembers (Celery keeps 50 000).
const REVOKED_MAX: usize = 50_000;

#[derive(Default)]
pub(crate) struct Revoked {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Revoked {
    fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            while self.order.len() > REVOKED_MAX {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// A task's `time_limit` set by remote control: (hard, soft) seconds.
pub(crate) type TimeLimits = (Option<f64>, Option<f64>);

/// Where a delivery the worker holds is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TaskState {
    /// Received, waiting for a rate-limit token or a slot.
    Reserved,
    /// Held here until its ETA (brokers that cannot defer).
    Scheduled { eta: chrono::DateTime<chrono::Utc> },
    /// Running since `time_start` (UNIX seconds).
    Active { time_start: f64, acknowledged: bool },
}

/// A delivery the worker holds, for `inspect active/reserved/scheduled`
/// and `revoke(terminate=True)`.
pub(crate) struct Tracked {
    pub(crate) req: Arc<RequestInfo>,
    pub(crate) priority: u8,
    pub(crate) state: TaskState,
    pub(crate) term: Option<oneshot::Sender<()>>,
}

/// Removes a delivery from [`Shared::tasks`] when its handling ends.
pub(crate) struct Tracking<'a> {
    shared: &'a Shared,
    id: &'a str,
}

impl Drop for Tracking<'_> {
    fn drop(&mut self) {
        self.shared.tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(self.id);
    }
}

pub(crate) struct Shared {
    pub(crate) app: App,
    pub(crate) hostname: String,
    pub(crate) concurrency: AtomicUsize,
    pub(crate) prefetch: usize,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) events: Events,
    pub(crate) phase: watch::Sender<Phase>,
    pub(crate) revoked: Mutex<Revoked>,
    pub(crate) tasks: Mutex<HashMap<String, Tracked>>,
    /// Tasks received per registered name (`stats.total`).
    pub(crate) totals: HashMap<String, AtomicU64>,
    pub(crate) started_at: Instant,
    /// The queues consumed (start-up ones first, then `add_consumer`'s).
    pub(crate) queues: Mutex<Vec<String>>,
    /// Queues added at run time, for the run loop to consume.
    pub(crate) added: tokio::sync::mpsc::UnboundedSender<QueueChange>,
    added_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<QueueChange>>>,
    /// `time_limit` overrides per task: (hard, soft) seconds.
    pub(crate) time_limits: RwLock<HashMap<String, TimeLimits>>,
    pub(crate) has_time_limits: AtomicBool,
    /// `revoke_by_stamped_headers`: header → revoked values.
    pub(crate) revoked_stamps: RwLock<Map<String, Value>>,
    pub(crate) has_revoked_stamps: AtomicBool,
    pub(crate) ratelimit: RateLimiter,
    pub(crate) active: AtomicUsize,
    pub(crate) reserved: AtomicUsize,
    pub(crate) processed: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) broker_ok: AtomicBool,
    /// Times the consumer lost the broker (a failed receive after a good
    /// one, or a consumer the broker closed).
    pub(crate) reconnects: AtomicU64,
    pub(crate) shutdown_timeout: Duration,
}

impl Shared {
    /// A `worker-*` event with the current counters.
    pub(crate) fn worker_event(&self, make: fn(qcore::event::WorkerInfo) -> EventData) {
        let info = worker_info(self.active.load(Ordering::Relaxed) as u64, self.processed.load(Ordering::Relaxed));
        self.events.worker(make(info));
    }

    pub(crate) fn is_revoked(&self, id: &str) -> bool {
        self.revoked.lock().unwrap_or_else(|p| p.into_inner()).set.contains(id)
    }

    /// Revoke `ids`; with `terminate`, abort those running here. Returns
    /// the ids terminated.
    pub(crate) fn revoke(&self, ids: &[String], terminate: bool) -> Vec<String> {
        let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            revoked.insert(id.clone());
        }
        drop(revoked);
        let mut terminated = Vec::new();
        if terminate {
            let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                if let Some(tx) = tasks.get_mut(id).and_then(|t| t.term.take()) {
                    let _ = tx.send(());
                    terminated.push(id.clone());
                }
            }
        }
        terminated
    }

    /// The ids revoked, oldest first.
    pub(crate) fn revoked_ids(&self) -> Vec<String> {
        self.revoked.lock().unwrap_or_else(|p| p.into_inner()).order.iter().cloned().collect()
    }

    /// Start tracking a received delivery (`stats.total` counts it).
    pub(crate) fn track<'a>(&'a self, req: &'a Arc<RequestInfo>, priority: u8) -> Tracking<'a> {
        if let Some(n) = self.totals.get(&req.task) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        let t = Tracked { req: req.clone(), priority, state: TaskState::Reserved, term: None };
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(req.id.clone(), t);
        Tracking { shared: self, id: &req.id }
    }

    /// Move a tracked delivery to another state.
    pub(crate) fn set_state(&self, id: &str, state: TaskState, term: Option<oneshot::Sender<()>>) {
        if let Some(t) = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).get_mut(id) {
            t.state = state;
            if term.is_some() {
                t.term = term;
            }
        }
    }

    /// A task's `time_limit` override, if any: (hard, soft).
    pub(crate) fn time_limit_override(&self, task: &str) -> Option<TimeLimits> {
        if !self.has_time_limits.load(Ordering::Relaxed) {
            return None;
        }
        self.time_limits.read().unwrap_or_else(|p| p.into_inner()).get(task).copied()
    }

    pub(crate) fn set_time_limits(&self, task: &str, hard: Option<f64>, soft: Option<f64>) {
        self.time_limits.write().unwrap_or_else(|p| p.into_inner()).insert(task.to_owned(), (hard, soft));
        self.has_time_limits.store(true, Ordering::Relaxed);
    }

    pub(crate) fn revoke_stamps(&self, headers: &Map<String, Value>) {
        let mut stamps = self.revoked_stamps.write().unwrap_or_else(|p| p.into_inner());
        for (k, v) in headers {
            stamps.insert(k.clone(), v.clone());
        }
        self.has_revoked_stamps.store(true, Ordering::Relaxed);
    }

    /// Whether a message's stamped headers were revoked
    /// (`revoke_by_stamped_headers`).
    pub(crate) fn stamp_revoked(&self, headers: &Map<String, Value>) -> bool {
        if !self.has_revoked_stamps.load(Ordering::Relaxed) {
            return false;
        }
        let stamps = self.revoked_stamps.read().unwrap_or_else(|p| p.into_inner());
        stamps.iter().any(|(k, revoked)| {
            let Some(v) = headers.get(k) else { return false };
            let hit = |x: &Value| match revoked {
                Value::Array(a) => a.contains(x),
                r => r == x,
            };
            match v {
                Value::Array(a) => a.iter().any(hit),
                v => hit(v),
            }
        })
    }

    pub(crate) fn warm_shutdown(&self) {
        self.phase.send_if_modified(|p| {
            if *p == Phase::Running {
                *p = Phase::Warm;
                true
            } else {
                false
            }
        });
    }

    /// Change the number of execution slots (`pool_grow`, `pool_shrink`,
    /// `autoscale`). Shrinking takes slots away as running tasks free them.
    pub(crate) fn resize(&self, n: usize) {
        let n = n.max(1);
        let old = self.concurrency.swap(n, Ordering::Relaxed);
        if n > old {
            self.slots.add_permits(n - old);
        } else if n < old {
            let slots = self.slots.clone();
            let take = u32::try_from(old - n).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Ok(p) = slots.acquire_many_owned(take).await {
                    p.forget();
                }
            });
        }
    }

    pub(crate) fn queues(&self) -> Vec<String> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Consume `queue` too; false if it already is.
    pub(crate) fn add_queue(&self, queue: &str) -> bool {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if queues.iter().any(|q| q == queue) {
            return false;
        }
        queues.push(queue.to_owned());
        let _ = self.added.send(QueueChange::Add(queue.to_owned()));
        true
    }

    /// Stop consuming `queue` (a queue added at run time stops at once; a
    /// start-up queue when the worker consumes again).
    pub(crate) fn cancel_queue(&self, queue: &str) {
        self.queues.lock().unwrap_or_else(|p| p.into_inner()).retain(|q| q != queue);
        let _ = self.added.send(QueueChange::Cancel(queue.to_owned()));
    }

    /// Requests in a state, as `inspect active`/`reserved` lists them.
    pub(crate) fn requests(&self, want: impl Fn(&TaskState) -> bool) -> Vec<Value> {
        let pid = std::process::id();
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks
            .values()
            .filter(|t| want(&t.state))
            .map(|t| match t.state {
                TaskState::Active { time_start, acknowledged } => {
                    crate::control::request_info(&t.req, t.priority, Some(time_start), acknowledged, Some(pid))
                }
                _ => crate::control::request_info(&t.req, t.priority, None, false, None),
            })
            .collect()
    }

    /// `inspect scheduled`: ETA tasks held here.
    pub(crate) fn scheduled(&self) -> Vec<Value> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks
            .values()
            .filter_map(|t| match t.state {
                TaskState::Scheduled { eta } => Some(json!({
                    "eta": qcore::time::format_iso(&eta),
                    "priority": t.priority,
                    "request": crate::control::request_info(&t.req, t.priority, None, false, None),
                })),
                _ => None,
            })
            .collect()
    }

    /// `inspect query_task`: `{id: [state, request]}` for the ids held here.
    pub(crate) fn query_task(&self, ids: &[String]) -> Value {
        let pid = std::process::id();
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Map::new();
        for id in ids {
            if let Some(t) = tasks.get(id) {
                let (state, info) = match t.state {
                    TaskState::Active { time_start, acknowledged } => (
                        "active",
                        crate::control::request_info(&t.req, t.priority, Some(time_start), acknowledged, Some(pid)),
                    ),
                    TaskState::Scheduled { .. } => {
                        ("scheduled", crate::control::request_info(&t.req, t.priority, None, false, None))
                    }
                    TaskState::Reserved => {
                        ("reserved", crate::control::request_info(&t.req, t.priority, None, false, None))
                    }
                };
                out.insert(id.clone(), json!([state, info]));
            }
        }
        Value::Object(out)
    }

    /// `inspect registered`.
    pub(crate) fn registered(&self, items: Option<&Value>) -> Vec<Value> {
        let items: Vec<&str> =
            items.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let mut names = self.app.registered();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                if items.is_empty() {
                    Value::String(n)
                } else {
                    let opts = self.app.task_options(&n);
                    let max_retries = opts.max_retries.resolve(self.app.config().task_max_retries);
                    Value::String(crate::control::registered_line(&n, &opts, max_retries, &items))
                }
            })
            .collect()
    }

    /// `inspect stats`.
    pub(crate) fn stats_reply(&self) -> Value {
        let total: Map<String, Value> = self
            .totals
            .iter()
            .filter_map(|(k, v)| {
                let n = v.load(Ordering::Relaxed);
                (n > 0).then(|| (k.clone(), json!(n)))
            })
            .collect();
        let cfg = self.app.config();
        let secs = |d: Option<Duration>| d.map_or(json!(0), |d| json!(d.as_secs_f64()));
        json!({
            "total": total,
            "pid": std::process::id(),
            "clock": self.events.sender.clock().to_string(),
            "uptime": self.started_at.elapsed().as_secs(),
            "pool": {
                "implementation": "qtask:tokio",
                "max-concurrency": self.concurrency(),
                "processes": [std::process::id()],
                "max-tasks-per-child": "N/A",
                "put-guarded-by-semaphore": false,
                "timeouts": [secs(cfg.task_soft_time_limit), secs(cfg.task_time_limit)],
            },
            "broker": crate::control::broker_info(&self.app.broker().describe()),
            "prefetch_count": self.prefetch,
            "rusage": crate::control::rusage(),
        })
    }

    /// `inspect conf`: the settings this worker runs with.
    pub(crate) fn conf(&self) -> Value {
        let cfg = self.app.config();
        json!({
            "broker_url": self.app.broker().describe(),
            "result_backend": self.app.backend().map(|b| b.describe()),
            "task_serializer": serializer_name(cfg.task_serializer),
            "accept_content": cfg.accept_content.as_ref().map(|a| a.iter().map(|c| serializer_name(*c)).collect::<Vec<_>>()),
            "task_default_queue": cfg.task_default_queue,
            "task_acks_late": cfg.task_acks_late,
            "task_track_started": cfg.task_track_started,
            "result_extended": cfg.result_extended,
            "result_expires": cfg.result_expires.as_secs(),
            "worker_concurrency": self.concurrency(),
            "worker_prefetch_multiplier": cfg.worker_prefetch_multiplier,
            "worker_send_task_events": self.events.task_events(),
            "task_send_sent_event": cfg.task_send_sent_event,
        })
    }

    /// `inspect report`: software and settings, as Celery's bug report.
    pub(crate) fn report(&self) -> String {
        format!(
            "\nsoftware -> qtask:{} (rust)\nplatform -> system:{} arch:{}\nsettings -> transport:{} results:{}\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH,
            self.app.broker().describe(),
            self.app.backend().map(|b| b.describe()).unwrap_or_else(|| "disabled".into()),
        )
    }

    /// Write revoked ids where a worker starting later finds them.
    pub(crate) async fn persist_revokes(&self, ids: &[String]) {
        if let Err(e) = crate::revokes::persist(&self.app, ids).await {
            tracing::warn!(error = %e, "cannot persist revoked ids");
        }
    }
}

/// Celery's name of a serializer.
fn serializer_name(ct: qcore::ContentType) -> &'static str {
    match ct.mime() {
        "application/x-msgpack" => "msgpack",
        _ => "json",
    }
}

/// A change of the consumed queues (`add_consumer`, `cancel_consumer`).
#[derive(Debug)]
pub(crate) enum QueueChange {
    Add(String),
    Cancel(String),
}

/// Resolves once the phase is at least `want`.
pub(crate) async fn phase_at_least(rx: &mut watch::Receiver<Phase>, want: Phase) {
    let rank = |p: Phase| match p {
        Phase::Running => 0,
        Phase::Warm => 1,
        Phase::Cold => 2,
    };
    let _ = rx.wait_for(|p| rank(*p) >= rank(want)).await;
}

/// Counters of a running worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// Tasks running now.
    pub active: usize,
    /// Messages received and not yet settled (running, waiting for a slot, or held for ETA).
    pub reserved: usize,
    /// Tasks finished (any outcome).
    pub processed: u64,
    /// Tasks that succeeded.
    pub succeeded: u64,
    /// Tasks that failed.
    pub failed: u64,
    /// Whether the last broker call succeeded (readiness).
    pub broker_ok: bool,
    /// Whether the worker takes new work (false once a shutdown began).
    pub running: bool,
    /// Times the consumer lost the broker and started consuming again.
    pub reconnects: u64,
    /// Events the publisher could not keep up with and dropped (best effort, as in Celery).
    pub events_dropped: u64,
}

/// Controls a running worker from elsewhere (signals, tests, remote control).
#[derive(Clone)]
pub struct WorkerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle").field("hostname", &self.shared.hostname).finish()
    }
}

impl WorkerHandle {
    /// Warm shutdown: stop consuming, return unstarted messages, let running
    /// tasks finish within the grace period.
    pub fn shutdown(&self) {
        self.shared.phase.send_if_modified(|p| {
            if *p == Phase::Running {
                *p = Phase::Warm;
                true
            } else {
                false
            }
        });
    }

    /// Cold shutdown: abort running tasks and return every unacked message.
    pub fn cold_shutdown(&self) {
        self.shared.phase.send_replace(Phase::Cold);
    }

    /// Revoke task ids on this worker (what a `revoke` broadcast does).
    pub fn revoke(&self, ids: &[String], terminate: bool) {
        let _ = self.shared.revoke(ids, terminate);
    }

    /// Set a task's rate limit at run time (`None` removes it).
    pub fn set_rate_limit(&self, task: &str, limit: Option<qcore::RateLimit>) {
        self.shared.ratelimit.set(task, limit);
    }

    /// Current counters.
    pub fn stats(&self) -> WorkerStats {
        let s = &self.shared;
        WorkerStats {
            active: s.active.load(Ordering::Relaxed),
            reserved: s.reserved.load(Ordering::Relaxed),
            processed: s.processed.load(Ordering::Relaxed),
            succeeded: s.succeeded.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            broker_ok: s.broker_ok.load(Ordering::Relaxed),
            running: *s.phase.borrow() == Phase::Running,
            reconnects: s.reconnects.load(Ordering::Relaxed),
            events_dropped: s.events.dropped(),
        }
    }

    /// Subscribe to the worker's events in process: every event it emits
    /// (task events too, whether or not they are sent to the broker), as
    /// Celery event messages stamped with the worker's clock.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// The queues consumed now (the start-up ones, then those `add_consumer` added).
    pub fn queues(&self) -> Vec<String> {
        self.shared.queues.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The worker's node name.
    pub fn hostname(&self) -> &str {
        &self.shared.hostname
    }
}

/// Builds a [`Worker`].
#[derive(Debug)]
pub struct WorkerBuilder {
    app: App,
    queues: Vec<String>,
    concurrency: Option<usize>,
    prefetch_multiplier: Option<usize>,
    hostname: Option<String>,
    shutdown_timeout: Option<Duration>,
    send_events: Option<bool>,
    heartbeat: bool,
}

impl WorkerBuilder {
    /// Send task events (`task-received`, `task-succeeded`, ...) to the
    /// broker's `celeryev` exchange (Celery's `-E`; default:
    /// `worker_send_task_events`). They can also be switched at run time
    /// with the `enable_events` / `disable_events` control commands.
    pub fn send_events(mut self, on: bool) -> Self {
        self.send_events = Some(on);
        self
    }

    /// Send `worker-online`, `worker-heartbeat` (every 2 s) and
    /// `worker-offline` events (default: on; Celery's
    /// `--without-heartbeat` turns them off). Monitors such as Flower see
    /// a worker through them.
    pub fn heartbeat(mut self, on: bool) -> Self {
        self.heartbeat = on;
        self
    }

    /// Queues to consume (default: every queue of the app's `task_queues`,
    /// else its `task_default_queue`).
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// Tasks run at once (default: `worker_concurrency`).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n.max(1));
        self
    }

    /// Messages reserved per slot (default: `worker_prefetch_multiplier`).
    pub fn prefetch_multiplier(mut self, n: usize) -> Self {
        self.prefetch_multiplier = Some(n);
        self
    }

    /// Node name, as Celery's `-n` (default: `worker_hostname`); it goes
    /// through [`qcore::node_name`]: `%h`/`%n`/`%d` expand, a name without
    /// `@` gets `qtask@` in front, and none at all is `qtask@<host>`.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    /// Grace period for running tasks at warm shutdown.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = Some(d);
        self
    }

    /// Build the worker.
    pub fn build(self) -> Worker {
        let cfg = self.app.config();
        let concurrency = self.concurrency.unwrap_or(cfg.worker_concurrency).max(1);
        // Celery: a multiplier of 0 means "as many as possible"; keep a sane cap.
        let multiplier = self.prefetch_multiplier.unwrap_or(cfg.worker_prefetch_multiplier);
        let prefetch = if multiplier == 0 { concurrency * 64 } else { concurrency * multiplier }.max(concurrency);
        let hostname = qcore::node_name(self.hostname.as_deref().or(cfg.worker_hostname.as_deref()));
        // No queues given: every queue of `task_queues`, else the default
        // queue (Celery's rule).
        let queues = match (self.queues.is_empty(), cfg.task_queues.is_empty()) {
            (false, _) => self.queues,
            (true, false) => cfg.task_queues.iter().map(|q| q.name.clone()).collect(),
            (true, true) => vec![cfg.task_default_queue.clone()],
        };
        let shutdown_timeout = self.shutdown_timeout.unwrap_or(cfg.worker_shutdown_timeout);
        let send_events = self.send_events.unwrap_or(cfg.worker_send_task_events);
        let events = Events::new(Arc::new(EventSender::new(hostname.clone())), send_events, self.heartbeat);
        let (phase, _) = watch::channel(Phase::Running);
        let totals = self.app.registered().into_iter().map(|n| (n, AtomicU64::new(0))).collect();
        let (added, added_rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            totals,
            started_at: Instant::now(),
            queues: Mutex::new(queues.clone()),
            added,
            added_rx: Mutex::new(Some(added_rx)),
            time_limits: RwLock::new(HashMap::new()),
            has_time_limits: AtomicBool::new(false),
            revoked_stamps: RwLock::new(Map::new()),
            has_revoked_stamps: AtomicBool::new(false),
            app: self.app,
            hostname,
            concurrency: AtomicUsize::new(concurrency),
            prefetch,
            slots: Arc::new(Semaphore::new(concurrency)),
            events,
            phase,
            revoked: Mutex::new(Revoked::default()),
            tasks: Mutex::new(HashMap::new()),
            ratelimit: RateLimiter::default(),
            active: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
            processed: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            broker_ok: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            shutdown_timeout,
        });
        Worker { shared, queues }
    }
}

/// A worker. Build with [`Worker::builder`], then [`run`](Worker::run).
pub struct Worker {
    shared: Arc<Shared>,
    queues: Vec<String>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("hostname", &self.shared.hostname)
            .field("queues", &self.queues)
            .field("concurrency", &self.shared.concurrency())
            .field("prefetch", &self.shared.prefetch)
            .finish()
    }
}

/// The wait before retry `attempt` of a broker or backend call (reconnects,
/// settlements, result writes): [`qcore::backoff::reconnect`] from 100 ms,
/// capped at 5 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    qcore::backoff::reconnect(attempt, Duration::from_millis(100), Duration::from_secs(5))
}

impl Worker {
    /// Start building a worker for `app`.
    pub fn builder(app: App) -> WorkerBuilder {
        WorkerBuilder {
            app,
            queues: Vec::new(),
            concurrency: None,
            prefetch_multiplier: None,
            hostname: None,
            shutdown_timeout: None,
            send_events: None,
            heartbeat: true,
        }
    }

    /// A handle to stop or observe the worker while it runs.
    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle { shared: self.shared.clone() }
    }

    /// Run until shut down with the first SIGTERM/SIGINT (warm), or a
    /// second one (cold).
    pub async fn run_until_signal(self) -> Result<(), Error> {
        let handle = self.handle();
        let signals = tokio::spawn(async move {
            let mut count = 0;
            loop {
                if !wait_signal().await {
                    return;
                }
                count += 1;
                if count == 1 {
                    tracing::info!("warm shutdown: finishing running tasks (signal again for a cold shutdown)");
                    handle.shutdown();
                } else {
                    tracing::warn!("cold shutdown: aborting running tasks");
                    handle.cold_shutdown();
                    return;
                }
            }
        });
        let r = self.run().await;
        signals.abort();
        r
    }

    async fn consume(&self, phase: &mut watch::Receiver<Phase>) -> Option<Box<dyn Consumer>> {
        let broker = self.shared.app.broker().clone();
        let mut attempt = 0;
        loop {
            let result = async {
                for q in &self.queues {
                    broker.declare_queue(q).await?;
                }
                broker
                    .consume(&self.queues, ConsumeOptions::new(self.shared.prefetch).tag(self.shared.hostname.clone()))
                    .await
            }
            .await;
            match result {
                Ok(c) => {
                    self.shared.broker_ok.store(true, Ordering::Relaxed);
                    return Some(c);
                }
                Err(e) => {
                    self.shared.broker_ok.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cannot start consuming; retrying");
                    attempt += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(attempt)) => {}
                        _ = phase_at_least(phase, Phase::Warm) => return None,
                    }
                }
            }
        }
    }

    /// Run until [`WorkerHandle::shutdown`] (or cold shutdown) is called.
    ///
    /// The loop runs as a task of the current runtime, not inside the
    /// caller's future: a caller in `block_on` on the main thread (as under
    /// `#[tokio::main]`) would otherwise send every task the loop spawns
    /// through the runtime's injection queue, waking a worker thread each
    /// time. Dropping the returned future still stops the worker at once
    /// (the task is aborted), as it did when the loop ran in place.
    pub async fn run(self) -> Result<(), Error> {
        struct AbortOnDrop(tokio::task::JoinHandle<Result<(), Error>>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let mut task = AbortOnDrop(tokio::spawn(self.run_loop()));
        match (&mut task.0).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::Broker(qcore::BrokerError::new(
                qcore::ErrorKind::Closed,
                format!("the worker loop was cancelled: {e}"),
            ))),
        }
    }

    async fn run_loop(self) -> Result<(), Error> {
        let shared = self.shared.clone();
        let mut phase = shared.phase.subscribe();
        let reserve = Arc::new(Semaphore::new(shared.prefetch));
        let publisher = shared.events.start_publisher(shared.app.broker().clone());
        // Revokes made while this worker was down (durable revokes).
        match qcore::control::revoked::load(&shared.app).await {
            Ok(ids) if !ids.is_empty() => {
                tracing::info!(count = ids.len(), "revoked ids loaded");
                let _ = shared.revoke(&ids, false);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot load the revoked ids"),
        }
        // Subscribed before "worker online", so a control request sent once
        // the worker says it is online is heard.
        let first = crate::control::subscribe(&shared).await;
        let control = tokio::spawn(crate::control::control_loop(shared.clone(), first));
        let heartbeat = tokio::spawn(heartbeat_loop(shared.clone()));
        let (fed_tx, mut fed_rx) = tokio::sync::mpsc::channel::<Fed>(1);
        let mut changes = shared.added_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut feeders: HashMap<String, (watch::Sender<bool>, tokio::task::JoinHandle<()>)> = HashMap::new();
        tracing::info!(
            hostname = %shared.hostname, queues = ?self.queues, concurrency = shared.concurrency(),
            prefetch = shared.prefetch, broker = %shared.app.broker().describe(), "worker online"
        );
        let Some(mut consumer) = self.consume(&mut phase).await else {
            control.abort();
            heartbeat.abort();
            if let Some(p) = publisher {
                p.abort();
            }
            return Ok(());
        };
        shared.worker_event(EventData::WorkerOnline);
        let mut inflight = JoinSet::new();
        let mut attempt = 0u32;
        loop {
            while inflight.try_join_next().is_some() {}
            let permit = tokio::select! {
                p = reserve.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = phase_at_least(&mut phase, Phase::Warm) => break,
            };
            let next = tokio::select! {
                r = consumer.recv() => r,
                Some(fed) = fed_rx.recv() => {
                    shared.reserved.fetch_add(1, Ordering::Relaxed);
                    let sh = shared.clone();
                    inflight.spawn(async move {
                        execute::handle(sh, fed.delivery, fed.permit).await;
                        fed.pending.done();
                    });
                    continue;
                }
                Some(change) = async { match changes.as_mut() { Some(c) => c.recv().await, None => None } } => {
                    match change {
                        QueueChange::Add(q) => {
                            let (stop, stop_rx) = watch::channel(false);
                            let h = tokio::spawn(feed(shared.clone(), q.clone(), reserve.clone(), fed_tx.clone(), stop_rx));
                            feeders.insert(q, (stop, h));
                        }
                        QueueChange::Cancel(q) => match feeders.remove(&q) {
                            Some((stop, h)) => {
                                let _ = stop.send(true);
                                drop(h);
                            }
                            None if self.queues.contains(&q) => tracing::warn!(
                                queue = %q,
                                "cancel_consumer of a start-up queue takes effect when the worker starts again"
                            ),
                            None => {}
                        },
                    }
                    continue;
                }
                _ = phase_at_least(&mut phase, Phase::Warm) => break,
            };
            match next {
                Ok(Some(delivery)) => {
                    attempt = 0;
                    shared.broker_ok.store(true, Ordering::Relaxed);
                    shared.reserved.fetch_add(1, Ordering::Relaxed);
                    inflight.spawn(execute::handle(shared.clone(), delivery, permit));
                }
                Ok(None) => {
                    tracing::warn!("consumer closed by the broker; consuming again");
                    shared.broker_ok.store(false, Ordering::Relaxed);
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    match self.consume(&mut phase).await {
                        Some(c) => consumer = c,
                        None => break,
                    }
                }
                Err(e) => {
                    shared.broker_ok.store(false, Ordering::Relaxed);
                    if attempt == 0 {
                        shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "receiving from the broker failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(attempt)) => {}
                        _ = phase_at_least(&mut phase, Phase::Warm) => break,
                    }
                }
            }
        }
        // Warm shutdown: stop taking work, let running tasks finish.
        shared.phase.send_if_modified(|p| {
            if *p == Phase::Running {
                *p = Phase::Warm;
                true
            } else {
                false
            }
        });
        for (stop, _) in feeders.values() {
            let _ = stop.send(true);
        }
        // Deliveries an added consumer handed over meanwhile: handled (they
        // go back to their queue: the worker is stopping).
        fed_rx.close();
        while let Some(fed) = fed_rx.recv().await {
            shared.reserved.fetch_add(1, Ordering::Relaxed);
            let sh = shared.clone();
            inflight.spawn(async move {
                execute::handle(sh, fed.delivery, fed.permit).await;
                fed.pending.done();
            });
        }
        let drain = async { while inflight.join_next().await.is_some() {} };
        let grace = shared.shutdown_timeout;
        let mut cold_rx = shared.phase.subscribe();
        let finished_in_time = tokio::select! {
            _ = tokio::time::timeout(grace, drain) => true,
            _ = phase_at_least(&mut cold_rx, Phase::Cold) => false,
        };
        if !finished_in_time || !inflight.is_empty() {
            tracing::warn!(left = inflight.len(), "grace period over: cold shutdown of the remaining tasks");
            shared.phase.send_replace(Phase::Cold);
            while inflight.join_next().await.is_some() {}
        }
        for (_, (_, h)) in feeders.drain() {
            let _ = h.await;
        }
        control.abort();
        heartbeat.abort();
        shared.worker_event(EventData::WorkerOffline);
        shared.events.flush(Duration::from_secs(2)).await;
        if let Some(p) = publisher {
            p.abort();
        }
        if let Err(e) = consumer.close().await {
            tracing::warn!(error = %e, "closing the consumer");
        }
        tracing::info!(hostname = %shared.hostname, "worker offline");
        Ok(())
    }
}

/// A delivery from a consumer added at run time (`add_consumer`).
struct Fed {
    delivery: qcore::Delivery,
    permit: tokio::sync::OwnedSemaphorePermit,
    pending: Arc<Pending>,
}

/// Deliveries of one added consumer not settled yet: the consumer is closed
/// only when none is left (closing an AMQP channel would requeue them while
/// they run).
#[derive(Default)]
struct Pending {
    n: AtomicUsize,
    zero: tokio::sync::Notify,
}

impl Pending {
    fn done(&self) {
        if self.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.zero.notify_waiters();
        }
    }

    async fn wait_zero(&self) {
        loop {
            let notified = self.zero.notified();
            if self.n.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Consume an added queue and hand its deliveries to the run loop until
/// `stop` (or shutdown); then close the consumer once its deliveries are
/// settled.
async fn feed(
    shared: Arc<Shared>,
    queue: String,
    reserve: Arc<Semaphore>,
    tx: tokio::sync::mpsc::Sender<Fed>,
    mut stop: watch::Receiver<bool>,
) {
    let broker = shared.app.broker().clone();
    let mut phase = shared.phase.subscribe();
    let pending = Arc::new(Pending::default());
    let mut attempt = 0u32;
    let mut consumer = loop {
        let r = async {
            broker.declare_queue(&queue).await?;
            broker
                .consume(
                    std::slice::from_ref(&queue),
                    ConsumeOptions::new(shared.prefetch).tag(shared.hostname.clone()),
                )
                .await
        }
        .await;
        match r {
            Ok(c) => break c,
            Err(e) => {
                attempt += 1;
                tracing::warn!(queue = %queue, error = %e, "cannot consume the added queue; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff(attempt)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                    _ = phase_at_least(&mut phase, Phase::Warm) => return,
                }
            }
        }
    };
    tracing::info!(queue = %queue, "consuming from an added queue");
    loop {
        let permit = tokio::select! {
            p = reserve.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.wait_for(|s| *s) => break,
            _ = phase_at_least(&mut phase, Phase::Warm) => break,
        };
        let next = tokio::select! {
            r = consumer.recv() => r,
            _ = stop.wait_for(|s| *s) => break,
            _ = phase_at_least(&mut phase, Phase::Warm) => break,
        };
        match next {
            Ok(Some(delivery)) => {
                pending.n.fetch_add(1, Ordering::AcqRel);
                if let Err(e) = tx.send(Fed { delivery, permit, pending: pending.clone() }).await {
                    // The run loop is gone: give the message back.
                    pending.done();
                    let _ = e.0.delivery.acker.reject(true).await;
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                attempt += 1;
                tracing::warn!(queue = %queue, error = %e, "receiving from the added queue failed; retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
    pending.wait_zero().await;
    if let Err(e) = consumer.close().await {
        tracing::warn!(queue = %queue, error = %e, "closing the added consumer");
    }
    tracing::info!(queue = %queue, "no longer consuming from the added queue");
}

async fn heartbeat_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    // The first tick is immediate: worker-online was just sent.
    tick.tick().await;
    loop {
        tick.tick().await;
        shared.worker_event(EventData::WorkerHeartbeat);
    }
}

#[cfg(unix)]
async fn wait_signal() -> bool {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return false;
    };
    tokio::select! {
        _ = term.recv() => true,
        _ = int.recv() => true,
    }
}

#[cfg(not(unix))]
async fn wait_signal() -> bool {
    tokio::signal::ctrl_c().await.is_ok()
}
