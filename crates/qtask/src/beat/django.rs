//! [`DjangoStore`]: a [`Store`] on django-celery-beat 2.9's own tables, on
//! PostgreSQL or SQLite, so a team keeps editing schedules in Django's
//! admin (or its ORM) and `qtask beat --scheduler django --db URL` runs
//! them.
//!
//! **Reads.** `django_celery_beat_periodictask` joined with its interval,
//! crontab (with its `timezone`), solar and clocked schedule; `enabled`,
//! `one_off`, `start_time`, `expires` / `expire_seconds`, `args` / `kwargs`
//! (JSON), `queue`, `exchange`, `routing_key`, `priority` and `headers`,
//! to which the message adds `periodic_task_name`, as django-celery-beat's
//! `ModelEntry` does. Timestamps are read as Django writes them with
//! `USE_TZ = True` (UTC).
//!
//! **Writes, as Django's beat does.** A claim sets `last_run_at` (to the
//! slot) and adds one to `total_run_count` in one `UPDATE … WHERE
//! last_run_at IS NULL OR last_run_at < slot`, without touching the change
//! marker; a one-off entry is disabled after its run (`enabled = false`,
//! `last_run_at = NULL`, `total_run_count = 0`, `date_changed` and
//! `django_celery_beat_periodictasks.last_update` bumped, as
//! `PeriodicTask.save()` does).
//!
//! **Changes.** Django's own change marker misses `QuerySet.update()`,
//! `bulk_create` and raw SQL. The store therefore adds to the database a
//! change log, `qtask_beat_changes (seq, task_id, changed_at)`, and
//! triggers (named `qtask_beat_*`) on the periodic task table (insert,
//! delete, and an update of anything but the run state) and on the
//! schedule tables (an update logs the tasks using that schedule). The
//! triggers do not change Django's rows or columns; they are installed (or
//! reinstalled: a SQLite migration that rebuilds a table drops them) each
//! time the store opens. [`changes_since`](Store::changes_since) reads the
//! log after its cursor (its primary key) and loads only the rows it names;
//! a logged id without a row is a deleted entry. On PostgreSQL the
//! triggers also `NOTIFY qtask_beat`, which wakes the beat at once; on
//! SQLite the beat reads the log every second.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use qbeat::{
    Changes, Claim, Clocked, CronField, Crontab, CrontabSpec, Entry, EntryOptions, Expires, Interval, RunState,
    Schedule, Snapshot, Solar, Store, Stored,
};
use qcore::Error;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::Row;
use tokio::sync::watch;

/// The channel the PostgreSQL triggers notify.
const CHANNEL: &str = "qtask_beat";

/// Log rows older than this are deleted (every beat has read them).
const LOG_KEEP_HOURS: i64 = 24;

#[derive(Clone)]
enum Db {
    Pg(PgPool),
    Lite(SqlitePool),
}

/// A bound parameter.
enum P {
    Text(Option<String>),
    Int(i64),
}

fn db_err(e: sqlx::Error) -> Error {
    Error::Config(format!("django-celery-beat database: {e}"))
}

impl Db {
    /// The columns of a query as text (NULL as `None`).
    async fn rows(&self, sql: &str, params: Vec<P>) -> Result<Vec<Vec<Option<String>>>, Error> {
        match self {
            Db::Pg(pool) => {
                let mut q = sqlx::query(sql);
                for p in params {
                    q = match p {
                        P::Text(t) => q.bind(t),
                        P::Int(i) => q.bind(i),
                    };
                }
                let rows = q.fetch_all(pool).await.map_err(db_err)?;
                rows.iter()
                    .map(|r| (0..r.len()).map(|i| r.try_get::<Option<String>, _>(i).map_err(db_err)).collect())
                    .collect()
            }
            Db::Lite(pool) => {
                let sql = sql.replace('$', "?");
                let mut q = sqlx::query(&sql);
                for p in params {
                    q = match p {
                        P::Text(t) => q.bind(t),
                        P::Int(i) => q.bind(i),
                    };
                }
                let rows = q.fetch_all(pool).await.map_err(db_err)?;
                rows.iter()
                    .map(|r| (0..r.len()).map(|i| r.try_get::<Option<String>, _>(i).map_err(db_err)).collect())
                    .collect()
            }
        }
    }

