//! [`MemoryBackend`]: task results, groups and chord joins in process memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use qcore::{BackendError, ChordJoin, ChordPart, ErrorKind, ResultBackend, ResultMeta, State};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Writes between two sweeps of expired entries nobody read again.
const SWEEP_EVERY: u64 = 1024;

/// An in-process [`ResultBackend`]: for tests, eager mode and single-process
/// apps.
///
/// * A stored SUCCESS is never overwritten; any other state is.
/// * Entries expire after their ttl (measured with [`tokio::time::Instant`],
///   so a test with paused time can advance past it).
/// * [`wait`](ResultBackend::wait) is woken by the store itself (push), it
///   never polls.
/// * The chord join is atomic under one lock: each header task counts once
///   per `(task_id, index)`, and exactly one caller gets
///   [`ChordJoin::Complete`], with the parts ordered by index. Parts arriving
///   after completion are [`ChordJoin::Duplicate`]s.
///
/// Cloning gives another handle on the same store.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use qcore::{ResultBackend, ResultMeta, State};
/// let backend = qmemory::MemoryBackend::new();
/// backend.store(&ResultMeta::new("t1", State::Success, 5.into()), None).await?;
/// let meta = backend.wait("t1", Duration::from_secs(1)).await?;
/// assert_eq!(meta.result, 5);
/// # Ok::<(), qcore::BackendError>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<Store>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // Every update is complete before anything that can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Expiring<T> {
    value: T,
    expires_at: Option<Instant>,
}

impl<T> Expiring<T> {
    fn new(value: T, ttl: Option<Duration>) -> Self {
        Expiring { value, expires_at: deadline(ttl) }
    }

    fn alive(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

fn deadline(ttl: Option<Duration>) -> Option<Instant> {
    // A ttl too large to represent never expires.
    ttl.and_then(|t| Instant::now().checked_add(t))
}

struct Chord {
    size: u64,
    parts: BTreeMap<(u64, String), ChordPart>,
    seen: HashSet<(String, u64)>,
    completed: bool,
}

#[derive(Default)]
struct Store {
    results: HashMap<String, Expiring<ResultMeta>>,
    groups: HashMap<String, Expiring<Vec<String>>>,
    chords: HashMap<String, Expiring<Chord>>,
    /// Waiters by task id, woken on every store of that id.
    waiters: HashMap<String, Arc<Notify>>,
    writes: u64,
}

/// Look up a live entry, dropping it when it has expired.
fn live<'a, T>(map: &'a mut HashMap<String, Expiring<T>>, key: &str) -> Option<&'a mut Expiring<T>> {
    let now = Instant::now();
    if map.get(key).is_some_and(|e| !e.alive(now)) {
        map.remove(key);
    }
    map.get_mut(key)
}

impl Store {
    fn wrote(&mut self) {
        self.writes += 1;
        if self.writes.is_multiple_of(SWEEP_EVERY) {
            let now = Instant::now();
            self.results.retain(|_, e| e.alive(now));
            self.groups.retain(|_, e| e.alive(now));
            self.chords.retain(|_, e| e.alive(now));
        }
    }
}

impl MemoryBackend {
    /// A new, empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of task results stored (live or not yet swept).
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.shared.lock().results.values().filter(|e| e.alive(now)).count()
    }

    /// Whether no task result is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get_now(&self, task_id: &str) -> Option<ResultMeta> {
        live(&mut self.shared.lock().results, task_id).map(|e| e.value.clone())
    }
}

#[async_trait]
impl ResultBackend for MemoryBackend {
    async fn store(&self, meta: &ResultMeta, ttl: Option<Duration>) -> Result<(), BackendError> {
        let mut store = self.shared.lock();
        if live(&mut store.results, &meta.task_id).is_some_and(|e| e.value.status == State::Success) {
            tracing::debug!(task_id = %meta.task_id, status = %meta.status, "SUCCESS already stored; write skipped");
            return Ok(());
        }
        store.results.insert(meta.task_id.clone(), Expiring::new(meta.clone(), ttl));
        if let Some(n) = store.waiters.get(&meta.task_id) {
            n.notify_waiters();
        }
        store.wrote();
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        Ok(self.get_now(task_id))
    }

    async fn get_many(&self, task_ids: &[String]) -> Result<Vec<Option<ResultMeta>>, BackendError> {
        let mut store = self.shared.lock();
        Ok(task_ids.iter().map(|id| live(&mut store.results, id).map(|e| e.value.clone())).collect())
    }

    async fn wait(&self, task_id: &str, timeout: Duration) -> Result<ResultMeta, BackendError> {
        let notify = self.shared.lock().waiters.entry(task_id.to_string()).or_default().clone();
        let result = async {
            let deadline = Instant::now().checked_add(timeout);
            loop {
                // Register before looking, so a store in between still wakes us.
                let notified = notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(meta) = self.get_now(task_id).filter(|m| m.status.is_ready()) {
                    return Ok(meta);
                }
                match deadline {
                    Some(at) => {
                        if tokio::time::timeout_at(at, notified).await.is_err() {
                            return Err(BackendError::new(
                                ErrorKind::Timeout,
                                format!("task {task_id} not ready after {timeout:?}"),
                            ));
                        }
                    }
                    None => notified.await,
                }
            }
        }
        .await;
        let mut store = self.shared.lock();
        // Only the map and this call hold it: nobody else waits on this id.
        if Arc::strong_count(&notify) == 2 {
            store.waiters.remove(task_id);
        }
        result
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        self.shared.lock().results.remove(task_id);
        Ok(())
    }

    async fn save_group(&self, group_id: &str, task_ids: &[String], ttl: Option<Duration>) -> Result<(), BackendError> {
        let mut store = self.shared.lock();
        store.groups.insert(group_id.to_string(), Expiring::new(task_ids.to_vec(), ttl));
        store.wrote();
        Ok(())
    }

    async fn get_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError> {
        Ok(live(&mut self.shared.lock().groups, group_id).map(|e| e.value.clone()))
    }

    async fn chord_init(&self, group_id: &str, size: u64, ttl: Option<Duration>) -> Result<(), BackendError> {
        let mut store = self.shared.lock();
        let chord = Chord { size, parts: BTreeMap::new(), seen: HashSet::new(), completed: false };
        store.chords.insert(group_id.to_string(), Expiring::new(chord, ttl));
        store.wrote();
        Ok(())
    }

    async fn chord_part(
        &self,
        group_id: &str,
        part: &ChordPart,
        ttl: Option<Duration>,
    ) -> Result<ChordJoin, BackendError> {
        let mut store = self.shared.lock();
        let Some(entry) = live(&mut store.chords, group_id) else {
            return Err(BackendError::new(
                ErrorKind::NotFound,
                format!("chord {group_id} is unknown (not initialised, or expired)"),
            ));
        };
        entry.expires_at = deadline(ttl);
        let chord = &mut entry.value;
        if chord.completed || !chord.seen.insert((part.task_id.clone(), part.index)) {
            return Ok(ChordJoin::Duplicate);
        }
        chord.parts.insert((part.index, part.task_id.clone()), part.clone());
        let done = chord.parts.len() as u64;
        if done < chord.size {
            return Ok(ChordJoin::Waiting { done, size: chord.size });
        }
        chord.completed = true;
        // Keep only the marker: the parts go to the one caller that completes.
        chord.seen.clear();
        let parts = std::mem::take(&mut chord.parts).into_values().collect();
        Ok(ChordJoin::Complete(parts))
    }

    fn describe(&self) -> String {
        "memory://".into()
    }
}
