//! Tables: Celery's `celery_taskmeta` / `celery_tasksetmeta` (created as
//! Celery creates them, or reused as found) and qtask's own tables, created
//! by embedded migrations recorded in `qtask_schema_version`.

use std::collections::HashSet;

use sqlx::{Executor, PgPool, Row, SqlitePool};

use crate::util::Names;

/// One embedded migration.
struct Migration {
    version: i32,
    description: &'static str,
    /// SQL with `{p}` standing for the schema prefix (`"schema".` or nothing).
    pg: &'static str,
    sqlite: &'static str,
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "result extras, chord join, broker messages, dead letters, fanout",
    pg: r#"
CREATE TABLE IF NOT EXISTS {p}qtask_result_ext (
    task_id text PRIMARY KEY,
    expires_at timestamptz,
    meta text
);
CREATE INDEX IF NOT EXISTS qtask_result_ext_expires ON {p}qtask_result_ext (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {p}qtask_chord (
    group_id varchar(155) PRIMARY KEY,
    size bigint NOT NULL,
    done bigint NOT NULL DEFAULT 0,
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {p}qtask_chord_part (
    group_id varchar(155) NOT NULL,
    task_id varchar(155) NOT NULL,
    idx bigint NOT NULL,
    status varchar(50) NOT NULL,
    result bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT qtask_chord_part_key UNIQUE (group_id, task_id, idx)
);
CREATE TABLE IF NOT EXISTS {p}qtask_messages (
    id bigserial PRIMARY KEY,
    queue text NOT NULL,
    priority smallint NOT NULL DEFAULT 0,
    headers json NOT NULL,
    properties json NOT NULL,
    body bytea NOT NULL,
    available_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz NOT NULL DEFAULT now(),
    delivered_count integer NOT NULL DEFAULT 0,
    lease_until timestamptz,
    consumer text
);
CREATE INDEX IF NOT EXISTS qtask_messages_due ON {p}qtask_messages (queue, priority DESC, available_at, id);
CREATE TABLE IF NOT EXISTS {p}qtask_dead_letters (
    id bigserial PRIMARY KEY,
    queue text NOT NULL,
    headers text NOT NULL,
    properties text NOT NULL,
    body bytea NOT NULL,
    reason text NOT NULL,
    delivered_count integer NOT NULL,
    original_id bigint,
    dead_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS qtask_dead_letters_queue ON {p}qtask_dead_letters (queue, id);
CREATE TABLE IF NOT EXISTS {p}qtask_fanout (
    id bigserial PRIMARY KEY,
    payload text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"#,
    sqlite: r#"
CREATE TABLE IF NOT EXISTS qtask_result_ext (
    task_id TEXT PRIMARY KEY,
    expires_at INTEGER,
    meta TEXT
);
CREATE INDEX IF NOT EXISTS qtask_result_ext_expires ON qtask_result_ext (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS qtask_chord (
    group_id VARCHAR(155) PRIMARY KEY,
    size INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS qtask_chord_part (
    group_id VARCHAR(155) NOT NULL,
    task_id VARCHAR(155) NOT NULL,
    idx INTEGER NOT NULL,
    status VARCHAR(50) NOT NULL,
    result BLOB,
    created_at INTEGER NOT NULL DEFAULT 0,
    UNIQUE (group_id, task_id, idx)
);
CREATE TABLE IF NOT EXISTS qtask_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    headers TEXT NOT NULL,
    properties TEXT NOT NULL,
    body BLOB NOT NULL,
    available_at INTEGER NOT NULL,
    published_at INTEGER NOT NULL,
    delivered_count INTEGER NOT NULL DEFAULT 0,
    lease_until INTEGER,
    consumer TEXT
);
CREATE INDEX IF NOT EXISTS qtask_messages_due ON qtask_messages (queue, priority DESC, available_at, id);
CREATE TABLE IF NOT EXISTS qtask_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    headers TEXT NOT NULL,
    properties TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    delivered_count INTEGER NOT NULL,
    original_id INTEGER,
    dead_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS qtask_dead_letters_queue ON qtask_dead_letters (queue, id);
"#,
}];

/// Celery's tables as SQLAlchemy creates them on PostgreSQL (`pg_dump` of a
/// Celery 5.7 database, see `tests/fixtures/schema-default.pg_dump.sql`).
const CELERY_PG_TASK: &str = r#"
CREATE SEQUENCE IF NOT EXISTS {p}task_id_sequence START WITH 1 INCREMENT BY 1 NO MINVALUE NO MAXVALUE CACHE 1;
CREATE TABLE IF NOT EXISTS {p}celery_taskmeta (
    id integer NOT NULL,
    task_id character varying(155),
    status character varying(50),
    result bytea,
    date_done timestamp without time zone,
    traceback text,
    children bytea,
    name character varying(155),
    args bytea,
    kwargs bytea,
    worker character varying(155),
    retries integer,
    queue character varying(155),
    stamps bytea,
    CONSTRAINT celery_taskmeta_pkey PRIMARY KEY (id),
    CONSTRAINT celery_taskmeta_task_id_key UNIQUE (task_id)
);
CREATE INDEX IF NOT EXISTS ix_celery_taskmeta_date_done ON {p}celery_taskmeta USING btree (date_done);
"#;

/// The group table, as [`CELERY_PG_TASK`].
const CELERY_PG_TASKSET: &str = r#"
CREATE SEQUENCE IF NOT EXISTS {p}taskset_id_sequence START WITH 1 INCREMENT BY 1 NO MINVALUE NO MAXVALUE CACHE 1;
CREATE TABLE IF NOT EXISTS {p}celery_tasksetmeta (
    id integer NOT NULL,
    taskset_id character varying(155),
    result bytea,
    date_done timestamp without time zone,
    CONSTRAINT celery_tasksetmeta_pkey PRIMARY KEY (id),
    CONSTRAINT celery_tasksetmeta_taskset_id_key UNIQUE (taskset_id)
);
CREATE INDEX IF NOT EXISTS ix_celery_tasksetmeta_date_done ON {p}celery_tasksetmeta USING btree (date_done);
"#;

/// Celery's tables as SQLAlchemy creates them on SQLite (`sqlite_autoincrement`).
const CELERY_SQLITE: &str = r#"
CREATE TABLE IF NOT EXISTS celery_taskmeta (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    task_id VARCHAR(155) UNIQUE,
    status VARCHAR(50),
    result BLOB,
    date_done DATETIME,
    traceback TEXT,
    children BLOB,
    name VARCHAR(155),
    args BLOB,
    kwargs BLOB,
    worker VARCHAR(155),
    retries INTEGER,
    queue VARCHAR(155),
    stamps BLOB
);
CREATE TABLE IF NOT EXISTS celery_tasksetmeta (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    taskset_id VARCHAR(155) UNIQUE,
    result BLOB,
    date_done DATETIME
);
CREATE INDEX IF NOT EXISTS ix_celery_taskmeta_date_done ON celery_taskmeta (date_done);
CREATE INDEX IF NOT EXISTS ix_celery_tasksetmeta_date_done ON celery_tasksetmeta (date_done);
"#;

/// What was found of Celery's tables after setup.
#[derive(Debug, Clone, Default)]
pub(crate) struct CeleryLayout {
    /// Column names of `celery_taskmeta`.
    pub(crate) task_columns: HashSet<String>,
    /// `task_id_sequence` exists (PostgreSQL): ids come from `nextval`.
    pub(crate) task_seq: bool,
    /// `taskset_id_sequence` exists (PostgreSQL).
    pub(crate) taskset_seq: bool,
}

impl CeleryLayout {
    pub(crate) fn has(&self, column: &str) -> bool {
        self.task_columns.contains(column)
    }
}

fn regclass(names: &Names, name: &str) -> String {
    format!("SELECT to_regclass('{}') IS NOT NULL", names.t(name).replace('\'', "''"))
}

fn fill(sql: &str, names: &Names) -> String {
    sql.replace("{p}", &names.t(""))
}

/// Apply qtask's migrations (and create Celery's tables when `celery`) in
/// the schema, serialised by an advisory lock so concurrent starts are safe.
pub(crate) async fn migrate_pg(
    pool: &PgPool,
    names: &Names,
    schema: Option<&str>,
    celery: bool,
) -> Result<CeleryLayout, sqlx::Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match migrate_pg_once(pool, names, schema, celery).await {
            Ok(l) => return Ok(l),
            // A process that does not take our lock (Python's SQLAlchemy)
            // created a table at the same moment: look again.
            Err(sqlx::Error::Database(e)) if attempt < 3 && matches!(e.code().as_deref(), Some("23505" | "42P07")) => {
                tracing::debug!(error = %e, "concurrent table creation; retrying setup");
            }
            Err(e) => return Err(e),
        }
    }
}

async fn migrate_pg_once(
    pool: &PgPool,
    names: &Names,
    schema: Option<&str>,
    celery: bool,
) -> Result<CeleryLayout, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(names.lock_key()).execute(&mut *tx).await?;
    if let Some(s) = schema {
        (&mut *tx).execute((format!("CREATE SCHEMA IF NOT EXISTS \"{s}\"")).as_str()).await?;
    }
    let version_table = names.t("qtask_schema_version");
    (&mut *tx).execute((format!(
        "CREATE TABLE IF NOT EXISTS {version_table} (version integer PRIMARY KEY, description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )).as_str())
    .await?;
    let current: i32 = sqlx::query_scalar(&format!("SELECT COALESCE(MAX(version), 0) FROM {version_table}"))
        .fetch_one(&mut *tx)
        .await?;
    let pending: Vec<&Migration> = MIGRATIONS.iter().filter(|m| m.version > current).collect();
    for m in pending {
        (&mut *tx).execute((fill(m.pg, names)).as_str()).await?;
        sqlx::query(&format!("INSERT INTO {version_table} (version, description) VALUES ($1, $2)"))
            .bind(m.version)
            .bind(m.description)
            .execute(&mut *tx)
            .await?;
        tracing::info!(version = m.version, schema = %names.schema_key, "applied qtask migration");
    }
    // Tables found are reused exactly as they are (created by Python Celery,
    // with or without the extended columns); only missing ones are created.
    for (table, ddl) in [("celery_taskmeta", CELERY_PG_TASK), ("celery_tasksetmeta", CELERY_PG_TASKSET)] {
        let exists: bool = sqlx::query_scalar(&regclass(names, table)).fetch_one(&mut *tx).await?;
        if !exists && celery {
            (&mut *tx).execute((fill(ddl, names)).as_str()).await?;
        }
    }
    let cols: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'celery_taskmeta' \
         AND table_schema = COALESCE($1, current_schema())",
    )
    .bind(schema)
    .fetch_all(&mut *tx)
    .await?;
    let task_seq: bool = sqlx::query_scalar(&regclass(names, "task_id_sequence")).fetch_one(&mut *tx).await?;
    let taskset_seq: bool = sqlx::query_scalar(&regclass(names, "taskset_id_sequence")).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(CeleryLayout { task_columns: cols.into_iter().collect(), task_seq, taskset_seq })
}

/// The SQLite counterpart of [`migrate_pg`], serialised by `BEGIN IMMEDIATE`.
pub(crate) async fn migrate_sqlite(pool: &SqlitePool, celery: bool) -> Result<CeleryLayout, sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    (&mut *tx).execute("CREATE TABLE IF NOT EXISTS qtask_schema_version (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",)
    .await?;
    let current: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM qtask_schema_version").fetch_one(&mut *tx).await?;
    let pending: Vec<&Migration> = MIGRATIONS.iter().filter(|m| i64::from(m.version) > current).collect();
    for m in pending {
        (&mut *tx).execute(m.sqlite).await?;
        sqlx::query("INSERT INTO qtask_schema_version (version, description) VALUES (?, ?)")
            .bind(m.version)
            .bind(m.description)
            .execute(&mut *tx)
            .await?;
        tracing::info!(version = m.version, "applied qtask migration (sqlite)");
    }
    if celery {
        (&mut *tx).execute(CELERY_SQLITE).await?;
    }
    let rows = sqlx::query("SELECT name FROM pragma_table_info('celery_taskmeta')").fetch_all(&mut *tx).await?;
    let mut cols = HashSet::new();
    for r in rows {
        cols.insert(r.try_get::<String, _>(0)?);
    }
    tx.commit().await?;
    Ok(CeleryLayout { task_columns: cols, task_seq: false, taskset_seq: false })
}
