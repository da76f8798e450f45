//! An entry of the schedule: what to send, when, and what to do about
//! slots missed while no beat ran.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};

use crate::schedule::Schedule;

/// What a beat does with slots that passed while it was not running (or
/// was too busy to send them on time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// Send nothing for a slot later than `misfire_grace` (default
    /// [`SKIP_GRACE`]); wait for the next slot.
    Skip,
    /// Send once for all the slots that passed (the latest), as Celery
    /// beat does after downtime. The default.
    #[default]
    Latest,
    /// Send once per slot that passed, oldest first (at most
    /// [`ALL_PER_TICK`] per entry and tick, so a long outage drains without
    /// starving other entries).
    All,
}

impl CatchUp {
    /// From its name in a schedule file: `skip`, `latest`, `all`.
    pub fn parse(s: &str) -> Result<CatchUp, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "skip" => Ok(CatchUp::Skip),
            "latest" => Ok(CatchUp::Latest),
            "all" => Ok(CatchUp::All),
            other => Err(format!("expected \"skip\", \"latest\" or \"all\", got {other:?}")),
        }
    }
}

/// How late a slot may be sent under [`CatchUp::Skip`] when the entry sets
/// no `misfire_grace`.
pub const SKIP_GRACE: Duration = Duration::from_secs(60);

/// Missed slots sent per entry and tick under [`CatchUp::All`].
pub const ALL_PER_TICK: usize = 100;

/// When a sent message expires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expires {
    /// This long after it is sent (Celery's `expires` in seconds).
    In(Duration),
    /// At this instant.
    At(DateTime<Utc>),
}

/// The `options` of an entry, Celery's names: where and how the message
/// goes.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct EntryOptions {
    /// `queue`: the queue the task goes to (default: the app's routing).
    pub queue: Option<String>,
    /// `exchange`: kept for Celery's names; qtask publishes to queues
    /// through the default exchange, so a message goes to `queue`, else to
    /// `routing_key`.
    pub exchange: Option<String>,
    /// `routing_key`: the queue when `queue` is not set (default exchange).
    pub routing_key: Option<String>,
    /// `priority` (0–255).
    pub priority: Option<u8>,
    /// `expires`.
    pub expires: Option<Expires>,
    /// Custom headers sent at the top level of the message headers
    /// (django-celery-beat's `headers`, `periodic_task_name`).
    pub headers: Map<String, Value>,
}

/// One periodic entry.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Entry {
    /// Unique name (the key in `beat_schedule`).
    pub name: String,
    /// Task name.
    pub task: String,
    /// When it runs.
    pub schedule: Schedule,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Where the message goes.
    pub options: EntryOptions,
    /// The zone its crontab (and relative interval) is computed in; `None`:
    /// the beat's default (`timezone` setting, else UTC).
    pub timezone: Option<Tz>,
    /// Missed slots policy.
    pub catch_up: CatchUp,
    /// How late a slot may still be sent (`None`: any lateness, except
    /// under [`CatchUp::Skip`], which uses [`SKIP_GRACE`]).
    pub misfire_grace: Option<Duration>,
    /// A disabled entry sends nothing (a clocked entry is disabled after
    /// its run).
    pub enabled: bool,
    /// Runs once, then is disabled (django-celery-beat's `one_off`; a
    /// clocked schedule always is).
    pub one_off: bool,
    /// No slot before this instant (django-celery-beat's `start_time`).
    pub start_time: Option<DateTime<Utc>>,
}

impl Entry {
    /// An enabled entry with no arguments and default options.
    pub fn new(name: impl Into<String>, task: impl Into<String>, schedule: Schedule) -> Entry {
        Entry {
            name: name.into(),
            task: task.into(),
            schedule,
            args: Vec::new(),
            kwargs: Map::new(),
            options: EntryOptions::default(),
            timezone: None,
            catch_up: CatchUp::default(),
            misfire_grace: None,
            enabled: true,
            one_off: false,
            start_time: None,
        }
    }

    /// With these positional arguments.
    pub fn args(mut self, args: Vec<Value>) -> Entry {
        self.args = args;
        self
    }

    /// With these keyword arguments.
    pub fn kwargs(mut self, kwargs: Map<String, Value>) -> Entry {
        self.kwargs = kwargs;
        self
    }

