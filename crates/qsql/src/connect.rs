//! Connection pools.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

/// A PostgreSQL pool.
pub(crate) async fn pg_pool(options: &PgConnectOptions, max: Option<u32>) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max.unwrap_or(10))
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options.clone().application_name("qtask"))
        .await
}

/// How long a SQLite connection waits for the write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// A SQLite pool on a file (created if missing) in WAL mode.
pub(crate) async fn sqlite_file_pool(path: &Path, max: Option<u32>) -> Result<SqlitePool, sqlx::Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT);
    SqlitePoolOptions::new()
        .max_connections(max.unwrap_or(4))
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options)
        .await
}

/// A private in-memory SQLite database (one connection, kept open).
pub(crate) async fn sqlite_memory_pool() -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str("sqlite::memory:")?;
    SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options)
        .await
}
