//! django-celery-beat's per-entry rules under a fake clock (tokio's paused
//! time): `one_off` runs once then is disabled, `start_time` holds the
//! first slot back, an `expires` instant stops the entry.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use qbeat::{Beat, Entry, EntryOptions, Expires, Interval, MemoryStore, Schedule, TokioClock};

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z").unwrap().with_timezone(&Utc)
}

fn hourly(name: &str) -> Entry {
    Entry::new(name, "tasks.tick", Schedule::Interval(Interval::new(Duration::from_secs(3600)).unwrap()))
}

async fn start(app: &qcore::App, entry: Entry) -> (qbeat::BeatHandle, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let beat = Beat::builder(app.clone())
        .entry(entry)
        .store(store.clone())
        .clock(Arc::new(TokioClock::starting_at(t0())))
        .spawn()
        .await
        .unwrap();
    (beat, store)
}

#[tokio::test(start_paused = true)]
async fn one_off_runs_once_then_is_disabled() {
    let app = qmemory::app();
    let (beat, store) = start(&app, hourly("once").one_off(true)).await;
    beat.wait_for(Duration::from_secs(5 * 3600), |s| s.last_tick >= Some(t0() + TimeDelta::hours(4))).await.unwrap();
    assert_eq!(beat.status().sent, 1, "{:?}", beat.status());
    assert!(!store.get("once").unwrap().entry.enabled, "disabled after its run");
    beat.stop().await.unwrap();
    assert_eq!(app.broker().queue_len("celery").await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn no_slot_before_start_time() {
    let app = qmemory::app();
    let start_at = t0() + TimeDelta::minutes(5 * 60 + 30);
    let (beat, store) = start(&app, hourly("later").start_time(Some(start_at))).await;
    let s = beat.wait_for(Duration::from_secs(8 * 3600), |s| s.sent >= 1).await.unwrap();
    let first = store.get("later").unwrap().state.last_run_at.unwrap();
    assert!(first >= start_at, "first slot {first} before start_time {start_at}");
    assert_eq!(s.skipped, 0, "{s:?}");
    beat.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn nothing_is_sent_after_expires() {
    let app = qmemory::app();
    let mut options = EntryOptions::default();
    options.expires = Some(Expires::At(t0() + TimeDelta::minutes(90)));
    let (beat, _store) = start(&app, hourly("ends").options(options)).await;
    let s = beat
        .wait_for(Duration::from_secs(5 * 3600), |s| s.last_tick >= Some(t0() + TimeDelta::hours(4)))
        .await
        .unwrap();
    // t0 + 1 h is sent; t0 + 2 h is after the expiry: not sent, and no more.
    assert_eq!((s.sent, s.skipped), (1, 1), "{s:?}");
    assert_eq!(s.next_due, None, "{s:?}");
    beat.stop().await.unwrap();
}
