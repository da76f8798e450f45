//! Where entries and their run state live: the [`Store`] contract and the
//! in-memory [`MemoryStore`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qcore::Error;
use tokio::sync::watch;

use crate::entry::{Entry, RunState};

/// An entry with its run state, as a store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The entry (shared: a snapshot and the beat hold the store's copy).
    pub entry: Arc<Entry>,
    /// Its runs.
    pub state: RunState,
}

/// Every entry, and the cursor to ask for changes after it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The entries (enabled or not).
    pub entries: Vec<Stored>,
    /// Pass to [`Store::changes_since`].
    pub cursor: u64,
}

/// What changed after a cursor: only the entries touched, never a reload
/// of all of them.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Added or edited entries (a disabled entry is an edited one).
    pub upserted: Vec<Stored>,
    /// Names of deleted entries.
    pub removed: Vec<String>,
    /// The new cursor.
    pub cursor: u64,
}

/// A beat's claim on one slot of one entry: "this slot is sent once, by
/// me". The slot instant is the deduplication key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Claim {
    /// The entry's name.
    pub entry: String,
    /// The slot (scheduled instant) being sent.
    pub slot: DateTime<Utc>,
}

impl Claim {
    /// A claim on `slot` of `entry`.
    pub fn new(entry: impl Into<String>, slot: DateTime<Utc>) -> Claim {
        Claim { entry: entry.into(), slot }
    }
}

/// Entries and their run state, shared by the beats that use the store.
///
/// The contract every store keeps:
///
/// * **Snapshot, then deltas.** [`load`](Store::load) returns every entry
///   and a cursor; [`changes_since`](Store::changes_since) returns only what
///   was added, edited, disabled or deleted after a cursor. A store backed
///   by a database answers it from an index (a per-row version or change
///   time), so an edit costs the beat one row, not a reload of 100,000.
/// * **Wake-ups are hints.** [`watch`](Store::watch) gives a receiver that
///   changes when something may have changed (Redis pub/sub, PostgreSQL
///   `LISTEN/NOTIFY`, an in-process channel); a store without one returns
///   `None` and the beat polls `changes_since` every second.
/// * **A slot is claimed once.** [`claim`](Store::claim) sets the entry's
///   `last_run_at` to the slot and adds one to `total_run_count` in one
///   atomic step, only when the stored `last_run_at` is before the slot
///   (Redis: a Lua compare-and-set; SQL: `UPDATE … WHERE last_run_at IS
///   NULL OR last_run_at < $slot`). Two beats sharing a store therefore
///   send each slot once, and the beat claims before it publishes, as
///   Celery's `reserve` does.
/// * **Run state is not an edit.** Claims change neither the cursor nor the
///   wake-up (as django-celery-beat's own `last_run_at` writes do not bump
///   its change marker).
///
/// Stores backed by a server plug in here without changing the beat (in
/// the facade, `qtask::beat`: `DjangoStore` on django-celery-beat's tables).
/// Replicas add a [`Lease`](crate::Lease): its fence (lease token still
/// held AND slot not fired, one atomic step) comes before the store's
/// claim.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// For logs: the kind of store and where it is.
    fn describe(&self) -> String;

    /// Every entry with its run state, and a cursor.
    async fn load(&self) -> Result<Snapshot, Error>;

    /// What changed after `cursor`.
    async fn changes_since(&self, cursor: u64) -> Result<Changes, Error>;

    /// A receiver that changes when entries may have changed; `None` when
    /// the store has no notification (the beat polls).
    fn watch(&self) -> Option<watch::Receiver<u64>>;

    /// Add an entry, or replace the one of the same name; its run state is
    /// kept.
    async fn upsert(&self, entry: Entry) -> Result<(), Error>;

    /// Delete an entry; `false` when there was none.
    async fn remove(&self, name: &str) -> Result<bool, Error>;

    /// Enable or disable an entry (a clocked entry is disabled after its
    /// run); `false` when there is no such entry.
    async fn set_enabled(&self, name: &str, enabled: bool) -> Result<bool, Error>;

    /// Claim a slot (see the contract above): `true` when this caller now
    /// sends it, `false` when it was already claimed or the entry is gone.
    async fn claim(&self, claim: &Claim) -> Result<bool, Error>;
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, (Stored, u64)>,
    removed: HashMap<String, u64>,
    version: u64,
}

/// A [`Store`] in memory, for one process: the default of a beat given no
/// store, and the store of tests. Run state lives as long as the store.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    notify: watch::Sender<u64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore { inner: Mutex::new(Inner::default()), notify: watch::Sender::new(0) }
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Set an entry's run state (tests, or state restored from elsewhere).
    /// It is not an edit: the cursor does not move.
    pub fn set_state(&self, name: &str, state: RunState) -> bool {
        match self.lock().entries.get_mut(name) {
            Some((stored, _)) => {
                stored.state = state;
                true
            }
            None => false,
        }
    }

    /// An entry and its run state.
    pub fn get(&self, name: &str) -> Option<Stored> {
        self.lock().entries.get(name).map(|(s, _)| s.clone())
    }

    fn bump(&self, inner: &mut Inner) -> u64 {
        inner.version += 1;
        let v = inner.version;
        self.notify.send_replace(v);
        v
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    async fn load(&self) -> Result<Snapshot, Error> {
        let inner = self.lock();
        let mut entries: Vec<Stored> = inner.entries.values().map(|(s, _)| s.clone()).collect();
        entries.sort_by(|a, b| a.entry.name.cmp(&b.entry.name));
        Ok(Snapshot { entries, cursor: inner.version })
    }

    async fn changes_since(&self, cursor: u64) -> Result<Changes, Error> {
        let inner = self.lock();
        let upserted = inner.entries.values().filter(|(_, v)| *v > cursor).map(|(s, _)| s.clone()).collect();
        let removed = inner.removed.iter().filter(|(_, v)| **v > cursor).map(|(n, _)| n.clone()).collect();
        Ok(Changes { upserted, removed, cursor: inner.version })
    }

    fn watch(&self) -> Option<watch::Receiver<u64>> {
        Some(self.notify.subscribe())
    }

    async fn upsert(&self, entry: Entry) -> Result<(), Error> {
        let mut inner = self.lock();
        let v = self.bump(&mut inner);
        inner.removed.remove(&entry.name);
        let state = inner.entries.get(&entry.name).map(|(s, _)| s.state).unwrap_or_default();
        inner.entries.insert(entry.name.clone(), (Stored { entry: Arc::new(entry), state }, v));
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<bool, Error> {
        let mut inner = self.lock();
        if inner.entries.remove(name).is_none() {
            return Ok(false);
        }
        let v = self.bump(&mut inner);
        inner.removed.insert(name.to_string(), v);
        Ok(true)
    }

    async fn set_enabled(&self, name: &str, enabled: bool) -> Result<bool, Error> {
        let mut inner = self.lock();
        if !inner.entries.contains_key(name) {
            return Ok(false);
        }
        let v = self.bump(&mut inner);
        if let Some((stored, version)) = inner.entries.get_mut(name) {
            Arc::make_mut(&mut stored.entry).enabled = enabled;
            *version = v;
        }
        Ok(true)
    }

    async fn claim(&self, claim: &Claim) -> Result<bool, Error> {
        let mut inner = self.lock();
        let Some((stored, _)) = inner.entries.get_mut(&claim.entry) else {
            return Ok(false);
        };
        if stored.state.last_run_at.is_some_and(|last| last >= claim.slot) {
            return Ok(false);
        }
        stored.state.last_run_at = Some(claim.slot);
        stored.state.total_run_count += 1;
        Ok(true)
    }
}
