//! The uploads app driven through its router (no port): upload, every
//! PROGRESS step seen through the status endpoint, the result, and bad input.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use qtask::{Config, Worker, WorkerHandle};
use qtask_uploads::Settings;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tower::ServiceExt;

struct Site {
    router: Router,
    app: qtask::App,
    dir: PathBuf,
    pace: Arc<Semaphore>,
    stop: WorkerHandle,
    running: tokio::task::JoinHandle<Result<(), qtask::Error>>,
}

impl Site {
    /// The app on its own SQLite file, the worker in this process, the
    /// processing paced by the test.
    async fn start(steps: u64) -> Site {
        let dir = std::env::temp_dir().join(format!("qtask-uploads-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/qtask.db", dir.display());
        let mut cfg = Config::default();
        cfg.broker_url = Some(url.clone());
        cfg.result_backend = Some(url);
        let app = qtask::app_from_config(cfg).await.unwrap();
        let pace = Arc::new(Semaphore::new(0));
        let mut settings = Settings::new(dir.join("files"), Duration::ZERO);
        settings.steps = steps;
        settings.pace = Some(pace.clone());
        let settings = Arc::new(settings);
        qtask_uploads::register(&app, settings.clone());
        let worker = Worker::builder(app.clone()).concurrency(2).build();
        let stop = worker.handle();
        let running = tokio::spawn(worker.run());
        Site { router: qtask_uploads::router(app.clone(), settings), app, dir, pace, stop, running }
    }

    async fn stop(self) {
        self.pace.close();
        self.stop.shutdown();
        self.running.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    async fn call(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let body =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, body)
    }

    async fn upload(&self, name: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
        let mut req = Request::post("/upload");
        if let Some(n) = name {
            req = req.header("x-filename", n);
        }
        self.call(req.body(Body::from(body)).unwrap()).await
    }

    /// Poll the status endpoint until `done` holds (deadline 30 s).
    async fn wait_status(&self, url: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, s) = self.call(Request::get(url).body(Body::empty()).unwrap()).await;
            assert_eq!(code, StatusCode::OK, "{s}");
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "status never matched; last {s}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_reports_every_step_then_the_counts() {
    let site = Site::start(4).await;
    let text = "alpha beta\ngamma delta epsilon\nzeta\n".repeat(3);
    let (code, queued) = site.upload(Some("../notes 1.txt"), text.clone().into_bytes()).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{queued}");
    assert_eq!(queued["status"], "processing");
    let id = queued["task_id"].as_str().unwrap().to_string();
    let url = queued["status_url"].as_str().unwrap().to_string();
    assert_eq!(url, format!("/tasks/{id}"));
    // Before the first step: PROGRESS at 0 %.
    let s = site.wait_status(&url, |s| s["status"] == "PROGRESS").await;
    assert_eq!(s, json!({"task_id": id, "status": "PROGRESS", "progress": 0}));
    for step in 1..=4u64 {
        site.pace.add_permits(1);
        let s = site.wait_status(&url, |s| s["current"] == step || s["status"] == "SUCCESS").await;
        if step < 4 {
            assert_eq!(
                s,
                json!({"task_id": id, "status": "PROGRESS", "progress": step * 25, "current": step, "total": 4})
            );
        }
    }
    let done = site.wait_status(&url, |s| s["status"] == "SUCCESS").await;
    let file = done["result"]["file"].as_str().unwrap().to_string();
    assert!(file.ends_with("-notes_1.txt"), "saved under a unique safe name: {file}");
    assert_eq!(
        done,
        json!({"task_id": id, "status": "SUCCESS", "result": {
            "status": "completed", "file": file, "bytes": text.len(), "lines": 9, "words": 18,
        }})
    );
    assert!(site.dir.join("files").join(&file).exists());
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_and_a_missing_file_are_clear_errors() {
    let site = Site::start(1).await;
    let (code, body) = site.upload(Some("x.txt"), Vec::new()).await;
    assert_eq!((code, body), (StatusCode::UNPROCESSABLE_ENTITY, json!({"error": "the file is empty"})));
    let (code, _) = site.upload(None, vec![b'x'; qtask_uploads::MAX_UPLOAD_BYTES + 1]).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    // A path that does not exist: FAILURE with the reason, through the
    // status endpoint as the tutorial's view shows it.
    let r = site.app.delay(qtask::Signature::new(qtask_uploads::TASK_NAME).arg("/nonexistent/qtask-upload")).await;
    let url = format!("/tasks/{}", r.unwrap().id());
    let done = site.wait_status(&url, |s| s["status"] == "FAILURE").await;
    let error = done["error"].as_str().unwrap();
    assert!(error.starts_with("FileNotFoundError: /nonexistent/qtask-upload: "), "{done}");
    site.stop().await;
}
