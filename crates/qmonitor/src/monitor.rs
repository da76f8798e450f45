//! The monitor: events in, state kept and stored, updates out.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use qcore::broker::Broker;
use qcore::control::{Client, ControlRequest};
use qcore::event::{Event, EventKind, EVENT_EXCHANGE};
use serde_json::Value;
use tokio::sync::{broadcast, Mutex};

use crate::metrics::Metrics;
use crate::state::{Task, Worker};
use crate::store::{search_text, EventRow, Retention, Store, StoreError};

/// Events read before a batch is written, at most.
const BATCH: usize = 2000;
/// How long an event waits, at most, before its batch is written.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The state of every worker and task seen, backed by the [`Store`].
///
/// Feed it events with [`apply`](Self::apply) (the ingest loop,
/// [`ingest`](Self::ingest), does so in batches); read it through the
/// store and [`workers`](Self::workers). Every batch written is announced
/// on [`subscribe`](Self::subscribe) (the pages' live updates).
pub struct Monitor {
    store: Store,
    workers: RwLock<BTreeMap<String, Worker>>,
    /// The next `seq`; held while a batch is written (one writer).
    writer: Mutex<i64>,
    updates: broadcast::Sender<Update>,
    metrics: Metrics,
    retention: Retention,
    events: AtomicU64,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").field("events", &self.events.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

/// What a written batch changed (sent to the live pages).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Update {
    /// Task ids whose state changed.
    pub tasks: Vec<String>,
    /// Workers whose state changed.
    pub workers: Vec<String>,
}

impl Monitor {
    /// Open the history at `db` (see [`Store::open`]) and load the workers
    /// it holds: a restart loses nothing stored.
    pub async fn open(db: &str, retention: Retention) -> Result<Arc<Monitor>, StoreError> {
        let store = Store::open(db).await?;
        let seq = store.max_seq().await?;
        let workers: BTreeMap<String, Worker> =
            store.workers().await?.into_iter().map(|w| (w.hostname.clone(), w)).collect();
        let metrics = Metrics::new();
        for w in workers.values() {
            metrics.worker(w, w.alive(qcore::time::now_epoch()));
        }
        let (updates, _) = broadcast::channel(256);
        Ok(Arc::new(Monitor {
            store,
            workers: RwLock::new(workers),
            writer: Mutex::new(seq + 1),
            updates,
            metrics,
            retention,
            events: AtomicU64::new(0),
        }))
    }

