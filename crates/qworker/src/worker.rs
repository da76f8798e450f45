//! The worker loop: consume, reserve, dispatch, shut down.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, oneshot, watch, Semaphore};
use tokio::task::JoinSet;

use qcore::control::{ControlRequest, PIDBOX_EXCHANGE};
use qcore::{App, ConsumeOptions, Consumer, Error};

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

pub(crate) struct Shared {
    pub(crate) app: App,
    pub(crate) hostname: String,
    pub(crate) concurrency: usize,
    pub(crate) prefetch: usize,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) events: Events,
    pub(crate) phase: watch::Sender<Phase>,
    pub(crate) revoked: Mutex<Revoked>,
    pub(crate) running: Mutex<HashMap<String, oneshot::Sender<()>>>,
    pub(crate) ratelimit: RateLimiter,
    pub(crate) active: AtomicUsize,
    pub(crate) reserved: AtomicUsize,
    pub(crate) processed: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) broker_ok: AtomicBool,
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

    fn revoke(&self, ids: &[String], terminate: bool) {
        let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            revoked.insert(id.clone());
        }
        drop(revoked);
        if terminate {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                if let Some(tx) = running.remove(id) {
                    let _ = tx.send(());
                }
            }
        }
    }
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
        self.shared.revoke(ids, terminate);
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
        }
    }

    /// Subscribe to the worker's events in process: every event it emits
    /// (task events too, whether or not they are sent to the broker), as
    /// Celery event messages stamped with the worker's clock.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
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

    /// Queues to consume (default: the app's `task_default_queue`).
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
        let queues = if self.queues.is_empty() { vec![cfg.task_default_queue.clone()] } else { self.queues };
        let shutdown_timeout = self.shutdown_timeout.unwrap_or(cfg.worker_shutdown_timeout);
        let send_events = self.send_events.unwrap_or(cfg.worker_send_task_events);
        let events = Events::new(Arc::new(EventSender::new(hostname.clone())), send_events, self.heartbeat);
        let (phase, _) = watch::channel(Phase::Running);
        let shared = Arc::new(Shared {
            app: self.app,
            hostname,
            concurrency,
            prefetch,
            slots: Arc::new(Semaphore::new(concurrency)),
            events,
            phase,
            revoked: Mutex::new(Revoked::default()),
            running: Mutex::new(HashMap::new()),
            ratelimit: RateLimiter::default(),
            active: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
            processed: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            broker_ok: AtomicBool::new(false),
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
            .field("concurrency", &self.shared.concurrency)
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
        let control = tokio::spawn(control_loop(shared.clone()));
        let heartbeat = tokio::spawn(heartbeat_loop(shared.clone()));
        tracing::info!(
            hostname = %shared.hostname, queues = ?self.queues, concurrency = shared.concurrency,
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
                    match self.consume(&mut phase).await {
                        Some(c) => consumer = c,
                        None => break,
                    }
                }
                Err(e) => {
                    shared.broker_ok.store(false, Ordering::Relaxed);
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

async fn heartbeat_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    // The first tick is immediate: worker-online was just sent.
    tick.tick().await;
    loop {
        tick.tick().await;
        shared.worker_event(EventData::WorkerHeartbeat);
    }
}

/// Listen for remote-control broadcasts (`revoke`, `terminate`, `rate_limit`).
async fn control_loop(shared: Arc<Shared>) {
    let broker = shared.app.broker().clone();
    let mut attempt = 0;
    loop {
        let mut sub = match broker.subscribe(PIDBOX_EXCHANGE, "").await {
            Ok(s) => s,
            Err(e) if e.kind() == qcore::ErrorKind::Unsupported => {
                tracing::info!("broker has no fanout: remote control (revoke) is unavailable");
                return;
            }
            Err(e) => {
                attempt += 1;
                tracing::warn!(error = %e, "cannot subscribe to remote control; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
        };
        attempt = 0;
        loop {
            match sub.recv().await {
                Ok(Some((_rk, msg))) => match ControlRequest::from_message(&msg) {
                    Ok(req) if req.addressed_to(&shared.hostname) => handle_control(&shared, &req),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "ignoring malformed control message"),
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "remote control subscription failed; resubscribing");
                    break;
                }
            }
        }
        attempt += 1;
        tokio::time::sleep(backoff(attempt)).await;
    }
}

fn handle_control(shared: &Shared, req: &ControlRequest) {
    match req.method.as_str() {
        "revoke" => {
            let terminate = req.arguments.get("terminate").and_then(serde_json::Value::as_bool).unwrap_or(false);
            let ids = req.task_ids();
            tracing::info!(?ids, terminate, "revoke");
            shared.revoke(&ids, terminate);
        }
        "terminate" => {
            let ids = req.task_ids();
            tracing::info!(?ids, "terminate");
            shared.revoke(&ids, true);
        }
        "rate_limit" => {
            let task = req.arguments.get("task_name").and_then(serde_json::Value::as_str);
            let rate = req.arguments.get("rate_limit").map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            if let (Some(task), Some(rate)) = (task, rate) {
                match qcore::RateLimit::parse(&rate) {
                    Ok(limit) => shared.ratelimit.set(task, limit),
                    Err(e) => tracing::warn!(error = %e, "ignoring invalid rate_limit"),
                }
            }
        }
        "enable_events" => {
            if !shared.events.set_task_events(true) {
                tracing::info!("task events enabled");
            }
        }
        "disable_events" => {
            if shared.events.set_task_events(false) {
                tracing::info!("task events disabled");
            }
        }
        "heartbeat" if shared.events.worker_events() => shared.worker_event(EventData::WorkerHeartbeat),
        other => tracing::debug!(method = other, "remote control method not handled by this worker"),
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
