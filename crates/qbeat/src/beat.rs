//! The beat: a loop over a heap of entries keyed by their next slot.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use qcore::{App, Error, SendOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::entry::{due_slots, Entry, Expires, RunState};
use crate::lease::{Fence, Lease};
use crate::store::{Claim, MemoryStore, Store, Stored};

/// Where the beat reads the time. The loop sleeps with tokio's timer
/// between ticks and reads the time from its clock at each tick.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that starts at a chosen instant and follows tokio's timer, so
/// tests under tokio's paused time (`start_paused`, `time::advance`) move
/// the beat's wall clock too: days pass without sleeping.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base: DateTime<Utc>,
    started: tokio::time::Instant,
}

impl TokioClock {
    /// Now is `at`; it then advances as tokio's time does.
    pub fn starting_at(at: DateTime<Utc>) -> TokioClock {
        TokioClock { base: at, started: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::TimeDelta::from_std(self.started.elapsed()).unwrap_or(chrono::TimeDelta::MAX);
        self.base.checked_add_signed(elapsed).unwrap_or(self.base)
    }
}

/// What a running beat reports.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Status {
    /// When the last tick ran.
    pub last_tick: Option<DateTime<Utc>>,
    /// Ticks so far.
    pub ticks: u64,
    /// The entry due next and its slot.
    pub next_due: Option<(String, DateTime<Utc>)>,
    /// Entries whose last attempt failed (store or broker down): every
    /// second the beat tries again the claim, or the publish of the slot it
    /// claimed, while the slot is within the entry's grace.
    pub overdue: usize,
    /// Messages sent.
    pub sent: u64,
    /// Slots not sent by the entries' catch-up policies.
    pub skipped: u64,
    /// Sends that failed.
    pub failed: u64,
    /// Entries loaded (enabled or not).
    pub entries: usize,
    /// This beat holds the lease (always `true` without a [`Lease`]).
    pub leader: bool,
    /// The token of the lease it holds.
    pub lease_token: Option<u64>,
}

/// Default of `beat_max_loop_interval` (Celery: 300 s): the longest the
/// loop sleeps without a tick.
pub const DEFAULT_MAX_INTERVAL: Duration = Duration::from_secs(300);

/// How often a store without notification is polled for changes.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Builds and starts a [`Beat`].
pub struct BeatBuilder {
    app: App,
    entries: Vec<Entry>,
    store: Option<Arc<dyn Store>>,
    clock: Arc<dyn Clock>,
    max_interval: Duration,
    timezone: Option<Tz>,
    lease: Option<Arc<dyn Lease>>,
    remote_control: Option<String>,
}

/// Periodic tasks sent through an [`App`], inside any tokio service.
///
/// ```no_run
/// # async fn demo(app: qcore::App) -> Result<(), qcore::Error> {
/// use qbeat::{Beat, Crontab, CrontabSpec, Entry, Interval, Schedule};
/// let nightly = Crontab::celery(&CrontabSpec { hour: 2.into(), minute: 0.into(), ..Default::default() })
///     .map_err(qcore::Error::Config)?;
/// let beat = Beat::builder(app)
///     .entry(Entry::new("cleanup", "app.cleanup", Schedule::Crontab(nightly)).timezone(chrono_tz::Europe::Paris))
///     .entry(Entry::new("report", "app.report", Schedule::Interval(Interval::from_secs_f64(86400.0).map_err(qcore::Error::Config)?)))
///     .spawn()
///     .await?;
/// // ... serve ...
/// beat.stop().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Beat;

impl Beat {
    /// Start building a beat that sends through `app`.
    pub fn builder(app: App) -> BeatBuilder {
        let max_interval = app.config().beat_max_loop_interval.unwrap_or(DEFAULT_MAX_INTERVAL);
        BeatBuilder {
            app,
            entries: Vec::new(),
            store: None,
            clock: Arc::new(SystemClock),
            max_interval,
            timezone: None,
            lease: None,
            remote_control: None,
        }
    }
}

impl BeatBuilder {
    /// Add these entries (written to the store at start, keeping the run
    /// state it has for them).
    pub fn schedule(mut self, entries: impl IntoIterator<Item = Entry>) -> Self {
        self.entries.extend(entries);
        self
    }

