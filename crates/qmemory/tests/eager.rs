//! Eager mode (`task_always_eager`) on qmemory: tasks run in the caller,
//! through the same message encoding a worker sees, results stored at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use qcore::{
    chain, chord, group, Args, ContentType, Error, SendOptions, Signature, State, Task, TaskContext, TaskError,
    TaskResult,
};
use serde_json::{json, Map, Value};

/// What ran, in order: `(task name, task id, args, kwargs)`.
type Log = Arc<Mutex<Vec<(String, String, Vec<Value>, Map<String, Value>)>>>;

fn log_call(log: &Log, ctx: &TaskContext, args: &[Value], kwargs: &Map<String, Value>) {
    let entry = (ctx.request().task.clone(), ctx.id().to_string(), args.to_vec(), kwargs.clone());
    log.lock().unwrap().push(entry);
}

/// `tasks.add(x, y)`, bound the way Python binds arguments.
struct Add(Log);

#[async_trait]
impl Task for Add {
    fn name(&self) -> &str {
        "tasks.add"
    }
    async fn run(&self, ctx: TaskContext, args: Vec<Value>, kwargs: Map<String, Value>) -> TaskResult {
        log_call(&self.0, &ctx, &args, &kwargs);
        let mut a = Args::new("add", args, kwargs);
        let x: i64 = a.next("x")?;
        let y: i64 = a.next("y")?;
        a.finish()?;
        Ok(json!(x + y))
    }
}

/// `tasks.mul(x, y)`.
struct Mul(Log);

#[async_trait]
impl Task for Mul {
    fn name(&self) -> &str {
        "tasks.mul"
    }
    async fn run(&self, ctx: TaskContext, args: Vec<Value>, kwargs: Map<String, Value>) -> TaskResult {
        log_call(&self.0, &ctx, &args, &kwargs);
        let mut a = Args::new("mul", args, kwargs);
        let x: i64 = a.next("x")?;
        let y: i64 = a.next("y")?;
        a.finish()?;
        Ok(json!(x * y))
    }
}

/// `tasks.echo(*args, **kwargs)`: what the task received, and who it is.
struct Echo(Log);

#[async_trait]
impl Task for Echo {
    fn name(&self) -> &str {
        "tasks.echo"
    }
    async fn run(&self, ctx: TaskContext, args: Vec<Value>, kwargs: Map<String, Value>) -> TaskResult {
        log_call(&self.0, &ctx, &args, &kwargs);
        ctx.progress(1, 2).await.map_err(|e| TaskError::from_error(&e))?;
        Ok(json!({
            "args": args,
            "kwargs": kwargs,
            "id": ctx.id(),
            "hostname": ctx.request().hostname,
            "queue": ctx.request().queue,
        }))
    }
}

/// `tasks.fail()`: raises ValueError.
struct Fail;

#[async_trait]
impl Task for Fail {
    fn name(&self) -> &str {
        "tasks.fail"
    }
    async fn run(&self, _ctx: TaskContext, _args: Vec<Value>, _kwargs: Map<String, Value>) -> TaskResult {
        Err(TaskError::value_error("boom"))
    }
}

fn app() -> (qcore::App, Log) {
    let log: Log = Arc::default();
    let app = qmemory::eager_app();
    app.register(Add(log.clone())).register(Mul(log.clone())).register(Echo(log.clone())).register(Fail);
    (app, log)
}

const NOW: Duration = Duration::from_millis(1);

