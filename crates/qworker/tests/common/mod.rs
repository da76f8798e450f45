//! Test helpers: tasks from closures, an app on qmemory, a running worker.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use qcore::{App, Config, Task, TaskContext, TaskOptions, TaskResult};
use qmemory::{MemoryBackend, MemoryBroker};
use qworker::{Worker, WorkerHandle};
use serde_json::{Map, Value};

type BoxFut = Pin<Box<dyn Future<Output = TaskResult> + Send>>;
type Body = dyn Fn(TaskContext, Vec<Value>, Map<String, Value>) -> BoxFut + Send + Sync;

/// A task defined by a closure.
pub struct FnTask {
    name: String,
    opts: TaskOptions,
    body: Arc<Body>,
}

#[qcore::__private::async_trait]
impl Task for FnTask {
    fn name(&self) -> &str {
        &self.name
    }
    fn options(&self) -> TaskOptions {
        self.opts.clone()
    }
    async fn run(&self, ctx: TaskContext, args: Vec<Value>, kwargs: Map<String, Value>) -> TaskResult {
        (self.body)(ctx, args, kwargs).await
    }
}

pub fn task<F, Fut>(name: &str, opts: TaskOptions, f: F) -> FnTask
where
    F: Fn(TaskContext, Vec<Value>, Map<String, Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = TaskResult> + Send + 'static,
{
    FnTask { name: name.into(), opts, body: Arc::new(move |c, a, k| Box::pin(f(c, a, k))) }
}

/// `tasks.add(x, y)` bound with qcore::Args.
pub fn add() -> FnTask {
    task("tasks.add", TaskOptions::default(), |_c, a, k| async move {
        let mut args = qcore::Args::new("add", a, k);
        let x: i64 = args.next("x")?;
        let y: i64 = args.next("y")?;
        args.finish()?;
        Ok(Value::from(x + y))
    })
}

/// `tasks.xsum(numbers)`.
pub fn xsum() -> FnTask {
    task("tasks.xsum", TaskOptions::default(), |_c, a, k| async move {
        let mut args = qcore::Args::new("xsum", a, k);
        let v: Vec<i64> = args.next("numbers")?;
        args.finish()?;
        Ok(Value::from(v.iter().sum::<i64>()))
    })
}

pub struct Env {
    pub app: App,
    pub broker: Arc<MemoryBroker>,
    pub backend: Arc<MemoryBackend>,
}

pub fn env_with(cfg: Config) -> Env {
    let broker = Arc::new(MemoryBroker::new());
    let backend = Arc::new(MemoryBackend::new());
    let app = App::builder().broker(broker.clone()).backend(backend.clone()).config(cfg).build().unwrap();
    Env { app, broker, backend }
}

pub fn env() -> Env {
    env_with(Config::default())
}

pub struct Running {
    pub handle: WorkerHandle,
    pub join: tokio::task::JoinHandle<Result<(), qcore::Error>>,
}

impl Running {
    pub async fn stop(self) {
        self.handle.shutdown();
        tokio::time::timeout(Duration::from_secs(20), self.join).await.expect("worker stops").unwrap().unwrap();
    }
}

pub fn start(app: &App, concurrency: usize) -> Running {
    start_worker(Worker::builder(app.clone()).concurrency(concurrency).hostname("test@localhost").build())
}

pub fn start_worker(w: Worker) -> Running {
    let handle = w.handle();
    let join = tokio::spawn(w.run());
    Running { handle, join }
}

/// Wait until `cond` holds, polling every 5 ms, failing after 10 s.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub const T: Duration = Duration::from_secs(10);
