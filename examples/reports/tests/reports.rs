//! The report task on its own SQLite files: the CSV it writes, the default
//! day, and bad input.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{Days, NaiveDate, Utc};
use qtask::{App, Config, Error, Signature, Worker, WorkerHandle};
use qtask_reports::{Shop, TASK_NAME};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

struct Env {
    app: App,
    shop: Shop,
    dir: PathBuf,
    stop: WorkerHandle,
    running: tokio::task::JoinHandle<Result<(), qtask::Error>>,
}

async fn start() -> Env {
    let dir = std::env::temp_dir().join(format!("qtask-reports-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/qtask.db", dir.display());
    let mut cfg = Config::default();
    cfg.broker_url = Some(url.clone());
    cfg.result_backend = Some(url);
    let app = qtask::app_from_config(cfg).await.unwrap();
    let shop = Shop::open(&dir.join("shop.db")).await.unwrap();
    qtask_reports::register(&app, shop.clone(), dir.join("out"));
    let worker = Worker::builder(app.clone()).concurrency(2).build();
    let stop = worker.handle();
    let running = tokio::spawn(worker.run());
    Env { app, shop, dir, stop, running }
}

impl Env {
    async fn stop(self) {
        self.stop.shutdown();
        self.running.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_sums_the_days_orders_per_product() {
    let env = start().await;
    let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
    let other = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap();
    for (d, product, q, cents) in
        [(day, "coffee", 2, 350), (day, "tea, green", 1, 300), (day, "coffee", 1, 350), (other, "cake", 9, 420)]
    {
        env.shop.order(d, product, q, cents).await.unwrap();
    }
    let r = env.app.delay(Signature::new(TASK_NAME).arg("2026-12-01")).await.unwrap();
    let out = r.get(T).await.unwrap();
    let file = env.dir.join("out/sales-2026-12-01.csv");
    assert_eq!(
        out,
        json!({"file": file.display().to_string(), "day": "2026-12-01", "products": 2, "orders": 3, "revenue": 1350})
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "product,orders,quantity,revenue\ncoffee,2,3,10.50\n\"tea, green\",1,1,3.00\nTOTAL,3,4,13.50\n"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_day_is_yesterday_and_a_bad_day_is_a_value_error() {
    let env = start().await;
    let yesterday = Utc::now().date_naive().checked_sub_days(Days::new(1)).unwrap();
    env.shop.order(yesterday, "tea", 2, 300).await.unwrap();
    let out = env.app.delay(Signature::new(TASK_NAME)).await.unwrap().get(T).await.unwrap();
    let after = Utc::now().date_naive().checked_sub_days(Days::new(1)).unwrap();
    if after == yesterday {
        assert_eq!((&out["day"], &out["revenue"]), (&json!(yesterday.to_string()), &json!(600)), "{out}");
    } else {
        // Midnight UTC passed during the run: the report is of the new yesterday.
        assert_eq!(out["day"], json!(after.to_string()), "{out}");
    }
    let r = env.app.delay(Signature::new(TASK_NAME).arg("01/12/2026")).await.unwrap();
    match r.get(T).await.unwrap_err() {
        Error::TaskFailed { exc, .. } => {
            assert_eq!(exc.exc_type, "ValueError");
            assert!(exc.message().contains("\"01/12/2026\" is not YYYY-MM-DD"), "{exc:?}");
        }
        other => panic!("{other:?}"),
    }
    env.stop().await;
}
