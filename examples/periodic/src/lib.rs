//! The periodic example: the seed tutorial's three jobs (a daily report
//! every 24 hours, log cleanup at 02:00 Europe/Paris, an hourly
//! subscription check) as qtask tasks, the beat that sends them embedded in
//! an axum service, and a `/beat` endpoint reporting the beat's health.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use qtask::beat::{BeatHandle, Entry};
use qtask::{task, App, Config, Error};
use serde_json::{json, Value};

/// The schedule, as `periodic.toml` writes it (Celery's names).
pub const SCHEDULE: &str = include_str!("../periodic.toml");

/// Build the daily report (here: a line in the log).
#[task(name = "myapp.tasks.send_daily_report")]
async fn send_daily_report() -> String {
    tracing::info!("daily report sent");
    "report sent".to_string()
}

/// Delete old logs (here: a line in the log).
#[task(name = "myapp.tasks.cleanup_logs")]
async fn cleanup_logs() -> u64 {
    tracing::info!("old logs cleaned up");
    0
}

/// Expire subscriptions past their end (here: a line in the log).
#[task(name = "myapp.tasks.check_subscriptions")]
async fn check_subscriptions() -> u64 {
    tracing::info!("subscriptions checked");
    0
}

/// Register the three tasks.
pub fn register(app: &App) {
    app.register(send_daily_report);
    app.register(cleanup_logs);
    app.register(check_subscriptions);
}

/// The entries of [`SCHEDULE`], read as `qtask beat` reads a settings file.
pub fn entries() -> Result<Vec<Entry>, Error> {
    let cfg = Config::from_toml_str(SCHEDULE)?;
    qtask::beat::entries_from_config(&cfg, None)
}

/// `GET /beat`: the beat's last tick, next due entry, overdue count and
/// counters; 503 once the loop has not ticked for `stale_after`.
pub fn router(beat: Arc<BeatHandle>, stale_after: chrono::TimeDelta) -> Router {
    Router::new().route("/beat", get(status)).with_state((beat, stale_after))
}

async fn status(State((beat, stale_after)): State<(Arc<BeatHandle>, chrono::TimeDelta)>) -> (StatusCode, Json<Value>) {
    let s = beat.status();
    let fresh = s.last_tick.is_some_and(|t| chrono::Utc::now() - t <= stale_after);
    let body = json!({
        "healthy": fresh,
        "last_tick": s.last_tick.map(|t| t.to_rfc3339()),
        "next_due": s.next_due.map(|(name, at)| json!({"entry": name, "at": at.to_rfc3339()})),
        "overdue": s.overdue,
        "entries": s.entries,
        "sent": s.sent,
        "skipped": s.skipped,
        "failed": s.failed,
    });
    (if fresh { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}
