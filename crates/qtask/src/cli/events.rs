//! `events`: read Celery's monitoring events from the `celeryev` exchange.
//!
//! `--dump` prints each event as one JSON object per line, in Celery's field
//! order (a `task.multi` batch is one line per event). Without it, a live
//! view redrawn every `--freq` seconds: the workers (online while their
//! heartbeats come in time), their active and processed counts, and the
//! tasks seen per state.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use qcore::event::{Event, EventKind, EVENT_EXCHANGE};
use qcore::App;

use super::args::EventsArgs;

pub(super) async fn run(app: &App, e: &EventsArgs) -> anyhow::Result<ExitCode> {
    let mut sub = app.broker().subscribe(EVENT_EXCHANGE, "#").await?;
    let mut view = View::default();
    let mut redraw = tokio::time::interval(e.freq.max(Duration::from_millis(100)));
    let stdout = std::io::stdout();
    // On stderr, so that stdout is only events with --dump.
    eprintln!("-> events: watching {} (Ctrl-C to stop)", app.broker().describe());
    loop {
        tokio::select! {
            msg = sub.recv() => {
                let Some((routing_key, msg)) = msg? else {
                    return Ok(ExitCode::SUCCESS);
                };
                let events = match Event::from_message(&msg) {
                    Ok(evs) => evs,
                    Err(err) => {
                        tracing::warn!(%routing_key, error = %err, "not an event; skipped");
                        continue;
                    }
                };
                if e.dump {
                    let mut out = stdout.lock();
                    for ev in &events {
                        out.write_all(&ev.to_json())?;
                        out.write_all(b"\n")?;
                    }
                    out.flush()?;
                } else {
                    for ev in &events {
                        view.add(ev);
                    }
                }
            }
            _ = redraw.tick(), if !e.dump => {
                let mut out = stdout.lock();
                if stdout.is_terminal() {
                    out.write_all(b"\x1b[2J\x1b[H")?;
                }
                out.write_all(view.render(chrono::Utc::now().timestamp_micros() as f64 / 1e6).as_bytes())?;
                out.flush()?;
            }
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

#[derive(Debug, Default)]
struct WorkerRow {
    last_seen: f64,
    freq: f64,
    active: u64,
    processed: u64,
    offline: bool,
}

/// What the live view shows.
#[derive(Debug, Default)]
struct View {
    workers: BTreeMap<String, WorkerRow>,
    /// Task id → its last state (`task-succeeded` → `SUCCEEDED`).
    tasks: HashMap<String, String>,
    events: u64,
}

impl View {
    fn add(&mut self, ev: &Event) {
        self.events += 1;
        let host = ev.hostname.clone();
        let ts = ev.timestamp;
        match ev.kind() {
            EventKind::WorkerOnline | EventKind::WorkerHeartbeat | EventKind::WorkerOffline => {
                let row = self.workers.entry(host).or_default();
                row.last_seen = ts;
                row.offline = ev.kind() == EventKind::WorkerOffline;
                if let Some(info) = ev.worker_info() {
                    row.freq = info.freq;
                    row.active = info.active;
                    row.processed = info.processed;
                }
            }
            _ => {
                if let Some(id) = ev.task_id() {
                    let state = ev.type_name().trim_start_matches("task-").to_uppercase();
                    self.tasks.insert(id.to_string(), state);
                }
                if !host.is_empty() {
                    let row = self.workers.entry(host).or_default();
                    row.last_seen = row.last_seen.max(ts);
                }
            }
        }
    }

    fn render(&self, now: f64) -> String {
        let mut s = format!("{:<40} {:<8} {:>8} {:>10}\n", "WORKER", "STATUS", "ACTIVE", "PROCESSED");
        for (name, w) in &self.workers {
            // Celery's rule: offline when no heartbeat within freq × 2.
            let online = !w.offline && (w.freq <= 0.0 || now - w.last_seen <= w.freq * 2.0);
            let status = if online { "online" } else { "offline" };
            s.push_str(&format!("{name:<40} {status:<8} {:>8} {:>10}\n", w.active, w.processed));
        }
        let mut states: BTreeMap<&str, u64> = BTreeMap::new();
        for st in self.tasks.values() {
            *states.entry(st.as_str()).or_default() += 1;
        }
        s.push_str(&format!("\nTASKS ({} seen, {} events)\n", self.tasks.len(), self.events));
        for (st, n) in states {
            s.push_str(&format!("  {st:<12} {n}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qcore::event::{EventData, EventSender, WorkerInfo};

    #[test]
    fn the_view_counts_workers_and_task_states() {
        let s = EventSender::new("w1@h").with_pid(1).with_utcoffset(0.0);
        let mut v = View::default();
        let hb = s.event(EventData::WorkerHeartbeat(WorkerInfo::new(Duration::from_secs(2), 1, 7, [0.0; 3])));
        v.add(&hb);
        v.add(&s.event(EventData::task_started("a")));
        v.add(&s.event(EventData::task_succeeded("a", "5", Duration::from_millis(3))));
        v.add(&s.event(EventData::task_started("b")));
        let text = v.render(hb.timestamp + 1.0);
        assert!(text.contains("w1@h") && text.contains("online"), "{text}");
        assert!(text.contains("SUCCEEDED    1") && text.contains("STARTED      1"), "{text}");
        assert!(v.render(hb.timestamp + 5.0).contains("offline"), "no heartbeat within freq × 2");
    }
}
