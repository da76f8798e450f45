//! The result backend: Celery's `celery_taskmeta` / `celery_tasksetmeta`.

mod codec;
mod pg;
mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use qcore::{
    BackendCapabilities, BackendError, ChordJoin, ChordPart, ChordSupport, ErrorKind, ResultBackend, ResultMeta,
};

use crate::connect;
use crate::error::backend as db_err;
use crate::options::{parse_url, DbUrl, SqlOptions};
use crate::schema;
use crate::util::Names;

#[derive(Debug)]
enum Inner {
    Pg(Box<pg::PgBackend>),
    Sqlite(sqlite::SqliteBackend),
}

/// Celery's database result backend, on PostgreSQL or SQLite.
///
/// Results live in `celery_taskmeta` and groups in `celery_tasksetmeta`,
/// with exactly the columns, types and bytes Python Celery's database
/// backend uses, so Python and Rust read each other's results: stored
/// values are written with `result_serializer` and read in JSON or msgpack
/// ([`SqlOptions::codec`]); a pickled value (Python's
/// `result_serializer = 'pickle'`) is an error naming that setting. Tables
/// found in the database (created by Python Celery, with or without the
/// `result_extended` columns) are used as they are; missing ones are
/// created as Celery creates them.
///
/// What Celery's tables cannot hold lives in qtask's own tables, created by
/// embedded migrations: `qtask_result_ext` (expiry of each result, and
/// `group_id`/`parent_id`), `qtask_chord` + `qtask_chord_part` (chord join
/// counters).
///
/// * **Expiry:** a result stored with a ttl is invisible once it expired
///   and is deleted by a background sweep (every
///   [`cleanup_interval`](SqlOptions::cleanup_interval)); rows written by
///   Python never expire this way (Celery's `celery.backend_cleanup` task, or
///   [`SqlBackend::cleanup`], deletes them).
/// * **Waiting:** on PostgreSQL every ready state qtask stores is announced
///   with `NOTIFY` and [`wait`](ResultBackend::wait) is woken at once by
///   `LISTEN`; rows written by Python Celery (no notification) are found by
///   reading again every 50 ms growing to 500 ms. On SQLite it polls (1 ms
///   growing to 100 ms).
/// * **Row details, as Celery:** `result`, `args`, `kwargs` and `children`
///   hold the serializer's bytes (Python-`json.dumps` bytes for JSON); an
///   empty `children` list is stored as NULL (read back as an empty list); `date_done` is naive UTC and is
///   stamped for every state (reported only for ready states); the row is
///   updated in place, and the UPDATE skips rows whose status is SUCCESS.
///   The extended columns are written when the document carries them and
///   the table has them.
/// * **Chords:** as in Celery, no native join
///   ([`capabilities`](ResultBackend::capabilities) says [`ChordSupport::Unlock`] is
///   false): a chord sent by qtask or by Python is joined by the
///   `celery.chord_unlock` task its producer sends, which polls the header
///   results (see [`qcore::chord_unlock`]), so a chord split across Python
///   and qtask workers completes exactly once. The atomic counter behind
///   [`ResultBackend::chord_part`] remains for callers that use the join
///   directly.
///
/// ```no_run
/// # async fn demo() -> Result<(), qcore::BackendError> {
/// use qsql::{SqlBackend, SqlOptions};
/// let backend = SqlBackend::connect("postgres://postgres@127.0.0.1/test", SqlOptions::new()).await?;
/// let local = SqlBackend::connect("sqlite://qtask.db", SqlOptions::new()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SqlBackend {
    inner: Inner,
    display: String,
}

impl SqlBackend {
    /// Connect to `postgres://…` (optionally `?schema=name`),
    /// `sqlite://path/to/file.db` or `sqlite::memory:`, apply migrations
    /// and create Celery's tables if they are missing.
    pub async fn connect(url: &str, opts: SqlOptions) -> Result<Self, BackendError> {
        let parsed = parse_url(url, opts.schema.as_deref()).map_err(|m| BackendError::new(ErrorKind::Config, m))?;
        match parsed {
            DbUrl::Postgres { options, schema, display } => {
                let pool = connect::pg_pool(&options, opts.max_connections)
                    .await
                    .map_err(|e| db_err("connecting to PostgreSQL", e))?;
                let names = Names::new(schema.as_deref());
                let layout = schema::migrate_pg(&pool, &names, schema.as_deref(), true)
                    .await
                    .map_err(|e| db_err("creating tables", e))?;
                check_layout(&layout)?;
                Ok(SqlBackend {
                    inner: Inner::Pg(Box::new(pg::PgBackend::new(
                        pool,
                        &names,
                        &layout,
                        opts.cleanup_interval,
                        opts.codec.clone(),
                    ))),
                    display,
                })
            }
            DbUrl::Sqlite { path, display } => {
                let pool = connect::sqlite_file_pool(&path, opts.max_connections)
                    .await
                    .map_err(|e| db_err("opening SQLite database", e))?;
                Self::sqlite(pool, display, &opts).await
            }
            DbUrl::SqliteMemory => {
                let pool = connect::sqlite_memory_pool().await.map_err(|e| db_err("opening SQLite database", e))?;
                Self::sqlite(pool, "sqlite::memory:".into(), &opts).await
            }
        }
    }