    async fn execute(&self, sql: &str, params: Vec<P>) -> Result<u64, Error> {
        match self {
            Db::Pg(pool) => {
                let mut q = sqlx::query(sql);
                for p in params {
                    q = match p {
                        P::Text(t) => q.bind(t),
                        P::Int(i) => q.bind(i),
                    };
                }
                Ok(q.execute(pool).await.map_err(db_err)?.rows_affected())
            }
            Db::Lite(pool) => {
                let sql = sql.replace('$', "?");
                let mut q = sqlx::query(&sql);
                for p in params {
                    q = match p {
                        P::Text(t) => q.bind(t),
                        P::Int(i) => q.bind(i),
                    };
                }
                Ok(q.execute(pool).await.map_err(db_err)?.rows_affected())
            }
        }
    }

    fn is_pg(&self) -> bool {
        matches!(self, Db::Pg(_))
    }

    /// `expr` as text.
    fn text(&self, expr: &str) -> String {
        if self.is_pg() {
            format!("({expr})::text")
        } else {
            format!("CAST({expr} AS TEXT)")
        }
    }

    /// A timestamp column as `YYYY-MM-DD HH:MM:SS[.ffffff]` in UTC.
    fn ts(&self, expr: &str) -> String {
        if self.is_pg() {
            format!("to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
        } else {
            expr.to_string()
        }
    }

    /// A boolean column as `1` / `0`.
    fn boolean(&self, expr: &str) -> String {
        if self.is_pg() {
            format!("(({expr})::int)::text")
        } else {
            format!("CAST({expr} AS TEXT)")
        }
    }

    /// A timestamp parameter `$n`.
    fn ts_param(&self, n: usize) -> String {
        if self.is_pg() {
            format!("${n}::timestamptz")
        } else {
            format!("${n}")
        }
    }

    /// Now, as the column type wants it.
    fn now(&self) -> &'static str {
        if self.is_pg() {
            "now()"
        } else {
            "strftime('%Y-%m-%d %H:%M:%f', 'now')"
        }
    }
}

/// A timestamp parameter: RFC 3339 for PostgreSQL, Django's SQLite text
/// (`str(datetime)` of a naive UTC time) for SQLite.
fn ts_value(db: &Db, at: DateTime<Utc>) -> String {
    if db.is_pg() {
        at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    } else if at.timestamp_subsec_micros() == 0 {
        at.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        at.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
    }
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>, String> {
    let t = s.trim().trim_end_matches('Z');
    let t = t.strip_suffix("+00:00").or_else(|| t.strip_suffix("+00")).unwrap_or(t);
    let t = t.replacen('T', " ", 1);
    NaiveDateTime::parse_from_str(&t, "%Y-%m-%d %H:%M:%S%.f")
        .map(|n| n.and_utc())
        .map_err(|e| format!("timestamp {s:?}: {e}"))
}

/// The periodic task columns the update trigger compares (all but the run
/// state and `date_changed`).
const EDIT_COLUMNS: &[&str] = &[
    "name",
    "task",
    "interval_id",
    "crontab_id",
    "solar_id",
    "clocked_id",
    "args",
    "kwargs",
    "queue",
    "exchange",
    "routing_key",
    "headers",
    "priority",
    "expires",
    "expire_seconds",
    "one_off",
    "start_time",
    "enabled",
    "description",
];

/// (schedule table, the periodic task's column that refers to it).
const SCHEDULE_TABLES: &[(&str, &str)] = &[
    ("django_celery_beat_intervalschedule", "interval_id"),
    ("django_celery_beat_crontabschedule", "crontab_id"),
    ("django_celery_beat_solarschedule", "solar_id"),
    ("django_celery_beat_clockedschedule", "clocked_id"),
];

const TASKS: &str = "django_celery_beat_periodictask";

#[derive(Default)]
struct Known {
    /// Names by row id (a deleted row is named by its id only).
    names: HashMap<i64, String>,
    polls: u64,
}

/// A [`Store`] on django-celery-beat's tables (see the module's text).
pub struct DjangoStore {
    db: Db,
    display: String,
    known: Mutex<Known>,
    watch: Option<watch::Receiver<u64>>,
    _listener: Option<Arc<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for DjangoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DjangoStore").field("db", &self.display).finish_non_exhaustive()
    }
}

