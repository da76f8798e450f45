//! The [`ResultBackend`] cases. Each takes a [`BackendFactory`], uses its own
//! task and group ids, and panics with a message saying what broke the
//! contract. Normally run through
//! [`backend_conformance!`](crate::backend_conformance).

use std::sync::Arc;
use std::time::Duration;

use chrono::SubsecRound;
use qcore::{ChordJoin, ChordPart, ErrorKind, ExceptionInfo, ResultBackend, ResultMeta, State};
use serde_json::json;
use tokio::time::Instant;

use crate::{unique, BackendFactory};

/// Expiry of the entries the cases write (ample: they clean nothing up).
const TTL: Option<Duration> = Some(Duration::from_secs(600));

async fn new_backend(f: &dyn BackendFactory) -> Arc<dyn ResultBackend> {
    match f.backend().await {
        Ok(b) => b,
        Err(e) => panic!("the factory could not create a result backend: {e}"),
    }
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what} failed: {e}"),
    }
}

fn tid() -> String {
    unique("qconf-task")
}

fn meta(id: &str, status: State, result: serde_json::Value) -> ResultMeta {
    let mut m = ResultMeta::new(id, status, result);
    // Stores keep microseconds (ISO strings, SQL timestamps).
    m.date_done = m.date_done.map(|d| d.trunc_subsecs(6));
    m
}

async fn store(b: &Arc<dyn ResultBackend>, m: &ResultMeta) {
    ok(b.store(m, TTL).await, &format!("store {}", m.status));
}

async fn get(b: &Arc<dyn ResultBackend>, id: &str) -> Option<ResultMeta> {
    ok(b.get(id).await, "get")
}

/// `get` of an id never stored is `None`.
pub async fn get_unknown_is_none(f: &dyn BackendFactory) {
    let b = new_backend(f).await;
    assert_eq!(get(&b, &tid()).await, None, "get of an unknown id");
}

/// Full documents come back equal: extended fields, group and parent,
/// traceback, children, an exception map, and a custom state with meta.
pub async fn store_get_round_trip(f: &dyn BackendFactory) {
    let b = new_backend(f).await;
    let reader = new_backend(f).await;

    let id = tid();
    let mut success = meta(&id, State::Success, json!({"a": [1, -7, 2.5, "é☃", null, true], "big": 1u64 << 40}));
    success.traceback = None;
    success.children = Some(vec![json!([[tid(), null], null])]);
    success.group_id = Some(unique("qconf-group"));
    success.parent_id = Some(tid());
    success.name = Some("tasks.add".into());
    success.args = Some(json!([2, 3]));
    success.kwargs = Some(json!({"z": {"nested": [1]}}));
    success.worker = Some("qtask@host".into());
    success.retries = Some(2);
    success.queue = Some("celery".into());

    let fid = tid();
    let mut failure = meta(&fid, State::Failure, ExceptionInfo::new("ValueError", "boom").to_value());
    failure.traceback = Some("Traceback (most recent call last):\n  File \"t.py\", line 1\nValueError: boom\n".into());
    failure.parent_id = Some(id.clone());

    let pid = tid();
    let progress = meta(&pid, State::progress(), json!({"current": 3, "total": 10}));
    assert_eq!(progress.date_done, None);

    for m in [&success, &failure, &progress] {
        store(&b, m).await;
        let got = get(&reader, &m.task_id).await;
        assert_eq!(got.as_ref(), Some(m), "{} document changed on the way through the store", m.status);
    }
    let progress_back = get(&reader, &pid).await;
    assert_eq!(progress_back.map(|m| m.status.to_string()), Some("PROGRESS".to_string()));
}

/// A stored SUCCESS is never overwritten, by any state (SUCCESS included).
pub async fn success_is_never_overwritten(f: &dyn BackendFactory) {
    let b = new_backend(f).await;
    let id = tid();
    let done = meta(&id, State::Success, json!(5));
    store(&b, &done).await;
    for later in [
        meta(&id, State::Started, json!({"pid": 1, "hostname": "w"})),
        meta(&id, State::Failure, ExceptionInfo::new("ValueError", "late").to_value()),
        meta(&id, State::Retry, ExceptionInfo::new("Retry", "late").to_value()),
        meta(&id, State::progress(), json!({"current": 1})),
        meta(&id, State::Success, json!(6)),
    ] {
        store(&b, &later).await;
        assert_eq!(get(&b, &id).await.as_ref(), Some(&done), "SUCCESS was overwritten by {}", later.status);
    }
}

