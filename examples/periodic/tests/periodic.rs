//! The periodic example on its own SQLite file (the embedded default's
//! broker), with the worker and the beat in this process: the schedule is
//! the seed's, the beat's messages run on the worker, and `/beat` reports
//! the loop's health.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use qtask::beat::{Beat, Entry, Interval, Schedule};
use qtask::{Config, Worker};
use serde_json::Value;
use tower::ServiceExt;

#[test]
fn the_seed_schedule() {
    let entries = qtask_periodic::entries().unwrap();
    let shown: Vec<(String, String, String)> =
        entries.iter().map(|e| (e.name.clone(), e.task.clone(), e.schedule.to_string())).collect();
    assert_eq!(
        shown,
        [
            ("send-daily-report".into(), "myapp.tasks.send_daily_report".into(), "<freq: 86400s>".into()),
            ("cleanup-old-logs".into(), "myapp.tasks.cleanup_logs".into(), "<crontab: 0 2 * * * (m/h/dM/MY/d)>".into()),
            (
                "check-expired-subscriptions".into(),
                "myapp.tasks.check_subscriptions".into(),
                "<crontab: 0 * * * * (m/h/dM/MY/d)>".into()
            ),
        ]
    );
    // 02:00 in Paris is 01:00 UTC in winter, 00:00 UTC in summer.
    let cfg = Config::from_toml_str(qtask_periodic::SCHEDULE).unwrap();
    let paris: qtask::beat::chrono_tz::Tz = cfg.timezone.as_deref().unwrap().parse().unwrap();
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&chrono::Utc);
    assert_eq!(entries[1].schedule.after(at("2026-01-10T12:00:00Z"), paris), Some(at("2026-01-11T01:00:00Z")));
    assert_eq!(entries[1].schedule.after(at("2026-07-10T12:00:00Z"), paris), Some(at("2026-07-11T00:00:00Z")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_beat_runs_in_the_service_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("qtask-periodic-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/qtask.db", dir.display());
    let mut cfg = Config::default();
    cfg.broker_url = Some(url.clone());
    cfg.result_backend = Some(url);
    let app = qtask::app_from_config(cfg).await.unwrap();
    qtask_periodic::register(&app);
    let worker = Worker::builder(app.clone()).concurrency(2).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());
    // The seed's entries, and the daily report every second so the test sees it run.
    let fast = Entry::new(
        "report-now",
        "myapp.tasks.send_daily_report",
        Schedule::Interval(Interval::from_secs_f64(1.0).unwrap()),
    );
    let beat = Arc::new(
        Beat::builder(app.clone()).schedule(qtask_periodic::entries().unwrap()).entry(fast).spawn().await.unwrap(),
    );
    let status = beat.wait_for(Duration::from_secs(30), |s| s.sent >= 2).await.unwrap();
    assert_eq!(status.entries, 4);
    assert_eq!(status.failed, 0);
    // The worker ran them: the queue drains.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while app.broker().queue_len("celery").await.unwrap() > 0 {
        assert!(std::time::Instant::now() < deadline, "the worker did not take the beat's messages");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let router = qtask_periodic::router(beat.clone(), chrono::TimeDelta::minutes(10));
    let res = router.oneshot(Request::get("/beat").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["healthy"], Value::Bool(true));
    assert_eq!(v["entries"], 4);
    assert_eq!(v["next_due"]["entry"], "report-now");
    // A loop that has not ticked for longer than allowed is reported unhealthy.
    let stale = qtask_periodic::router(beat.clone(), chrono::TimeDelta::seconds(-1));
    let res = stale.oneshot(Request::get("/beat").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    Arc::try_unwrap(beat).unwrap().stop().await.unwrap();
    stop.shutdown();
    running.await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