impl Drop for DjangoStore {
    fn drop(&mut self) {
        if let Some(l) = &self._listener {
            l.abort();
        }
    }
}

impl DjangoStore {
    /// Open the Django database at `url` (`postgres://` / `postgresql://`,
    /// with an optional `?schema=NAME`; `sqlite://path`, `sqlite:///abs`),
    /// whose django-celery-beat tables Django's migrations created, and
    /// install the change log and its triggers.
    pub async fn connect(url: &str) -> Result<DjangoStore, Error> {
        let url = url.trim();
        let display = qcore::url::redact(url);
        let (db, pg_options) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (base, query) = url.split_once('?').unwrap_or((url, ""));
            let mut schema = None;
            let mut rest = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("schema", v)) => schema = Some(v.to_string()),
                    _ => rest.push(pair),
                }
            }
            let pg_url = if rest.is_empty() { base.to_string() } else { format!("{base}?{}", rest.join("&")) };
            let mut options = PgConnectOptions::from_str(&pg_url)
                .map_err(|e| Error::Config(format!("invalid PostgreSQL URL {display}: {e}")))?;
            if let Some(s) = schema {
                if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(Error::Config(format!("invalid PostgreSQL schema name {s:?}")));
                }
                options = options.options([("search_path", s)]);
            }
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options.clone())
                .await
                .map_err(db_err)?;
            (Db::Pg(pool), Some(options))
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() || path.contains('?') {
                return Err(Error::Config(format!("sqlite URL {url:?}: expected sqlite://path/to/db.sqlite3")));
            }
            let options = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(false)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(2)
                .connect_with(options)
                .await
                .map_err(|e| Error::Config(format!("cannot open the Django database {url}: {e}")))?;
            (Db::Lite(pool), None)
        } else {
            return Err(Error::Config(format!(
                "unsupported Django database URL {display}: expected postgres://, postgresql:// or sqlite://"
            )));
        };
        let tables = if db.is_pg() {
            db.rows("SELECT to_regclass('django_celery_beat_periodictask')::text", vec![]).await?
        } else {
            db.rows(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'django_celery_beat_periodictask'",
                vec![],
            )
            .await?
        };
        if tables.first().and_then(|r| r.first()).and_then(|c| c.as_ref()).is_none() {
            return Err(Error::Config(format!(
                "{display}: no django_celery_beat_periodictask table (run Django's `manage.py migrate` with django_celery_beat installed)"
            )));
        }
        install(&db).await?;
        let (watch, listener) = match pg_options {
            Some(options) => {
                let (tx, rx) = watch::channel(0u64);
                let pool = PgPoolOptions::new().max_connections(1).connect_lazy_with(options);
                let mut listener = PgListener::connect_with(&pool).await.map_err(db_err)?;
                listener.listen(CHANNEL).await.map_err(db_err)?;
                let task = tokio::spawn(async move {
                    let mut n = 0u64;
                    loop {
                        // A notification wakes the beat at once; the timer
                        // covers notifications lost while the listening
                        // connection was being re-established.
                        tokio::select! {
                            r = listener.recv() => {
                                if let Err(e) = r {
                                    tracing::warn!(error = %e, "beat: LISTEN qtask_beat failed; reconnecting");
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                            }
                            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        }
                        n += 1;
                        if tx.send(n).is_err() {
                            break;
                        }
                    }
                });
                (Some(rx), Some(Arc::new(task)))
            }
            None => (None, None),
        };
        Ok(DjangoStore { db, display, known: Mutex::new(Known::default()), watch, _listener: listener })
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn select(&self) -> String {
        let d = &self.db;
        let cols = [
            d.text("t.id"),
            d.text("t.name"),
            d.text("t.task"),
            d.text("t.args"),
            d.text("t.kwargs"),
            d.text("t.queue"),
            d.text("t.exchange"),
            d.text("t.routing_key"),
            d.text("t.headers"),
            d.text("t.priority"),
            d.ts("t.expires"),
            d.text("t.expire_seconds"),
            d.boolean("t.one_off"),
            d.ts("t.start_time"),
            d.boolean("t.enabled"),
            d.ts("t.last_run_at"),
            d.text("t.total_run_count"),
            d.text("i.every"),
            d.text("i.period"),
            d.text("c.minute"),
            d.text("c.hour"),
            d.text("c.day_of_week"),
            d.text("c.day_of_month"),
            d.text("c.month_of_year"),
            d.text("c.timezone"),
            d.text("s.event"),
            d.text("s.latitude"),
            d.text("s.longitude"),
            d.ts("k.clocked_time"),
        ];
        format!(
            "SELECT {} FROM {TASKS} t \
             LEFT JOIN django_celery_beat_intervalschedule i ON i.id = t.interval_id \
             LEFT JOIN django_celery_beat_crontabschedule c ON c.id = t.crontab_id \
             LEFT JOIN django_celery_beat_solarschedule s ON s.id = t.solar_id \
             LEFT JOIN django_celery_beat_clockedschedule k ON k.id = t.clocked_id",
            cols.join(", ")
        )
    }

    async fn max_seq(&self) -> Result<u64, Error> {
        let rows =
            self.db.rows(&format!("SELECT {} FROM qtask_beat_changes", self.db.text("max(seq)")), vec![]).await?;
        Ok(rows.first().and_then(|r| r.first()).and_then(|c| c.as_deref()).and_then(|s| s.parse().ok()).unwrap_or(0))
    }

    /// Rows to stored entries; a row that cannot be read is logged and
    /// left out (it is read again when it changes).
    fn entries(&self, rows: Vec<Vec<Option<String>>>) -> Vec<(i64, Stored)> {
        rows.into_iter()
            .filter_map(|r| match row_entry(&r) {
                Ok(x) => Some(x),
                Err((name, e)) => {
                    tracing::error!(entry = %name, error = %e, "beat: a django-celery-beat entry cannot be read; not scheduled");
                    None
                }
            })
            .collect()
    }
}