/// Every state other than SUCCESS is overwritten by the next store
/// (Celery guards only SUCCESS: FAILURE may be followed by SUCCESS).
pub async fn other_states_are_overwritten(f: &dyn BackendFactory) {
    let b = new_backend(f).await;
    let id = tid();
    for m in [
        meta(&id, State::Started, json!({"pid": 1, "hostname": "w"})),
        meta(&id, State::progress(), json!({"current": 3, "total": 10})),
        meta(&id, State::Retry, ExceptionInfo::new("IOError", "flaky").to_value()),
        meta(&id, State::Started, json!({"pid": 2, "hostname": "w"})),
        meta(&id, State::Failure, ExceptionInfo::new("ValueError", "boom").to_value()),
        meta(&id, State::Revoked, ExceptionInfo::revoked("revoked").to_value()),
        meta(&id, State::Success, json!("finally")),
    ] {
        store(&b, &m).await;
        assert_eq!(get(&b, &id).await.as_ref(), Some(&m), "storing {} did not replace the document", m.status);
    }
}

async fn wait_gone<F, Fut, T>(what: &str, within: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let mut interval = Duration::from_millis(5);
    while probe().await.is_some() {
        if Instant::now() >= deadline {
            panic!("{what} still readable {within:?} after it was stored");
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(200));
    }
}

/// Results and groups stored with a ttl disappear after it; without a ttl
/// they stay.
pub async fn ttl_expires(f: &dyn BackendFactory) {
    let b = new_backend(f).await;
    let caps = f.capabilities();
    let ttl = caps.min_ttl;
    let (short, forever, gid) = (tid(), tid(), unique("qconf-group"));
    ok(b.store(&meta(&forever, State::Success, json!(1)), None).await, "store without ttl");
    let t0 = Instant::now();
    ok(b.store(&meta(&short, State::Success, json!(2)), Some(ttl)).await, "store with ttl");
    ok(b.save_group(&gid, std::slice::from_ref(&short), Some(ttl)).await, "save_group with ttl");
    let got = get(&b, &short).await;
    let group = ok(b.get_group(&gid).await, "get_group");
    if t0.elapsed() < ttl {
        assert!(got.is_some(), "a result is gone before its ttl");
        assert!(group.is_some(), "a group is gone before its ttl");
    }
    let within = ttl + caps.expiry_grace;
    wait_gone("a result with a ttl", within, || async { get(&b, &short).await }).await;
    wait_gone("a group with a ttl", within, || async { ok(b.get_group(&gid).await, "get_group") }).await;
    assert!(get(&b, &forever).await.is_some(), "a result stored without ttl expired");
}

/// `wait` returns the ready document once another client stores it (within
/// the push latency when the store pushes), not on intermediate states, and
/// at once for a result already ready (FAILURE and REVOKED are ready too).
pub async fn wait_wakes_on_store(f: &dyn BackendFactory) {
    let caps = f.capabilities();
    let waiter = new_backend(f).await;
    let writer = new_backend(f).await;
    let id = tid();
    store(&writer, &meta(&id, State::Started, json!({"pid": 1, "hostname": "w"}))).await;
    let handle = {
        let waiter = waiter.clone();
        let id = id.clone();
        let patience = caps.patience;
        tokio::spawn(async move {
            let r = waiter.wait(&id, patience).await;
            (r, Instant::now())
        })
    };
    // Give the waiter time to block (not synchronisation: had it not, it
    // would find the result at once and this check would only be weaker).
    tokio::time::sleep(Duration::from_millis(100)).await;
    store(&writer, &meta(&id, State::progress(), json!({"current": 1, "total": 2}))).await;
    let done = meta(&id, State::Success, json!({"answer": 42}));
    store(&writer, &done).await;
    let stored_at = Instant::now();
    let (r, woke_at) = ok(handle.await, "waiting task");
    let got = ok(r, "wait");
    assert_eq!(got, done, "wait returned something else than the SUCCESS document");
    if caps.push {
        let latency = woke_at.saturating_duration_since(stored_at);
        assert!(latency <= caps.push_latency, "wait woke {latency:?} after the store (push latency over limit)");
    }
    for status in [State::Failure, State::Revoked] {
        let id = tid();
        let m = meta(&id, status.clone(), ExceptionInfo::revoked("revoked").to_value());
        store(&writer, &m).await;
        let t0 = Instant::now();
        let got = ok(waiter.wait(&id, caps.patience).await, "wait on a ready result");
        assert_eq!(got, m, "wait on a stored {status}");
        assert!(t0.elapsed() < caps.patience, "wait on a ready result did not return at once");
    }
}

