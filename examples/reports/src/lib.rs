//! # Reports built by a task
//!
//! The tutorial's `send_daily_report`: a task reads the day's orders from
//! the application's database, builds a CSV sales report (one line per
//! product, then the total) and stores it in the reports directory. The
//! database is a SQLite file here ([`Shop`]); any sqlx database works the
//! same way. Run it daily with qtask beat (`crontab(hour=2, minute=0)`
//! sends `reports.sales_report` with no argument: yesterday's report).
//!
//! `reports.sales_report(day=None)` returns `{"file", "day", "products",
//! "orders", "revenue"}` (revenue in cents); a malformed day is a
//! `ValueError`, an unreachable database a `DatabaseError`.

use std::path::PathBuf;

use async_trait::async_trait;
use chrono::{Days, NaiveDate, Utc};
use qtask::{App, Task, TaskContext, TaskError, TaskResult};
use serde_json::{json, Map, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

/// The task's name.
pub const TASK_NAME: &str = "reports.sales_report";

/// The shop's database: a table of orders.
#[derive(Clone, Debug)]
pub struct Shop {
    pool: SqlitePool,
}

impl Shop {
    /// Open (create) the SQLite database at `path` with its `orders` table.
    pub async fn open(path: &std::path::Path) -> Result<Shop, sqlx::Error> {
        let opts = SqliteConnectOptions::new().filename(path).create_if_missing(true);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS orders (
                id INTEGER PRIMARY KEY,
                day TEXT NOT NULL,
                product TEXT NOT NULL,
                quantity INTEGER NOT NULL,
                unit_price_cents INTEGER NOT NULL
            )",
        )
        .execute(&pool)
        .await?;
        Ok(Shop { pool })
    }

    /// Record an order.
    pub async fn order(&self, day: NaiveDate, product: &str, quantity: i64, unit_price_cents: i64) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO orders (day, product, quantity, unit_price_cents) VALUES (?, ?, ?, ?)")
            .bind(day.to_string())
            .bind(product)
            .bind(quantity)
            .bind(unit_price_cents)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Orders of `day` per product: (product, orders, quantity, revenue in cents).
    async fn sales(&self, day: NaiveDate) -> sqlx::Result<Vec<(String, i64, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT product, COUNT(*) AS orders, SUM(quantity) AS quantity, SUM(quantity * unit_price_cents) AS revenue
             FROM orders WHERE day = ? GROUP BY product ORDER BY product",
        )
        .bind(day.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).collect()
    }
}

/// `reports.sales_report(day=None)`: the CSV report of `day` (default:
/// yesterday, UTC).
pub struct SalesReport {
    shop: Shop,
    dir: PathBuf,
}

/// Cents as `12.34`.
fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", (cents / 100).abs(), (cents % 100).abs())
}

/// The report's CSV text.
fn csv_text(sales: &[(String, i64, i64, i64)]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["product", "orders", "quantity", "revenue"])?;
    for (product, orders, quantity, revenue) in sales {
        w.write_record([product.as_str(), &orders.to_string(), &quantity.to_string(), &money(*revenue)])?;
    }
    let sum = |f: fn(&(String, i64, i64, i64)) -> i64| sales.iter().map(f).sum::<i64>();
    let totals = [sum(|s| s.1).to_string(), sum(|s| s.2).to_string(), money(sum(|s| s.3))];
    w.write_record(["TOTAL", &totals[0], &totals[1], &totals[2]])?;
    w.into_inner().map_err(|e| e.into_error().into())
}

#[async_trait]
impl Task for SalesReport {
    fn name(&self) -> &str {
        TASK_NAME
    }

    async fn run(&self, _ctx: TaskContext, args: Vec<Value>, kwargs: Map<String, Value>) -> TaskResult {
        let given = args.first().or_else(|| kwargs.get("day")).filter(|v| !v.is_null());
        let day = match given {
            None => Utc::now().date_naive().checked_sub_days(Days::new(1)).unwrap_or_default(),
            Some(Value::String(s)) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map_err(|e| TaskError::value_error(format!("day {s:?} is not YYYY-MM-DD: {e}")))?,
            Some(other) => return Err(TaskError::value_error(format!("day must be \"YYYY-MM-DD\", got {other}"))),
        };
        let sales = self.shop.sales(day).await.map_err(|e| TaskError::fail("DatabaseError", e.to_string()))?;
        let text = csv_text(&sales).map_err(|e| TaskError::fail("CsvError", e.to_string()))?;
        tokio::fs::create_dir_all(&self.dir).await.map_err(|e| TaskError::fail("OSError", e.to_string()))?;
        let file = self.dir.join(format!("sales-{day}.csv"));
        tokio::fs::write(&file, text).await.map_err(|e| TaskError::fail("OSError", e.to_string()))?;
        Ok(json!({
            "file": file.display().to_string(),
            "day": day.to_string(),
            "products": sales.len(),
            "orders": sales.iter().map(|s| s.1).sum::<i64>(),
            "revenue": sales.iter().map(|s| s.3).sum::<i64>(),
        }))
    }
}

/// Register [`SalesReport`] reading `shop` and writing into `dir`.
pub fn register(app: &App, shop: Shop, dir: impl Into<PathBuf>) {
    app.register(SalesReport { shop, dir: dir.into() });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_and_csv_quoting() {
        assert_eq!(
            (money(0), money(5), money(1234), money(-250)),
            ("0.00".into(), "0.05".into(), "12.34".into(), "-2.50".into())
        );
        let text = csv_text(&[("tea, green".into(), 1, 2, 300)]).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "product,orders,quantity,revenue\n\"tea, green\",1,2,3.00\nTOTAL,1,2,3.00\n"
        );
    }
}