    /// The history.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Events applied since start.
    pub fn events_seen(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Every worker known, by name.
    pub fn workers(&self) -> Vec<Worker> {
        self.workers.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// One worker.
    pub fn worker(&self, name: &str) -> Option<Worker> {
        self.workers.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Announcements of each batch written.
    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.updates.subscribe()
    }

    /// Merge a batch of events into the state and write it (one
    /// transaction), then announce it.
    pub async fn apply(&self, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut next_seq = self.writer.lock().await;
        let mut ids: Vec<String> = events.iter().filter_map(|e| e.task_id().map(str::to_owned)).collect();
        ids.sort();
        ids.dedup();
        let mut tasks: HashMap<String, (i64, Task)> =
            self.store.tasks_by_id(&ids).await?.into_iter().map(|(s, t)| (t.uuid.clone(), (s, t))).collect();
        let indexed: HashMap<String, String> = tasks.iter().map(|(id, (_, t))| (id.clone(), search_text(t))).collect();
        let mut rows: Vec<EventRow> = Vec::with_capacity(events.len());
        let mut changed_workers: BTreeMap<String, Worker> = BTreeMap::new();
        {
            let mut workers = self.workers.write().unwrap_or_else(|p| p.into_inner());
            for ev in events {
                let id = ev.task_id().map(str::to_owned);
                rows.push((
                    id.clone(),
                    ev.hostname.clone(),
                    ev.type_name().to_owned(),
                    ev.timestamp,
                    String::from_utf8(ev.to_json()).unwrap_or_default(),
                ));
                if let Some(id) = id {
                    let entry = tasks.entry(id.clone()).or_insert_with(|| {
                        let seq = *next_seq;
                        *next_seq += 1;
                        (seq, Task::new(id))
                    });
                    let before = entry.1.received;
                    entry.1.apply(ev);
                    self.metrics.task_event(ev, &entry.1, before);
                }
                let is_worker_event = ev.worker_info().is_some();
                let tracked = matches!(
                    ev.kind(),
                    EventKind::TaskReceived
                        | EventKind::TaskStarted
                        | EventKind::TaskSucceeded
                        | EventKind::TaskFailed
                        | EventKind::TaskRetried
                        | EventKind::TaskRevoked
                        | EventKind::TaskRejected
                );
                if (is_worker_event || tracked) && !ev.hostname.is_empty() {
                    let w = workers.entry(ev.hostname.clone()).or_insert_with(|| Worker::new(ev.hostname.clone()));
                    w.apply(ev);
                    if is_worker_event {
                        self.metrics.worker(w, !w.offline);
                    }
                    changed_workers.insert(w.hostname.clone(), w.clone());
                }
            }
        }
        let task_rows: Vec<(i64, &Task)> = tasks.values().map(|(s, t)| (*s, t)).collect();
        let worker_rows: Vec<&Worker> = changed_workers.values().collect();
        // Re-index only the tasks whose searchable text changed.
        let reindex: Vec<(i64, String)> = tasks
            .iter()
            .map(|(id, (seq, t))| (id, *seq, search_text(t)))
            .filter(|(id, _, text)| indexed.get(*id) != Some(text))
            .map(|(_, seq, text)| (seq, text))
            .collect();
        self.store.write(&rows, &task_rows, &worker_rows, &reindex).await?;
        drop(next_seq);
        self.events.fetch_add(events.len() as u64, Ordering::Relaxed);
        let _ = self
            .updates
            .send(Update { tasks: tasks.into_keys().collect(), workers: changed_workers.into_keys().collect() });
        Ok(())
    }

    /// Read events from `broker` until it closes: batches of up to 2000
    /// events, written at least every 100 ms. A message that is not an
    /// event is parked in the store with the reason. The retention is
    /// applied once a minute.
    pub async fn ingest(self: Arc<Self>, broker: Arc<dyn Broker>) -> Result<(), qcore::Error> {
        let mut sub = broker.subscribe(EVENT_EXCHANGE, "#").await?;
        let mut batch: Vec<Event> = Vec::new();
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        let mut prune = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                msg = sub.recv() => {
                    let Some((routing_key, msg)) = msg? else {
                        self.flush(&mut batch).await;
                        return Ok(());
                    };
                    match Event::from_message(&msg) {
                        Ok(evs) => batch.extend(evs),
                        Err(e) => {
                            tracing::warn!(%routing_key, error = %e, "not an event; parked");
                            if let Err(e) = self.store.park(&format!("{routing_key}: {e}"), &msg.body).await {
                                tracing::error!(error = %e, "cannot park a malformed event");
                            }
                        }
                    }
                    if batch.len() >= BATCH {
                        self.flush(&mut batch).await;
                    }
                }
                _ = tick.tick() => self.flush(&mut batch).await,
                _ = prune.tick() => {
                    match self.store.prune(self.retention).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(tasks = n, "history pruned"),
                        Err(e) => tracing::error!(error = %e, "cannot prune the history"),
                    }
                }
            }
        }
    }

    async fn flush(&self, batch: &mut Vec<Event>) {
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.apply(batch).await {
            tracing::error!(error = %e, events = batch.len(), "cannot store a batch of events");
        }
        batch.clear();
    }

    /// Ask every worker `stats`, `active_queues`, `registered` and `conf`
    /// (what Flower asks) and keep the answers; a worker that answers is
    /// known even before its first heartbeat. Returns the nodes that
    /// answered `stats`.
    pub async fn refresh_inspect(&self, client: &Client, timeout: Duration) -> Result<usize, MonitorError> {
        let methods = ["stats", "active_queues", "registered", "conf"];
        // Asked together: one timeout for the four, not four in a row.
        let asks = methods.map(|m| client.call(ControlRequest::new(m), timeout, None));
        let answers = futures_util::future::join_all(asks).await;
        let now = qcore::time::now_epoch();
        let mut answered = 0;
        let mut changed = BTreeMap::new();
        {
            let mut workers = self.workers.write().unwrap_or_else(|p| p.into_inner());
            for (method, replies) in methods.into_iter().zip(answers) {
                for r in replies? {
                    if method == "stats" {
                        answered += 1;
                    }
                    let w = workers.entry(r.node.clone()).or_insert_with(|| Worker::new(r.node.clone()));
                    w.inspect.insert(method.into(), redact_urls(r.value));
                    w.inspected_at = Some(now);
                    changed.insert(w.hostname.clone(), w.clone());
                }
            }
        }
        let refs: Vec<&Worker> = changed.values().collect();
        self.store.write(&[], &[], &refs, &[]).await?;
        Ok(answered)
    }

    /// Ask one worker an inspect command (`active`, `reserved`, ...) and
    /// return its answer, if it answered within `timeout`.
    pub async fn inspect_one(
        &self,
        client: &Client,
        node: &str,
        method: &str,
        timeout: Duration,
    ) -> Result<Option<Value>, qcore::Error> {
        let replies = client.call(ControlRequest::new(method).to([node]), timeout, Some(1)).await?;
        Ok(replies.into_iter().next().map(|r| redact_urls(r.value)))
    }
}

/// A failure of the monitor: its store, or the broker.
#[derive(Debug)]
pub enum MonitorError {
    /// The history store failed.
    Store(StoreError),
    /// The broker (or a control call through it) failed.
    Qtask(qcore::Error),
}

