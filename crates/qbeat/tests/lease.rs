//! Replicas on a [`MemoryLease`], under tokio's paused time: a leader that
//! lost its lease without knowing it (its renewals "succeed" on its side of
//! a partition) is fenced: it sends nothing once another beat holds the
//! lease, and the new leader goes on from the slots the old one fired.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qbeat::{Beat, Claim, Entry, Fence, Interval, Lease, MemoryLease, MemoryStore, Schedule, TokioClock, SLOT_HEADER};
use qcore::{ConsumeOptions, Error};

/// A lease whose renewals, once `partitioned`, answer "renewed" without
/// reaching the lease (and whose acquisitions fail): the beat goes on
/// believing it leads, and only its fences reach the lease.
struct Partitioned {
    inner: Arc<MemoryLease>,
    partitioned: AtomicBool,
}

#[async_trait]
impl Lease for Partitioned {
    fn describe(&self) -> String {
        "partitioned".into()
    }
    fn ttl(&self) -> Duration {
        self.inner.ttl()
    }
    async fn acquire(&self) -> Result<Option<u64>, Error> {
        if self.partitioned.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.inner.acquire().await
    }
    async fn renew(&self, token: u64) -> Result<bool, Error> {
        if self.partitioned.load(Ordering::SeqCst) {
            return Ok(true);
        }
        self.inner.renew(token).await
    }
    async fn release(&self, token: u64) -> Result<(), Error> {
        self.inner.release(token).await
    }
    async fn fence(&self, token: u64, claim: &Claim) -> Result<Fence, Error> {
        self.inner.fence(token, claim).await
    }
    async fn last_fired(&self) -> Result<HashMap<String, DateTime<Utc>>, Error> {
        self.inner.last_fired().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_stale_leader_is_fenced_and_the_new_one_resumes_the_grid() {
    let app = qmemory::app();
    let t0 = DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z").unwrap().to_utc();
    let every = || Entry::new("tick", "tasks.tick", Schedule::Interval(Interval::new(Duration::from_secs(1)).unwrap()));
    let shared = Arc::new(MemoryLease::new(Duration::from_secs(10)));
    let stale = Arc::new(Partitioned { inner: shared.clone(), partitioned: AtomicBool::new(false) });
    let clock = Arc::new(TokioClock::starting_at(t0));
    // Each replica keeps its entries in its own memory.
    let a = Beat::builder(app.clone())
        .entry(every())
        .store(Arc::new(MemoryStore::new()))
        .lease(stale.clone())
        .clock(clock.clone())
        .spawn()
        .await
        .unwrap();
    let sa = a.wait_for(Duration::from_secs(60), |s| s.leader && s.sent >= 5).await.unwrap();
    let b = Beat::builder(app.clone())
        .entry(every())
        .store(Arc::new(MemoryStore::new()))
        .lease(shared.clone())
        .clock(clock.clone())
        .spawn()
        .await
        .unwrap();
    assert!(!b.status().leader, "one leader at a time");
    stale.partitioned.store(true, Ordering::SeqCst);
    let sb = b.wait_for(Duration::from_secs(60), |s| s.leader && s.sent >= 5).await.unwrap();
    let sa2 = a.wait_for(Duration::from_secs(60), |s| !s.leader).await.unwrap();
    assert!(sb.lease_token > sa.lease_token, "a larger token: {sb:?} {sa:?}");
    // The old leader sent nothing after the lease expired: its sends stop
    // within the lease's 10 s.
    assert!(sa2.sent <= sa.sent + 11, "{sa:?} then {sa2:?}");
    let sent_before = a.status().sent;
    b.wait_for(Duration::from_secs(60), |s| s.sent >= sb.sent + 5).await.unwrap();
    assert_eq!(a.status().sent, sent_before, "a fenced beat sends nothing");
    a.stop().await.unwrap();
    b.stop().await.unwrap();

    // Every message by slot: none twice, one hole at the failover, all on
    // one grid.
    let total = app.broker().queue_len("celery").await.unwrap();
    let mut consumer = app.broker().consume(&["celery".to_string()], ConsumeOptions::new(1000)).await.unwrap();
    let mut slots = Vec::new();
    for _ in 0..total {
        let d = consumer.recv().await.unwrap().unwrap();
        let slot = d.message.headers[SLOT_HEADER].as_str().unwrap().to_string();
        slots.push(DateTime::parse_from_rfc3339(&slot).unwrap().to_utc());
        d.acker.ack().await.unwrap();
    }
    slots.sort();
    let n = slots.len();
    slots.dedup();
    assert_eq!(slots.len(), n, "a slot sent twice");
    let holes: Vec<_> = slots.windows(2).map(|w| w[1] - w[0]).filter(|g| g.num_seconds() != 1).collect();
    assert!(holes.len() <= 1, "{holes:?}");
    assert!(holes.iter().all(|h| h.num_milliseconds() % 1000 == 0 && h.num_seconds() <= 12), "{holes:?}");
}
