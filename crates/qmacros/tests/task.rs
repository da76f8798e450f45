//! `#[task]` end to end: the generated `Task` impl is run directly with a
//! `TaskContext`, as the worker runs it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use qcore::task::SoftLimit;
use qcore::{
    App, Broker, BrokerError, ConsumeOptions, Consumer, ErrorKind, MaxRetries, Message, RateLimit, RequestInfo,
    Signature, Subscription, Task, TaskContext, TaskError, TaskOptions, TaskResult, TypedSignature,
};
use qmacros::task;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Tasks under test

/// Adds two numbers.
#[task(name = "tasks.add")]
async fn add(x: i64, y: i64) -> i64 {
    x + y
}

#[task(name = "tasks.fail")]
fn fail(message: String) -> Result<(), TaskError> {
    Err(TaskError::value_error(message))
}

#[task(name = "tasks.progress", max_retries = 5, default_retry_delay = 2, retry_backoff = true, retry_backoff_max = 60,
       retry_jitter = false, autoretry_for = ["IoError", "ValueError"], acks_late = true, time_limit = 30, soft_time_limit = 25,
       rate_limit = "10/s", queue = "slow", ignore_result = false, track_started = true)]
async fn progress(ctx: TaskContext, steps: u64) -> Result<u64, TaskError> {
    ctx.progress(1, steps).await?;
    Ok(steps)
}

#[task(name = "tasks.greet")]
async fn greet(name: String, greeting: Option<String>) -> String {
    format!("{}, {name}!", greeting.as_deref().unwrap_or("Hello"))
}

#[task]
async fn unnamed() {}

#[task(name = "tasks.whoami")]
async fn whoami(ctx: TaskContext) -> String {
    ctx.id().to_string()
}

#[task(name = "tasks.retries")]
async fn retries(ctx: &TaskContext) -> u32 {
    ctx.retries()
}

#[task(name = "tasks.whoami_blocking")]
fn whoami_blocking(ctx: &TaskContext, suffix: String) -> String {
    format!("{}{suffix}", ctx.id())
}

#[task(name = "tasks.thread")]
fn thread_name() -> String {
    format!("{:?}", std::thread::current().id())
}

#[task(name = "tasks.panics")]
fn panics(n: u32) -> u32 {
    if n > 0 {
        panic!("boom {n}");
    }
    n
}

#[task(name = "tasks.panics_str")]
fn panics_str() {
    panic!("static boom");
}

#[task(name = "tasks.read")]
fn read(path: String) -> std::io::Result<String> {
    std::fs::read_to_string(path)
}

#[task(name = "tasks.raw")]
async fn raw(value: Value) -> TaskResult {
    Ok(json!({ "got": value }))
}

#[task(name = "tasks.keywords")]
async fn keywords(r#type: String, mut count: u32) -> String {
    count += 1;
    format!("{type}:{count}", type = r#type)
}

#[task(name = "tasks.bad_result")]
async fn bad_result() -> BTreeMap<Vec<u8>, u8> {
    BTreeMap::from([(vec![1], 1)])
}

#[task(name = "tasks.bad_arg")]
async fn bad_arg(map: BTreeMap<Vec<u8>, u8>) -> usize {
    map.len()
}

#[task(name = "tasks.forever", max_retries = None, retry_backoff = 2.5, soft_time_limit = 0.25, rate_limit = "0")]
fn forever() {}

#[task(name = "tasks.countdown")]
fn recurse(n: u32) -> u32 {
    if n == 0 {
        0
    } else {
        1 + recurse::call(n - 1)
    }
}

/// A re-exporting crate of one's own, shaped like the `qtask` facade.
mod facade {
    pub(crate) use qcore::*;
}

#[task(name = "tasks.via_facade", crate = "crate::facade", queue = "facade")]
async fn via_facade(x: u8) -> u8 {
    x
}

// ---------------------------------------------------------------------------
// A broker that is never used: an App needs one.

#[derive(Debug)]
struct NoBroker;

fn unused() -> BrokerError {
    BrokerError::new(ErrorKind::Unsupported, "the test broker does nothing")
}

#[qcore::__private::async_trait]
impl Broker for NoBroker {
    async fn declare_queue(&self, _queue: &str) -> Result<(), BrokerError> {
        Err(unused())
    }
    async fn publish(&self, _queue: &str, _message: &Message) -> Result<(), BrokerError> {
        Err(unused())
    }
    async fn consume(&self, _queues: &[String], _options: ConsumeOptions) -> Result<Box<dyn Consumer>, BrokerError> {
        Err(unused())
    }
    async fn queue_len(&self, _queue: &str) -> Result<u64, BrokerError> {
        Err(unused())
    }
    async fn purge(&self, _queue: &str) -> Result<u64, BrokerError> {
        Err(unused())
    }
    async fn publish_fanout(&self, _exchange: &str, _key: &str, _message: &Message) -> Result<(), BrokerError> {
        Err(unused())
    }
    async fn subscribe(&self, _exchange: &str, _pattern: &str) -> Result<Box<dyn Subscription>, BrokerError> {
        Err(unused())
    }
    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "none://".into()
    }
}