    /// With these options.
    pub fn options(mut self, options: EntryOptions) -> Entry {
        self.options = options;
        self
    }

    /// In this zone.
    pub fn timezone(mut self, tz: Tz) -> Entry {
        self.timezone = Some(tz);
        self
    }

    /// With this catch-up policy and grace.
    pub fn catch_up(mut self, policy: CatchUp, misfire_grace: Option<Duration>) -> Entry {
        self.catch_up = policy;
        self.misfire_grace = misfire_grace;
        self
    }

    /// Enabled or not.
    pub fn enabled(mut self, enabled: bool) -> Entry {
        self.enabled = enabled;
        self
    }

    /// Runs once only.
    pub fn one_off(mut self, one_off: bool) -> Entry {
        self.one_off = one_off;
        self
    }

    /// No slot before `at`.
    pub fn start_time(mut self, at: Option<DateTime<Utc>>) -> Entry {
        self.start_time = at;
        self
    }

    /// Whether it runs once only (`one_off`, or a clocked schedule).
    pub fn runs_once(&self) -> bool {
        self.one_off || self.schedule.is_one_off()
    }

    /// The grace that applies: the entry's, else the policy's default.
    pub(crate) fn grace(&self) -> Option<Duration> {
        match (self.misfire_grace, self.catch_up) {
            (Some(g), _) => Some(g),
            (None, CatchUp::Skip) => Some(SKIP_GRACE),
            (None, _) => None,
        }
    }
}

/// What is known of an entry's runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunState {
    /// The slot of the last run (the scheduled instant, not the send time).
    pub last_run_at: Option<DateTime<Utc>>,
    /// Runs so far.
    pub total_run_count: u64,
}

/// Which of the slots due at `now` an entry sends, by its policy: the
/// slots from `next` on that are at or before `now`. Returns the slots to
/// send (oldest first), the slot the entry has reached (the last due one),
/// and how many were dropped.
pub(crate) fn due_slots(
    entry: &Entry,
    tz: Tz,
    next: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Vec<DateTime<Utc>>, DateTime<Utc>, u64) {
    let grace = entry.grace().and_then(|g| chrono::TimeDelta::from_std(g).ok());
    let in_grace = |slot: DateTime<Utc>| grace.is_none_or(|g| now - slot <= g);
    let mut send = Vec::new();
    let mut dropped = 0u64;
    let mut slot = next;
    let mut last;
    loop {
        last = slot;
        let following = entry.schedule.after(slot, tz).filter(|f| *f <= now);
        match entry.catch_up {
            CatchUp::All => {
                if in_grace(slot) {
                    send.push(slot);
                    if send.len() >= ALL_PER_TICK {
                        break;
                    }
                } else {
                    dropped += 1;
                }
            }
            CatchUp::Latest | CatchUp::Skip => {
                if following.is_some() {
                    dropped += 1;
                } else if in_grace(slot) {
                    send.push(slot);
                } else {
                    dropped += 1;
                }
            }
        }
        match following {
            Some(f) => slot = f,
            None => break,
        }
        // A long outage of a short interval: jump over the slots that are
        // dropped anyway (all but the last for latest/skip, those out of
        // grace for all) instead of walking them one by one.
        if let crate::Schedule::Interval(i) = &entry.schedule {
            let keep_from = match entry.catch_up {
                CatchUp::All => grace.and_then(|g| now.checked_sub_signed(g)),
                CatchUp::Latest | CatchUp::Skip => Some(now),
            };
            if let (false, Some(keep_from)) = (i.relative, keep_from) {
                let every = i.every.as_nanos().max(1);
                let behind = (keep_from - slot).num_nanoseconds().unwrap_or(i64::MAX).max(0) as u128;
                let steps = behind / every;
                if steps > 1 {
                    let jump = i64::try_from(every * (steps - 1)).unwrap_or(i64::MAX);
                    dropped += (steps - 1) as u64;
                    slot += chrono::TimeDelta::nanoseconds(jump);
                }
            }
        }
    }
    if entry.catch_up == CatchUp::Latest && send.len() > 1 {
        send.drain(..send.len() - 1);
    }
    (send, last, dropped)
}
