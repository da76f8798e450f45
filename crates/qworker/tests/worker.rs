//! Worker behaviour on the in-memory broker and backend.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use qcore::event::{EventData, EventKind};
use qcore::{
    chain, chord, group, Config, ContentType, Error, MaxRetries, Message, Properties, SendOptions, Signature, State,
    TaskError, TaskOptions,
};
use serde_json::{json, Value};
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_task_stores_success_and_emits_events_in_order() {
    let env = env();
    env.app.register(add());
    let w = start(&env.app, 2);
    let mut events = w.handle.events();
    let r = env.app.delay(Signature::new("tasks.add").arg(2).arg(3)).await.unwrap();
    assert_eq!(r.get(T).await.unwrap(), json!(5));
    let meta = r.meta().await.unwrap();
    assert_eq!(meta.status, State::Success);
    assert!(meta.date_done.is_some());
    let mut got = Vec::new();
    while got.len() < 3 {
        let e = tokio::time::timeout(T, events.recv()).await.unwrap().unwrap();
        if e.task_id() == Some(r.id()) {
            got.push(e);
        }
    }
    let kinds: Vec<EventKind> = got.iter().map(|e| e.kind()).collect();
    assert_eq!(kinds, [EventKind::TaskReceived, EventKind::TaskStarted, EventKind::TaskSucceeded]);
    assert!(matches!(&got[0].data, EventData::TaskReceived(r) if r.name == "tasks.add" && r.args == "(2, 3)"));
    assert!(matches!(&got[2].data, EventData::TaskSucceeded(s) if s.result == "5"));
    assert!(got[0].clock < got[1].clock && got[1].clock < got[2].clock, "a Lamport clock");
    assert_eq!(got[0].hostname, w.handle.hostname());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_task_fails_not_registered_is_parked_and_worker_goes_on() {
    let env = env();
    env.app.register(add());
    let w = start(&env.app, 1);
    let bad = env.app.send_task("no.such.task", vec![], Default::default(), SendOptions::new()).await.unwrap();
    let err = bad.get(T).await.unwrap_err();
    match err {
        Error::TaskFailed { exc, state, .. } => {
            assert_eq!(state, "FAILURE");
            assert_eq!(exc.exc_type, "NotRegistered");
            assert_eq!(exc.exc_module, "celery.exceptions");
        }
        other => panic!("unexpected {other:?}"),
    }
    // FAILURE is stored before the message is parked: wait for the parking.
    let deadline = tokio::time::Instant::now() + T;
    let dead = loop {
        let dead = env.app.broker().dead_letters().expect("a dead-letter place").list("celery", 10).await.unwrap();
        if !dead.is_empty() || tokio::time::Instant::now() > deadline {
            break dead;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("NotRegistered"), "{}", dead[0].reason);
    assert_eq!(dead[0].message.task_id(), Some(bad.id()));
    let ok = env.app.delay(Signature::new("tasks.add").arg(1).arg(1)).await.unwrap();
    assert_eq!(ok.get(T).await.unwrap(), json!(2));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_message_is_dead_lettered_with_reason() {
    let env = env();
    env.app.register(add());
    let w = start(&env.app, 1);
    let mut headers = serde_json::Map::new();
    headers.insert("task".into(), json!("tasks.add"));
    headers.insert("id".into(), json!("bad-1"));
    let garbage = Message { headers, properties: Properties::default(), body: b"{not json".to_vec() };
    env.app.broker().declare_queue("celery").await.unwrap();
    env.app.broker().publish("celery", &garbage).await.unwrap();
    let no_body = Message { headers: Default::default(), properties: Properties::default(), body: b"[1, 2]".to_vec() };
    env.app.broker().publish("celery", &no_body).await.unwrap();
    let ok = env.app.delay(Signature::new("tasks.add").arg(1).arg(2)).await.unwrap();
    assert_eq!(ok.get(T).await.unwrap(), json!(3));
    let broker = env.app.broker().clone();
    eventually("both malformed messages parked", || {
        let b = broker.clone();
        async move { b.dead_letters().expect("a dead-letter place").list("celery", 10).await.unwrap().len() == 2 }
    })
    .await;
    let dead = broker.dead_letters().expect("a dead-letter place").list("celery", 10).await.unwrap();
    assert!(dead.iter().all(|d| d.reason.starts_with("malformed message")), "{dead:?}");
    assert!(dead.iter().any(|d| d.message.body == b"{not json"), "the bytes are kept as they came");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_deeply_nested_and_mistyped_messages_are_parked_and_the_worker_goes_on() {
    let mut cfg = Config::default();
    cfg.set("worker_max_message_size", 4096).unwrap();
    let env = env_with(cfg);
    env.app.register(add());
    let w = start(&env.app, 1);
    let headers = |id: &str| {
        let mut h = serde_json::Map::new();
        h.insert("task".into(), json!("tasks.add"));
        h.insert("id".into(), json!(id));
        h
    };
    env.app.broker().declare_queue("celery").await.unwrap();
    // A well-formed body one byte over the limit.
    let mut big = format!("[[\"{}\"], {{}}, {{}}]", "x".repeat(4000)).into_bytes();
    big.resize(4097, b' ');
    let oversized = Message { headers: headers("big-1"), properties: Properties::default(), body: big };
    // Nesting deeper than any decoder's recursion limit.
    let deep = format!("[{}1{}, {{}}, {{}}]", "[".repeat(1500), "]".repeat(1500)).into_bytes();
    let nested = Message { headers: headers("deep-1"), properties: Properties::default(), body: deep };
    // Every header of the wrong type.
    let mut wrong = serde_json::Map::new();
    for (k, v) in [("task", json!(7)), ("id", json!(["x"])), ("retries", json!("many")), ("eta", json!({"a": 1}))] {
        wrong.insert(k.into(), v);
    }
    let mistyped = Message { headers: wrong, properties: Properties::default(), body: b"[[1, 2], {}, {}]".to_vec() };
    // Not UTF-8 at all.
    let binary = Message { headers: headers("bin-1"), properties: Properties::default(), body: vec![0xff, 0xfe, 0x00] };
    for m in [&oversized, &nested, &mistyped, &binary] {
        env.app.broker().publish("celery", m).await.unwrap();
    }
    let ok = env.app.delay(Signature::new("tasks.add").arg(1).arg(2)).await.unwrap();
    assert_eq!(ok.get(T).await.unwrap(), json!(3), "the worker runs the next task");
    let broker = env.app.broker().clone();
    eventually("the four messages parked", || {
        let b = broker.clone();
        async move { b.dead_letters().expect("a dead-letter place").list("celery", 10).await.unwrap().len() == 4 }
    })
    .await;
    let dead = broker.dead_letters().expect("a dead-letter place").list("celery", 10).await.unwrap();
    let reason = |id: &str| {
        dead.iter().find(|d| d.message.headers.get("id") == Some(&json!(id))).map(|d| d.reason.clone()).unwrap()
    };
    assert_eq!(reason("big-1"), "message too large: body of 4097 bytes, worker_max_message_size is 4096");
    assert!(reason("deep-1").starts_with("malformed message"), "{}", reason("deep-1"));
    assert!(reason("bin-1").starts_with("malformed message"), "{}", reason("bin-1"));
    assert!(dead.iter().any(|d| d.message.headers.get("retries") == Some(&json!("many"))), "{dead:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_arguments_fail_with_type_error_and_panics_fail_too() {
    let env = env();
    env.app.register(add());
    env.app.register(task("tasks.boom", TaskOptions::default(), |_c, _a, _k| async move {
        if true {
            panic!("kaboom");
        }
        Ok(Value::Null)
    }));
    let w = start(&env.app, 2);
    let r = env.app.delay(Signature::new("tasks.add").arg(1)).await.unwrap();
    match r.get(T).await.unwrap_err() {
        Error::TaskFailed { exc, .. } => {
            assert_eq!(exc.exc_type, "TypeError");
            assert_eq!(exc.message(), "add() missing 1 required positional argument: 'y'");
        }
        other => panic!("{other:?}"),
    }
    let r = env.app.delay(Signature::new("tasks.add").arg("a").arg(2)).await.unwrap();
    assert!(matches!(r.get(T).await, Err(Error::TaskFailed { exc, .. }) if exc.exc_type == "TypeError"));
    let r = env.app.delay(Signature::new("tasks.boom")).await.unwrap();
    match r.get(T).await.unwrap_err() {
        Error::TaskFailed { exc, .. } => assert_eq!((exc.exc_type.as_str(), exc.message()), ("Panic", "kaboom".into())),
        other => panic!("{other:?}"),
    }
    let r = env.app.delay(Signature::new("tasks.add").arg(2).arg(2)).await.unwrap();
    assert_eq!(r.get(T).await.unwrap(), json!(4));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_resends_same_id_with_retries_plus_one_until_success() {
    let env = env();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    env.app.register(task("tasks.flaky", TaskOptions::default(), move |ctx, _a, _k| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            if ctx.retries() < 2 {
                return Err(ctx
                    .retry()
                    .countdown(Duration::from_millis(20))
                    .exc(qcore::ExceptionInfo::new("ValueError", "not yet"))
                    .into());
            }
            Ok(json!({"retries": ctx.retries()}))
        }
    }));
    let w = start(&env.app, 1);
    let r = env.app.delay(Signature::new("tasks.flaky")).await.unwrap();
    assert_eq!(r.get(T).await.unwrap(), json!({"retries": 2}));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let meta = r.meta().await.unwrap();
    // Celery: the retried message carries parent_id = its own id.
    assert_eq!(meta.parent_id.as_deref(), Some(r.id()));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_exceeded_fails_with_the_cause_and_autoretry_backs_off() {
    let env = env();
    let opts = TaskOptions { max_retries: MaxRetries::Limit(2), ..TaskOptions::default() };
    env.app.register(task("tasks.always", opts, |ctx, _a, _k| async move {
        Err(ctx.retry().countdown(Duration::from_millis(5)).exc(qcore::ExceptionInfo::new("IOError", "down")).into())
    }));
    let auto = TaskOptions {
        max_retries: MaxRetries::Limit(3),
        autoretry_for: vec!["ConnectionError".into()],
        retry_backoff: Some(Duration::from_millis(10)),
        retry_jitter: false,
        ..TaskOptions::default()
    };
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    env.app.register(task("tasks.auto", auto, move |ctx, _a, _k| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            if ctx.retries() < 3 {
                return Err(TaskError::fail("ConnectionError", "refused"));
            }
            Ok(json!("ok"))
        }
    }));
    let w = start(&env.app, 2);
    let r = env.app.delay(Signature::new("tasks.always")).await.unwrap();
    match r.get(T).await.unwrap_err() {
        Error::TaskFailed { exc, .. } => assert_eq!((exc.exc_type.as_str(), exc.message()), ("IOError", "down".into())),
        other => panic!("{other:?}"),
    }
    let r = env.app.delay(Signature::new("tasks.auto")).await.unwrap();
    assert_eq!(r.get(T).await.unwrap(), json!("ok"));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_settings_give_retry_limit_and_delay_to_tasks_that_set_none() {
    let mut cfg = Config::default();
    cfg.set("task_max_retries", 2).unwrap();
    cfg.set("task_default_retry_delay", 0.01).unwrap();
    let env = env_with(cfg);
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    env.app.register(task("tasks.retries", TaskOptions::default(), move |ctx, _a, _k| {
        c.fetch_add(1, Ordering::SeqCst);
        // No countdown: the app's task_default_retry_delay (Celery's 180 s otherwise).
        async move { Err(ctx.retry().into()) }
    }));
    let own = TaskOptions { max_retries: MaxRetries::Limit(0), ..TaskOptions::default() };
    env.app.register(task("tasks.own_limit", own, |ctx, _a, _k| async move { Err(ctx.retry().into()) }));
    let w = start(&env.app, 2);
    let r = env.app.delay(Signature::new("tasks.retries")).await.unwrap();
    match r.get(T).await.unwrap_err() {
        Error::TaskFailed { exc, .. } => assert_eq!(exc.exc_type, "MaxRetriesExceededError"),
        other => panic!("{other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the first run and task_max_retries = 2 retries");
    // A task's own max_retries wins over the setting.
    let r = env.app.delay(Signature::new("tasks.own_limit")).await.unwrap();
    match r.get(T).await.unwrap_err() {
        Error::TaskFailed { exc, .. } => assert_eq!(exc.exc_type, "MaxRetriesExceededError"),
        other => panic!("{other:?}"),
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eta_task_does_not_block_a_slot_and_runs_after_its_eta() {
    let env = env();
    env.app.register(add());
    let w = start(&env.app, 1);
    let sent = chrono::Utc::now();
    let later = env
        .app
        .apply_async(
            Signature::new("tasks.add").arg(1).arg(1),
            SendOptions::new().countdown(Duration::from_millis(400)),
        )
        .await
        .unwrap();
    let now = env.app.delay(Signature::new("tasks.add").arg(2).arg(2)).await.unwrap();
    assert_eq!(now.get(T).await.unwrap(), json!(4));
    assert!(!later.ready().await.unwrap(), "ETA task ran early");
    assert_eq!(later.get(T).await.unwrap(), json!(2));
    let done = later.meta().await.unwrap().date_done.unwrap();
    assert!(done >= sent + chrono::Duration::milliseconds(400), "ran at {done}, sent {sent}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_task_is_revoked_not_run() {
    let env = env();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    env.app.register(task("tasks.count", TaskOptions::default(), move |_c, _a, _k| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(Value::Null)
        }
    }));
    let past = chrono::Utc::now() - chrono::Duration::seconds(5);
    let r = env.app.apply_async(Signature::new("tasks.count"), SendOptions::new().expires_at(past)).await.unwrap();
    let w = start(&env.app, 1);
    match r.get(T).await.unwrap_err() {
        Error::TaskFailed { exc, state, .. } => {
            assert_eq!(state, "REVOKED");
            assert_eq!(exc.exc_type, "TaskRevokedError");
            assert_eq!(exc.exc_message, vec![json!("expired")]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_time_limit_aborts_async_and_blocking_tasks_soft_limit_lets_them_clean_up() {
    let env = env();
    let hard = TaskOptions { time_limit: Some(Duration::from_millis(200)), ..TaskOptions::default() };
    env.app.register(task("tasks.hang", hard.clone(), |_c, _a, _k| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(Value::Null)
    }));
    env.app.register(task("tasks.hang_blocking", hard, |_c, _a, _k| async move {
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_secs(2))).await.ok();
        Ok(Value::Null)
    }));
    let soft = TaskOptions { soft_time_limit: Some(Duration::from_millis(100)), ..TaskOptions::default() };
    env.app.register(task("tasks.soft", soft, |ctx, _a, _k| async move {
        ctx.soft_limit().await;
        assert!(ctx.soft_limit_exceeded());
        Ok(json!("cleaned up"))
    }));
    env.app.register(add());
    let w = start(&env.app, 3);
    for name in ["tasks.hang", "tasks.hang_blocking"] {
        let r = env.app.delay(Signature::new(name)).await.unwrap();
        match r.get(T).await.unwrap_err() {
            Error::TaskFailed { exc, .. } => assert_eq!(exc.exc_type, "TimeLimitExceeded", "{name}"),
            other => panic!("{other:?}"),
        }
    }
    let r = env.app.delay(Signature::new("tasks.soft")).await.unwrap();
    assert_eq!(r.get(T).await.unwrap(), json!("cleaned up"));
    let r = env.app.delay(Signature::new("tasks.add").arg(1).arg(1)).await.unwrap();
    assert_eq!(r.get(T).await.unwrap(), json!(2));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_before_start_and_terminate_while_running() {
    let env = env();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    env.app.register(task("tasks.count", TaskOptions::default(), move |_c, _a, _k| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(Value::Null)
        }
    }));
    let started = Arc::new(Notify::new());
    let s = started.clone();
    env.app.register(task("tasks.forever", TaskOptions::default(), move |_c, _a, _k| {
        let s = s.clone();
        async move {
            s.notify_one();
            std::future::pending::<()>().await;
            Ok(Value::Null)
        }
    }));
    let w = start(&env.app, 2);
    // Let the worker subscribe to remote control before revoking.
    let probe = env.app.delay(Signature::new("tasks.count")).await.unwrap();
    probe.get(T).await.unwrap();
    let eta = env
        .app
        .apply_async(Signature::new("tasks.count"), SendOptions::new().countdown(Duration::from_millis(300)))
        .await
        .unwrap();
    eta.revoke(false).await.unwrap();
    assert!(matches!(eta.get(T).await, Err(Error::TaskFailed { state, .. }) if state == "REVOKED"));

    let running = env.app.delay(Signature::new("tasks.forever")).await.unwrap();
    started.notified().await;
    running.revoke(true).await.unwrap();
    let handle = w.handle.clone();
    let id = running.id().to_string();
    let backend = env.backend.clone();
    eventually("terminated task stored as REVOKED terminated", || {
        let backend = backend.clone();
        let id = id.clone();
        async move {
            use qcore::ResultBackend;
            backend
                .get(&id)
                .await
                .unwrap()
                .is_some_and(|m| m.status == State::Revoked && m.result["exc_message"] == json!(["terminated"]))
        }
    })
    .await;
    // The ETA one was revoked at the worker too: it never ran.
    let check = env.app.delay(Signature::new("tasks.count")).await.unwrap();
    check.get(T).await.unwrap();
    eventually("eta task settled", || {
        let h = handle.clone();
        async move { h.stats().reserved == 0 }
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "only the probe and the check ran");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_spaces_out_starts() {
    let env = env();
    let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = starts.clone();
    let opts = TaskOptions {
        rate_limit: Some(qcore::RateLimit { count: 2, per: Duration::from_secs(1) }),
        ..TaskOptions::default()
    };
    env.app.register(task("tasks.limited", opts, move |_c, _a, _k| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(std::time::Instant::now());
            Ok(Value::Null)
        }
    }));
    let w = start(&env.app, 4);
    let mut rs = Vec::new();
    for _ in 0..4 {
        rs.push(env.app.delay(Signature::new("tasks.limited")).await.unwrap());
    }
    for r in rs {
        r.get(T).await.unwrap();
    }
    let mut v = starts.lock().unwrap().clone();
    v.sort();
    // 2 per second: the 3rd and 4th start at least ~0.5 s and ~1 s after the first.
    assert!(v[2] - v[0] >= Duration::from_millis(450), "{:?}", v[2] - v[0]);
    assert!(v[3] - v[0] >= Duration::from_millis(950), "{:?}", v[3] - v[0]);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_shutdown_finishes_running_and_returns_unstarted_messages() {
    let env = env();
    let gate = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let (g, s) = (gate.clone(), started.clone());
    env.app.register(task("tasks.wait", TaskOptions::default(), move |_c, _a, _k| {
        let (g, s) = (g.clone(), s.clone());
        async move {
            s.notify_one();
            g.notified().await;
            Ok(json!("finished"))
        }
    }));
    let worker = qworker::Worker::builder(env.app.clone()).concurrency(1).prefetch_multiplier(4).build();
    let w = start_worker(worker);
    let first = env.app.delay(Signature::new("tasks.wait")).await.unwrap();
    started.notified().await;
    for _ in 0..3 {
        env.app.delay(Signature::new("tasks.wait")).await.unwrap();
    }
    let h = w.handle.clone();
    eventually("the other three are reserved", || {
        let h = h.clone();
        async move { h.stats().reserved == 4 }
    })
    .await;
    w.handle.shutdown();
    let broker = env.broker.clone();
    eventually("unstarted messages are back in the queue", || {
        let b = broker.clone();
        async move {
            use qcore::Broker;
            b.queue_len("celery").await.unwrap() == 3
        }
    })
    .await;
    gate.notify_one();
    assert_eq!(first.get(T).await.unwrap(), json!("finished"));
    tokio::time::timeout(T, w.join).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_shutdown_returns_running_acks_late_task() {
    let env = env_with(Config::from_toml_str("task_acks_late = true").unwrap());
    let started = Arc::new(Notify::new());
    let s = started.clone();
    env.app.register(task("tasks.forever", TaskOptions::default(), move |_c, _a, _k| {
        let s = s.clone();
        async move {
            s.notify_one();
            std::future::pending::<()>().await;
            Ok(Value::Null)
        }
    }));
    let w = start(&env.app, 1);
    env.app.delay(Signature::new("tasks.forever")).await.unwrap();
    started.notified().await;
    w.handle.shutdown();
    w.handle.cold_shutdown();
    tokio::time::timeout(T, w.join).await.unwrap().unwrap().unwrap();
    use qcore::Broker;
    assert_eq!(env.broker.queue_len("celery").await.unwrap(), 1, "acks_late task must go back to the queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_started_states_are_visible_while_running() {
    let env = env_with(Config::from_toml_str("task_track_started = true\nresult_extended = true").unwrap());
    let gate = Arc::new(Notify::new());
    let stage = Arc::new(Notify::new());
    let (g, st) = (gate.clone(), stage.clone());
    env.app.register(task("tasks.steps", TaskOptions::default(), move |ctx, _a, _k| {
        let (g, st) = (g.clone(), st.clone());
        async move {
            st.notify_one();
            g.notified().await;
            ctx.progress(1, 2).await.map_err(|e| TaskError::fail("BackendError", e.to_string()))?;
            st.notify_one();
            g.notified().await;
            Ok(json!(2))
        }
    }));
    let w = start(&env.app, 1);
    let r = env.app.delay(Signature::new("tasks.steps").kwarg("n", 2)).await.unwrap();
    stage.notified().await;
    let rr = r.clone();
    eventually("STARTED stored", || {
        let rr = rr.clone();
        async move { rr.state().await.unwrap() == State::Started }
    })
    .await;
    let started = r.meta().await.unwrap();
    assert_eq!(started.result["hostname"], json!("test@localhost"));
    gate.notify_one();
    stage.notified().await;
    let meta = r.meta().await.unwrap();
    assert_eq!(meta.status, State::progress());
    assert_eq!(meta.result, json!({"current": 1, "total": 2}));
    gate.notify_one();
    assert_eq!(r.get(T).await.unwrap(), json!(2));
    let done = r.meta().await.unwrap();
    assert_eq!(done.name.as_deref(), Some("tasks.steps"));
    assert_eq!(done.kwargs, Some(json!({"n": 2})));
    assert_eq!(done.worker.as_deref(), Some("test@localhost"));
    assert_eq!(done.queue.as_deref(), Some("celery"));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_several_queues_and_routes() {
    let env = env_with(Config::from_toml_str("task_routes = { \"tasks.xsum\" = \"math\" }").unwrap());
    env.app.register(add()).register(xsum());
    let w = start_worker(qworker::Worker::builder(env.app.clone()).queues(["celery", "math"]).build());
    let a = env.app.delay(Signature::new("tasks.add").arg(1).arg(2)).await.unwrap();
    let b = env.app.delay(Signature::new("tasks.xsum").arg(json!([1, 2, 3]))).await.unwrap();
    let c =
        env.app.apply_async(Signature::new("tasks.add").arg(5).arg(5), SendOptions::new().queue("math")).await.unwrap();
    assert_eq!(a.get(T).await.unwrap(), json!(3));
    assert_eq!(b.get(T).await.unwrap(), json!(6));
    assert_eq!(c.get(T).await.unwrap(), json!(10));
    assert_eq!(b.meta().await.unwrap().status, State::Success);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_given_no_queues_consumes_every_task_queue() {
    let env = env_with(Config::from_toml_str("task_queues = [\"high\", \"low\"]").unwrap());
    env.app.register(add());
    let w = start(&env.app, 2);
    let to = |q: &str| SendOptions::new().queue(q);
    let hi = env.app.apply_async(Signature::new("tasks.add").arg(1).arg(1), to("high")).await.unwrap();
    let lo = env.app.apply_async(Signature::new("tasks.add").arg(2).arg(2), to("low")).await.unwrap();
    assert_eq!((hi.get(T).await.unwrap(), lo.get(T).await.unwrap()), (json!(2), json!(4)));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_messages_run_too() {
    let env = env();
    env.app.register(add());
    let w = start(&env.app, 1);
    let r = env
        .app
        .apply_async(Signature::new("tasks.add").arg(20).arg(22), SendOptions::new().serializer(ContentType::Msgpack))
        .await
        .unwrap();
    assert_eq!(r.get(T).await.unwrap(), json!(42));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canvas_chain_group_chord_link_and_link_error() {
    let env = env();
    env.app.register(add()).register(xsum());
    let errors = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let e = errors.clone();
    env.app.register(task("tasks.on_error", TaskOptions::default(), move |_c, a, _k| {
        let e = e.clone();
        async move {
            e.lock().unwrap().push(Value::Array(a));
            Ok(Value::Null)
        }
    }));
    env.app.register(task("tasks.fail", TaskOptions::default(), |_c, _a, _k| async move {
        Err(TaskError::value_error("boom"))
    }));
    let w = start(&env.app, 4);
    let add_s = |a: i64, b: i64| Signature::new("tasks.add").arg(a).arg(b);
    let add_p = |b: i64| Signature::new("tasks.add").arg(b);

    // chain: ((1 + 2) + 3) + 4; an immutable step ignores its parent.
    let r = env.app.delay(chain([add_s(1, 2), add_p(3), add_p(4)])).await.unwrap();
    assert_eq!(r.get(T).await.unwrap(), json!(10));
    let r = env.app.delay(chain([add_s(1, 2), add_s(5, 5).immutable()])).await.unwrap();
    assert_eq!(r.get(T).await.unwrap(), json!(10));

    // group: results in order.
    let r = env.app.delay(group([add_s(1, 1), add_s(2, 2), add_s(3, 3)])).await.unwrap();
    assert_eq!(r.get(T).await.unwrap(), json!([2, 4, 6]));

    // chord, chord of chains, chain with a group in the middle.
    let r = env.app.delay(chord((0..10).map(|i| add_s(i, i)), Signature::new("tasks.xsum"))).await.unwrap();
    assert_eq!(r.get(T).await.unwrap(), json!(90));
    let r = env
        .app
        .delay(chord([chain([add_s(1, 1), add_p(10)]), chain([add_s(2, 2), add_p(20)])], Signature::new("tasks.xsum")))
        .await
        .unwrap();
    assert_eq!(r.get(T).await.unwrap(), json!(36));
    let r =
        env.app.delay(chain([add_s(1, 2), group([add_p(10), add_p(20)]), Signature::new("tasks.xsum")])).await.unwrap();
    assert_eq!(r.get(T).await.unwrap(), json!(36));

    // link gets the result; link_error gets the failed task's id.
    let r = env.app.apply_async(add_s(2, 2), SendOptions::new().link(add_p(10).task_id("link-child"))).await.unwrap();
    assert_eq!(r.get(T).await.unwrap(), json!(4));
    assert_eq!(env.app.result::<i64>("link-child").get(T).await.unwrap(), 14);
    let r = env
        .app
        .apply_async(Signature::new("tasks.fail"), SendOptions::new().link_error(Signature::new("tasks.on_error")))
        .await
        .unwrap();
    assert!(r.get(T).await.is_err());
    let e2 = errors.clone();
    let id = r.id().to_string();
    eventually("errback ran", || {
        let e2 = e2.clone();
        let id = id.clone();
        async move { e2.lock().unwrap().contains(&json!([id])) }
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chord_with_a_failed_member_never_runs_the_body_and_runs_the_errback_once() {
    let env = env();
    env.app.register(add());
    let body_runs = Arc::new(AtomicU32::new(0));
    let b = body_runs.clone();
    env.app.register(task("tasks.body", TaskOptions::default(), move |_c, _a, _k| {
        let b = b.clone();
        async move {
            b.fetch_add(1, Ordering::SeqCst);
            Ok(Value::Null)
        }
    }));
    let errbacks = Arc::new(AtomicU32::new(0));
    let e = errbacks.clone();
    env.app.register(task("tasks.on_error", TaskOptions::default(), move |_c, _a, _k| {
        let e = e.clone();
        async move {
            e.fetch_add(1, Ordering::SeqCst);
            Ok(Value::Null)
        }
    }));
    env.app.register(task("tasks.fail", TaskOptions::default(), |_c, _a, _k| async move {
        Err(TaskError::value_error("boom"))
    }));
    let w = start(&env.app, 3);
    let header = vec![
        Signature::new("tasks.add").arg(1).arg(1),
        Signature::new("tasks.fail"),
        Signature::new("tasks.add").arg(2).arg(2),
        Signature::new("tasks.fail"),
    ];
    let body = Signature::new("tasks.body").link_error(Signature::new("tasks.on_error"));
    let r = env.app.delay(chord(header, body)).await.unwrap();
    match r.get(T).await.unwrap_err() {
        Error::TaskFailed { exc, .. } => {
            assert_eq!(exc.exc_type, "ChordError");
            assert!(exc.message().contains("ValueError"), "{}", exc.message());
        }
        other => panic!("{other:?}"),
    }
    let e2 = errbacks.clone();
    eventually("errback ran", || {
        let e2 = e2.clone();
        async move { e2.load(Ordering::SeqCst) >= 1 }
    })
    .await;
    // Drain: a later task on the same worker proves nothing else is pending.
    let r = env.app.delay(Signature::new("tasks.add").arg(0).arg(0)).await.unwrap();
    r.get(T).await.unwrap();
    assert_eq!(body_runs.load(Ordering::SeqCst), 0);
    assert_eq!(errbacks.load(Ordering::SeqCst), 1);
    w.stop().await;
}

/// `accept_content`: a message in a serializer the app does not accept is
/// parked with Celery's `ContentDisallowed` reason, not run; accepted ones run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_content_parks_other_serializers() {
    let env = env_with(Config::from_toml_str("accept_content = [\"json\"]").unwrap());
    env.app.register(add());
    let w = start(&env.app, 1);
    let refused = env
        .app
        .apply_async(Signature::new("tasks.add").arg(1).arg(1), SendOptions::new().serializer(ContentType::Msgpack))
        .await
        .unwrap();
    let ok = env.app.delay(Signature::new("tasks.add").arg(2).arg(2)).await.unwrap();
    assert_eq!(ok.get(T).await.unwrap(), json!(4));
    let broker = env.app.broker().clone();
    eventually("the msgpack message parked", || {
        let b = broker.clone();
        async move { b.dead_letters().expect("a dead-letter place").count("celery").await.unwrap() == 1 }
    })
    .await;
    let dead = broker.dead_letters().expect("a dead-letter place").list("celery", 10).await.unwrap();
    assert_eq!(dead[0].message.task_id(), Some(refused.id()));
    assert!(dead[0].reason.starts_with("ContentDisallowed"), "{}", dead[0].reason);
    assert_eq!(refused.state().await.unwrap(), State::Pending, "a refused message is not run");
    w.stop().await;
}

/// Events on the broker's `celeryev` exchange: the producer's `task-sent`
/// (with `task_send_sent_event`), the worker's `worker-online` alone and its
/// task events batched under `task.multi`; with task events off, worker
/// events still go out and task events do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_to_celeryev_as_celery_sends_them() {
    use qcore::event::{Event, EVENT_EXCHANGE, TASK_MULTI};
    for task_events in [true, false] {
        let mut cfg = Config::default();
        cfg.task_send_sent_event = true;
        let env = env_with(cfg);
        env.app.register(add());
        let mut sub = env.app.broker().subscribe(EVENT_EXCHANGE, "#").await.unwrap();
        let worker = qworker::Worker::builder(env.app.clone()).concurrency(1).send_events(task_events).build();
        let w = start_worker(worker);
        let r = env.app.delay(Signature::new("tasks.add").arg(2).arg(3)).await.unwrap();
        assert_eq!(r.get(T).await.unwrap(), json!(5));
        // With task events: until the three came. Without: until two
        // heartbeats counted the task (any task event would be out by then).
        let mut seen: Vec<(String, Vec<Event>)> = Vec::new();
        let deadline = tokio::time::Instant::now() + T;
        let done = |seen: &[(String, Vec<Event>)]| {
            if task_events {
                seen.iter().filter(|(rk, _)| rk == TASK_MULTI).map(|(_, e)| e.len()).sum::<usize>() >= 3
            } else {
                seen.iter()
                    .filter(|(rk, e)| rk == "worker.heartbeat" && e[0].worker_info().is_some_and(|w| w.processed >= 1))
                    .count()
                    >= 2
            }
        };
        while !done(&seen) {
            let (rk, msg) = tokio::time::timeout_at(deadline, sub.recv()).await.unwrap().unwrap().unwrap();
            seen.push((rk, Event::from_message(&msg).unwrap()));
        }
        let keys: Vec<&str> = seen.iter().map(|(rk, _)| rk.as_str()).collect();
        assert!(keys.contains(&"worker.online"), "{keys:?}");
        let sent = seen.iter().find(|(rk, _)| rk == "task.sent").map(|(_, e)| &e[0]).expect("task-sent");
        assert_eq!(sent.task_id(), Some(r.id()));
        assert!(sent.hostname.starts_with("gen"), "{}", sent.hostname);
        let task_events_seen: Vec<String> = seen
            .iter()
            .filter(|(rk, _)| rk == TASK_MULTI)
            .flat_map(|(_, es)| es.iter().map(|e| e.type_name().to_owned()))
            .collect();
        if task_events {
            assert_eq!(task_events_seen, ["task-received", "task-started", "task-succeeded"]);
        } else {
            assert!(task_events_seen.is_empty(), "{task_events_seen:?}");
        }
        w.stop().await;
    }
}
