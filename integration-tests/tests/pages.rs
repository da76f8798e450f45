//! The example web apps in a real browser (headless chromium): what a user
//! clicks, what the page then shows, and a screenshot of it in
//! `target/screenshots/`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fantoccini::Locator;
use integration_tests::browser::Browser;
use qtask::{App, Config, Worker, WorkerHandle};

/// An app on its own SQLite file with its worker, and an HTTP server for
/// `router` on a free port.
struct Site {
    base: String,
    dir: PathBuf,
    stop: WorkerHandle,
    running: tokio::task::JoinHandle<Result<(), qtask::Error>>,
}

impl Site {
    async fn app(tag: &str) -> (App, PathBuf) {
        let dir = std::env::temp_dir().join(format!("qtask-pages-{tag}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/qtask.db", dir.display());
        let mut cfg = Config::default();
        cfg.broker_url = Some(url.clone());
        cfg.result_backend = Some(url);
        (qtask::app_from_config(cfg).await.unwrap(), dir)
    }

    async fn serve(app: &App, dir: PathBuf, router: axum::Router) -> Site {
        let worker = Worker::builder(app.clone()).concurrency(2).build();
        let stop = worker.handle();
        let running = tokio::spawn(worker.run());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Site { base, dir, stop, running }
    }

    async fn stop(self) {
        self.stop.shutdown();
        self.running.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_page_processes_a_chosen_file_and_fills_the_progress_bar() {
    let (app, dir) = Site::app("uploads").await;
    let mut settings = qtask_uploads::Settings::new(dir.join("files"), Duration::from_millis(30));
    settings.steps = 5;
    let settings = Arc::new(settings);
    qtask_uploads::register(&app, settings.clone());
    let site = Site::serve(&app, dir.clone(), qtask_uploads::router(app.clone(), settings)).await;
    let file = dir.join("notes.txt");
    std::fs::write(&file, "one two three\nfour five\n").unwrap();

    let b = Browser::start().await;
    let c = b.client();
    c.goto(&format!("{}/", site.base)).await.unwrap();
    assert_eq!(c.title().await.unwrap(), "Upload a file");
    // Without a file: the page says so, nothing is sent.
    c.find(Locator::Id("send")).await.unwrap().click().await.unwrap();
    assert_eq!(b.wait_text("#out", |t| !t.is_empty()).await, "Choose a file first.");
    c.find(Locator::Id("file")).await.unwrap().send_keys(&file.display().to_string()).await.unwrap();
    c.find(Locator::Id("send")).await.unwrap().click().await.unwrap();
    let out = b.wait_text("#out", |t| t.contains("\"SUCCESS\"")).await;
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["result"]["words"], 5, "{out}");
    assert_eq!(shown["result"]["lines"], 2, "{out}");
    assert!(shown["result"]["file"].as_str().unwrap().ends_with("-notes.txt"), "{out}");
    let bar = c.execute("return document.getElementById('bar').value", vec![]).await.unwrap();
    assert_eq!(bar, serde_json::json!(100), "the progress bar is full");
    b.screenshot("uploads-done").await;
    b.close().await;
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_form_shows_errors_then_follows_the_task_to_success() {
    let (app, dir) = Site::app("feedback").await;
    qtask_feedback::register(&app, qtask_feedback::Mailer::files(dir.join("mail")));
    let site = Site::serve(&app, dir.clone(), qtask_feedback::router(app.clone())).await;

    let b = Browser::start().await;
    let c = b.client();
    c.goto(&format!("{}/", site.base)).await.unwrap();
    assert_eq!(c.title().await.unwrap(), "Feedback");
    // An address the server refuses (the browser's own check passes it).
    c.find(Locator::Id("email")).await.unwrap().send_keys("ada@localhost").await.unwrap();
    c.find(Locator::Id("message")).await.unwrap().send_keys("Lovely queue.").await.unwrap();
    c.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    assert_eq!(b.wait_text(".error", |t| !t.is_empty()).await, "Enter a valid email address.");
    b.screenshot("feedback-invalid").await;
    let email = c.find(Locator::Id("email")).await.unwrap();
    email.clear().await.unwrap();
    email.send_keys("ada@example.com").await.unwrap();
    c.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    assert_eq!(b.wait_text("h1", |t| t == "Thank you!").await, "Thank you!");
    assert_eq!(b.wait_text("#state", |t| t == "SUCCESS").await, "SUCCESS");
    b.screenshot("feedback-sent").await;
    let mails: Vec<_> = std::fs::read_dir(dir.join("mail")).unwrap().collect();
    assert_eq!(mails.len(), 1, "one email written");
    b.close().await;
    site.stop().await;
}