fn app() -> App {
    App::builder().broker(Arc::new(NoBroker)).build().unwrap()
}

fn ctx_with_id(id: &str) -> TaskContext {
    let req = RequestInfo { id: id.into(), ..RequestInfo::default() };
    TaskContext::new(Arc::new(req), app(), Arc::new(SoftLimit::default()))
}

/// Run a task the way the worker does: JSON args and kwargs in, TaskResult out.
async fn run(task: impl Task, args: Value, kwargs: Value) -> TaskResult {
    run_ctx(task, ctx_with_id("test-id"), args, kwargs).await
}

async fn run_ctx(task: impl Task, ctx: TaskContext, args: Value, kwargs: Value) -> TaskResult {
    let Value::Array(args) = args else { panic!("args must be a JSON array") };
    let Value::Object(kwargs) = kwargs else { panic!("kwargs must be a JSON object") };
    task.run(ctx, args, kwargs).await
}

fn failure(r: TaskResult) -> (String, String, String) {
    match r {
        Err(TaskError::Failure { exc, .. }) => (exc.exc_type.clone(), exc.message(), exc.exc_module),
        other => panic!("expected a failure, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Binding arguments

#[tokio::test]
async fn binds_positional_and_keyword_arguments() {
    assert_eq!(run(add, json!([2, 3]), json!({})).await, Ok(json!(5)));
    assert_eq!(run(add, json!([]), json!({"x": 2, "y": 40})).await, Ok(json!(42)));
    assert_eq!(run(add, json!([10]), json!({"y": 5})).await, Ok(json!(15)));
    assert_eq!(run(add, json!([]), json!({"y": 1, "x": 2})).await, Ok(json!(3)));
    // Raw identifiers are named without `r#`; `mut` parameters work.
    assert_eq!(run(keywords, json!([]), json!({"type": "a", "count": 1})).await, Ok(json!("a:2")));
}

#[tokio::test]
async fn option_parameters_may_be_missing() {
    assert_eq!(run(greet, json!(["Ann"]), json!({})).await, Ok(json!("Hello, Ann!")));
    assert_eq!(run(greet, json!(["Ann", "Hi"]), json!({})).await, Ok(json!("Hi, Ann!")));
    assert_eq!(run(greet, json!(["Ann"]), json!({"greeting": null})).await, Ok(json!("Hello, Ann!")));
    assert_eq!(run(greet, json!([]), json!({"name": "Bo", "greeting": "Hey"})).await, Ok(json!("Hey, Bo!")));
}

#[tokio::test]
async fn wrong_arguments_are_type_errors_worded_like_python() {
    assert_eq!(
        run(add, json!([1]), json!({})).await,
        Err(TaskError::type_error("add() missing 1 required positional argument: 'y'"))
    );
    assert_eq!(
        run(add, json!([1, 2, 3]), json!({})).await,
        Err(TaskError::type_error("add() takes 2 positional arguments but 3 were given"))
    );
    assert_eq!(
        run(add, json!([1, 2]), json!({"z": 0})).await,
        Err(TaskError::type_error("add() got an unexpected keyword argument 'z'"))
    );
    assert_eq!(
        run(add, json!([1, 2]), json!({"x": 0})).await,
        Err(TaskError::type_error("add() got multiple values for argument 'x'"))
    );
    assert_eq!(
        run(add, json!(["a", 2]), json!({})).await,
        Err(TaskError::type_error("add() argument 'x' has the wrong type: invalid type: string \"a\", expected i64"))
    );
    // A task without parameters takes none; the context does not count as one.
    assert_eq!(
        run(unnamed, json!([1]), json!({})).await,
        Err(TaskError::type_error("unnamed() takes 0 positional arguments but 1 were given"))
    );
    assert_eq!(
        run(whoami_blocking, json!([]), json!({})).await,
        Err(TaskError::type_error("whoami_blocking() missing 1 required positional argument: 'suffix'"))
    );
    // The blocking form binds the same way, before anything runs.
    assert_eq!(
        run(fail, json!([1]), json!({})).await,
        Err(TaskError::type_error(
            "fail() argument 'message' has the wrong type: invalid type: integer `1`, expected a string"
        ))
    );
}

// ---------------------------------------------------------------------------
// Return values

#[tokio::test]
async fn result_returns_become_success_or_the_error() {
    assert_eq!(run(fail, json!(["bad input"]), json!({})).await, Err(TaskError::value_error("bad input")));
    assert_eq!(run(unnamed, json!([]), json!({})).await, Ok(Value::Null));
    assert_eq!(run(raw, json!([[1, 2]]), json!({})).await, Ok(json!({"got": [1, 2]})));

    // Any std error converts, named after its type.
    let missing = std::env::temp_dir().join(format!("qmacros-missing-{}", std::process::id()));
    let (exc_type, message, module) = failure(run(read, json!([missing]), json!({})).await);
    assert_eq!((exc_type.as_str(), module.as_str()), ("Error", "rust"));
    assert!(message.contains("No such file"), "{message}");
}

#[tokio::test]
async fn unserializable_results_fail_with_encode_error() {
    let (exc_type, message, module) = failure(run(bad_result, json!([]), json!({})).await);
    assert_eq!(exc_type, "EncodeError");
    assert_eq!(module, "kombu.exceptions");
    assert!(message.starts_with("cannot serialize the result of bad_result() to JSON: "), "{message}");
}

// ---------------------------------------------------------------------------
// Blocking functions and panics

#[tokio::test]
async fn plain_fns_run_on_the_blocking_pool() {
    let here = format!("{:?}", std::thread::current().id());
    let Ok(Value::String(there)) = run(thread_name, json!([]), json!({})).await else { panic!("no thread id") };
    assert_ne!(here, there, "a plain fn must not run on the runtime's own thread");
}

#[tokio::test]
async fn a_panic_in_a_blocking_task_is_a_failure() {
    let (exc_type, message, module) = failure(run(panics, json!([7]), json!({})).await);
    assert_eq!((exc_type.as_str(), message.as_str(), module.as_str()), ("Panic", "boom 7", "rust"));
    let (exc_type, message, _) = failure(run(panics_str, json!([]), json!({})).await);
    assert_eq!((exc_type.as_str(), message.as_str()), ("Panic", "static boom"));
    // And the same task still runs fine afterwards.
    assert_eq!(run(panics, json!([0]), json!({})).await, Ok(json!(0)));
}

// ---------------------------------------------------------------------------
// The context

#[tokio::test]
async fn the_context_parameter_receives_the_request() {
    assert_eq!(run_ctx(whoami, ctx_with_id("id-1"), json!([]), json!({})).await, Ok(json!("id-1")));
    assert_eq!(run_ctx(whoami_blocking, ctx_with_id("id-2"), json!(["!"]), json!({})).await, Ok(json!("id-2!")));
    let req = RequestInfo { retries: 2, ..RequestInfo::default() };
    let ctx = TaskContext::new(Arc::new(req), app(), Arc::new(SoftLimit::default()));
    assert_eq!(run_ctx(retries, ctx, json!([]), json!({})).await, Ok(json!(2)));
    // progress() stores nothing without a backend, and the task goes on.
    assert_eq!(run(progress, json!([4]), json!({})).await, Ok(json!(4)));
}

// ---------------------------------------------------------------------------
// Name and options

#[test]
fn names() {
    assert_eq!(add::NAME, "tasks.add");
    assert_eq!(add.name(), "tasks.add");
    // Without `name`, the function's name.
    assert_eq!(unnamed::NAME, "unnamed");
    assert_eq!(unnamed.name(), "unnamed");
}

#[test]
fn options_reflect_every_attribute() {
    assert_eq!(
        progress.options(),
        TaskOptions {
            max_retries: MaxRetries::Limit(5),
            default_retry_delay: Some(Duration::from_secs(2)),
            retry_backoff: Some(Duration::from_secs(1)),
            retry_backoff_max: Duration::from_secs(60),
            retry_jitter: false,
            autoretry_for: vec!["IoError".into(), "ValueError".into()],
            acks_late: Some(true),
            time_limit: Some(Duration::from_secs(30)),
            soft_time_limit: Some(Duration::from_secs(25)),
            rate_limit: Some(RateLimit { count: 10, per: Duration::from_secs(1) }),
            queue: Some("slow".into()),
            ignore_result: false,
            track_started: Some(true),
        }
    );
    assert_eq!(add.options(), TaskOptions::default());
    assert_eq!(
        forever.options(),
        TaskOptions {
            max_retries: MaxRetries::Unlimited,
            retry_backoff: Some(Duration::from_millis(2500)),
            soft_time_limit: Some(Duration::from_millis(250)),
            rate_limit: None,
            ..TaskOptions::default()
        }
    );
}

// ---------------------------------------------------------------------------
// Signatures, call() and the struct

#[test]
fn s_builds_a_typed_signature() {
    let sig: TypedSignature<i64> = add::s(2, 3);
    assert_eq!(sig.signature(), &Signature::new("tasks.add").arg(2).arg(3));
    // The context is not an argument; the Ok type is the result type.
    let sig: TypedSignature<u64> = progress::s(10);
    assert_eq!(sig.signature(), &Signature::new("tasks.progress").arg(10));
    let sig: TypedSignature<String> = greet::s("Ann".into(), None);
    assert_eq!(Signature::from(sig), Signature::new("tasks.greet").arg("Ann").arg(Value::Null));
    let sig: TypedSignature<()> = fail::s("x".into());
    assert_eq!(sig.signature().args, [json!("x")]);
    let sig: TypedSignature<Value> = raw::s(json!({"a": 1}));
    assert_eq!(sig.signature().args, [json!({"a": 1})]);
    assert_eq!(add::sig(), Signature::new("tasks.add"));
}

#[test]
fn unserializable_arguments() {
    let map = BTreeMap::from([(vec![1u8], 1u8)]);
    assert_eq!(bad_arg::s(map.clone()).signature().args, [Value::Null]);
    assert!(bad_arg::try_s(map).is_err());
    assert_eq!(add::try_s(1, 2).unwrap().signature(), add::s(1, 2).signature());
}

#[tokio::test]
async fn call_runs_the_original_function() {
    assert_eq!(add::call(2, 3).await, 5);
    assert_eq!(greet::call("Ann".into(), Some("Yo".into())).await, "Yo, Ann!");
    assert_eq!(fail::call("no".into()), Err(TaskError::value_error("no")));
    assert_eq!(whoami::call(ctx_with_id("direct")).await, "direct");
    assert_eq!(whoami_blocking::call(&ctx_with_id("direct"), "?".into()), "direct?");
    assert_eq!(recurse::call(3), 3);
    assert_eq!(progress::call(ctx_with_id("p"), 2).await, Ok(2));
}

#[test]
fn the_struct_is_a_registrable_value() {
    let app = app();
    app.register(add).register(progress).register(fail);
    assert_eq!(app.registered(), ["tasks.add", "tasks.fail", "tasks.progress"]);
    assert_eq!(app.task_options("tasks.progress").queue.as_deref(), Some("slow"));
    fn traits<T: Clone + Copy + std::fmt::Debug + Default + Send + Sync + 'static>() -> T {
        T::default()
    }
    assert_eq!(format!("{:?}", traits::<add>()), "add");
}

#[tokio::test]
async fn a_custom_crate_path_works() {
    assert_eq!(via_facade::NAME, "tasks.via_facade");
    assert_eq!(via_facade.options().queue.as_deref(), Some("facade"));
    assert_eq!(run(via_facade, json!([9]), json!({})).await, Ok(json!(9)));
    let sig: facade::TypedSignature<u8> = via_facade::s(1);
    assert_eq!(sig.signature().args, [json!(1)]);
}