    async fn sqlite(pool: sqlx::SqlitePool, display: String, opts: &SqlOptions) -> Result<Self, BackendError> {
        let layout = schema::migrate_sqlite(&pool, true).await.map_err(|e| db_err("creating tables", e))?;
        check_layout(&layout)?;
        Ok(SqlBackend {
            inner: Inner::Sqlite(sqlite::SqliteBackend::new(pool, &layout, opts.cleanup_interval, opts.codec.clone())),
            display,
        })
    }

    /// Delete expired results and chord counters now and, with
    /// `older_than`, every result and group finished longer ago than that
    /// (what Celery's `celery.backend_cleanup` does with `result_expires`).
    pub async fn cleanup(&self, older_than: Option<Duration>) -> Result<(), BackendError> {
        let before =
            older_than.and_then(|d| chrono::Duration::from_std(d).ok()).map(|d| (chrono::Utc::now() - d).naive_utc());
        match &self.inner {
            Inner::Pg(b) => b.cleanup(before).await,
            Inner::Sqlite(b) => b.cleanup(before).await,
        }
    }

    /// The PostgreSQL pool, for applications that share it.
    pub fn pg_pool(&self) -> Option<&sqlx::PgPool> {
        match &self.inner {
            Inner::Pg(b) => Some(b.pool()),
            Inner::Sqlite(_) => None,
        }
    }
}

fn check_layout(layout: &schema::CeleryLayout) -> Result<(), BackendError> {
    for col in ["task_id", "status", "result", "date_done", "traceback"] {
        if !layout.has(col) {
            return Err(BackendError::new(
                ErrorKind::Config,
                format!("table celery_taskmeta exists but has no column {col}: not a Celery result table"),
            ));
        }
    }
    Ok(())
}

#[async_trait]
impl ResultBackend for SqlBackend {
    async fn store(&self, meta: &ResultMeta, ttl: Option<Duration>) -> Result<(), BackendError> {
        match &self.inner {
            Inner::Pg(b) => b.store(meta, ttl).await,
            Inner::Sqlite(b) => b.store(meta, ttl).await,
        }
    }

    async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        match &self.inner {
            Inner::Pg(b) => b.get(task_id).await,
            Inner::Sqlite(b) => b.get(task_id).await,
        }
    }

    async fn get_many(&self, task_ids: &[String]) -> Result<Vec<Option<ResultMeta>>, BackendError> {
        match &self.inner {
            Inner::Pg(b) => b.get_many(task_ids).await,
            Inner::Sqlite(b) => b.get_many(task_ids).await,
        }
    }

    async fn wait(&self, task_id: &str, timeout: Duration) -> Result<ResultMeta, BackendError> {
        match &self.inner {
            Inner::Pg(b) => b.wait(task_id, timeout).await,
            Inner::Sqlite(_) => qcore::backend::poll_until_ready(self, task_id, timeout).await,
        }
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        match &self.inner {
            Inner::Pg(b) => b.forget(task_id).await,
            Inner::Sqlite(b) => b.forget(task_id).await,
        }
    }

    async fn save_group(&self, group_id: &str, task_ids: &[String], ttl: Option<Duration>) -> Result<(), BackendError> {
        match &self.inner {
            Inner::Pg(b) => b.save_group(group_id, task_ids, ttl).await,
            Inner::Sqlite(b) => b.save_group(group_id, task_ids, ttl).await,
        }
    }

    async fn get_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError> {
        match &self.inner {
            Inner::Pg(b) => b.get_group(group_id).await,
            Inner::Sqlite(b) => b.get_group(group_id).await,
        }
    }

    async fn chord_init(&self, group_id: &str, size: u64, ttl: Option<Duration>) -> Result<(), BackendError> {
        match &self.inner {
            Inner::Pg(b) => b.chord_init(group_id, size, ttl).await,
            Inner::Sqlite(b) => b.chord_init(group_id, size, ttl).await,
        }
    }

    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities::all().chords(ChordSupport::Unlock)
    }

    async fn chord_part(
        &self,
        group_id: &str,
        part: &ChordPart,
        ttl: Option<Duration>,
    ) -> Result<ChordJoin, BackendError> {
        match &self.inner {
            Inner::Pg(b) => b.chord_part(group_id, part, ttl).await,
            Inner::Sqlite(b) => b.chord_part(group_id, part, ttl).await,
        }
    }

    fn describe(&self) -> String {
        self.display.clone()
    }
}