    /// Add one entry.
    pub fn entry(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }

    /// Keep entries and run state in `store` (default: a new
    /// [`MemoryStore`]).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Run as one of several replicas: send only while holding `lease`
    /// (see [`Lease`]). Messages then carry the slot they were sent for in
    /// the [`SLOT_HEADER`] header.
    pub fn lease(mut self, lease: Arc<dyn Lease>) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Answer remote-control `ping` as `node` (Celery's beat node is
    /// `celerybeat@<host>`) while the loop is healthy: its last tick at most
    /// `max(2 × max_interval, 60 s)` old ([`crate::max_tick_age`]); silent
    /// when stale, as Celery 5.7's beat. Other methods are ignored.
    pub fn remote_control(mut self, node: impl Into<String>) -> Self {
        self.remote_control = Some(node.into());
        self
    }

    /// Read the time from `clock` (default: [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The longest sleep between ticks (default: the app's
    /// `beat_max_loop_interval` setting, else 300 s as Celery's).
    pub fn max_interval(mut self, d: Duration) -> Self {
        self.max_interval = if d.is_zero() { DEFAULT_MAX_INTERVAL } else { d };
        self
    }

    /// The zone of entries that name none (default: the app's `timezone`
    /// setting, else UTC).
    pub fn timezone(mut self, tz: Tz) -> Self {
        self.timezone = Some(tz);
        self
    }

    /// Write the entries to the store, load it and start the loop on the
    /// current tokio runtime.
    pub async fn spawn(self) -> Result<BeatHandle, Error> {
        let default_tz = match self.timezone {
            Some(tz) => tz,
            None => crate::config::default_zone(self.app.config())?,
        };
        let store = self.store.unwrap_or_else(|| Arc::new(MemoryStore::new()));
        for entry in self.entries {
            store.upsert(entry).await?;
        }
        let now = self.clock.now();
        let app = self.app.clone();
        let mut scheduler = Scheduler::new(self.app, store.clone(), default_tz, self.max_interval);
        scheduler.status.leader = self.lease.is_none();
        if let Some(lease) = &self.lease {
            tracing::info!(lease = %lease.describe(), "beat: a replica: sends only while it holds the lease");
        }
        scheduler.lease = self.lease;
        scheduler.load(now).await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (status_tx, status_rx) = watch::channel(scheduler.status.clone());
        tracing::info!(store = %store.describe(), entries = scheduler.entries.len(), "beat: starting");
        let control = self.remote_control.map(|node| {
            let max_age = crate::control::max_tick_age(self.max_interval);
            tokio::spawn(crate::control::control_loop(app, node, status_rx.clone(), self.clock.clone(), max_age))
        });
        let task = tokio::spawn(run(scheduler, self.clock, stop_rx, status_tx));
        Ok(BeatHandle { stop: stop_tx, status: status_rx, task, control })
    }
}

/// A running beat.
#[derive(Debug)]
pub struct BeatHandle {
    stop: watch::Sender<bool>,
    status: watch::Receiver<Status>,
    task: JoinHandle<Result<(), Error>>,
    control: Option<JoinHandle<()>>,
}

impl BeatHandle {
    /// What the beat reports now.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// When the last tick ran.
    pub fn last_tick(&self) -> Option<DateTime<Utc>> {
        self.status.borrow().last_tick
    }

    /// The entry due next and its slot.
    pub fn next_due(&self) -> Option<(String, DateTime<Utc>)> {
        self.status.borrow().next_due.clone()
    }

    /// Entries whose last claim or send failed, waiting for a retry.
    pub fn overdue(&self) -> usize {
        self.status.borrow().overdue
    }

    /// A receiver of the status, updated after every tick.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Wait until the status satisfies `pred` (after some tick), at most
    /// `timeout`.
    pub async fn wait_for(&self, timeout: Duration, pred: impl FnMut(&Status) -> bool) -> Result<Status, Error> {
        let mut rx = self.status.clone();
        let waited = tokio::time::timeout(timeout, async { rx.wait_for(pred).await.map(|s| s.clone()) }).await;
        match waited {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(_)) => Err(Error::Config("the beat stopped".into())),
            Err(_) => Err(Error::Config(format!("beat status not reached within {timeout:?}: {:?}", self.status()))),
        }
    }

