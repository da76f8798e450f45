//! The history: tasks, their events and the workers, in SQLite.
//!
//! One row per task (`qm_tasks`: the Flower map as JSON in `data`, and the
//! columns the lists filter on, indexed), one row per event (`qm_events`,
//! the task timeline), one per worker (`qm_workers`), and the events that
//! could not be read (`qm_malformed`, with the reason). `seq` numbers the
//! tasks in the order they were first seen: the lists page on it with a
//! cursor, so a page costs the same at any depth.

use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use crate::state::{Task, Worker};

/// A store error (SQL or a row that is not JSON).
#[derive(Debug)]
pub enum StoreError {
    /// The database said no.
    Sql(sqlx::Error),
    /// The URL is not one the store can open.
    Url(String),
}

impl std::error::Error for StoreError {}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Sql(e) => write!(f, "history store: {e}"),
            StoreError::Url(u) => write!(f, "history store: {u}"),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Sql(e)
    }
}

/// How much history to keep.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    /// Tasks whose last event is older than this are deleted.
    pub max_age: Option<Duration>,
    /// At most this many tasks (the oldest first seen go first).
    pub max_tasks: Option<u64>,
}

/// Filters of a task list.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    /// Exact state (`SUCCESS`).
    pub state: Option<String>,
    /// Exact task name.
    pub name: Option<String>,
    /// Exact worker node name.
    pub worker: Option<String>,
    /// Substring of the id, args, kwargs, result or exception.
    pub search: Option<String>,
    /// `received` at or after (UNIX seconds).
    pub received_start: Option<f64>,
    /// `received` before (UNIX seconds).
    pub received_end: Option<f64>,
    /// Newest first by first-seen order, only tasks before this cursor.
    pub before: Option<i64>,
    /// Order: `name`, `state`, `received`, `started`, with `-` for
    /// descending; `None`: newest first.
    pub sort_by: Option<String>,
    /// Rows to skip (Flower's `offset`).
    pub offset: u64,
    /// Rows at most.
    pub limit: u64,
}

/// The SQLite history.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS qm_tasks (
        uuid TEXT PRIMARY KEY, seq INTEGER NOT NULL, name TEXT, state TEXT NOT NULL, worker TEXT,
        parent_id TEXT, received REAL, started REAL, ts REAL NOT NULL, data TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS qm_tasks_seq ON qm_tasks(seq)",
    "CREATE INDEX IF NOT EXISTS qm_tasks_state ON qm_tasks(state, seq)",
    "CREATE INDEX IF NOT EXISTS qm_tasks_name ON qm_tasks(name, seq)",
    "CREATE INDEX IF NOT EXISTS qm_tasks_worker ON qm_tasks(worker, seq)",
    "CREATE INDEX IF NOT EXISTS qm_tasks_parent ON qm_tasks(parent_id)",
    "CREATE INDEX IF NOT EXISTS qm_tasks_ts ON qm_tasks(ts)",
    "CREATE TABLE IF NOT EXISTS qm_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT, hostname TEXT NOT NULL, type TEXT NOT NULL,
        ts REAL NOT NULL, data TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS qm_events_uuid ON qm_events(uuid)",
    "CREATE INDEX IF NOT EXISTS qm_events_ts ON qm_events(ts)",
    "CREATE TABLE IF NOT EXISTS qm_workers (hostname TEXT PRIMARY KEY, data TEXT NOT NULL)",
    // The search index: a trigram full-text index over each task's id,
    // args, kwargs, result and exception (rowid = the task's seq), so a
    // substring search does not scan every row.
    "CREATE VIRTUAL TABLE IF NOT EXISTS qm_search USING fts5(text, tokenize = 'trigram')",
    "CREATE TABLE IF NOT EXISTS qm_actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS qm_malformed (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, reason TEXT NOT NULL, body BLOB NOT NULL)",
];

/// A stored event: `(task id, hostname, type, timestamp, the event's JSON)`.
pub(crate) type EventRow = (Option<String>, String, String, f64, String);