/// `wait` on a result that does not become ready fails with
/// `ErrorKind::Timeout` after the timeout, not before.
pub async fn wait_times_out(f: &dyn BackendFactory) {
    let b = new_backend(f).await;
    let caps = f.capabilities();
    let started = tid();
    store(&b, &meta(&started, State::Started, json!({"pid": 1, "hostname": "w"}))).await;
    let timeout = Duration::from_millis(300);
    for id in [&started, &tid()] {
        let t0 = Instant::now();
        match b.wait(id, timeout).await {
            Ok(m) => panic!("wait returned {} for a task that is not ready", m.status),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Timeout, "wait timed out with the wrong error kind: {e}"),
        }
        let took = t0.elapsed();
        assert!(took >= timeout - Duration::from_millis(5), "wait gave up after {took:?}, before its timeout");
        assert!(took < timeout + caps.patience, "wait took {took:?} for a {timeout:?} timeout");
    }
}

/// `forget` deletes; forgetting an unknown id is fine.
pub async fn forget_deletes(f: &dyn BackendFactory) {
    let b = new_backend(f).await;
    let id = tid();
    store(&b, &meta(&id, State::Success, json!(1))).await;
    ok(b.forget(&id).await, "forget");
    assert_eq!(get(&b, &id).await, None, "a forgotten result is still readable");
    ok(b.forget(&tid()).await, "forget of an unknown id");
    // A forgotten SUCCESS no longer guards the id.
    let again = meta(&id, State::Started, json!({"pid": 1, "hostname": "w"}));
    store(&b, &again).await;
    assert_eq!(get(&b, &id).await, Some(again), "store after forget");
}

/// `get_many` answers in the order asked, with `None` for missing ids.
pub async fn get_many_keeps_order(f: &dyn BackendFactory) {
    let b = new_backend(f).await;
    let (a, c) = (tid(), tid());
    let ma = meta(&a, State::Success, json!("a"));
    let mc = meta(&c, State::Failure, ExceptionInfo::new("ValueError", "c").to_value());
    store(&b, &ma).await;
    store(&b, &mc).await;
    let ids = vec![c.clone(), tid(), a.clone(), c.clone()];
    let got = ok(b.get_many(&ids).await, "get_many");
    assert_eq!(got, vec![Some(mc.clone()), None, Some(ma), Some(mc)], "get_many order or content");
    assert!(ok(b.get_many(&[]).await, "get_many of nothing").is_empty());
}

/// `save_group` / `get_group` keep the member ids in order.
pub async fn groups(f: &dyn BackendFactory) {
    let b = new_backend(f).await;
    let reader = new_backend(f).await;
    let gid = unique("qconf-group");
    let members: Vec<String> = (0..5).map(|_| tid()).collect();
    ok(b.save_group(&gid, &members, TTL).await, "save_group");
    assert_eq!(ok(reader.get_group(&gid).await, "get_group"), Some(members), "group members");
    assert_eq!(ok(reader.get_group(&unique("qconf-group")).await, "get_group"), None, "unknown group");
}

fn part(index: u64, status: State) -> ChordPart {
    let result = if status == State::Success {
        json!({"index": index, "s": "é☃"})
    } else {
        ExceptionInfo::new("ValueError", format!("part {index}")).to_value()
    };
    ChordPart { task_id: tid(), index, status, result }
}

async fn chord_part(b: &Arc<dyn ResultBackend>, gid: &str, p: &ChordPart) -> ChordJoin {
    ok(b.chord_part(gid, p, TTL).await, "chord_part")
}

