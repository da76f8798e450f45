//! The sender's stamp: node name, process id, UTC offset, Lamport clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Map;

use super::{Event, EventData};

/// Stamps events with the sender's common fields: node name, process id,
/// UTC offset, Lamport clock and the time.
///
/// The clock lives in the sender as an [`AtomicU64`]: every method takes
/// `&self`, so one `Arc<EventSender>` serves all the tasks of a worker, and
/// other messages that carry the clock (control replies) take their value
/// from [`forward`](Self::forward) too. It starts at 0; the first event has
/// clock 1, as Celery's.
#[derive(Debug)]
pub struct EventSender {
    hostname: String,
    pid: u32,
    utcoffset: Option<f64>,
    clock: AtomicU64,
}

impl EventSender {
    /// A sender for the node `hostname`, with this process's id and the
    /// machine's UTC offset read at each event.
    pub fn new(hostname: impl Into<String>) -> Self {
        EventSender { hostname: hostname.into(), pid: std::process::id(), utcoffset: None, clock: AtomicU64::new(0) }
    }

    /// Send another process id.
    pub fn with_pid(mut self, pid: u32) -> Self {
        self.pid = pid;
        self
    }

    /// Send a fixed UTC offset (hours, positive west of UTC) instead of the
    /// machine's.
    pub fn with_utcoffset(mut self, hours: f64) -> Self {
        self.utcoffset = Some(hours);
        self
    }

    /// The node name.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The process id sent.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The clock's current value.
    pub fn clock(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// Advance the clock for something this process sends; returns the new value.
    pub fn forward(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Take in a clock value received from another node (Lamport's rule:
    /// `max(own, received) + 1`); returns the new value.
    pub fn adjust(&self, received: u64) -> u64 {
        let mut cur = self.clock.load(Ordering::SeqCst);
        loop {
            let next = cur.max(received) + 1;
            match self.clock.compare_exchange_weak(cur, next, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return next,
                Err(actual) => cur = actual,
            }
        }
    }

    /// An event of type `data` sent now: the clock is advanced.
    pub fn event(&self, data: EventData) -> Event {
        Event {
            hostname: self.hostname.clone(),
            utcoffset: self.utcoffset.unwrap_or_else(utcoffset),
            pid: self.pid,
            clock: Some(self.forward()),
            data,
            extra: Map::new(),
            timestamp: now(),
        }
    }
}

/// UNIX time now, in seconds.
fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// This machine's offset from UTC now, in hours **west** of UTC, as Celery
/// computes it (`time.timezone` or, in summer time, `time.altzone`, divided
/// by 3600): `0.0` on UTC, `-1.0` in Paris in winter, `-5.5` in India, `4.0`
/// in New York in summer.
pub fn utcoffset() -> f64 {
    hours_west(chrono::Local::now().offset().local_minus_utc())
}

/// Seconds east of UTC → hours west, without a negative zero.
fn hours_west(east_secs: i32) -> f64 {
    f64::from(-east_secs) / 3600.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utcoffset_is_hours_west_of_utc() {
        assert_eq!(hours_west(0), 0.0);
        assert!(hours_west(0).is_sign_positive(), "UTC is 0.0, not -0.0");
        assert_eq!(hours_west(3600), -1.0);
        assert_eq!(hours_west(19800), -5.5);
        assert_eq!(hours_west(20700), -5.75);
        assert_eq!(hours_west(-4 * 3600), 4.0);
        assert!(utcoffset().abs() <= 14.0);
    }

    #[test]
    fn the_clock_follows_lamports_rules() {
        let s = EventSender::new("w@h");
        assert_eq!(s.clock(), 0);
        assert_eq!(s.forward(), 1);
        assert_eq!(s.adjust(10), 11);
        assert_eq!(s.adjust(3), 12);
        assert_eq!(s.event(EventData::task_started("t")).clock, Some(13));
    }
}
