//! The beat under a fake clock: tokio's paused time drives both the loop's
//! sleeps and its wall clock ([`TokioClock`]), so weeks pass in
//! milliseconds and nothing sleeps for real. Messages go to an in-memory
//! broker, run state to a [`MemoryStore`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use qbeat::{Beat, CatchUp, Clocked, Entry, Interval, MemoryStore, RunState, Schedule, Status, Store, TokioClock};
use qcore::{App, ConsumeOptions};

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z").unwrap().with_timezone(&Utc)
}

fn hourly(name: &str) -> Entry {
    Entry::new(name, "tasks.tick", Schedule::Interval(Interval::new(Duration::from_secs(3600)).unwrap()))
}

async fn queued(app: &App) -> u64 {
    app.broker().queue_len("celery").await.unwrap()
}

/// A store holding `entry` whose last run was the slot a week before `t0`.
async fn store_a_week_behind(entry: Entry) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    let name = entry.name.clone();
    store.upsert(entry).await.unwrap();
    assert!(store.set_state(&name, RunState { last_run_at: Some(t0() - TimeDelta::days(7)), total_run_count: 5 }));
    store
}

/// Start a beat at `now` on `store` and wait for its first tick.
async fn first_tick(app: &App, store: Arc<MemoryStore>, now: DateTime<Utc>) -> (qbeat::BeatHandle, Status) {
    let beat =
        Beat::builder(app.clone()).store(store).clock(Arc::new(TokioClock::starting_at(now))).spawn().await.unwrap();
    let status = beat.wait_for(Duration::from_secs(10), |s| s.ticks >= 1).await.unwrap();
    (beat, status)
}