impl std::fmt::Display for MonitorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MonitorError::Store(e) => e.fmt(f),
            MonitorError::Qtask(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for MonitorError {}

impl From<StoreError> for MonitorError {
    fn from(e: StoreError) -> Self {
        MonitorError::Store(e)
    }
}

impl From<qcore::Error> for MonitorError {
    fn from(e: qcore::Error) -> Self {
        MonitorError::Qtask(e)
    }
}

/// Replace the password of every URL-looking string (a worker's `conf`
/// carries `broker_url`).
fn redact_urls(v: Value) -> Value {
    match v {
        Value::String(s) if s.contains("://") && s.contains('@') => Value::String(qcore::url::redact(&s)),
        Value::Array(a) => Value::Array(a.into_iter().map(redact_urls).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, redact_urls(v))).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qcore::event::{EventData, EventSender, WorkerInfo};
    use std::time::Duration;

    fn db_path() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("qmonitor-test-{}.db", uuid::Uuid::new_v4().simple()))
    }

    #[tokio::test]
    async fn a_restart_loses_nothing_stored() {
        let path = db_path();
        let url = path.to_string_lossy().to_string();
        let s = EventSender::new("w1@h").with_pid(1).with_utcoffset(0.0);
        {
            let m = Monitor::open(&url, Retention::default()).await.unwrap();
            m.apply(&[
                s.event(EventData::WorkerHeartbeat(WorkerInfo::new(Duration::from_secs(2), 0, 3, [0.0; 3]))),
                s.event(EventData::task_started("a")),
            ])
            .await
            .unwrap();
            m.apply(&[s.event(EventData::task_succeeded("a", "1", Duration::from_millis(1)))]).await.unwrap();
        }
        let m = Monitor::open(&url, Retention::default()).await.unwrap();
        let t = m.store().task("a").await.unwrap().unwrap();
        assert_eq!(t.state, "SUCCESS");
        assert!(t.started.is_some(), "merged with what was stored before");
        assert_eq!(m.worker("w1@h").map(|w| w.processed), Some(3));
        assert_eq!(m.store().timeline("a").await.unwrap().len(), 2);
        // New tasks are numbered after the stored ones.
        m.apply(&[s.event(EventData::task_started("b"))]).await.unwrap();
        let page = m.store().tasks(&crate::TaskQuery { limit: 10, ..Default::default() }).await.unwrap();
        assert_eq!(page.iter().map(|(_, t)| t.uuid.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{url}{suffix}"));
        }
    }

    #[tokio::test]
    async fn retention_keeps_the_newest_tasks() {
        let m = Monitor::open("sqlite::memory:", Retention::default()).await.unwrap();
        let s = EventSender::new("w1@h").with_pid(1).with_utcoffset(0.0);
        let evs: Vec<Event> = (0..10).map(|i| s.event(EventData::task_started(format!("t{i}")))).collect();
        m.apply(&evs).await.unwrap();
        let deleted = m.store().prune(Retention { max_tasks: Some(4), max_age: None }).await.unwrap();
        assert_eq!(deleted, 6);
        let left = m.store().tasks(&crate::TaskQuery { limit: 100, ..Default::default() }).await.unwrap();
        assert_eq!(left.len(), 4);
        assert!(m.store().task("t9").await.unwrap().is_some() && m.store().task("t0").await.unwrap().is_none());
        assert!(m.store().timeline("t0").await.unwrap().is_empty(), "its events went with it");
        let old =
            m.store().prune(Retention { max_tasks: None, max_age: Some(Duration::from_secs(3600)) }).await.unwrap();
        assert_eq!(old, 0, "all recent");
    }

    #[tokio::test]
    async fn ingest_reads_batches_and_parks_what_is_not_an_event() {
        let app = qmemory_app();
        let m = Monitor::open("sqlite::memory:", Retention::default()).await.unwrap();
        let mut updates = m.subscribe();
        let task = tokio::spawn(m.clone().ingest(app.broker().clone()));
        // Wait until the ingest subscribed: publish until the first update comes.
        let s = EventSender::new("w1@h").with_pid(1).with_utcoffset(0.0);
        let batch = Event::batch_to_message(&[s.event(EventData::task_started("x"))]).unwrap();
        let mut bad = batch.clone();
        bad.body = b"{\"not\": \"an event\"}".to_vec();
        loop {
            app.broker().publish_fanout(EVENT_EXCHANGE, "task.multi", &bad).await.unwrap();
            app.broker().publish_fanout(EVENT_EXCHANGE, "task.multi", &batch).await.unwrap();
            if tokio::time::timeout(Duration::from_millis(500), updates.recv()).await.is_ok() {
                break;
            }
        }
        assert_eq!(m.store().task("x").await.unwrap().unwrap().state, "STARTED");
        let parked: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM qm_malformed").fetch_one(m.store().pool()).await.unwrap();
        assert!(parked >= 1);
        task.abort();
    }

    fn qmemory_app() -> qcore::App {
        qmemory::app()
    }
}
