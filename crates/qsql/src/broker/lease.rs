//! Leases of unsettled deliveries: prefetch permits, renewal, settlement.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

/// The unsettled deliveries of one consumer: id -> claim token. Their leases
/// are renewed while this set lives (held by the consumer and every acker).
#[derive(Debug, Default)]
pub(crate) struct Inflight {
    map: Mutex<HashMap<i64, String>>,
}

impl Inflight {
    pub(crate) fn insert(&self, id: i64, token: &str) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(id, token.to_string());
        }
    }

    fn remove(&self, id: i64, token: &str) {
        if let Ok(mut m) = self.map.lock() {
            if m.get(&id).is_some_and(|t| t == token) {
                m.remove(&id);
            }
        }
    }

    fn snapshot(&self) -> (Vec<i64>, Vec<String>) {
        match self.map.lock() {
            Ok(m) => m.iter().map(|(id, t)| (*id, t.clone())).unzip(),
            Err(_) => (Vec::new(), Vec::new()),
        }
    }
}

/// One delivery's lease: row id, claim token, prefetch permit.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) id: i64,
    pub(crate) token: String,
    pub(crate) queue: String,
    settled: AtomicBool,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    inflight: Arc<Inflight>,
}

impl Lease {
    pub(crate) fn new(
        id: i64,
        token: String,
        queue: String,
        permit: OwnedSemaphorePermit,
        inflight: Arc<Inflight>,
    ) -> Self {
        inflight.insert(id, &token);
        Lease { id, token, queue, settled: AtomicBool::new(false), permit: Mutex::new(Some(permit)), inflight }
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// The delivery was settled: stop renewing, free the prefetch slot.
    pub(crate) fn settle(&self) {
        self.settled.store(true, Ordering::Release);
        self.inflight.remove(self.id, &self.token);
        if let Ok(mut p) = self.permit.lock() {
            p.take();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Dropped without settlement: no longer renewed, so the message is
        // delivered again once its lease runs out.
        self.inflight.remove(self.id, &self.token);
    }
}

/// Renew the leases in `inflight` every `every` until every holder is gone.
pub(crate) fn spawn_renewer<F, Fut>(inflight: Weak<Inflight>, every: Duration, renew: F)
where
    F: Fn(Vec<i64>, Vec<String>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<u64, sqlx::Error>> + Send,
{
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(set) = inflight.upgrade() else { return };
            let (ids, tokens) = set.snapshot();
            drop(set);
            if ids.is_empty() {
                continue;
            }
            match renew(ids, tokens).await {
                Ok(n) => tracing::trace!(renewed = n, "renewed delivery leases"),
                Err(e) => tracing::warn!(error = %e, "renewing delivery leases failed"),
            }
        }
    });
}

/// A claim token unique to one claim batch of one consumer.
pub(crate) fn claim_token(tag: &str, seq: u64) -> String {
    format!("{tag}#{seq}")
}
