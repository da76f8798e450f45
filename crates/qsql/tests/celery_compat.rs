//! Python Celery compatibility at the SQL level: the rows qtask writes are
//! the rows Celery's database backend writes, and tables created by Celery
//! (its `pg_dump`, with and without the extended columns) are used as they
//! are, including the rows Python wrote.

mod common;

use std::time::Duration;

use chrono::NaiveDateTime;
use common::{pg_url, PgSchema, TempDb};
use qcore::{ResultBackend, ResultMeta, State};
use qsql::{SqlBackend, SqlOptions};
use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection, Row, SqliteConnection};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn rows(name: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(&fixture(name)).unwrap().as_array().unwrap().clone()
}

/// `"\\x3130"` (psql's bytea text) as bytes.
fn bytea(v: &Value) -> Option<Vec<u8>> {
    let s = v.as_str()?.strip_prefix("\\x")?;
    Some((0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect())
}

fn opt_str(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// The document Python stored in a captured row.
fn meta_of(row: &Value) -> ResultMeta {
    let result: Value = serde_json::from_slice(&bytea(&row["result"]).unwrap()).unwrap();
    let mut m =
        ResultMeta::new(row["task_id"].as_str().unwrap(), State::parse(row["status"].as_str().unwrap()), result);
    m.traceback = opt_str(&row["traceback"]);
    m.name = opt_str(&row["name"]);
    m.args = bytea(&row["args"]).map(|b| serde_json::from_slice(&b).unwrap());
    m.kwargs = bytea(&row["kwargs"]).map(|b| serde_json::from_slice(&b).unwrap());
    m.worker = opt_str(&row["worker"]);
    m.retries = row["retries"].as_u64().map(|r| r as u32);
    m.queue = opt_str(&row["queue"]);
    m
}

/// Columns of `celery_taskmeta` compared with the capture (`id` and
/// `date_done` differ between runs).
const COMPARED: [&str; 12] = [
    "task_id",
    "status",
    "result",
    "traceback",
    "children",
    "name",
    "args",
    "kwargs",
    "worker",
    "retries",
    "queue",
    "stamps",
];

fn captured(row: &Value, col: &str) -> Value {
    match col {
        "result" | "children" | "args" | "kwargs" | "stamps" => match bytea(&row[col]) {
            Some(b) => Value::String(String::from_utf8(b).unwrap()),
            None => Value::Null,
        },
        _ => row[col].clone(),
    }
}

async fn pg() -> PgConnection {
    PgConnection::connect(&pg_url())
        .await
        .expect("PostgreSQL at QTASK_TEST_PG_URL (default postgres@127.0.0.1:5432/test)")
}

async fn pg_row(conn: &mut PgConnection, schema: &str, task_id: &str) -> (Vec<Value>, NaiveDateTime, i32) {
    let sql = format!(
        "SELECT task_id::text, status::text, convert_from(result, 'UTF8'), traceback, convert_from(children, 'UTF8'), \
         name::text, convert_from(args, 'UTF8'), convert_from(kwargs, 'UTF8'), worker::text, retries, queue::text, \
         convert_from(stamps, 'UTF8'), date_done, id FROM \"{schema}\".celery_taskmeta WHERE task_id = $1"
    );
    let r = sqlx::query(&sql).bind(task_id).fetch_one(conn).await.unwrap();
    let mut out = Vec::new();
    for i in 0..12 {
        out.push(if i == 9 {
            r.get::<Option<i32>, _>(i).map_or(Value::Null, Value::from)
        } else {
            r.get::<Option<String>, _>(i).map_or(Value::Null, Value::from)
        });
    }
    (out, r.get(12), r.get(13))
}

async fn store_captured_and_compare(file: &str) {
    let schema = PgSchema::new();
    let backend = SqlBackend::connect(&schema.url(), SqlOptions::new()).await.unwrap();
    let mut conn = pg().await;
    let mut last_id = 0;
    for row in rows(file) {
        let meta = meta_of(&row);
        let before = chrono::Utc::now().naive_utc();
        backend.store(&meta, Some(Duration::from_secs(3600))).await.unwrap();
        let (got, date_done, id) = pg_row(&mut conn, &schema.name, &meta.task_id).await;
        for (i, col) in COMPARED.iter().enumerate() {
            assert_eq!(got[i], captured(&row, col), "{file}: column {col} of {}", meta.task_id);
        }
        assert!(date_done >= before - chrono::Duration::seconds(1), "date_done is not naive UTC now: {date_done}");
        assert!(id > last_id, "ids come from task_id_sequence in order");
        last_id = id;
        // And Python's reader would get the same document back.
        let back = backend.get(&meta.task_id).await.unwrap().unwrap();
        assert_eq!((back.status, back.result), (meta.status.clone(), meta.result.clone()));
    }
}

#[tokio::test]
async fn rows_written_match_celerys_default_rows() {
    store_captured_and_compare("celery_taskmeta-rows-default.bytea-decoded.json").await;
}

#[tokio::test]
async fn rows_written_match_celerys_extended_rows() {
    store_captured_and_compare("celery_taskmeta-rows-extended.bytea-decoded.json").await;
}

/// Celery's `pg_dump` loaded into `schema` (optionally without the
/// extended columns), with the rows Python wrote.
async fn load_celery_dump(conn: &mut PgConnection, schema: &str, extended: bool) {
    let mut sql = format!("CREATE SCHEMA \"{schema}\";\n");
    for line in fixture("schema-default.pg_dump.sql").lines() {
        if line.starts_with('\\') || line.contains("set_config('search_path'") {
            continue;
        }
        if !extended
            && ["name ", "args ", "kwargs ", "worker ", "retries ", "queue ", "stamps "]
                .iter()
                .any(|c| line.trim_start().starts_with(c))
        {
            continue;
        }
        let line = if !extended && line.trim() == "children bytea," { "    children bytea" } else { line };
        sql.push_str(&line.replace("public.", &format!("\"{schema}\".")));
        sql.push('\n');
    }
    conn.execute(sql.as_str()).await.unwrap();
    let file = if extended {
        "celery_taskmeta-rows-extended.bytea-decoded.json"
    } else {
        "celery_taskmeta-rows-default.bytea-decoded.json"
    };
    for row in rows(file) {
        let q = format!(
            "INSERT INTO \"{schema}\".celery_taskmeta (id, task_id, status, result, date_done, traceback) \
             VALUES (nextval('\"{schema}\".task_id_sequence'), $1, $2, $3, $4::timestamp, $5)"
        );
        sqlx::query(&q)
            .bind(row["task_id"].as_str())
            .bind(row["status"].as_str())
            .bind(bytea(&row["result"]))
            .bind(row["date_done"].as_str())
            .bind(row["traceback"].as_str())
            .execute(&mut *conn)
            .await
            .unwrap();
        if extended {
            let q = format!(
                "UPDATE \"{schema}\".celery_taskmeta SET name = $2, args = $3, kwargs = $4, worker = $5, retries = $6, queue = $7 WHERE task_id = $1"
            );
            sqlx::query(&q)
                .bind(row["task_id"].as_str())
                .bind(row["name"].as_str())
                .bind(bytea(&row["args"]))
                .bind(bytea(&row["kwargs"]))
                .bind(row["worker"].as_str())
                .bind(row["retries"].as_i64().map(|r| r as i32))
                .bind(row["queue"].as_str())
                .execute(&mut *conn)
                .await
                .unwrap();
        }
    }
    for row in rows("celery_tasksetmeta-rows-default.json") {
        let q = format!(
            "INSERT INTO \"{schema}\".celery_tasksetmeta (id, taskset_id, result, date_done) \
             VALUES (nextval('\"{schema}\".taskset_id_sequence'), $1, $2, $3::timestamp)"
        );
        sqlx::query(&q)
            .bind(row["taskset_id"].as_str())
            .bind(bytea(&row["result"]))
            .bind(row["date_done"].as_str())
            .execute(&mut *conn)
            .await
            .unwrap();
    }
}

async fn columns(conn: &mut PgConnection, schema: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name LIKE 'celery_%' ORDER BY table_name, ordinal_position",
    )
    .bind(schema)
    .fetch_all(conn)
    .await
    .unwrap()
}

async fn reuses_celery_tables(extended: bool) {
    let schema = PgSchema::new();
    let mut conn = pg().await;
    load_celery_dump(&mut conn, &schema.name, extended).await;
    let before = columns(&mut conn, &schema.name).await;
    assert_eq!(before.iter().any(|c| c.1 == "name"), extended);

    let backend = SqlBackend::connect(&schema.url(), SqlOptions::new()).await.unwrap();
    assert_eq!(columns(&mut conn, &schema.name).await, before, "qtask altered Celery's tables");

    // Rows written by Python read back as Python wrote them.
    let file = if extended {
        "celery_taskmeta-rows-extended.bytea-decoded.json"
    } else {
        "celery_taskmeta-rows-default.bytea-decoded.json"
    };
    for row in rows(file) {
        let want = meta_of(&row);
        let got = backend.get(&want.task_id).await.unwrap().expect("a Python row");
        assert_eq!(got.status, want.status);
        assert_eq!(got.result, want.result);
        assert_eq!(got.traceback, want.traceback);
        assert_eq!((got.name, got.args, got.worker, got.retries), (want.name, want.args, want.worker, want.retries));
        let date = NaiveDateTime::parse_from_str(row["date_done"].as_str().unwrap(), "%Y-%m-%dT%H:%M:%S%.f").unwrap();
        assert_eq!(got.date_done, Some(date.and_utc()));
    }
    let failure = rows(file).into_iter().find(|r| r["status"] == "FAILURE").unwrap();
    let exc = backend.get(failure["task_id"].as_str().unwrap()).await.unwrap().unwrap().exception().unwrap();
    assert_eq!((exc.exc_type.as_str(), exc.message()), ("ValueError", "boom".to_string()));

    // Groups saved by Python.
    let group = &rows("celery_tasksetmeta-rows-default.json")[0];
    let members = backend.get_group(group["taskset_id"].as_str().unwrap()).await.unwrap().unwrap();
    assert_eq!(members, vec!["2fe664c4-3b79-4ae0-92ae-a29b2ea48ebd", "b9e7773f-a439-4e93-b283-7c6f5f3e7c75"]);

    // qtask writes into the same table: ids continue the sequence, only
    // existing columns are written, and Python's SUCCESS rows are guarded.
    let mut m = ResultMeta::new(uuid::Uuid::new_v4().to_string(), State::Success, serde_json::json!([1, "x"]));
    m.name = Some("tasks.rust".into());
    m.args = Some(serde_json::json!([1]));
    backend.store(&m, None).await.unwrap();
    let name_col = if extended { "name::text" } else { "NULL::text" };
    let q = format!("SELECT id, {name_col} FROM \"{}\".celery_taskmeta WHERE task_id = $1", schema.name);
    let (id, name): (i32, Option<String>) = sqlx::query_as(&q).bind(&m.task_id).fetch_one(&mut conn).await.unwrap();
    assert!(id > 8, "id {id} does not continue task_id_sequence");
    assert_eq!(name.as_deref(), if extended { Some("tasks.rust") } else { None });
    let got = backend.get(&m.task_id).await.unwrap().unwrap();
    assert_eq!(got.result, m.result);
    assert_eq!(got.name.is_some(), extended);

    let python_success = rows(file).into_iter().find(|r| r["status"] == "SUCCESS").unwrap();
    let id = python_success["task_id"].as_str().unwrap();
    backend.store(&ResultMeta::new(id, State::Started, Value::Null), None).await.unwrap();
    assert_eq!(backend.get(id).await.unwrap().unwrap().status, State::Success, "Python's SUCCESS was overwritten");

    // A second start on the same tables changes nothing either.
    drop(SqlBackend::connect(&schema.url(), SqlOptions::new()).await.unwrap());
    assert_eq!(columns(&mut conn, &schema.name).await, before);
}

#[tokio::test]
async fn reuses_celery_tables_with_extended_columns() {
    reuses_celery_tables(true).await;
}

#[tokio::test]
async fn reuses_celery_tables_without_extended_columns() {
    reuses_celery_tables(false).await;
}

#[tokio::test]
async fn created_tables_match_celerys_ddl() {
    let created = PgSchema::new();
    let dumped = PgSchema::new();
    drop(SqlBackend::connect(&created.url(), SqlOptions::new()).await.unwrap());
    let mut conn = pg().await;
    conn.execute(format!("CREATE SCHEMA \"{}\"", dumped.name).as_str()).await.unwrap();
    let mut sql = String::new();
    for line in fixture("schema-default.pg_dump.sql").lines() {
        if !line.starts_with('\\') && !line.contains("set_config('search_path'") {
            sql.push_str(&line.replace("public.", &format!("\"{}\".", dumped.name)));
            sql.push('\n');
        }
    }
    conn.execute(sql.as_str()).await.unwrap();
    let full = |schema: String| {
        let q = "SELECT table_name::text, column_name::text, data_type::text, \
                 COALESCE(character_maximum_length, 0)::int4, is_nullable::text, COALESCE(column_default, '') \
                 FROM information_schema.columns WHERE table_schema = $1 AND table_name LIKE 'celery_%' \
                 ORDER BY table_name, ordinal_position";
        sqlx::query_as::<_, (String, String, String, i32, String, String)>(q).bind(schema)
    };
    let a = full(created.name.clone()).fetch_all(&mut conn).await.unwrap();
    let b = full(dumped.name.clone()).fetch_all(&mut conn).await.unwrap();
    assert_eq!(a, b, "celery tables created by qtask differ from Celery's");
    let idx = |schema: String| {
        sqlx::query_as::<_, (String,)>(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 AND tablename LIKE 'celery_%' ORDER BY 1",
        )
        .bind(schema)
    };
    assert_eq!(
        idx(created.name.clone()).fetch_all(&mut conn).await.unwrap(),
        idx(dumped.name.clone()).fetch_all(&mut conn).await.unwrap()
    );
    let seqs = |schema: String| {
        sqlx::query_as::<_, (String, String, i64, i64, i64)>(
            "SELECT sequencename::text, data_type::text, start_value, increment_by, cache_size FROM pg_sequences \
             WHERE schemaname = $1 AND sequencename NOT LIKE 'qtask%' ORDER BY 1",
        )
        .bind(schema)
    };
    let created_seqs = seqs(created.name.clone()).fetch_all(&mut conn).await.unwrap();
    assert_eq!(created_seqs, seqs(dumped.name.clone()).fetch_all(&mut conn).await.unwrap());
    assert_eq!(created_seqs.len(), 2, "task_id_sequence and taskset_id_sequence");
}

#[tokio::test]
async fn sqlite_rows_hold_the_same_bytes() {
    let db = TempDb::new();
    let backend = SqlBackend::connect(&db.url(), SqlOptions::new()).await.unwrap();
    let file = "celery_taskmeta-rows-extended.bytea-decoded.json";
    for row in rows(file) {
        backend.store(&meta_of(&row), None).await.unwrap();
    }
    let mut conn = SqliteConnection::connect(&db.url()).await.unwrap();
    for row in rows(file) {
        let r = sqlx::query(
            "SELECT task_id, status, result, traceback, children, name, args, kwargs, worker, retries, queue, stamps, \
             date_done, typeof(result) FROM celery_taskmeta WHERE task_id = ?1",
        )
        .bind(row["task_id"].as_str())
        .fetch_one(&mut conn)
        .await
        .unwrap();
        for (i, col) in COMPARED.iter().enumerate() {
            let got = match *col {
                "result" | "children" | "args" | "kwargs" | "stamps" => {
                    r.get::<Option<Vec<u8>>, _>(i).map_or(Value::Null, |b| Value::String(String::from_utf8(b).unwrap()))
                }
                "retries" => r.get::<Option<i64>, _>(i).map_or(Value::Null, Value::from),
                _ => r.get::<Option<String>, _>(i).map_or(Value::Null, Value::from),
            };
            assert_eq!(got, captured(&row, col), "column {col}");
        }
        let date: String = r.get(12);
        assert!(
            NaiveDateTime::parse_from_str(&date, "%Y-%m-%d %H:%M:%S%.6f").is_ok(),
            "date_done {date:?} not as SQLAlchemy writes it"
        );
        assert_eq!(r.get::<String, _>(13), "blob", "result must be a BLOB");
    }
}

#[tokio::test]
async fn sqlite_memory_backend_works() {
    let backend = SqlBackend::connect("sqlite::memory:", SqlOptions::new()).await.unwrap();
    let m = ResultMeta::new("t-mem", State::Success, serde_json::json!({"ok": true}));
    backend.store(&m, None).await.unwrap();
    assert_eq!(backend.wait("t-mem", Duration::from_secs(5)).await.unwrap().result, m.result);
}

#[tokio::test]
async fn invalid_urls_are_config_errors() {
    for url in ["mysql://localhost/db", "sqlite://", "postgres://localhost/db?schema=bad-name", "redis://x"] {
        let e = SqlBackend::connect(url, SqlOptions::new()).await.unwrap_err();
        assert_eq!(e.kind(), qcore::ErrorKind::Config, "{url}: {e}");
    }
    for url in ["sqlite::memory:", "postgres://localhost/db?schema=1x", "ftp://x"] {
        let e = qsql::connect_broker(url, SqlOptions::new()).await.err().expect(url);
        assert_eq!(e.kind(), qcore::ErrorKind::Config, "{url}: {e}");
    }
}
