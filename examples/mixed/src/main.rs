//! `mixed-worker`: the Rust half of a mixed Python/Rust system. A Flask app
//! (`examples/mixed/python/wsgi.py`) sends `tasks.very_slow_add` and
//! `tasks.word_count` with Python Celery, exactly as it would to a Python
//! worker; this qtask worker runs them and stores the results where the
//! app's `AsyncResult` reads them.
//!
//! ```text
//! QTASK_BROKER_URL=redis://127.0.0.1:6379/0 QTASK_RESULT_BACKEND=redis://127.0.0.1:6379/0 \
//!     cargo run -p qtask-mixed
//! ```
//!
//! Settings: the usual `QTASK_*` / `CELERY_*` variables (the same
//! `CELERY_BROKER_URL` the Flask app reads works for both), `MIXED_QUEUE`
//! (default `celery`), `MIXED_SLOW_MS` (the delay of `very_slow_add`,
//! default 3000 as the tutorial's `time.sleep(3)`).

use std::time::Duration;

use anyhow::Context;
use qtask::{task, Config, TaskError, Worker};

/// The tutorial's `very_slow_add(a, b)`: sleeps, then adds.
#[task(name = "tasks.very_slow_add")]
async fn very_slow_add(a: i64, b: i64) -> Result<i64, TaskError> {
    let ms: u64 = std::env::var("MIXED_SLOW_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    a.checked_add(b).ok_or_else(|| TaskError::value_error(format!("{a} + {b} overflows")))
}

/// Words per distinct word of `text`, lower-cased, most frequent first.
#[task(name = "tasks.word_count")]
async fn word_count(text: String) -> Vec<(String, u64)> {
    let mut counts = std::collections::HashMap::<String, u64>::new();
    for w in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        *counts.entry(w.to_lowercase()).or_default() += 1;
    }
    let mut out: Vec<_> = counts.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("QTASK_LOG").unwrap_or_else(|_| "info".into())).init();
    let app = qtask::app_from_config(Config::from_env().context("settings")?).await?;
    app.register(very_slow_add).register(word_count);
    let queue = std::env::var("MIXED_QUEUE").unwrap_or_else(|_| "celery".into());
    println!("mixed-worker: consuming {queue:?} on {}", app.broker().describe());
    Worker::builder(app).queues([queue]).build().run_until_signal().await?;
    Ok(())
}
