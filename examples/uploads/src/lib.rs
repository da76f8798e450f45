//! # File processing with progress
//!
//! The Rust version of the tutorial's `process_uploaded_file` and
//! `check_task_status` views: a file is uploaded, saved, and handed to a
//! task that processes it in steps, reporting `PROGRESS` after each one; the
//! page polls a status endpoint and draws a progress bar.
//!
//! * `GET /` — the upload page (a file input; the script posts the file and
//!   polls its status).
//! * `POST /upload` — the raw file as the body, its name in the
//!   `X-Filename` header (default `upload.bin`). Saved under the upload
//!   directory, then [`TASK_NAME`] is enqueued with its path. Answers
//!   **202** `{"task_id", "status": "processing", "status_url"}`; an empty
//!   body is **422** `{"error": ...}`; over [`MAX_UPLOAD_BYTES`] is **413**.
//! * `GET /tasks/{id}` — `{"task_id", "status"}` plus, as the tutorial's
//!   view: `"progress"` (percent), `"current"`, `"total"` while `PROGRESS`;
//!   `"result"` on `SUCCESS`; `"error"` (text) on `FAILURE`.
//!
//! The task reads the file and counts its bytes, lines and words in
//! [`Settings::steps`] chunks. The worker must see the upload directory:
//! here it runs in the same process; across machines, put the directory on
//! shared storage (or store the file in a database or an object store and
//! pass its key instead of a path).

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use qtask::{App, ExceptionInfo, Signature, State, Task, TaskContext, TaskError, TaskResult};
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;

/// The task's name (as the tutorial's `myapp.tasks.process_uploaded_file`).
pub const TASK_NAME: &str = "files.process_uploaded_file";

/// Largest upload accepted.
pub const MAX_UPLOAD_BYTES: usize = 10 << 20;

/// Where uploads go and how the processing is paced.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Directory the uploads are saved in (created if missing).
    pub upload_dir: PathBuf,
    /// Steps the processing is cut into (one `PROGRESS` update each).
    pub steps: u64,
    /// Simulated work per step (the tutorial sleeps 1 s).
    pub step_delay: Duration,
    /// When set, each step waits for a permit instead of `step_delay`:
    /// whoever holds the semaphore moves the processing on step by step
    /// (the tests do, to watch every `PROGRESS` state).
    pub pace: Option<Arc<Semaphore>>,
}

impl Settings {
    /// Uploads in `dir`, 10 steps of `step_delay`.
    pub fn new(dir: impl Into<PathBuf>, step_delay: Duration) -> Self {
        Settings { upload_dir: dir.into(), steps: 10, step_delay, pace: None }
    }
}

/// What the task counts in a file.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    bytes: u64,
    lines: u64,
    words: u64,
    /// Whether the previous chunk ended inside a word.
    in_word: bool,
}

impl Counts {
    fn add(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        for &b in chunk {
            if b == b'\n' {
                self.lines += 1;
            }
            let space = b.is_ascii_whitespace();
            if !space && !self.in_word {
                self.words += 1;
            }
            self.in_word = !space;
        }
    }
}

/// `files.process_uploaded_file(path)`: count the file's bytes, lines and
/// words in steps, reporting `PROGRESS {"current", "total", "progress"}`.
pub struct ProcessUploadedFile {
    settings: Arc<Settings>,
}

#[async_trait]
impl Task for ProcessUploadedFile {
    fn name(&self) -> &str {
        TASK_NAME
    }

    async fn run(&self, ctx: TaskContext, args: Vec<Value>, _kwargs: Map<String, Value>) -> TaskResult {
        let path = match args.first() {
            Some(Value::String(p)) => PathBuf::from(p),
            other => return Err(TaskError::type_error(format!("expected the file path, got {other:?}"))),
        };
        let data = tokio::fs::read(&path)
            .await
            .map_err(|e| TaskError::fail("FileNotFoundError", format!("{}: {e}", path.display())))?;
        let steps = self.settings.steps.max(1);
        ctx.update_state(State::progress(), json!({"progress": 0})).await.map_err(backend_error)?;
        let chunk = data.len().div_ceil(steps as usize).max(1);
        let mut counts = Counts::default();
        let mut chunks = data.chunks(chunk);
        for i in 1..=steps {
            match &self.settings.pace {
                Some(pace) => pace
                    .acquire()
                    .await
                    .map_err(|_| TaskError::fail("Cancelled", "the pace semaphore was closed"))?
                    .forget(),
                None => tokio::time::sleep(self.settings.step_delay).await,
            }
            if let Some(c) = chunks.next() {
                counts.add(c);
            }
            let meta = json!({"current": i, "total": steps, "progress": i * 100 / steps});
            ctx.update_state(State::progress(), meta).await.map_err(backend_error)?;
        }
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(json!({
            "status": "completed",
            "file": file,
            "bytes": counts.bytes,
            "lines": counts.lines,
            "words": counts.words,
        }))
    }
}

fn backend_error(e: qtask::Error) -> TaskError {
    TaskError::fail("BackendError", e.to_string())
}

/// Register [`ProcessUploadedFile`].
pub fn register(app: &App, settings: Arc<Settings>) {
    app.register(ProcessUploadedFile { settings });
}

