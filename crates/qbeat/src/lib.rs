//! qbeat: periodic tasks for qtask, as Celery beat sends them.
//!
//! * [`Beat`] (`Beat::builder(app).schedule(entries).store(store).spawn()`)
//!   runs inside any tokio service and returns a [`BeatHandle`] (stop, last
//!   tick, next due, overdue count).
//! * [`Schedule`] — intervals, Celery crontabs (and POSIX cron strings,
//!   said so in the API: [`Crontab::posix`]), clocked one-offs, solar
//!   events; per-entry
//!   IANA zones with one daylight-saving policy ([`tz`]).
//! * [`CatchUp`] — what happens to slots missed while no beat ran.
//! * [`Store`] — entries and run state, with an in-memory [`MemoryStore`]
//!   (server-backed stores live in the facade, `qtask::beat`).
//! * [`Lease`] — replicas: one leader with a fencing token, each slot
//!   fenced before it is sent ([`MemoryLease`]; `qtask::beat::RedisLease`).
//! * [`config`] — the `beat_schedule` setting in Celery's names, and
//!   [`run_from_config`], what `qtask beat` runs.
//!
//! Messages are Celery beat's: an ordinary protocol-2 task message (no
//! `eta`) with the `celery_beat_task: true` header and beat's list form of
//! `argsrepr`, to the entry's queue, priority and expiry; Python Celery
//! workers run them unchanged.

mod beat;
pub mod config;
mod control;
mod entry;
mod lease;
mod schedule;
mod solar;
mod store;
pub mod tz;

pub use beat::{
    send_entry, Beat, BeatBuilder, BeatHandle, Clock, Status, SystemClock, TokioClock, DEFAULT_MAX_INTERVAL,
    SLOT_HEADER,
};
pub use config::{entries_from_config, parse_schedule, run_from_config, run_until_signal};
pub use control::max_tick_age;
pub use entry::{CatchUp, Entry, EntryOptions, Expires, RunState, ALL_PER_TICK, SKIP_GRACE};
pub use lease::{Fence, Lease, MemoryLease, DEFAULT_LEASE_TTL, FIRED_TTL};
pub use schedule::{Clocked, CronField, Crontab, CrontabSpec, DayRule, Interval, Schedule};
pub use solar::{Solar, SolarKind};
pub use store::{Changes, Claim, MemoryStore, Snapshot, Store, Stored};

/// Re-exported so users name zones without a dependency of their own.
pub use chrono_tz;
