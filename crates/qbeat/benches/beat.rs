//! Scale of the beat: entries loaded, ticks per second and memory, with
//! 1,000 and 100,000 entries. One entry is due per simulated second
//! (tokio's paused time drives the clock), so each tick sends one message
//! to an in-memory broker; the per-tick cost should not grow with the
//! number of entries (a heap keyed by next run).
//!
//! `cargo bench -p qbeat --bench beat` prints a table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use qbeat::{Beat, Entry, Interval, MemoryStore, RunState, Schedule, Store, TokioClock};

/// Resident memory of this process, in bytes (Linux).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

async fn run(n: u64, ticks: u64) {
    let t0: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z").unwrap().with_timezone(&Utc);
    let app = qmemory::app();
    let before = rss();
    let started = Instant::now();
    let store = Arc::new(MemoryStore::new());
    let every = Schedule::Interval(Interval::new(Duration::from_secs(n)).unwrap());
    for k in 0..n {
        let name = format!("entry-{k}");
        store.upsert(Entry::new(name.clone(), "tasks.tick", every.clone()).args(vec![k.into()])).await.unwrap();
        // Entry k is next due at t0 + n - k seconds: one per second.
        let last = t0 - TimeDelta::seconds(k as i64);
        store.set_state(&name, RunState { last_run_at: Some(last), total_run_count: 0 });
    }
    let stored = started.elapsed();
    let store_memory = rss().saturating_sub(before);
    let before = rss();
    let started = Instant::now();
    let beat = Beat::builder(app.clone())
        .store(store.clone())
        .clock(Arc::new(TokioClock::starting_at(t0)))
        .spawn()
        .await
        .unwrap();
    let loaded = started.elapsed();
    let memory = rss().saturating_sub(before);
    let started = Instant::now();
    let status = beat.wait_for(Duration::from_secs(ticks + n + 10), |s| s.sent >= ticks).await.unwrap();
    let ran = started.elapsed();
    beat.stop().await.unwrap();
    app.broker().purge("celery").await.unwrap();
    println!(
        "| {n:>7} | {:>8.1} ms | {:>7.1} MiB | {:>8.1} ms | {:>7.1} MiB | {:>7} | {:>9.0} |",
        stored.as_secs_f64() * 1e3,
        store_memory as f64 / (1024.0 * 1024.0),
        loaded.as_secs_f64() * 1e3,
        memory as f64 / (1024.0 * 1024.0),
        status.ticks,
        status.ticks as f64 / ran.as_secs_f64(),
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    println!("| entries | store writes | store RSS | beat load | beat RSS | ticks | ticks/s (1 send each) |");
    println!("|---|---|---|---|---|---|---|");
    for n in [1_000, 100_000] {
        rt.block_on(run(n, 20_000.min(n)));
    }
}