#[tokio::test(flavor = "multi_thread")]
async fn delay_runs_at_once_and_stores_the_result() {
    let (app, log) = app();
    let res = app.delay(Signature::new("tasks.add").arg(2).kwarg("y", 3)).await.unwrap();
    // Already there: a 1 ms wait would time out otherwise.
    assert_eq!(res.state().await.unwrap(), State::Success);
    assert_eq!(res.get(NOW).await.unwrap(), json!(5));
    assert_eq!(log.lock().unwrap().len(), 1, "the task ran once");
    // Not queued anywhere.
    assert_eq!(app.broker().queue_len("celery").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn arguments_go_through_the_message_encoding() {
    let (app, log) = app();
    let sig = Signature::new("tasks.echo")
        .arg(1)
        .arg("two")
        .arg(json!({"three": [3.5, null]}))
        .kwarg("x", json!([1, 2]))
        .kwarg("é", json!({"nested": true}));
    for serializer in [ContentType::Json, ContentType::Msgpack] {
        let res =
            app.apply_async(sig.clone(), SendOptions::new().serializer(serializer).queue("eager-q")).await.unwrap();
        let out = res.get(NOW).await.unwrap();
        assert_eq!(out["args"], json!([1, "two", {"three": [3.5, null]}]), "{serializer:?}");
        // kwargs arrive as a JSON map, as a worker decodes them.
        assert_eq!(out["kwargs"], json!({"x": [1, 2], "é": {"nested": true}}), "{serializer:?}");
        assert_eq!(out["id"], json!(res.id()));
        assert_eq!(out["hostname"], json!("eager@localhost"));
        assert_eq!(out["queue"], json!("eager-q"));
    }
    assert_eq!(log.lock().unwrap().len(), 2);
    // A task that is not registered ends as NotRegistered, like on a worker.
    let res = app.send_task("tasks.nope", vec![], Map::new(), SendOptions::new()).await.unwrap();
    match res.get(NOW).await {
        Err(Error::TaskFailed { exc, .. }) => assert_eq!(exc.exc_type, "NotRegistered"),
        other => panic!("expected NotRegistered, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_arguments_and_failures_are_stored_as_failure() {
    let (app, _log) = app();
    let res = app.delay(Signature::new("tasks.add").arg(1)).await.unwrap();
    match res.get(NOW).await {
        Err(Error::TaskFailed { exc, state, .. }) => {
            assert_eq!(state, "FAILURE");
            assert_eq!(exc.exc_type, "TypeError");
            assert_eq!(exc.message(), "add() missing 1 required positional argument: 'y'");
        }
        other => panic!("expected a TypeError failure, got {other:?}"),
    }
    let res = app.delay(Signature::new("tasks.fail")).await.unwrap();
    assert_eq!(res.state().await.unwrap(), State::Failure);
    match res.get(NOW).await {
        Err(Error::TaskFailed { exc, .. }) => {
            assert_eq!((exc.exc_type.as_str(), exc.message()), ("ValueError", "boom".into()))
        }
        other => panic!("expected ValueError, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chain_runs_in_order_with_the_parent_result_prepended() {
    let (app, log) = app();
    let c = chain([
        Signature::new("tasks.add").arg(2).arg(3),
        Signature::new("tasks.add").arg(10),
        Signature::new("tasks.mul").arg(2),
        Signature::new("tasks.add").arg(100).arg(1).immutable(),
    ]);
    let res = app.delay(c).await.unwrap();
    assert_eq!(res.get(NOW).await.unwrap(), json!(101), "the handle is the last step's");
    let calls = log.lock().unwrap().clone();
    let seen: Vec<(&str, &[Value])> = calls.iter().map(|(t, _, a, _)| (t.as_str(), a.as_slice())).collect();
    assert_eq!(
        seen,
        vec![
            ("tasks.add", &[json!(2), json!(3)][..]),
            ("tasks.add", &[json!(5), json!(10)][..]),
            ("tasks.mul", &[json!(15), json!(2)][..]),
            ("tasks.add", &[json!(100), json!(1)][..]),
        ],
        "steps out of order, or the parent's result was not prepended (or was, to an immutable step)"
    );
    // Each step's result is stored, with the previous step as its parent.
    let backend = app.backend().unwrap();
    for pair in calls.windows(2) {
        let meta = backend.get(&pair[1].1).await.unwrap().expect("step result stored");
        assert_eq!(meta.status, State::Success);
        assert_eq!(meta.parent_id.as_deref(), Some(pair[0].1.as_str()), "parent_id of {}", pair[1].0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn group_and_chord_collect_results_by_index() {
    let (app, log) = app();
    let header = (1..=4).map(|i| Signature::new("tasks.mul").arg(i).arg(i));
    let g = app.delay(group(header.clone())).await.unwrap();
    assert_eq!(g.get(NOW).await.unwrap(), json!([1, 4, 9, 16]));

    log.lock().unwrap().clear();
    let res = app.delay(chord(header, Signature::new("tasks.echo").kwarg("tag", "body"))).await.unwrap();
    let out = res.get(NOW).await.unwrap();
    assert_eq!(out["args"], json!([[1, 4, 9, 16]]), "the body gets the header results ordered by index");
    assert_eq!(out["kwargs"], json!({"tag": "body"}));
    let calls = log.lock().unwrap().clone();
    assert_eq!(calls.len(), 5, "4 header tasks and the body, once each");
    assert_eq!(calls[4].0, "tasks.echo", "the body runs last");
    assert_eq!(out["id"], json!(res.id()), "the chord's handle is the body's result");
}

#[tokio::test(flavor = "multi_thread")]
async fn link_and_link_error_run_after_the_task() {
    let (app, log) = app();
    let opts = SendOptions::new().link(Signature::new("tasks.echo").kwarg("on", "success"));
    let res = app.apply_async(Signature::new("tasks.add").arg(1).arg(2), opts).await.unwrap();
    assert_eq!(res.get(NOW).await.unwrap(), json!(3));
    let calls = log.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[1].0.as_str(), calls[1].2.as_slice()),
        ("tasks.echo", &[json!(3)][..]),
        "callback gets the result"
    );

    log.lock().unwrap().clear();
    let opts = SendOptions::new().link_error(Signature::new("tasks.echo").kwarg("on", "error"));
    let res = app.apply_async(Signature::new("tasks.fail"), opts).await.unwrap();
    assert!(matches!(res.get(NOW).await, Err(Error::TaskFailed { .. })));
    let calls = log.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].2, vec![json!(res.id())], "errback gets the failed task's id");
}

#[tokio::test(flavor = "multi_thread")]
async fn chord_with_a_failed_header_fails_its_body() {
    let (app, log) = app();
    let header = [Signature::new("tasks.add").arg(1).arg(1), Signature::new("tasks.fail")];
    let res = app.delay(chord(header, Signature::new("tasks.echo"))).await.unwrap();
    match res.get(NOW).await {
        Err(Error::TaskFailed { exc, .. }) => assert_eq!(exc.exc_type, "ChordError"),
        other => panic!("expected ChordError, got {other:?}"),
    }
    assert!(log.lock().unwrap().iter().all(|c| c.0 != "tasks.echo"), "the body must not run");
}

/// `tasks.flaky()`: asks for a retry in a minute until its third try.
struct Flaky;

#[async_trait]
impl Task for Flaky {
    fn name(&self) -> &str {
        "tasks.flaky"
    }
    async fn run(&self, ctx: TaskContext, _args: Vec<Value>, _kwargs: Map<String, Value>) -> TaskResult {
        if ctx.retries() < 2 {
            return Err(ctx.retry().countdown(Duration::from_secs(60)).into());
        }
        Ok(json!({"tries": ctx.retries() + 1}))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_run_at_once_in_eager_mode() {
    let (app, _log) = app();
    app.register(Flaky);
    let res = app.delay(Signature::new("tasks.flaky")).await.unwrap();
    assert_eq!(res.get(NOW).await.unwrap(), json!({"tries": 3}), "same id, retried in place");
}