#[tokio::test(start_paused = true)]
async fn latest_sends_once_after_a_week_down() {
    let app = qmemory::app();
    let store = store_a_week_behind(hourly("report")).await;
    let (beat, status) = first_tick(&app, store.clone(), t0() + TimeDelta::minutes(30)).await;
    // 168 hourly slots passed (t0 - 7 d + 1 h ..= t0): one message, for the latest.
    assert_eq!(status.sent, 1, "{status:?}");
    assert_eq!(status.skipped, 167, "{status:?}");
    assert_eq!(queued(&app).await, 1);
    let state = store.get("report").unwrap().state;
    assert_eq!(state, RunState { last_run_at: Some(t0()), total_run_count: 6 });
    assert_eq!(status.next_due, Some(("report".to_string(), t0() + TimeDelta::hours(1))));
    // And the schedule goes on from there.
    let status = beat.wait_for(Duration::from_secs(7200), |s| s.sent >= 2).await.unwrap();
    assert_eq!(status.last_tick, Some(t0() + TimeDelta::hours(1)));
    beat.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn skip_sends_nothing_late_and_resumes_on_the_next_slot() {
    let app = qmemory::app();
    let store = store_a_week_behind(hourly("report").catch_up(CatchUp::Skip, None)).await;
    let (beat, status) = first_tick(&app, store.clone(), t0() + TimeDelta::minutes(30)).await;
    assert_eq!((status.sent, status.skipped), (0, 168), "{status:?}");
    assert_eq!(queued(&app).await, 0);
    let status = beat.wait_for(Duration::from_secs(7200), |s| s.sent >= 1).await.unwrap();
    assert_eq!(status.last_tick, Some(t0() + TimeDelta::hours(1)));
    assert_eq!(store.get("report").unwrap().state.last_run_at, Some(t0() + TimeDelta::hours(1)));
    assert_eq!(queued(&app).await, 1);
    beat.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn skip_sends_a_slot_within_its_grace() {
    let app = qmemory::app();
    let store = store_a_week_behind(hourly("report").catch_up(CatchUp::Skip, Some(Duration::from_secs(3600)))).await;
    let (beat, status) = first_tick(&app, store, t0() + TimeDelta::minutes(30)).await;
    // The t0 slot is 30 min late, within an hour's grace; the 167 before are not.
    assert_eq!((status.sent, status.skipped), (1, 167), "{status:?}");
    beat.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn all_sends_every_missed_slot_oldest_first() {
    let app = qmemory::app();
    let store = store_a_week_behind(hourly("report").catch_up(CatchUp::All, None)).await;
    let (beat, status) = first_tick(&app, store.clone(), t0() + TimeDelta::minutes(30)).await;
    assert_eq!((status.sent, status.skipped), (168, 0), "{status:?}");
    assert_eq!(queued(&app).await, 168);
    assert_eq!(store.get("report").unwrap().state, RunState { last_run_at: Some(t0()), total_run_count: 5 + 168 });
    beat.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn all_within_misfire_grace() {
    let app = qmemory::app();
    let entry = hourly("report").catch_up(CatchUp::All, Some(Duration::from_secs(3 * 3600)));
    let store = store_a_week_behind(entry).await;
    let (beat, status) = first_tick(&app, store, t0() + TimeDelta::minutes(30)).await;
    // t0 - 2 h, t0 - 1 h and t0 are at most 3 h late.
    assert_eq!((status.sent, status.skipped), (3, 165), "{status:?}");
    beat.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_interval_neither_drifts_nor_doubles_over_a_day() {
    let app = qmemory::app();
    let every10 = Entry::new("ping", "tasks.ping", Schedule::Interval(Interval::new(Duration::from_secs(10)).unwrap()));
    let store = Arc::new(MemoryStore::new());
    let beat = Beat::builder(app.clone())
        .entry(every10)
        .store(store.clone())
        .clock(Arc::new(TokioClock::starting_at(t0())))
        .spawn()
        .await
        .unwrap();
    let status = beat.wait_for(Duration::from_secs(86_400 + 60), |s| s.sent >= 8640).await.unwrap();
    assert_eq!(status.last_tick, Some(t0() + TimeDelta::days(1)));
    assert_eq!(status.skipped, 0);
    beat.stop().await.unwrap();
    assert_eq!(queued(&app).await, 8640);
    assert_eq!(store.get("ping").unwrap().state.last_run_at, Some(t0() + TimeDelta::days(1)));
}

#[tokio::test(start_paused = true)]
async fn two_beats_on_one_store_send_each_slot_once() {
    let app = qmemory::app();
    let store = Arc::new(MemoryStore::new());
    let every10 = Entry::new("ping", "tasks.ping", Schedule::Interval(Interval::new(Duration::from_secs(10)).unwrap()));
    store.upsert(every10).await.unwrap();
    let start = |store: Arc<MemoryStore>| {
        Beat::builder(app.clone()).store(store).clock(Arc::new(TokioClock::starting_at(t0()))).spawn()
    };
    let a = start(store.clone()).await.unwrap();
    let b = start(store.clone()).await.unwrap();
    a.wait_for(Duration::from_secs(3700), |s| s.last_tick >= Some(t0() + TimeDelta::hours(1))).await.unwrap();
    b.wait_for(Duration::from_secs(3700), |s| s.last_tick >= Some(t0() + TimeDelta::hours(1))).await.unwrap();
    let (sa, sb) = (a.status(), b.status());
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    assert_eq!(sa.sent + sb.sent, 360, "{sa:?} {sb:?}");
    assert_eq!(queued(&app).await, 360);
}

#[tokio::test(start_paused = true)]
async fn a_clocked_entry_runs_once_then_is_disabled() {
    let app = qmemory::app();
    let store = Arc::new(MemoryStore::new());
    let at = t0() + TimeDelta::minutes(5);
    let beat = Beat::builder(app.clone())
        .entry(Entry::new("launch", "tasks.launch", Schedule::Clocked(Clocked { at })))
        .store(store.clone())
        .clock(Arc::new(TokioClock::starting_at(t0())))
        .spawn()
        .await
        .unwrap();
    let status = beat.wait_for(Duration::from_secs(600), |s| s.sent >= 1).await.unwrap();
    assert_eq!(status.last_tick, Some(at));
    assert_eq!(status.next_due, None);
    let stored = store.get("launch").unwrap();
    assert!(!stored.entry.enabled);
    assert_eq!(stored.state.last_run_at, Some(at));
    // Another day passes: nothing more.
    let later = beat.wait_for(Duration::from_secs(2 * 86_400), |s| s.ticks >= status.ticks + 300).await.unwrap();
    assert_eq!(later.sent, 1);
    beat.stop().await.unwrap();
    assert_eq!(queued(&app).await, 1);
}

#[tokio::test(start_paused = true)]
async fn edits_in_the_store_take_effect_without_a_restart() {
    let app = qmemory::app();
    let store = Arc::new(MemoryStore::new());
    let beat = Beat::builder(app.clone())
        .store(store.clone())
        .clock(Arc::new(TokioClock::starting_at(t0())))
        .spawn()
        .await
        .unwrap();
    beat.wait_for(Duration::from_secs(10), |s| s.ticks >= 1 && s.entries == 0).await.unwrap();
    let every = |secs| Schedule::Interval(Interval::new(Duration::from_secs(secs)).unwrap());
    store.upsert(Entry::new("ping", "tasks.ping", every(60))).await.unwrap();
    let s = beat.wait_for(Duration::from_secs(61), |s| s.sent >= 1).await.unwrap();
    assert_eq!(s.entries, 1);
    // Disabled: nothing is sent for an hour.
    store.set_enabled("ping", false).await.unwrap();
    let sent = beat.wait_for(Duration::from_secs(10), |s| s.next_due.is_none()).await.unwrap().sent;
    let mut rx = beat.subscribe();
    let paused = tokio::time::timeout(Duration::from_secs(3600), rx.wait_for(|s| s.sent > sent)).await;
    assert!(paused.is_err(), "a disabled entry was sent");
    // Removed entries are gone; a new one runs.
    assert!(store.remove("ping").await.unwrap());
    store.upsert(Entry::new("pong", "tasks.pong", every(30))).await.unwrap();
    let s = beat.wait_for(Duration::from_secs(31), |s| s.sent > sent).await.unwrap();
    assert_eq!(s.entries, 1);
    assert_eq!(s.next_due.map(|(n, _)| n).as_deref(), Some("pong"));
    beat.stop().await.unwrap();
    let mut consumer = app.broker().consume(&["celery".to_string()], ConsumeOptions::new(10)).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..queued(&app).await {
        let d = consumer.recv().await.unwrap().unwrap();
        tasks.push(d.message.headers["task"].as_str().unwrap().to_string());
        d.acker.ack().await.unwrap();
    }
    assert_eq!(tasks.first().map(String::as_str), Some("tasks.ping"));
    assert_eq!(tasks.last().map(String::as_str), Some("tasks.pong"));
}

/// A store whose claims fail while `down` is set (a database away).
struct Flaky {
    inner: MemoryStore,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Store for Flaky {
    fn describe(&self) -> String {
        "flaky".into()
    }
    async fn load(&self) -> Result<qbeat::Snapshot, qcore::Error> {
        self.inner.load().await
    }
    async fn changes_since(&self, cursor: u64) -> Result<qbeat::Changes, qcore::Error> {
        self.inner.changes_since(cursor).await
    }
    fn watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.watch()
    }
    async fn upsert(&self, entry: Entry) -> Result<(), qcore::Error> {
        self.inner.upsert(entry).await
    }
    async fn remove(&self, name: &str) -> Result<bool, qcore::Error> {
        self.inner.remove(name).await
    }
    async fn set_enabled(&self, name: &str, enabled: bool) -> Result<bool, qcore::Error> {
        self.inner.set_enabled(name, enabled).await
    }
    async fn claim(&self, claim: &qbeat::Claim) -> Result<bool, qcore::Error> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(qcore::Error::Config("the store is down".into()));
        }
        self.inner.claim(claim).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_slot_whose_claim_failed_is_sent_once_the_store_is_back() {
    let app = qmemory::app();
    let store = Arc::new(Flaky { inner: MemoryStore::new(), down: true.into() });
    let beat = Beat::builder(app.clone())
        .entry(hourly("report"))
        .store(store.clone())
        .clock(Arc::new(TokioClock::starting_at(t0())))
        .spawn()
        .await
        .unwrap();
    // The first slot (t0 + 1 h) cannot be claimed: the entry is overdue and retried.
    let s = beat.wait_for(Duration::from_secs(3700), |s| s.overdue == 1).await.unwrap();
    assert_eq!(s.sent, 0);
    assert_eq!(s.next_due.as_ref().map(|(n, _)| n.as_str()), Some("report"));
    store.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let s = beat.wait_for(Duration::from_secs(10), |s| s.sent == 1).await.unwrap();
    assert_eq!(s.overdue, 0);
    // The retried slot is the one that failed, not a later one.
    assert_eq!(store.inner.get("report").unwrap().state.last_run_at, Some(t0() + TimeDelta::hours(1)));
    assert_eq!(s.next_due, Some(("report".to_string(), t0() + TimeDelta::hours(2))));
    beat.stop().await.unwrap();
    assert_eq!(queued(&app).await, 1);
}

#[tokio::test(start_paused = true)]
async fn all_within_grace_after_a_week_of_one_second_slots() {
    let app = qmemory::app();
    let every_second =
        Entry::new("ping", "tasks.ping", Schedule::Interval(Interval::new(Duration::from_secs(1)).unwrap()))
            .catch_up(CatchUp::All, Some(Duration::from_secs(10)));
    let store = store_a_week_behind(every_second).await;
    let (beat, status) = first_tick(&app, store, t0()).await;
    // t0 - 10 s ..= t0 are at most 10 s late; the 604,789 before are dropped.
    assert_eq!((status.sent, status.skipped), (11, 7 * 86_400 - 11), "{status:?}");
    beat.stop().await.unwrap();
}

/// An in-memory broker whose publishes fail while `down` is set.
struct Unreachable {
    inner: qmemory::MemoryBroker,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl qcore::Broker for Unreachable {
    async fn declare_queue(&self, queue: &str) -> Result<(), qcore::BrokerError> {
        self.inner.declare_queue(queue).await
    }
    async fn publish(&self, queue: &str, message: &qcore::Message) -> Result<(), qcore::BrokerError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(qcore::BrokerError::new(qcore::ErrorKind::Connection, "broker down"));
        }
        self.inner.publish(queue, message).await
    }
    async fn consume(
        &self,
        queues: &[String],
        options: ConsumeOptions,
    ) -> Result<Box<dyn qcore::Consumer>, qcore::BrokerError> {
        self.inner.consume(queues, options).await
    }
    async fn queue_len(&self, queue: &str) -> Result<u64, qcore::BrokerError> {
        self.inner.queue_len(queue).await
    }
    async fn purge(&self, queue: &str) -> Result<u64, qcore::BrokerError> {
        self.inner.purge(queue).await
    }
    async fn publish_fanout(
        &self,
        exchange: &str,
        rk: &str,
        message: &qcore::Message,
    ) -> Result<(), qcore::BrokerError> {
        self.inner.publish_fanout(exchange, rk, message).await
    }
    async fn subscribe(
        &self,
        exchange: &str,
        pattern: &str,
    ) -> Result<Box<dyn qcore::Subscription>, qcore::BrokerError> {
        self.inner.subscribe(exchange, pattern).await
    }
    async fn ping(&self) -> Result<(), qcore::BrokerError> {
        self.inner.ping().await
    }
    fn describe(&self) -> String {
        "unreachable".into()
    }
}

#[tokio::test(start_paused = true)]
async fn a_claimed_slot_whose_send_failed_is_sent_once_the_broker_is_back() {
    let broker = Arc::new(Unreachable { inner: qmemory::MemoryBroker::new(), down: true.into() });
    let app = App::builder().broker(broker.clone()).build().unwrap();
    let store = Arc::new(MemoryStore::new());
    let beat = Beat::builder(app.clone())
        .entry(hourly("report"))
        .store(store.clone())
        .clock(Arc::new(TokioClock::starting_at(t0())))
        .spawn()
        .await
        .unwrap();
    // The slot t0 + 1 h is claimed, its publish fails, and fails again every second.
    let s = beat.wait_for(Duration::from_secs(3700), |s| s.failed >= 3).await.unwrap();
    assert_eq!((s.sent, s.overdue), (0, 1), "{s:?}");
    assert_eq!(store.get("report").unwrap().state.last_run_at, Some(t0() + TimeDelta::hours(1)));
    broker.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let s = beat.wait_for(Duration::from_secs(10), |s| s.sent == 1).await.unwrap();
    assert_eq!(s.overdue, 0);
    assert_eq!(s.next_due, Some(("report".to_string(), t0() + TimeDelta::hours(2))));
    // Sent once, not once per attempt; the claim was not taken twice.
    assert_eq!(queued(&app).await, 1);
    assert_eq!(store.get("report").unwrap().state.total_run_count, 1);
    beat.stop().await.unwrap();
}