impl Store {
    /// Open (and create) the history at `url`: a file path,
    /// `sqlite://path`, or `sqlite::memory:`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Err(StoreError::Url("PostgreSQL history is not supported yet; use a SQLite file".into()));
        }
        let memory = url == "sqlite::memory:" || url == ":memory:";
        let opts = if memory {
            SqliteConnectOptions::from_str("sqlite::memory:")?
        } else {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
        };
        let opts = opts.busy_timeout(Duration::from_secs(5));
        // One connection for memory (each would be its own database).
        let pool = SqlitePoolOptions::new().max_connections(if memory { 1 } else { 4 }).connect_with(opts).await?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&pool).await?;
        }
        Ok(Store { pool })
    }

    /// The connection pool (for tests and embedding).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The highest `seq` stored (0 when empty).
    pub(crate) async fn max_seq(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM qm_tasks").fetch_one(&self.pool).await?;
        Ok(row.try_get(0)?)
    }

    /// The stored tasks among `ids`, with their `seq`.
    pub(crate) async fn tasks_by_id(&self, ids: &[String]) -> Result<Vec<(i64, Task)>, StoreError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let mut q = QueryBuilder::<Sqlite>::new("SELECT seq, data FROM qm_tasks WHERE uuid IN (");
            let mut sep = q.separated(", ");
            for id in chunk {
                sep.push_bind(id);
            }
            q.push(")");
            for row in q.build().fetch_all(&self.pool).await? {
                if let Some(t) = parse_task(row.try_get(1)?) {
                    out.push((row.try_get(0)?, t));
                }
            }
        }
        Ok(out)
    }

    /// Write one batch in one transaction: the events, the tasks they
    /// changed (with their `seq`), the workers they changed.
    pub(crate) async fn write(
        &self,
        events: &[EventRow],
        tasks: &[(i64, &Task)],
        workers: &[&Worker],
        reindex: &[(i64, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for chunk in reindex.chunks(400) {
            let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM qm_search WHERE rowid IN (");
            let mut sep = q.separated(", ");
            for (seq, _) in chunk {
                sep.push_bind(*seq);
            }
            q.push(")");
            q.build().execute(&mut *tx).await?;
            let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO qm_search (rowid, text) ");
            q.push_values(chunk, |mut b, (seq, text)| {
                b.push_bind(*seq).push_bind(text);
            });
            q.build().execute(&mut *tx).await?;
        }
        for chunk in events.chunks(150) {
            let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO qm_events (uuid, hostname, type, ts, data) ");
            q.push_values(chunk, |mut b, (uuid, host, ty, ts, data)| {
                b.push_bind(uuid).push_bind(host).push_bind(ty).push_bind(ts).push_bind(data);
            });
            q.build().execute(&mut *tx).await?;
        }
        for chunk in tasks.chunks(90) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO qm_tasks (uuid, seq, name, state, worker, parent_id, received, started, ts, data) ",
            );
            q.push_values(chunk, |mut b, (seq, t)| {
                b.push_bind(&t.uuid)
                    .push_bind(*seq)
                    .push_bind(&t.name)
                    .push_bind(&t.state)
                    .push_bind(&t.worker)
                    .push_bind(&t.parent_id)
                    .push_bind(t.received)
                    .push_bind(t.started)
                    .push_bind(t.timestamp.unwrap_or_default())
                    .push_bind(serde_json::to_string(t).unwrap_or_default());
            });
            q.push(
                " ON CONFLICT(uuid) DO UPDATE SET name = excluded.name, state = excluded.state, \
                 worker = excluded.worker, parent_id = excluded.parent_id, received = excluded.received, \
                 started = excluded.started, ts = excluded.ts, data = excluded.data",
            );
            q.build().execute(&mut *tx).await?;
        }
        for w in workers {
            sqlx::query(
                "INSERT INTO qm_workers (hostname, data) VALUES (?, ?) \
                 ON CONFLICT(hostname) DO UPDATE SET data = excluded.data",
            )
            .bind(&w.hostname)
            .bind(serde_json::to_string(w).unwrap_or_default())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Park a message that is not an event, with the reason.
    pub(crate) async fn park(&self, reason: &str, body: &[u8]) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO qm_malformed (ts, reason, body) VALUES (?, ?, ?)")
            .bind(qcore::time::now_epoch())
            .bind(reason)
            .bind(body)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every stored worker.
    pub(crate) async fn workers(&self) -> Result<Vec<Worker>, StoreError> {
        let rows = sqlx::query("SELECT data FROM qm_workers").fetch_all(&self.pool).await?;
        let mut out = Vec::new();
        for row in rows {
            let data: String = row.try_get(0)?;
            if let Ok(w) = serde_json::from_str(&data) {
                out.push(w);
            }
        }
        Ok(out)
    }

    /// One task, with its children.
    pub async fn task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let row = sqlx::query("SELECT data FROM qm_tasks WHERE uuid = ?").bind(id).fetch_optional(&self.pool).await?;
        let Some(row) = row else { return Ok(None) };
        let Some(mut t) = parse_task(row.try_get(0)?) else { return Ok(None) };
        self.fill_children(std::slice::from_mut(&mut t)).await?;
        Ok(Some(t))
    }

    /// The events of a task, oldest first: `(type, hostname, timestamp, JSON)`.
    pub async fn timeline(&self, id: &str) -> Result<Vec<(String, String, f64, Value)>, StoreError> {
        let rows = sqlx::query("SELECT type, hostname, ts, data FROM qm_events WHERE uuid = ? ORDER BY ts, id")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let data: String = row.try_get(3)?;
            out.push((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                serde_json::from_str(&data).unwrap_or(Value::Null),
            ));
        }
        Ok(out)
    }

    async fn fill_children(&self, tasks: &mut [Task]) -> Result<(), StoreError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let mut q = QueryBuilder::<Sqlite>::new("SELECT parent_id, uuid FROM qm_tasks WHERE parent_id IN (");
        let mut sep = q.separated(", ");
        for t in tasks.iter() {
            sep.push_bind(&t.uuid);
        }
        q.push(") ORDER BY seq");
        for row in q.build().fetch_all(&self.pool).await? {
            let parent: String = row.try_get(0)?;
            let child: String = row.try_get(1)?;
            if let Some(t) = tasks.iter_mut().find(|t| t.uuid == parent) {
                t.children.push(child);
            }
        }
        Ok(())
    }

    /// A page of tasks and the `seq` of each (for the next cursor).
    pub async fn tasks(&self, query: &TaskQuery) -> Result<Vec<(i64, Task)>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT seq, data FROM qm_tasks WHERE 1 = 1");
        if let Some(s) = &query.state {
            q.push(" AND state = ").push_bind(s);
        }
        if let Some(n) = &query.name {
            q.push(" AND name = ").push_bind(n);
        }
        if let Some(w) = &query.worker {
            q.push(" AND worker = ").push_bind(w);
        }
        if let Some(r) = query.received_start {
            q.push(" AND received >= ").push_bind(r);
        }
        if let Some(r) = query.received_end {
            q.push(" AND received < ").push_bind(r);
        }
        if let Some(b) = query.before {
            q.push(" AND seq < ").push_bind(b);
        }
        if let Some(s) = query.search.as_deref().filter(|s| !s.is_empty()) {
            if s.chars().count() >= 3 {
                // A phrase of the trigram index: any substring of 3+ characters.
                let phrase = format!("\"{}\"", s.replace('"', "\"\""));
                q.push(" AND seq IN (SELECT rowid FROM qm_search WHERE qm_search MATCH ").push_bind(phrase).push(")");
            } else {
                let pattern = format!("%{}%", s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
                q.push(" AND seq IN (SELECT rowid FROM qm_search WHERE text LIKE ")
                    .push_bind(pattern)
                    .push(" ESCAPE '\\')");
            }
        }
        let order = match query.sort_by.as_deref() {
            Some(s) => {
                let (col, desc) = s.strip_prefix('-').map_or((s, false), |c| (c, true));
                let col = match col {
                    "name" => "name",
                    "state" => "state",
                    "received" => "received",
                    "started" => "started",
                    _ => "seq",
                };
                format!(" ORDER BY {col} {}, seq DESC", if desc { "DESC" } else { "ASC" })
            }
            None => " ORDER BY seq DESC".to_string(),
        };
        q.push(order);
        q.push(" LIMIT ").push_bind(query.limit.min(i64::MAX as u64) as i64);
        q.push(" OFFSET ").push_bind(query.offset.min(i64::MAX as u64) as i64);
        let mut seqs = Vec::new();
        let mut tasks = Vec::new();
        for row in q.build().fetch_all(&self.pool).await? {
            if let Some(t) = parse_task(row.try_get(1)?) {
                seqs.push(row.try_get::<i64, _>(0)?);
                tasks.push(t);
            }
        }
        self.fill_children(&mut tasks).await?;
        Ok(seqs.into_iter().zip(tasks).collect())
    }

    /// Tasks per state.
    pub async fn counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM qm_tasks GROUP BY state ORDER BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// The task names seen.
    pub async fn task_types(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT DISTINCT name FROM qm_tasks WHERE name IS NOT NULL ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Apply the retention: delete the tasks (and their events) too old or
    /// beyond the row limit. Returns the tasks deleted.
    pub async fn prune(&self, retention: Retention) -> Result<u64, StoreError> {
        let mut deleted = 0;
        if let Some(age) = retention.max_age {
            let cutoff = qcore::time::now_epoch() - age.as_secs_f64();
            sqlx::query("DELETE FROM qm_search WHERE rowid IN (SELECT seq FROM qm_tasks WHERE ts < ?)")
                .bind(cutoff)
                .execute(&self.pool)
                .await?;
            deleted += sqlx::query("DELETE FROM qm_tasks WHERE ts < ?")
                .bind(cutoff)
                .execute(&self.pool)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM qm_events WHERE ts < ?").bind(cutoff).execute(&self.pool).await?;
        }
        if let Some(max) = retention.max_tasks {
            let row = sqlx::query("SELECT seq FROM qm_tasks ORDER BY seq DESC LIMIT 1 OFFSET ?")
                .bind(max.min(i64::MAX as u64) as i64)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(row) = row {
                let seq: i64 = row.try_get(0)?;
                sqlx::query("DELETE FROM qm_search WHERE rowid <= ?").bind(seq).execute(&self.pool).await?;
                deleted += sqlx::query("DELETE FROM qm_tasks WHERE seq <= ?")
                    .bind(seq)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                sqlx::query("DELETE FROM qm_events WHERE uuid IS NOT NULL AND uuid NOT IN (SELECT uuid FROM qm_tasks)")
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(deleted)
    }
}

/// What the search finds a task by: its id, args, kwargs, result and
/// exception, one per line.
pub(crate) fn search_text(t: &Task) -> String {
    let parts =
        [Some(t.uuid.as_str()), t.args.as_deref(), t.kwargs.as_deref(), t.result.as_deref(), t.exception.as_deref()];
    parts.iter().flatten().copied().collect::<Vec<_>>().join("\n")
}

fn parse_task(data: String) -> Option<Task> {
    serde_json::from_str(&data).ok()
}

impl Store {
    /// Task events per minute since `since` (UNIX seconds), for `types`
    /// (`task-succeeded`, ...): `(minute start, type, count)`, oldest first.
    pub async fn rates(&self, since: f64, types: &[&str]) -> Result<Vec<(i64, String, i64)>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT CAST(ts / 60 AS INTEGER) * 60 AS m, type, COUNT(*) FROM qm_events WHERE ts >= ",
        );
        q.push_bind(since).push(" AND type IN (");
        let mut sep = q.separated(", ");
        for t in types {
            sep.push_bind(*t);
        }
        q.push(") GROUP BY m, type ORDER BY m");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
    }
}

/// One action taken through the monitor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Action {
    /// When (UNIX seconds).
    pub ts: f64,
    /// Who: a basic-auth user, `token`, or `anonymous`.
    pub actor: String,
    /// What: `revoke`, `retry`, `send-task`, `shutdown`, `purge`, ...
    pub action: String,
    /// On what: a task id, a worker, a queue, with the details.
    pub target: String,
}

impl Store {
    /// Record an action (the audit trail).
    pub async fn record(&self, actor: &str, action: &str, target: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO qm_actions (ts, actor, action, target) VALUES (?, ?, ?, ?)")
            .bind(qcore::time::now_epoch())
            .bind(actor)
            .bind(action)
            .bind(target)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The latest actions, newest first.
    pub async fn actions(&self, limit: u32) -> Result<Vec<Action>, StoreError> {
        let rows = sqlx::query("SELECT ts, actor, action, target FROM qm_actions ORDER BY id DESC LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Action { ts: r.try_get(0)?, actor: r.try_get(1)?, action: r.try_get(2)?, target: r.try_get(3)? })
            })
            .collect()
    }
}