/// The change log and its triggers.
async fn install(db: &Db) -> Result<(), Error> {
    match db {
        Db::Pg(pool) => {
            let mut tx = pool.begin().await.map_err(db_err)?;
            let mut stmts = vec![
                // Beats starting together install one at a time.
                "SELECT pg_advisory_xact_lock(hashtext('qtask_beat_install'))".to_string(),
                "CREATE TABLE IF NOT EXISTS qtask_beat_changes (seq bigserial PRIMARY KEY, task_id integer NOT NULL, \
                 changed_at timestamptz NOT NULL DEFAULT now())"
                    .to_string(),
                format!(
                    "CREATE OR REPLACE FUNCTION qtask_beat_task_changed() RETURNS trigger LANGUAGE plpgsql AS $f$ \
                     BEGIN \
                       IF TG_OP = 'DELETE' THEN \
                         INSERT INTO qtask_beat_changes (task_id) VALUES (OLD.id); \
                       ELSIF TG_OP = 'INSERT' OR ({new}) IS DISTINCT FROM ({old}) THEN \
                         INSERT INTO qtask_beat_changes (task_id) VALUES (NEW.id); \
                       ELSE \
                         RETURN NULL; \
                       END IF; \
                       PERFORM pg_notify('{CHANNEL}', ''); \
                       RETURN NULL; \
                     END $f$",
                    new = EDIT_COLUMNS.iter().map(|c| format!("NEW.{c}")).collect::<Vec<_>>().join(", "),
                    old = EDIT_COLUMNS.iter().map(|c| format!("OLD.{c}")).collect::<Vec<_>>().join(", "),
                ),
                format!(
                    "CREATE OR REPLACE FUNCTION qtask_beat_schedule_changed() RETURNS trigger LANGUAGE plpgsql AS $f$ \
                     BEGIN \
                       EXECUTE format('INSERT INTO qtask_beat_changes (task_id) SELECT id FROM {TASKS} WHERE %I = $1', TG_ARGV[0]) \
                         USING NEW.id; \
                       PERFORM pg_notify('{CHANNEL}', ''); \
                       RETURN NULL; \
                     END $f$"
                ),
                format!("DROP TRIGGER IF EXISTS qtask_beat_changed ON {TASKS}"),
                format!(
                    "CREATE TRIGGER qtask_beat_changed AFTER INSERT OR UPDATE OR DELETE ON {TASKS} \
                     FOR EACH ROW EXECUTE FUNCTION qtask_beat_task_changed()"
                ),
                "CREATE INDEX IF NOT EXISTS qtask_beat_changes_at ON qtask_beat_changes (changed_at)".to_string(),
            ];
            for (table, column) in SCHEDULE_TABLES {
                stmts.push(format!("DROP TRIGGER IF EXISTS qtask_beat_changed ON {table}"));
                stmts.push(format!(
                    "CREATE TRIGGER qtask_beat_changed AFTER UPDATE ON {table} \
                     FOR EACH ROW EXECUTE FUNCTION qtask_beat_schedule_changed('{column}')"
                ));
            }
            for s in stmts {
                sqlx::query(&s).execute(&mut *tx).await.map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)?;
        }
        Db::Lite(pool) => {
            let differs =
                EDIT_COLUMNS.iter().map(|c| format!("OLD.{c} IS NOT NEW.{c}")).collect::<Vec<_>>().join(" OR ");
            let mut stmts = vec![
                "CREATE TABLE IF NOT EXISTS qtask_beat_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
                 task_id INTEGER NOT NULL, changed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')))"
                    .to_string(),
                "CREATE INDEX IF NOT EXISTS qtask_beat_changes_at ON qtask_beat_changes (changed_at)".to_string(),
                "DROP TRIGGER IF EXISTS qtask_beat_insert".to_string(),
                format!(
                    "CREATE TRIGGER qtask_beat_insert AFTER INSERT ON {TASKS} \
                     BEGIN INSERT INTO qtask_beat_changes (task_id) VALUES (NEW.id); END"
                ),
                "DROP TRIGGER IF EXISTS qtask_beat_delete".to_string(),
                format!(
                    "CREATE TRIGGER qtask_beat_delete AFTER DELETE ON {TASKS} \
                     BEGIN INSERT INTO qtask_beat_changes (task_id) VALUES (OLD.id); END"
                ),
                "DROP TRIGGER IF EXISTS qtask_beat_update".to_string(),
                format!(
                    "CREATE TRIGGER qtask_beat_update AFTER UPDATE ON {TASKS} WHEN {differs} \
                     BEGIN INSERT INTO qtask_beat_changes (task_id) VALUES (NEW.id); END"
                ),
            ];
            for (table, column) in SCHEDULE_TABLES {
                let name = format!("qtask_beat_{}", column.trim_end_matches("_id"));
                stmts.push(format!("DROP TRIGGER IF EXISTS {name}"));
                stmts.push(format!(
                    "CREATE TRIGGER {name} AFTER UPDATE ON {table} \
                     BEGIN INSERT INTO qtask_beat_changes (task_id) SELECT id FROM {TASKS} WHERE {column} = NEW.id; END"
                ));
            }
            let mut tx = pool.begin().await.map_err(db_err)?;
            for s in stmts {
                sqlx::query(&s).execute(&mut *tx).await.map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)?;
        }
    }
    Ok(())
}