/// Parts arriving out of order: `Waiting` with the count, then exactly one
/// `Complete` with the parts ordered by index. Two chords do not mix.
pub async fn chord_completes_once_in_order(f: &dyn BackendFactory) {
    let b = new_backend(f).await;
    let (gid, other) = (unique("qconf-chord"), unique("qconf-chord"));
    ok(b.chord_init(&gid, 3, TTL).await, "chord_init");
    ok(b.chord_init(&other, 2, TTL).await, "chord_init");
    let parts = [part(0, State::Success), part(1, State::Failure), part(2, State::Success)];
    let o0 = part(0, State::Success);
    assert_eq!(chord_part(&b, &gid, &parts[2]).await, ChordJoin::Waiting { done: 1, size: 3 });
    assert_eq!(chord_part(&b, &other, &o0).await, ChordJoin::Waiting { done: 1, size: 2 });
    assert_eq!(chord_part(&b, &gid, &parts[0]).await, ChordJoin::Waiting { done: 2, size: 3 });
    assert_eq!(chord_part(&b, &gid, &parts[1]).await, ChordJoin::Complete(parts.to_vec()), "completion");
    let late = chord_part(&b, &gid, &parts[0]).await;
    assert!(!matches!(late, ChordJoin::Complete(_)), "a part after completion completed the chord again");
    let o1 = part(1, State::Success);
    assert_eq!(chord_part(&b, &other, &o1).await, ChordJoin::Complete(vec![o0, o1]), "the other chord");
}

/// A redelivered header task (same task id and index) is a `Duplicate` and
/// never counted twice.
pub async fn chord_counts_duplicates_once(f: &dyn BackendFactory) {
    let b = new_backend(f).await;
    let gid = unique("qconf-chord");
    ok(b.chord_init(&gid, 3, TTL).await, "chord_init");
    let parts = [part(0, State::Success), part(1, State::Success), part(2, State::Success)];
    assert_eq!(chord_part(&b, &gid, &parts[0]).await, ChordJoin::Waiting { done: 1, size: 3 });
    assert_eq!(chord_part(&b, &gid, &parts[0]).await, ChordJoin::Duplicate, "same part twice");
    assert_eq!(chord_part(&b, &gid, &parts[1]).await, ChordJoin::Waiting { done: 2, size: 3 });
    assert_eq!(chord_part(&b, &gid, &parts[1]).await, ChordJoin::Duplicate, "same part twice");
    assert_eq!(chord_part(&b, &gid, &parts[0]).await, ChordJoin::Duplicate, "same part three times");
    assert_eq!(chord_part(&b, &gid, &parts[2]).await, ChordJoin::Complete(parts.to_vec()), "completion");
}

/// Many header tasks finishing at once on several clients, each reported
/// twice: exactly one `Complete`, with every part once, in index order.
pub async fn chord_concurrent_parts_complete_once(f: &dyn BackendFactory) {
    const N: u64 = 24;
    let clients = [new_backend(f).await, new_backend(f).await];
    let gid = unique("qconf-chord");
    ok(clients[0].chord_init(&gid, N, TTL).await, "chord_init");
    let parts: Vec<ChordPart> = (0..N).map(|i| part(i, State::Success)).collect();
    let mut handles = Vec::new();
    for round in 0..2 {
        for (i, p) in parts.iter().enumerate() {
            let b = clients[(i + round) % 2].clone();
            let (gid, p) = (gid.clone(), p.clone());
            handles.push(tokio::spawn(async move { ok(b.chord_part(&gid, &p, TTL).await, "chord_part") }));
        }
    }
    let (mut complete, mut duplicate, mut waiting) = (Vec::new(), 0, 0);
    for h in handles {
        match ok(h.await, "chord_part task") {
            ChordJoin::Complete(ps) => complete.push(ps),
            ChordJoin::Duplicate => duplicate += 1,
            ChordJoin::Waiting { size, .. } => {
                assert_eq!(size, N);
                waiting += 1;
            }
        }
    }
    assert_eq!(complete.len(), 1, "Complete returned {} times", complete.len());
    assert_eq!(complete[0], parts, "the completing caller got wrong or unordered parts");
    // Every part was counted once (else the completion would have come early,
    // with parts missing); the second report of each is never a completion.
    assert_eq!(waiting + duplicate, 2 * N - 1, "{waiting} waiting + {duplicate} duplicates");
    assert!(duplicate >= 1, "no report was recognised as a duplicate");
}