    /// Stop the loop (after the send in progress) and wait for it.
    pub async fn stop(self) -> Result<(), Error> {
        self.stop.send_replace(true);
        if let Some(c) = &self.control {
            c.abort();
        }
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(Error::Config(format!("the beat task failed: {e}"))),
        }
    }

    /// Wait for the loop to end (it ends only when stopped or on a store
    /// error it cannot get past).
    pub async fn join(self) -> Result<(), Error> {
        let ended = self.task.await;
        if let Some(c) = &self.control {
            c.abort();
        }
        match ended {
            Ok(r) => r,
            Err(e) => Err(Error::Config(format!("the beat task failed: {e}"))),
        }
    }
}

async fn run(
    mut s: Scheduler,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
    status: watch::Sender<Status>,
) -> Result<(), Error> {
    let mut changes = s.store.watch();
    // A failed read of the changes is tried again within a second.
    let mut pending = false;
    // When the lease was last taken or renewed.
    let mut renewed: Option<tokio::time::Instant> = None;
    loop {
        let mut wait = match s.lease.clone() {
            Some(lease) => {
                s.keep_lease(lease.as_ref(), clock.now(), &mut renewed).await;
                if s.token.is_some() {
                    let wait = s.tick(clock.now()).await;
                    if s.lost {
                        s.step_down("the lease was taken over: this beat sends nothing more");
                    }
                    wait.min(lease.ttl() / 3)
                } else {
                    // A standby's loop is alive too (remote-control ping).
                    s.status.last_tick = Some(clock.now());
                    POLL_INTERVAL
                }
            }
            None => s.tick(clock.now()).await,
        };
        if s.lease.is_some() && s.token.is_none() {
            wait = wait.min(POLL_INTERVAL);
        }
        status.send_replace(s.status.clone());
        let mut closed = false;
        match changes.as_mut() {
            Some(rx) => tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(if pending { wait.min(POLL_INTERVAL) } else { wait }) => {
                    if pending {
                        pending = !s.apply_changes(clock.now()).await;
                    }
                }
                r = rx.changed() => {
                    closed = r.is_err();
                    pending = !s.apply_changes(clock.now()).await;
                }
            },
            None => tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(wait.min(POLL_INTERVAL)) => {
                    s.apply_changes(clock.now()).await;
                }
            },
        }
        if closed {
            changes = None;
        }
        if *stop.borrow() {
            break;
        }
    }
    if let (Some(lease), Some(token)) = (&s.lease, s.token) {
        if let Err(e) = lease.release(token).await {
            tracing::warn!(error = %e, "beat: cannot release the lease (it expires by itself)");
        }
    }
    tracing::info!("beat: stopped");
    Ok(())
}

struct Slotted {
    entry: Arc<Entry>,
    state: RunState,
    next: Option<DateTime<Utc>>,
    generation: u64,
    /// The last attempt failed (claim or send): counted as overdue.
    failed: bool,
    /// A slot claimed but not yet published.
    unsent: Option<DateTime<Utc>>,
    /// The slot this beat fenced last (so a retry after a failed claim
    /// does not take its own mark for another leader's).
    fenced: Option<DateTime<Utc>>,
}

/// The beat's state: entries by name and a heap of (next slot, generation,
/// name). A tick pops only the due entries, so its cost grows with them,
/// not with all entries; an edited entry gets a new generation and its old
/// heap item is dropped when popped.
pub(crate) struct Scheduler {
    app: App,
    store: Arc<dyn Store>,
    default_tz: Tz,
    max_interval: Duration,
    entries: HashMap<String, Slotted>,
    heap: BinaryHeap<Reverse<(DateTime<Utc>, u64, String)>>,
    generation: u64,
    cursor: u64,
    pub(crate) status: Status,
    lease: Option<Arc<dyn Lease>>,
    /// The lease token while this beat leads.
    token: Option<u64>,
    /// A fence answered that the lease is gone.
    lost: bool,
}