fn col(r: &[Option<String>], i: usize) -> Option<&str> {
    r.get(i).and_then(|c| c.as_deref())
}

/// One row of [`DjangoStore::select`] as an entry; the error names it.
fn row_entry(r: &[Option<String>]) -> Result<(i64, Stored), (String, String)> {
    let name = col(r, 1).unwrap_or_default().to_string();
    let fail = |e: String| (name.clone(), e);
    let id: i64 = col(r, 0).and_then(|s| s.parse().ok()).ok_or_else(|| fail("no id".into()))?;
    let task = col(r, 2).unwrap_or_default().trim().to_string();
    if task.is_empty() {
        return Err(fail("no task name".into()));
    }
    let ts = |i: usize, what: &str| -> Result<Option<DateTime<Utc>>, (String, String)> {
        col(r, i).map(parse_ts).transpose().map_err(|e| fail(format!("{what}: {e}")))
    };
    let schedule = if let (Some(every), Some(period)) = (col(r, 17), col(r, 18)) {
        let every: u64 = every.parse().map_err(|_| fail(format!("interval every {every:?}")))?;
        let unit = match period {
            "days" => Duration::from_secs(86_400),
            "hours" => Duration::from_secs(3600),
            "minutes" => Duration::from_secs(60),
            "seconds" => Duration::from_secs(1),
            "microseconds" => Duration::from_micros(1),
            other => return Err(fail(format!("interval period {other:?}"))),
        };
        let every = unit.checked_mul(u32::try_from(every).unwrap_or(u32::MAX)).unwrap_or(Duration::MAX);
        Schedule::Interval(Interval::new(every).map_err(fail)?)
    } else if let Some(minute) = col(r, 19) {
        let f = |i: usize| CronField::from(col(r, i).unwrap_or("*"));
        let spec = CrontabSpec {
            minute: CronField::from(minute),
            hour: f(20),
            day_of_week: f(21),
            day_of_month: f(22),
            month_of_year: f(23),
        };
        Schedule::Crontab(Crontab::celery(&spec).map_err(fail)?)
    } else if let Some(event) = col(r, 25) {
        let num = |i: usize| {
            col(r, i).and_then(|s| s.parse::<f64>().ok()).ok_or_else(|| fail("solar latitude/longitude".into()))
        };
        Schedule::Solar(Solar::new(event, num(26)?, num(27)?).map_err(fail)?)
    } else if let Some(at) = ts(28, "clocked_time")? {
        Schedule::Clocked(Clocked { at })
    } else {
        return Err(fail("no interval, crontab, solar or clocked schedule".into()));
    };
    let json = |i: usize, default: &str| -> Result<serde_json::Value, (String, String)> {
        let text = col(r, i).filter(|s| !s.trim().is_empty()).unwrap_or(default);
        serde_json::from_str(text).map_err(|e| fail(format!("JSON {text:?}: {e}")))
    };
    let args = match json(3, "[]")? {
        serde_json::Value::Array(a) => a,
        other => return Err(fail(format!("args: expected a JSON list, got {other}"))),
    };
    let kwargs = match json(4, "{}")? {
        serde_json::Value::Object(m) => m,
        other => return Err(fail(format!("kwargs: expected a JSON object, got {other}"))),
    };
    let mut headers = match json(8, "{}")? {
        serde_json::Value::Object(m) => m,
        serde_json::Value::Null => serde_json::Map::new(),
        other => return Err(fail(format!("headers: expected a JSON object, got {other}"))),
    };
    headers.insert("periodic_task_name".into(), serde_json::Value::String(name.clone()));
    let mut options = EntryOptions::default();
    options.queue = col(r, 5).filter(|s| !s.is_empty()).map(str::to_string);
    options.exchange = col(r, 6).filter(|s| !s.is_empty()).map(str::to_string);
    options.routing_key = col(r, 7).filter(|s| !s.is_empty()).map(str::to_string);
    options.priority = col(r, 9).and_then(|s| s.parse::<i64>().ok()).map(|p| p.clamp(0, 255) as u8);
    options.expires = match (ts(10, "expires")?, col(r, 11).and_then(|s| s.parse::<u64>().ok())) {
        (Some(at), _) => Some(Expires::At(at)),
        (None, Some(secs)) => Some(Expires::In(Duration::from_secs(secs))),
        (None, None) => None,
    };
    options.headers = headers;
    let mut entry = Entry::new(name.clone(), task, schedule)
        .args(args)
        .kwargs(kwargs)
        .options(options)
        .enabled(col(r, 14) == Some("1"))
        .one_off(col(r, 12) == Some("1"))
        .start_time(ts(13, "start_time")?);
    if let (Some(tz), true) = (col(r, 24), matches!(entry.schedule, Schedule::Crontab(_))) {
        entry = entry.timezone(qbeat::tz::parse_zone(tz).map_err(|e| fail(format!("timezone: {e}")))?);
    }
    let state = RunState {
        last_run_at: ts(15, "last_run_at")?,
        total_run_count: col(r, 16).and_then(|s| s.parse().ok()).unwrap_or(0),
    };
    Ok((id, Stored { entry: Arc::new(entry), state }))
}

