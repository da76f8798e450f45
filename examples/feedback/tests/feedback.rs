//! The feedback app driven through its router with tower's `oneshot` (no
//! port): the form, validation errors, the task sending the email (files
//! and SMTP), and the status endpoint.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use qtask::{App, Config, Worker, WorkerHandle};
use qtask_feedback::{Mailer, MAX_MESSAGE_CHARS, SUBJECT};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tower::ServiceExt;

struct Site {
    router: Router,
    app: App,
    dir: PathBuf,
    stop: WorkerHandle,
    running: tokio::task::JoinHandle<Result<(), qtask::Error>>,
}

impl Site {
    /// The app on its own SQLite file, the worker in this process.
    async fn start(mailer: impl FnOnce(&Path) -> Mailer) -> Site {
        let dir = std::env::temp_dir().join(format!("qtask-feedback-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/qtask.db", dir.display());
        let mut cfg = Config::default();
        cfg.broker_url = Some(url.clone());
        cfg.result_backend = Some(url);
        let app = qtask::app_from_config(cfg).await.unwrap();
        qtask_feedback::register(&app, mailer(&dir));
        let worker = Worker::builder(app.clone()).concurrency(2).build();
        let stop = worker.handle();
        let running = tokio::spawn(worker.run());
        Site { router: qtask_feedback::router(app.clone()), app, dir, stop, running }
    }

    async fn stop(self) {
        self.stop.shutdown();
        self.running.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    async fn call(&self, req: Request<Body>) -> (StatusCode, String) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn post_form(&self, body: &str, accept: &str) -> (StatusCode, String) {
        let req = Request::post("/feedback")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, accept)
            .body(Body::from(body.to_string()))
            .unwrap();
        self.call(req).await
    }

    async fn status(&self, url: &str) -> Value {
        let (code, body) = self.call(Request::get(url).body(Body::empty()).unwrap()).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Poll the status endpoint until `done` holds (deadline 30 s); every state seen.
    async fn wait_status(&self, url: &str, done: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let s = self.status(url).await;
            seen.push(s.clone());
            if done(&s) {
                return (s, seen);
            }
            assert!(Instant::now() < deadline, "task did not finish; states seen: {seen:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Emails as files in `<dir>/mail`.
fn mail_files(dir: &Path) -> Mailer {
    Mailer::files(dir.join("mail"))
}

fn form(email: &str, message: &str) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    format!("email={}&message={}", enc(email), enc(message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_form_page() {
    let site = Site::start(mail_files).await;
    let (code, html) = site.call(Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(code, StatusCode::OK);
    assert!(html.contains(r#"<form method="post" action="/feedback">"#), "{html}");
    assert!(html.contains(r#"name="email""#) && html.contains(r#"name="message""#), "{html}");
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_feedback_is_422_with_the_messages_and_sends_nothing() {
    let site = Site::start(mail_files).await;
    let json_accept = "application/json";
    let cases = [
        (form("not-an-email", ""), json!({"email": ["Enter a valid email address."], "message": ["Enter a message."]})),
        (form("", "hello"), json!({"email": ["Enter your email address."]})),
        (form("ada@localhost", "hello"), json!({"email": ["Enter a valid email address."]})),
        ("message=hello".to_string(), json!({"email": ["Enter your email address."]})),
        (
            form("ada@example.com", &"x".repeat(MAX_MESSAGE_CHARS + 1)),
            json!({"message": [format!("Keep the message under {MAX_MESSAGE_CHARS} characters (it has {}).", MAX_MESSAGE_CHARS + 1)]}),
        ),
    ];
    for (body, errors) in cases {
        let (code, text) = site.post_form(&body, json_accept).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!({ "errors": errors }), "{body}");
    }
    // A browser gets the form again, its input kept (escaped), with the messages.
    let (code, html) = site.post_form(&form("<b>bad", "  "), "text/html").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("Enter a valid email address.") && html.contains("Enter a message."), "{html}");
    assert!(html.contains(r#"value="&lt;b&gt;bad""#), "{html}");
    // JSON bodies are validated the same way.
    let req = Request::post("/feedback")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"email": "nope", "message": "hi"}).to_string()))
        .unwrap();
    let (code, text) = site.call(req).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"errors": {"email": ["Enter a valid email address."]}})
    );

    assert_eq!(site.app.broker().queue_len("celery").await.unwrap(), 0, "a task was queued");
    assert!(!site.dir.join("mail").exists());
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_feedback_answers_at_once_and_the_task_writes_the_email() {
    // Some simulated work, so the progress is visible on the status endpoint.
    let site = Site::start(|dir: &Path| Mailer { delay: Duration::from_millis(400), ..mail_files(dir) }).await;
    let (code, text) = site.post_form(&form("ada@example.com", "Hello, qtask!"), "application/json").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    let id = answer["task_id"].as_str().unwrap().to_string();
    assert_eq!(answer["status_url"], json!(format!("/tasks/{id}")));

    let (done, seen) =
        site.wait_status(&format!("/tasks/{id}"), |s| s["state"] != "PENDING" && s["state"] != "PROGRESS").await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    assert_eq!(done["error"], Value::Null);
    assert_eq!(done["result"]["to"], "ada@example.com");
    assert!(
        seen.iter().any(|s| s["state"] == "PROGRESS"
            && s["progress"]["total"] == 5
            && s["progress"]["current"].as_u64() > Some(0)),
        "no progress seen: {seen:?}"
    );

    let file = PathBuf::from(done["result"]["file"].as_str().unwrap());
    assert!(file.starts_with(site.dir.join("mail")), "{file:?}");
    let eml = std::fs::read_to_string(&file).unwrap();
    assert!(eml.contains("To: ada@example.com\r\n"), "{eml}");
    assert!(eml.contains(&format!("Subject: {SUBJECT}\r\n")), "{eml}");
    assert!(eml.contains("From: Support <support@example.com>\r\n"), "{eml}");
    assert!(eml.contains("\r\n\r\n\tHello, qtask!\r\n\r\nThank you!\r\n"), "{eml}");
    assert_eq!(std::fs::read_dir(site.dir.join("mail")).unwrap().count(), 1, "one email, one file");

    // The browser flow: 202 with a page naming the task.
    let (code, html) = site.post_form(&form("bob@example.org", "Nice"), "text/html").await;
    assert_eq!(code, StatusCode::ACCEPTED);
    assert!(html.contains("/tasks/"), "{html}");
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_task_ids_are_pending() {
    let site = Site::start(mail_files).await;
    let s = site.status("/tasks/00000000-0000-0000-0000-000000000000").await;
    assert_eq!(
        s,
        json!({"task_id": "00000000-0000-0000-0000-000000000000", "state": "PENDING", "progress": null, "result": null, "error": null})
    );
    site.stop().await;
}

/// A minimal SMTP server that records the envelope and the data of each mail.
async fn fake_smtp() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails = Arc::new(Mutex::new(Vec::new()));
    let out = mails.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let mails = mails.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                let mut transcript = String::new();
                w.write_all(b"220 fake ESMTP\r\n").await.unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    transcript.push_str(&line);
                    transcript.push('\n');
                    let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 fake\r\n",
                        "DATA" => {
                            w.write_all(b"354 go on\r\n").await.unwrap();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                transcript.push_str(&l);
                                transcript.push('\n');
                            }
                            mails.lock().unwrap().push(std::mem::take(&mut transcript));
                            b"250 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            break;
                        }
                        _ => b"250 ok\r\n",
                    };
                    w.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_sends_through_smtp_when_configured() {
    let (port, mails) = fake_smtp().await;
    let site = Site::start(|_: &Path| Mailer::smtp(&format!("smtp://127.0.0.1:{port}")).unwrap()).await;
    let (code, text) = site.post_form(&form("grace@example.net", "Over SMTP"), "application/json").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["task_id"].as_str().unwrap().to_string();
    let (done, _) =
        site.wait_status(&format!("/tasks/{id}"), |s| s["state"] == "SUCCESS" || s["state"] == "FAILURE").await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    assert_eq!(done["result"], json!({"to": "grace@example.net", "delivery": "smtp"}));
    let mails = mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let m = &mails[0];
    assert!(m.contains("RCPT TO:<grace@example.net>"), "{m}");
    assert!(m.contains("To: grace@example.net\n") && m.contains(&format!("Subject: {SUBJECT}\n")), "{m}");
    assert!(m.contains("\tOver SMTP\n\nThank you!"), "{m}");
    site.stop().await;
}

#[test]
fn smtp_urls_are_checked() {
    assert!(Mailer::smtp("smtp://127.0.0.1:2525").is_ok());
    assert!(Mailer::smtp("smtp://mail.local").is_ok());
    for bad in ["http://x", "smtp://", "smtp://u:p@host", "smtp://host:port"] {
        let e = Mailer::smtp(bad).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("invalid FEEDBACK_SMTP_URL"), "{bad}: {e}");
    }
}