impl Scheduler {
    pub(crate) fn new(app: App, store: Arc<dyn Store>, default_tz: Tz, max_interval: Duration) -> Scheduler {
        Scheduler {
            app,
            store,
            default_tz,
            max_interval,
            entries: HashMap::new(),
            heap: BinaryHeap::new(),
            generation: 0,
            cursor: 0,
            status: Status::default(),
            lease: None,
            token: None,
            lost: false,
        }
    }

    /// Take the lease when free, renew it when held (every third of its
    /// time), step down when it is lost or could not be renewed in time.
    async fn keep_lease(&mut self, lease: &dyn Lease, now: DateTime<Utc>, renewed: &mut Option<tokio::time::Instant>) {
        let ttl = lease.ttl();
        match self.token {
            None => match lease.acquire().await {
                Ok(Some(token)) => {
                    *renewed = Some(tokio::time::Instant::now());
                    match self.take_over(lease, now).await {
                        Ok(()) => {
                            tracing::info!(token, lease = %lease.describe(), "beat: took the lease: this beat sends");
                            self.token = Some(token);
                            self.lost = false;
                            self.status.leader = true;
                            self.status.lease_token = Some(token);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "beat: took the lease but cannot load the schedule; giving it up");
                            let _ = lease.release(token).await;
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "beat: cannot reach the lease; trying again"),
            },
            Some(token) => {
                if renewed.is_some_and(|t| t.elapsed() < ttl / 3) {
                    return;
                }
                match lease.renew(token).await {
                    Ok(true) => *renewed = Some(tokio::time::Instant::now()),
                    Ok(false) => self.step_down("the lease expired and another beat took it"),
                    Err(e) => {
                        tracing::warn!(error = %e, "beat: cannot renew the lease; trying again");
                        if renewed.is_none_or(|t| t.elapsed() >= ttl) {
                            self.step_down("the lease could not be renewed in time");
                        }
                    }
                }
            }
        }
    }

    fn step_down(&mut self, why: &str) {
        if self.token.take().is_some() {
            tracing::warn!("beat: {why}; standing by");
        }
        self.lost = false;
        self.status.leader = false;
        self.status.lease_token = None;
    }

    /// On taking the lease: the schedule and run state afresh from the
    /// store, then the slots the earlier leaders fired.
    async fn take_over(&mut self, lease: &dyn Lease, now: DateTime<Utc>) -> Result<(), Error> {
        let fired = lease.last_fired().await?;
        let snap = self.store.load().await?;
        self.entries.clear();
        self.heap.clear();
        self.status.overdue = 0;
        self.cursor = snap.cursor;
        for mut stored in snap.entries {
            if let Some(last) = fired.get(&stored.entry.name) {
                if stored.state.last_run_at.is_none_or(|l| l < *last) {
                    stored.state.last_run_at = Some(*last);
                }
            }
            self.put(stored, now);
        }
        self.status.entries = self.entries.len();
        Ok(())
    }

    pub(crate) async fn load(&mut self, now: DateTime<Utc>) -> Result<(), Error> {
        let snap = self.store.load().await?;
        self.cursor = snap.cursor;
        for stored in snap.entries {
            self.put(stored, now);
        }
        self.status.entries = self.entries.len();
        Ok(())
    }

    /// Apply what changed in the store; `false` when it could not be read.
    async fn apply_changes(&mut self, now: DateTime<Utc>) -> bool {
        match self.store.changes_since(self.cursor).await {
            Ok(changes) => {
                self.cursor = changes.cursor;
                for name in changes.removed {
                    if self.entries.remove(&name).is_some_and(|s| s.failed) {
                        self.status.overdue -= 1;
                    }
                }
                for stored in changes.upserted {
                    self.put(stored, now);
                }
                self.status.entries = self.entries.len();
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "beat: cannot read schedule changes; retrying");
                false
            }
        }
    }

    fn tz(&self, entry: &Entry) -> Tz {
        entry.timezone.unwrap_or(self.default_tz)
    }