#[derive(Clone)]
struct Site {
    app: App,
    settings: Arc<Settings>,
}

/// The routes above, over `app` (whose worker runs [`register`]ed tasks).
pub fn router(app: App, settings: Arc<Settings>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/upload", post(upload))
        .route("/tasks/{id}", get(task_status))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES))
        .with_state(Site { app, settings })
}

/// A file name from `X-Filename`, reduced to its last component and to
/// letters, digits, `.`, `-` and `_`.
fn file_name(headers: &HeaderMap) -> String {
    let given = headers.get("x-filename").and_then(|v| v.to_str().ok()).unwrap_or("");
    let base = given.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect();
    match clean.trim_start_matches('.') {
        "" => "upload.bin".into(),
        name => name.chars().take(100).collect(),
    }
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({"error": msg.into()}))).into_response()
}

async fn save(dir: &FsPath, name: &str, body: &[u8]) -> std::io::Result<PathBuf> {
    tokio::fs::create_dir_all(dir).await?;
    let path = dir.join(format!("{}-{name}", uuid::Uuid::new_v4()));
    tokio::fs::write(&path, body).await?;
    Ok(path)
}

async fn upload(AxumState(site): AxumState<Site>, headers: HeaderMap, body: Bytes) -> Response {
    if body.is_empty() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "the file is empty");
    }
    let name = file_name(&headers);
    let path = match save(&site.settings.upload_dir, &name, &body).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot save the upload");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "the file cannot be saved now");
        }
    };
    match site.app.delay(Signature::new(TASK_NAME).arg(path.to_string_lossy())).await {
        Ok(r) => {
            let id = r.id().to_string();
            tracing::info!(task_id = %id, file = %name, bytes = body.len(), "upload queued");
            let url = format!("/tasks/{id}");
            (StatusCode::ACCEPTED, Json(json!({"task_id": id, "status": "processing", "status_url": url})))
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot enqueue the processing");
            let _ = tokio::fs::remove_file(&path).await;
            error(StatusCode::SERVICE_UNAVAILABLE, "the file cannot be processed now")
        }
    }
}

/// The tutorial's `check_task_status` answer for task `id`.
pub async fn status_json(app: &App, id: &str) -> Result<Value, qtask::Error> {
    let meta = app.result::<Value>(id).meta().await?;
    let mut out = json!({"task_id": id, "status": meta.status.as_str()});
    match &meta.status {
        State::Custom(s) if s == "PROGRESS" => {
            for k in ["progress", "current", "total"] {
                if let Some(v) = meta.result.get(k) {
                    out[k] = v.clone();
                }
            }
        }
        State::Success => out["result"] = meta.result.clone(),
        State::Failure | State::Revoked => {
            let text = ExceptionInfo::from_value(&meta.result)
                .map(|e| format!("{}: {}", e.exc_type, e.message()))
                .unwrap_or_else(|| meta.result.to_string());
            out["error"] = Value::String(text);
        }
        _ => {}
    }
    Ok(out)
}

async fn task_status(AxumState(site): AxumState<Site>, Path(id): Path<String>) -> Response {
    match status_json(&site.app, &id).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            tracing::error!(error = %e, task_id = %id, "cannot read the task state");
            error(StatusCode::SERVICE_UNAVAILABLE, "the task state cannot be read now")
        }
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Upload a file</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}progress{width:100%}</style></head>
<body>
<h1>Upload a file</h1>
<p><input type="file" id="file"> <button id="send">Process</button></p>
<progress id="bar" max="100" value="0"></progress>
<pre id="out"></pre>
<script>
const out = document.getElementById("out"), bar = document.getElementById("bar");
document.getElementById("send").onclick = async () => {
  const f = document.getElementById("file").files[0];
  if (!f) { out.textContent = "Choose a file first."; return; }
  const r = await fetch("/upload", {method: "POST", headers: {"X-Filename": f.name}, body: f});
  const t = await r.json();
  if (!r.ok) { out.textContent = t.error; return; }
  const poll = async () => {
    const s = await (await fetch(t.status_url)).json();
    bar.value = s.status === "SUCCESS" ? 100 : (s.progress || 0);
    out.textContent = JSON.stringify(s, null, 2);
    if (s.status !== "SUCCESS" && s.status !== "FAILURE") setTimeout(poll, 500);
  };
  poll();
};
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_across_chunks() {
        let text = b"one two\nthree  four\nfive";
        for size in 1..text.len() {
            let mut c = Counts::default();
            text.chunks(size).for_each(|ch| c.add(ch));
            assert_eq!((c.bytes, c.lines, c.words), (24, 2, 5), "chunks of {size}");
        }
    }

    #[test]
    fn file_names_are_reduced_to_a_safe_last_component() {
        let name = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-filename", v.parse().unwrap());
            file_name(&h)
        };
        assert_eq!(name("report 2026.csv"), "report_2026.csv");
        assert_eq!(name("../../etc/passwd"), "passwd");
        assert_eq!(name("C:\\temp\\a.txt"), "a.txt");
        assert_eq!(name(".."), "upload.bin");
        assert_eq!(name(".hidden"), "hidden");
        assert_eq!(file_name(&HeaderMap::new()), "upload.bin");
    }
}
