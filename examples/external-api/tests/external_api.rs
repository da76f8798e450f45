//! The task against a local API: retried network errors until success,
//! giving up after max_retries, and 4xx not retried.

use std::time::Duration;

use qtask::{App, Config, Error, Signature, State, Worker, WorkerHandle};
use qtask_external_api::{FlakyApi, HTTP_ERROR, NETWORK_ERROR, TASK_NAME};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

struct Env {
    app: App,
    dir: std::path::PathBuf,
    stop: WorkerHandle,
    running: tokio::task::JoinHandle<Result<(), qtask::Error>>,
}

impl Env {
    /// The app on its own SQLite file, backoff from 10 ms.
    async fn start() -> Env {
        let dir = std::env::temp_dir().join(format!("qtask-external-api-{}-{}", std::process::id(), fastrand()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/qtask.db", dir.display());
        let mut cfg = Config::default();
        cfg.broker_url = Some(url.clone());
        cfg.result_backend = Some(url);
        cfg.result_extended = true;
        let app = qtask::app_from_config(cfg).await.unwrap();
        qtask_external_api::register(&app, Duration::from_millis(10));
        let worker = Worker::builder(app.clone()).concurrency(2).build();
        let stop = worker.handle();
        let running = tokio::spawn(worker.run());
        Env { app, dir, stop, running }
    }

    async fn stop(self) {
        self.stop.shutdown();
        self.running.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    async fn call(&self, url: &str, data: Value) -> qtask::AsyncResult<Value> {
        self.app.delay(Signature::new(TASK_NAME).arg(url).arg(data)).await.unwrap()
    }
}

fn fastrand() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Serve `api` on a free local port; its base URL.
async fn serve(api: &FlakyApi) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = api.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_errors_are_retried_until_the_api_answers() {
    let env = Env::start().await;
    let api = FlakyApi::new(2);
    let base = serve(&api).await;
    let r = env.call(&format!("{base}/echo"), json!({"order": 7})).await;
    assert_eq!(r.get(T).await.unwrap(), json!({"received": {"order": 7}, "attempt": 3}));
    assert_eq!(api.calls(), 3);
    let meta = r.meta().await.unwrap();
    assert_eq!((meta.status, meta.retries), (State::Success, Some(2)));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_gives_up_after_max_retries_and_4xx_is_not_retried() {
    let env = Env::start().await;
    let api = FlakyApi::new(usize::MAX);
    let base = serve(&api).await;
    let r = env.call(&format!("{base}/echo"), json!({})).await;
    match r.get(T).await.unwrap_err() {
        Error::TaskFailed { exc, .. } => {
            assert_eq!(exc.exc_type, NETWORK_ERROR);
            assert!(exc.message().contains("503 Service Unavailable"), "{exc:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(api.calls(), 4, "the first call and max_retries = 3 retries");

    let missing = FlakyApi::new(0);
    let base = serve(&missing).await;
    let r = env.call(&format!("{base}/nowhere"), json!({})).await;
    match r.get(T).await.unwrap_err() {
        Error::TaskFailed { exc, .. } => assert_eq!(exc.exc_type, HTTP_ERROR),
        other => panic!("{other:?}"),
    }
    assert_eq!(missing.calls(), 1, "a 404 is not retried");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_a_network_error() {
    let env = Env::start().await;
    // A port that was free a moment ago: nothing listens there.
    let port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let r = env.call(&format!("http://127.0.0.1:{port}/echo"), json!({})).await;
    match r.get(T).await.unwrap_err() {
        Error::TaskFailed { exc, .. } => assert_eq!(exc.exc_type, NETWORK_ERROR),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.meta().await.unwrap().retries, Some(3));
    env.stop().await;
}
