//! Replicas: one leader at a time, with a fencing token, and a slot fired
//! once even by a leader that lost its lease without knowing it.
//!
//! A beat given a [`Lease`] sends nothing until it holds the lease. Each
//! acquisition gets a token larger than every earlier holder's. Before it
//! claims a slot, the leader asks the lease to [`fence`](Lease::fence) it:
//! in one atomic step the lease store checks that the lease is still held
//! under this token and marks the slot (entry + scheduled instant) fired,
//! unless it already was. A leader frozen past its lease (a `SIGSTOP`, a
//! long GC pause of the host, a network partition) wakes up holding a stale
//! token: every fence answers [`Fence::NotLeader`], it sends nothing and
//! steps down. The slots fired are recorded with the lease, so a new leader
//! resumes on the same grid ([`last_fired`](Lease::last_fired)) even when
//! each replica keeps its entries in its own memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qcore::Error;

use crate::store::Claim;

/// The answer of [`Lease::fence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The lease is ours and the slot was not fired: send it.
    Fire,
    /// The slot was already fired (by this leader or an earlier one).
    Duplicate,
    /// The lease is no longer held under this token: send nothing, step
    /// down.
    NotLeader,
}

/// Default time a lease lasts without renewal; the leader renews it every
/// third of it, and a standby tries to take it every second, so a new
/// leader takes over at most this long (plus a second) after the old one's
/// death.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// How long the "slot fired" marks live.
pub const FIRED_TTL: Duration = Duration::from_secs(24 * 3600);

/// A leader lease with a fencing token (see the module's text).
#[async_trait]
pub trait Lease: Send + Sync + 'static {
    /// For logs: the kind of lease and where it is.
    fn describe(&self) -> String;

    /// How long the lease lasts without renewal.
    fn ttl(&self) -> Duration;

    /// Take the lease when it is free: its token (larger than every
    /// earlier holder's), or `None` when another beat holds it.
    async fn acquire(&self) -> Result<Option<u64>, Error>;

    /// Extend the lease held under `token`; `false` when it is no longer
    /// held under it.
    async fn renew(&self, token: u64) -> Result<bool, Error>;

    /// Give the lease up (at a clean stop), when still held under `token`.
    async fn release(&self, token: u64) -> Result<(), Error>;

    /// In one atomic step: the lease is still held under `token`, and the
    /// slot of `claim` was not fired; then mark it fired (for
    /// [`FIRED_TTL`]) and record it as the entry's last fired slot.
    async fn fence(&self, token: u64, claim: &Claim) -> Result<Fence, Error>;

    /// The last slot fired of each entry, by any leader.
    async fn last_fired(&self) -> Result<HashMap<String, DateTime<Utc>>, Error>;
}

#[derive(Default)]
struct MemoryInner {
    counter: u64,
    holder: Option<(u64, tokio::time::Instant)>,
    fired: std::collections::HashSet<(String, DateTime<Utc>)>,
    last: HashMap<String, DateTime<Utc>>,
}

/// A [`Lease`] shared by beats of one process (tests, or several beats
/// embedded in one service). It follows tokio's clock, so paused-time
/// tests expire it with `tokio::time::advance`.
pub struct MemoryLease {
    ttl: Duration,
    inner: Mutex<MemoryInner>,
}

impl std::fmt::Debug for MemoryLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLease").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl MemoryLease {
    /// A free lease lasting `ttl` without renewal.
    pub fn new(ttl: Duration) -> MemoryLease {
        MemoryLease { ttl, inner: Mutex::new(MemoryInner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held(inner: &MemoryInner) -> Option<u64> {
        inner.holder.filter(|(_, until)| *until > tokio::time::Instant::now()).map(|(t, _)| t)
    }

    /// The token of the current holder, if any.
    pub fn holder(&self) -> Option<u64> {
        Self::held(&self.lock())
    }
}

#[async_trait]
impl Lease for MemoryLease {
    fn describe(&self) -> String {
        "memory lease".into()
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn acquire(&self) -> Result<Option<u64>, Error> {
        let mut inner = self.lock();
        if Self::held(&inner).is_some() {
            return Ok(None);
        }
        inner.counter += 1;
        let token = inner.counter;
        inner.holder = Some((token, tokio::time::Instant::now() + self.ttl));
        Ok(Some(token))
    }

    async fn renew(&self, token: u64) -> Result<bool, Error> {
        let mut inner = self.lock();
        if Self::held(&inner) != Some(token) {
            return Ok(false);
        }
        inner.holder = Some((token, tokio::time::Instant::now() + self.ttl));
        Ok(true)
    }

    async fn release(&self, token: u64) -> Result<(), Error> {
        let mut inner = self.lock();
        if Self::held(&inner) == Some(token) {
            inner.holder = None;
        }
        Ok(())
    }

    async fn fence(&self, token: u64, claim: &Claim) -> Result<Fence, Error> {
        let mut inner = self.lock();
        if Self::held(&inner) != Some(token) {
            return Ok(Fence::NotLeader);
        }
        if !inner.fired.insert((claim.entry.clone(), claim.slot)) {
            return Ok(Fence::Duplicate);
        }
        let last = inner.last.entry(claim.entry.clone()).or_insert(claim.slot);
        if *last < claim.slot {
            *last = claim.slot;
        }
        Ok(Fence::Fire)
    }

    async fn last_fired(&self) -> Result<HashMap<String, DateTime<Utc>>, Error> {
        Ok(self.lock().last.clone())
    }
}
