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
    // Made batch by batch (a million tasks' events would not fit in
    // memory at once). Task events arrive interleaved: a batch holds the
    // tail of some tasks and the head of others.
    let make = |i: usize| {
        let id = format!("{:08x}-0000-4000-8000-{:012x}", i, i);
        [
            s.event(EventData::TaskReceived(TaskReceived {
                uuid: id.clone(),
                name: format!("tasks.t{}", i % 20),
                args: format!("({i}, 'payload-{i}')"),
                kwargs: "{}".into(),
                root_id: Some(id.clone()),
                parent_id: None,
                retries: 0,
                eta: None,
                expires: None,
            })),
            s.event(EventData::task_started(id.clone())),
            s.event(EventData::task_succeeded(id, format!("{i}"), Duration::from_millis(3))),
        ]
    };
    let mut stored = 0usize;
    let mut pending: Vec<qcore::event::Event> = Vec::with_capacity(2100);
    let started = Instant::now();
    for i in 0..tasks {
        pending.extend(make(i));
        if pending.len() >= 2000 {
            monitor.apply(&pending).await?;
            stored += pending.len();
            pending.clear();
        }
    }
    monitor.apply(&pending).await?;
    stored += pending.len();
    let took = started.elapsed();
    println!(
        "{} events ({tasks} tasks) stored in {:.2} s: {:.0} events/s",
        stored,
        took.as_secs_f64(),
        stored as f64 / took.as_secs_f64()
    );
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("history file: {} MB", size / 1_000_000);
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
            "search by id",
            TaskQuery {
                limit: 50,
                search: Some(format!("{:08x}-0000-4000-8000-{:012x}", tasks / 3, tasks / 3)),
                ..TaskQuery::default()
            },
        ),
        (
            "search by a part of an id",
            TaskQuery { limit: 50, search: Some(format!("{:08x}-0000", tasks / 3)), ..TaskQuery::default() },
        ),
        (
            "search by argument",
            TaskQuery { limit: 50, search: Some(format!("'payload-{}'", tasks / 2)), ..TaskQuery::default() },
        ),
    ] {
        let t = Instant::now();
        let rows = monitor.store().tasks(&q).await?;
        println!("{what}: {} rows in {:.1} ms", rows.len(), t.elapsed().as_secs_f64() * 1e3);
    }
    // The peak resident memory of this process (Linux).
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM")) {
            println!("peak memory: {}", line.trim_start_matches("VmHWM:").trim());
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(())
}
