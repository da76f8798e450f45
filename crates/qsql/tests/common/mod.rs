//! Test helpers: a PostgreSQL schema or a SQLite file per test, removed at the end.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

/// The shared PostgreSQL of the tests (trust auth): `QTASK_TEST_PG_URL`,
/// else `postgres://postgres@127.0.0.1:5432/test` (as in integration-tests).
pub fn pg_url() -> String {
    std::env::var("QTASK_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A fresh schema name, dropped when this value is dropped.
#[derive(Debug)]
pub struct PgSchema {
    pub name: String,
}

impl PgSchema {
    pub fn new() -> Self {
        PgSchema { name: format!("qtask_test_{}", uuid::Uuid::new_v4().simple()) }
    }

    /// The server URL with `?schema=` for this schema.
    pub fn url(&self) -> String {
        let base = pg_url();
        format!("{base}{}schema={}", if base.contains('?') { '&' } else { '?' }, self.name)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(&pg_url()).await {
                    let _ =
                        sqlx::raw_sql(&format!("SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                            .execute(&mut c)
                            .await;
                }
            });
        })
        .join();
    }
}

/// A fresh SQLite file path, deleted (with its WAL files) when dropped.
#[derive(Debug)]
pub struct TempDb {
    pub path: PathBuf,
}

impl TempDb {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("qsql-test-{}.db", uuid::Uuid::new_v4().simple()));
        TempDb { path }
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}