    fn put(&mut self, stored: Stored, now: DateTime<Utc>) {
        let Stored { entry, state } = stored;
        let tz = self.tz(&entry);
        let next = if !entry.enabled {
            None
        } else {
            match state.last_run_at {
                Some(last) => entry.schedule.after(last, tz),
                None => entry.schedule.first(entry.start_time.map_or(now, |s| s.max(now)), tz),
            }
        };
        // django-celery-beat's `start_time`: no slot before it.
        let next = match (next, entry.start_time) {
            (Some(n), Some(start)) if n < start => entry.schedule.first(start, tz),
            (n, _) => n,
        };
        self.generation += 1;
        if let Some(at) = next {
            self.heap.push(Reverse((at, self.generation, entry.name.clone())));
        }
        let name = entry.name.clone();
        let old = self.entries.insert(
            name,
            Slotted { entry, state, next, generation: self.generation, failed: false, unsent: None, fenced: None },
        );
        if old.is_some_and(|s| s.failed) {
            self.status.overdue -= 1;
        }
    }

    /// Send what is due at `now`; returns how long to sleep.
    pub(crate) async fn tick(&mut self, now: DateTime<Utc>) -> Duration {
        while let Some(Reverse((at, generation, name))) = self.heap.peek().cloned() {
            if at > now {
                break;
            }
            self.heap.pop();
            let Some(slotted) = self.entries.get(&name) else { continue };
            if slotted.generation != generation {
                continue;
            }
            self.fire(&name, now).await;
            if self.lost {
                break;
            }
        }
        self.status.last_tick = Some(now);
        self.status.ticks += 1;
        // Drop stale heap heads so next_due names a live entry.
        while let Some(Reverse((_, generation, name))) = self.heap.peek() {
            match self.entries.get(name) {
                Some(s) if s.generation == *generation => break,
                _ => {
                    self.heap.pop();
                }
            }
        }
        self.status.next_due = self.heap.peek().map(|Reverse((at, _, name))| (name.clone(), *at));
        match &self.status.next_due {
            Some((_, at)) => (*at - now).to_std().unwrap_or(Duration::ZERO).min(self.max_interval),
            None => self.max_interval,
        }
    }

    async fn fire(&mut self, name: &str, now: DateTime<Utc>) {
        let Some(slotted) = self.entries.get(name) else { return };
        let entry = slotted.entry.clone();
        let tz = self.tz(&entry);
        let next = slotted.next;
        let mut unsent = slotted.unsent;
        let mut state = slotted.state;
        let mut fenced = slotted.fenced;
        let mut failed = false;
        let slot_header = self.lease.is_some();
        let expired = matches!(entry.options.expires, Some(Expires::At(at)) if at <= now);

        // A slot this beat claimed but could not publish: it is ours, so it
        // is published again (no second claim) while within grace.
        if let Some(slot) = unsent {
            let late = chrono::TimeDelta::from_std(entry.grace().unwrap_or(Duration::MAX)).ok();
            if late.is_some_and(|g| now - slot > g) {
                tracing::warn!(entry = name, slot = %slot, "beat: a slot whose send failed is now too late: not sent");
                self.status.skipped += 1;
                unsent = None;
            } else {
                match send_slot(&self.app, &entry, slot_header.then_some(slot)).await {
                    Ok(id) => {
                        self.status.sent += 1;
                        unsent = None;
                        tracing::info!(entry = name, task = %entry.task, id = %id, slot = %slot, "beat: sent");
                    }
                    Err(e) => {
                        self.status.failed += 1;
                        failed = true;
                        tracing::error!(entry = name, slot = %slot, error = %e, "beat: send failed again");
                    }
                }
            }
        }
        let mut new_next = if expired { None } else { next };
        if expired && next.is_some_and(|n| n <= now) {
            tracing::info!(entry = name, "beat: the entry expired: not sent");
            self.status.skipped += 1;
        }
        if let Some(due) = next.filter(|n| *n <= now && !failed && !expired) {
            let (send, reached, dropped) = due_slots(&entry, tz, due, now);
            if dropped > 0 {
                tracing::info!(entry = name, skipped = dropped, policy = ?entry.catch_up, "beat: missed slots not sent");
                self.status.skipped += dropped;
            }
            new_next = if entry.runs_once() { None } else { entry.schedule.after(reached, tz) };
            for slot in send {
                if let (Some(lease), Some(token)) = (&self.lease, self.token) {
                    match lease.fence(token, &Claim::new(name, slot)).await {
                        Ok(Fence::Fire) => fenced = Some(slot),
                        Ok(Fence::Duplicate) if fenced == Some(slot) => {}
                        Ok(Fence::Duplicate) => {
                            tracing::debug!(entry = name, slot = %slot, "beat: slot already fired by a leader");
                            continue;
                        }
                        Ok(Fence::NotLeader) => {
                            self.lost = true;
                            new_next = Some(slot);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(entry = name, error = %e, "beat: cannot fence a slot; trying again");
                            failed = true;
                            new_next = Some(slot);
                            break;
                        }
                    }
                }
                match self.store.claim(&Claim::new(name, slot)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::debug!(entry = name, slot = %slot, "beat: slot already claimed");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(entry = name, error = %e, "beat: cannot claim a slot; trying again");
                        failed = true;
                        new_next = Some(slot);
                        break;
                    }
                }
                state.last_run_at = Some(slot);
                state.total_run_count += 1;
                match send_slot(&self.app, &entry, slot_header.then_some(slot)).await {
                    Ok(id) => {
                        self.status.sent += 1;
                        tracing::info!(entry = name, task = %entry.task, id = %id, slot = %slot, "beat: sent");
                    }
                    Err(e) => {
                        self.status.failed += 1;
                        failed = true;
                        unsent = Some(slot);
                        new_next = if entry.runs_once() { None } else { entry.schedule.after(slot, tz) };
                        tracing::error!(entry = name, task = %entry.task, slot = %slot, error = %e, "beat: send failed");
                        break;
                    }
                }
            }
        }
        self.generation += 1;
        let generation = self.generation;
        let Some(s) = self.entries.get_mut(name) else { return };
        if s.failed != failed {
            if failed {
                self.status.overdue += 1;
            } else {
                self.status.overdue -= 1;
            }
        }
        s.failed = failed;
        s.generation = generation;
        s.unsent = unsent;
        s.fenced = fenced;
        s.state = state;
        s.next = new_next;
        // After a failure, try again in a second (the store or the broker
        // may be back); else wake for the next slot.
        let wake = if failed { Some(now + chrono::TimeDelta::seconds(1)) } else { new_next };
        if let Some(at) = wake {
            self.heap.push(Reverse((at, generation, name.to_string())));
        } else if entry.runs_once() && unsent.is_none() {
            Arc::make_mut(&mut s.entry).enabled = false;
            if let Err(e) = self.store.set_enabled(name, false).await {
                tracing::warn!(entry = name, error = %e, "beat: cannot disable a one-off entry");
            }
        }
    }
}

