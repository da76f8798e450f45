//! How many events per second the monitor stores: `cargo run --release -p
//! qmonitor --example ingest -- [TASKS]` writes TASKS tasks' worth of
//! events (received, started, succeeded; 50,000 tasks by default) into a
//! fresh SQLite history in batches of 2000, as the ingest loop does, and
//! prints the rate.

use std::time::{Duration, Instant};

use qcore::event::{EventData, EventSender, TaskReceived};
use qmonitor::{Monitor, Retention, TaskQuery};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tasks: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let path = std::env::temp_dir().join(format!("qmonitor-ingest-{}.db", uuid::Uuid::new_v4().simple()));
    let monitor = Monitor::open(&path.to_string_lossy(), Retention::default()).await?;
    let s = EventSender::new("w1@bench").with_pid(1).with_utcoffset(0.0);
    let mut events = Vec::with_capacity(tasks * 3);
    for i in 0..tasks {
        let id = uuid::Uuid::new_v4().to_string();
        events.push(s.event(EventData::TaskReceived(TaskReceived {
            uuid: id.clone(),
            name: format!("tasks.t{}", i % 20),
            args: format!("({i}, 'payload-{i}')"),
            kwargs: "{}".into(),
            root_id: Some(id.clone()),
            parent_id: None,
            retries: 0,
            eta: None,
            expires: None,
        })));
        events.push(s.event(EventData::task_started(id.clone())));
        events.push(s.event(EventData::task_succeeded(id, format!("{i}"), Duration::from_millis(3))));
    }
    // Task events arrive interleaved: a batch holds the tail of some tasks
    // and the head of others.
    let started = Instant::now();
    for batch in events.chunks(2000) {
        monitor.apply(batch).await?;
    }
    let took = started.elapsed();
    println!(
        "{} events ({tasks} tasks) stored in {:.2} s: {:.0} events/s",
        events.len(),
        took.as_secs_f64(),
        events.len() as f64 / took.as_secs_f64()
    );
    for (what, q) in [
        ("newest 50", TaskQuery { limit: 50, ..TaskQuery::default() }),
        (
            "state+name, 50",
            TaskQuery {
                limit: 50,
                state: Some("SUCCESS".into()),
                name: Some("tasks.t7".into()),
                ..TaskQuery::default()
            },
        ),
        (
            "search by argument",
            TaskQuery { limit: 50, search: Some(format!("payload-{}", tasks / 2)), ..TaskQuery::default() },
        ),
    ] {
        let t = Instant::now();
        let rows = monitor.store().tasks(&q).await?;
        println!("{what}: {} rows in {:.1} ms", rows.len(), t.elapsed().as_secs_f64() * 1e3);
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(())
}
