//! PostgreSQL helpers shared by the `sql_*` tests: the server URL and a
//! schema owned by one test (dropped when the guard is dropped).

#![allow(dead_code)]

use integration_tests::unique;
use qtask::sqlx;

/// The shared PostgreSQL of the tests: `QTASK_TEST_PG_URL`, else
/// `postgres://postgres@127.0.0.1:5432/test` (trust auth).
pub(crate) fn pg_base() -> String {
    std::env::var("QTASK_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

fn with_param(url: &str, param: &str) -> String {
    if url.contains('?') {
        format!("{url}&{param}")
    } else {
        format!("{url}?{param}")
    }
}

/// A schema of one test on the shared server.
pub(crate) struct PgSchema {
    /// The schema name (lower case, unique).
    pub(crate) name: String,
}

impl PgSchema {
    /// A new unique schema name (created by qsql's migrations on first use).
    pub(crate) fn new(prefix: &str) -> PgSchema {
        PgSchema { name: unique(prefix) }
    }

    /// The qtask URL (`?schema=`), for broker and backend.
    pub(crate) fn url(&self) -> String {
        with_param(&pg_base(), &format!("schema={}", self.name))
    }

    /// The same database for Python's SQLAlchemy/psycopg2 (Celery's
    /// `db+postgresql://` backend): Celery's tables live in the
    /// connection's default schema, so the schema goes on the `search_path`.
    /// The driver is named: SQLAlchemy 2.1's default for `postgresql://` is
    /// psycopg 3, the venv has psycopg2.
    pub(crate) fn sqlalchemy_url(&self) -> String {
        let base = pg_base().replacen("postgres://", "postgresql+psycopg2://", 1);
        with_param(&base, &format!("options=-csearch_path%3D{}", self.name))
    }

    /// A pool on the server (not bound to the schema: qualify names).
    pub(crate) async fn pool(&self) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&pg_base()).await?)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any async context we could await in: a short-lived runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(pool) = sqlx::PgPool::connect(&pg_base()).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE")).execute(&pool).await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}
