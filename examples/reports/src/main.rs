//! `reports`: build a sales report with a task, the worker in the same
//! process.
//!
//! ```text
//! cargo run -p qtask-reports              # yesterday's report
//! cargo run -p qtask-reports -- 2026-12-01
//! ```
//!
//! On the embedded default (`qtask.db`); the shop's database is
//! `shop.db` (`REPORTS_DB`), filled with demo orders for the day when it
//! has none; the CSV goes to `reports/` (`REPORTS_DIR`).

use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{Days, NaiveDate, Utc};
use qtask::{Config, Signature, Worker};
use qtask_reports::{Shop, TASK_NAME};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("QTASK_LOG").unwrap_or_else(|_| "info".into())).init();
    let day = match std::env::args().nth(1) {
        Some(d) => NaiveDate::parse_from_str(&d, "%Y-%m-%d").with_context(|| format!("{d:?} is not YYYY-MM-DD"))?,
        None => Utc::now().date_naive().checked_sub_days(Days::new(1)).context("no yesterday")?,
    };
    let db = std::env::var("REPORTS_DB").unwrap_or_else(|_| "shop.db".into());
    let shop = Shop::open(db.as_ref()).await.with_context(|| format!("cannot open {db}"))?;
    for (product, quantity, cents) in [("coffee", 2, 350), ("tea", 1, 300), ("coffee", 1, 350), ("cake", 3, 420)] {
        shop.order(day, product, quantity, cents).await?;
    }
    let app = qtask::app_from_config(Config::from_env()?).await?;
    qtask_reports::register(&app, shop, std::env::var("REPORTS_DIR").unwrap_or_else(|_| "reports".into()));
    let worker = Worker::builder(app.clone()).concurrency(2).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());
    let outcome = app.delay(Signature::new(TASK_NAME).arg(day.to_string())).await?.get(Duration::from_secs(60)).await;
    stop.shutdown();
    running.await??;
    match outcome {
        Ok(report) => println!("report: {report}"),
        Err(e) => bail!("the report failed: {e}"),
    }
    Ok(())
}
