//! `/metrics`: Flower's Prometheus families, with Flower's names and labels.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use qcore::event::{Event, EventKind};

use crate::state::{Task, Worker};

type Labels = Vec<(&'static str, String)>;

/// The Python client's default histogram buckets (Flower uses them).
const BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// At most this many distinct `worker` label values (a fleet of short-lived
/// pods would grow the series without bound); later workers are `other`.
const MAX_WORKER_LABELS: usize = 1000;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The metric families (`flower_events_total`, ...), updated from events.
pub struct Metrics {
    registry: Registry,
    events: Family<Labels, Counter>,
    runtime: Family<Labels, Histogram, fn() -> Histogram>,
    prefetch_time: Family<Labels, Gauge<f64, AtomicU64>>,
    prefetched: Family<Labels, Gauge>,
    online: Family<Labels, Gauge>,
    executing: Family<Labels, Gauge>,
    hosts: Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Empty families, registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let events = Family::<Labels, Counter>::default();
        let runtime = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        let prefetch_time = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let prefetched = Family::<Labels, Gauge>::default();
        let online = Family::<Labels, Gauge>::default();
        let executing = Family::<Labels, Gauge>::default();
        registry.register("flower_events", "Number of events", events.clone());
        registry.register("flower_task_runtime_seconds", "Task runtime", runtime.clone());
        registry.register(
            "flower_task_prefetch_time_seconds",
            "The time the task spent waiting at the worker to be processed.",
            prefetch_time.clone(),
        );
        registry.register(
            "flower_worker_prefetched_tasks",
            "Number of tasks of given type prefetched at a worker",
            prefetched.clone(),
        );
        registry.register("flower_worker_online", "Worker online status", online.clone());
        registry.register(
            "flower_worker_number_of_currently_executing_tasks",
            "Number of tasks currently executing at a worker",
            executing.clone(),
        );
        Metrics { registry, events, runtime, prefetch_time, prefetched, online, executing, hosts: Mutex::default() }
    }

    fn host(&self, name: &str) -> String {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.contains(name) {
            return name.to_string();
        }
        if hosts.len() >= MAX_WORKER_LABELS {
            return "other".to_string();
        }
        hosts.insert(name.to_string());
        name.to_string()
    }

    /// A task event merged into `task` (`received_before`: its `received`
    /// time before the merge).
    pub(crate) fn task_event(&self, ev: &Event, task: &Task, received_before: Option<f64>) {
        let worker = self.host(&ev.hostname);
        let name = task.name.clone().unwrap_or_default();
        let wt = || vec![("worker", worker.clone()), ("task", name.clone())];
        self.events
            .get_or_create(&vec![
                ("worker", worker.clone()),
                ("type", ev.type_name().to_string()),
                ("task", name.clone()),
            ])
            .inc();
        if let Some(rt) = task.runtime.filter(|_| ev.kind() == EventKind::TaskSucceeded) {
            self.runtime.get_or_create(&wt()).observe(rt);
        }
        match ev.kind() {
            EventKind::TaskReceived => {
                self.prefetched.get_or_create(&wt()).inc();
            }
            EventKind::TaskStarted => {
                self.prefetched.get_or_create(&wt()).dec();
                if let (Some(r), None) = (received_before.or(task.received), task.eta.as_ref()) {
                    self.prefetch_time.get_or_create(&wt()).set((ev.timestamp - r).max(0.0));
                }
            }
            EventKind::TaskRevoked | EventKind::TaskRejected => {
                self.prefetched.get_or_create(&wt()).dec();
            }
            EventKind::TaskSucceeded | EventKind::TaskFailed => {
                self.prefetch_time.get_or_create(&wt()).set(0.0);
            }
            _ => {}
        }
    }

    /// A worker's state: `online` as Flower sets it (1 on a heartbeat, 0
    /// on `worker-offline`).
    pub(crate) fn worker(&self, w: &Worker, online: bool) {
        let labels = vec![("worker", self.host(&w.hostname))];
        self.online.get_or_create(&labels).set(i64::from(online));
        self.executing.get_or_create(&labels).set(w.active.min(i64::MAX as u64) as i64);
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