#[async_trait]
impl Store for DjangoStore {
    fn describe(&self) -> String {
        format!("django-celery-beat tables at {}", self.display)
    }

    async fn load(&self) -> Result<Snapshot, Error> {
        let cursor = self.max_seq().await?;
        let cutoff = Utc::now() - chrono::TimeDelta::hours(LOG_KEEP_HOURS);
        self.db
            .execute(
                &format!("DELETE FROM qtask_beat_changes WHERE changed_at < {}", self.db.ts_param(1)),
                vec![P::Text(Some(ts_value(&self.db, cutoff)))],
            )
            .await?;
        let rows = self.db.rows(&self.select(), vec![]).await?;
        let entries = self.entries(rows);
        let mut known = self.known();
        known.names = entries.iter().map(|(id, s)| (*id, s.entry.name.clone())).collect();
        Ok(Snapshot { entries: entries.into_iter().map(|(_, s)| s).collect(), cursor })
    }

    async fn changes_since(&self, cursor: u64) -> Result<Changes, Error> {
        let log = self
            .db
            .rows(
                &format!(
                    "SELECT {}, {} FROM qtask_beat_changes WHERE seq > $1 ORDER BY seq",
                    self.db.text("seq"),
                    self.db.text("task_id")
                ),
                vec![P::Int(i64::try_from(cursor).unwrap_or(i64::MAX))],
            )
            .await?;
        if log.is_empty() {
            let prune = {
                let mut known = self.known();
                known.polls += 1;
                known.polls.is_multiple_of(3600)
            };
            if prune {
                let cutoff = Utc::now() - chrono::TimeDelta::hours(LOG_KEEP_HOURS);
                self.db
                    .execute(
                        &format!("DELETE FROM qtask_beat_changes WHERE changed_at < {}", self.db.ts_param(1)),
                        vec![P::Text(Some(ts_value(&self.db, cutoff)))],
                    )
                    .await?;
            }
            return Ok(Changes { upserted: Vec::new(), removed: Vec::new(), cursor });
        }
        let mut new_cursor = cursor;
        let mut ids = Vec::new();
        for r in &log {
            if let (Some(seq), Some(id)) =
                (col(r, 0).and_then(|s| s.parse::<u64>().ok()), col(r, 1).and_then(|s| s.parse::<i64>().ok()))
            {
                new_cursor = new_cursor.max(seq);
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        let rows = self.db.rows(&format!("{} WHERE t.id IN ({list})", self.select()), vec![]).await?;
        // The ids seen in the rows, readable or not.
        let present: Vec<i64> = rows.iter().filter_map(|r| col(r, 0).and_then(|s| s.parse().ok())).collect();
        let entries = self.entries(rows);
        let mut known = self.known();
        let mut removed = Vec::new();
        for id in &ids {
            let now_name = entries.iter().find(|(i, _)| i == id).map(|(_, s)| s.entry.name.clone());
            match (known.names.get(id).cloned(), now_name) {
                (Some(old), Some(new)) if old != new => removed.push(old),
                (Some(old), None) => {
                    // Deleted, or no longer readable: not scheduled either way.
                    removed.push(old);
                    if !present.contains(id) {
                        known.names.remove(id);
                    }
                }
                _ => {}
            }
        }
        for (id, s) in &entries {
            known.names.insert(*id, s.entry.name.clone());
        }
        Ok(Changes { upserted: entries.into_iter().map(|(_, s)| s).collect(), removed, cursor: new_cursor })
    }

    fn watch(&self) -> Option<watch::Receiver<u64>> {
        self.watch.clone()
    }

    async fn upsert(&self, entry: Entry) -> Result<(), Error> {
        Err(Error::Config(format!(
            "entry {:?}: django-celery-beat entries are edited in Django (its admin or ORM), not by the beat",
            entry.name
        )))
    }

    async fn remove(&self, name: &str) -> Result<bool, Error> {
        Err(Error::Config(format!(
            "entry {name:?}: django-celery-beat entries are deleted in Django (its admin or ORM), not by the beat"
        )))
    }

    async fn set_enabled(&self, name: &str, enabled: bool) -> Result<bool, Error> {
        let d = &self.db;
        let n = if enabled {
            d.execute(
                &format!(
                    "UPDATE {TASKS} SET enabled = {}, date_changed = {} WHERE name = $1",
                    sql_bool(d, true),
                    d.now()
                ),
                vec![P::Text(Some(name.to_string()))],
            )
            .await?
        } else {
            // As PeriodicTask.save() of a disabled (one-off) task: no last
            // run, the run count reset.
            d.execute(
                &format!(
                    "UPDATE {TASKS} SET enabled = {}, last_run_at = NULL, total_run_count = 0, date_changed = {} WHERE name = $1",
                    sql_bool(d, false),
                    d.now()
                ),
                vec![P::Text(Some(name.to_string()))],
            )
            .await?
        };
        if n > 0 {
            // Django's change marker, for a Python beat sharing the tables.
            let upsert = if d.is_pg() {
                "INSERT INTO django_celery_beat_periodictasks (ident, last_update) VALUES (1, now()) \
                 ON CONFLICT (ident) DO UPDATE SET last_update = now()"
                    .to_string()
            } else {
                format!(
                    "INSERT INTO django_celery_beat_periodictasks (ident, last_update) VALUES (1, {now}) \
                     ON CONFLICT (ident) DO UPDATE SET last_update = {now}",
                    now = d.now()
                )
            };
            d.execute(&upsert, vec![]).await?;
        }
        Ok(n > 0)
    }

    async fn claim(&self, claim: &Claim) -> Result<bool, Error> {
        let d = &self.db;
        let slot = ts_value(d, claim.slot);
        let n = d
            .execute(
                &format!(
                    "UPDATE {TASKS} SET last_run_at = {p2}, total_run_count = total_run_count + 1 \
                     WHERE name = $1 AND (last_run_at IS NULL OR last_run_at < {p3})",
                    p2 = d.ts_param(2),
                    p3 = d.ts_param(3)
                ),
                vec![P::Text(Some(claim.entry.clone())), P::Text(Some(slot.clone())), P::Text(Some(slot))],
            )
            .await?;
        Ok(n == 1)
    }
}

fn sql_bool(d: &Db, b: bool) -> &'static str {
    match (d.is_pg(), b) {
        (true, true) => "true",
        (true, false) => "false",
        (false, true) => "1",
        (false, false) => "0",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_as_django_writes_them() {
        let at = parse_ts("2026-12-06 05:24:28.123456").unwrap();
        assert_eq!(at.to_rfc3339(), "2026-12-06T05:24:28.123456+00:00");
        assert_eq!(parse_ts("2026-12-06 05:24:28").unwrap().timestamp(), at.timestamp());
        assert_eq!(parse_ts("2026-12-06 05:24:28+00:00").unwrap().timestamp(), at.timestamp());
        assert!(parse_ts("yesterday").is_err());
    }
}