/// Send one run of `entry` as Celery beat does: `apply_async` with the
/// entry's options and the `celery_beat_task` header (protocol 2 puts
/// custom headers at the top level); `argsrepr` as beat's list form.
pub async fn send_entry(app: &App, entry: &Entry) -> Result<String, Error> {
    send_slot(app, entry, None).await
}

/// The header naming the slot (RFC 3339, UTC, milliseconds) of a message
/// sent by a beat running with a [`Lease`]: with the entry's name
/// (`periodic_task_name` for django-celery-beat entries) it is the fire's
/// deduplication key, for consumers that want to check it too.
pub const SLOT_HEADER: &str = "qtask_beat_slot";

async fn send_slot(app: &App, entry: &Entry, slot: Option<DateTime<Utc>>) -> Result<String, Error> {
    let o = &entry.options;
    let mut opts =
        SendOptions::new().header("argsrepr", qcore::repr::list_repr(&entry.args)).header("celery_beat_task", true);
    if let Some(slot) = slot {
        opts = opts.header(SLOT_HEADER, slot.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
    for (k, v) in &o.headers {
        opts = opts.header(k.clone(), v.clone());
    }
    if let Some(q) = o.queue.as_ref().or(o.routing_key.as_ref()) {
        opts = opts.queue(q.clone());
    }
    if let Some(p) = o.priority {
        opts = opts.priority(p);
    }
    match o.expires {
        Some(Expires::In(d)) => opts = opts.expires_in(d),
        Some(Expires::At(at)) => opts = opts.expires_at(at),
        None => {}
    }
    let result = app.send_task(&entry.task, entry.args.clone(), entry.kwargs.clone(), opts).await?;
    // A run counts as sent once the broker holds it (RabbitMQ pipelines confirms).
    app.flush().await?;
    Ok(result.id().to_string())
}
