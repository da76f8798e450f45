//! The result backend on SQLite: the same tables and bytes as on
//! PostgreSQL; writes in `BEGIN IMMEDIATE` transactions; waits poll.

use std::collections::HashMap;
use std::time::Duration;

use chrono::NaiveDateTime;
use qcore::{BackendError, ChordJoin, ChordPart, ErrorKind, ResultCodec, ResultMeta};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::Row;
use tokio::sync::watch;

use super::codec::{self, Raw};
use super::pg::parts_from;
use crate::error::backend as db_err;
use crate::schema::CeleryLayout;
use crate::util::{now_ms, parse_sqlite_datetime, sqlite_datetime};

#[derive(Debug)]
struct Sql {
    store: String,
    ext_upsert: String,
    select: String,
    expire: Vec<String>,
}

impl Sql {
    fn new(layout: &CeleryLayout) -> Sql {
        let extended: Vec<&str> =
            ["name", "args", "kwargs", "worker", "retries", "queue"].into_iter().filter(|c| layout.has(c)).collect();
        let mut cols = String::from("task_id, status, result, date_done, traceback, children");
        let mut vals = String::from("?1, ?2, ?3, ?4, ?5, ?6");
        let mut sets = String::from(
            "status = excluded.status, result = excluded.result, date_done = excluded.date_done, \
             traceback = excluded.traceback, children = excluded.children",
        );
        for (i, c) in ["name", "args", "kwargs", "worker", "retries", "queue"].iter().enumerate() {
            if extended.contains(c) {
                cols.push_str(&format!(", {c}"));
                vals.push_str(&format!(", ?{}", i + 7));
                sets.push_str(&format!(", {c} = COALESCE(excluded.{c}, t.{c})"));
            }
        }
        let col = |c: &str| if layout.has(c) { format!("t.{c}") } else { "NULL".to_string() };
        Sql {
            store: format!(
                "INSERT INTO celery_taskmeta AS t ({cols}) VALUES ({vals}) \
                 ON CONFLICT (task_id) DO UPDATE SET {sets} \
                 WHERE t.status IS NOT 'SUCCESS' \
                    OR EXISTS (SELECT 1 FROM qtask_result_ext x WHERE x.task_id = t.task_id AND x.expires_at <= ?13)"
            ),
            ext_upsert: "INSERT INTO qtask_result_ext (task_id, expires_at, meta) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (task_id) DO UPDATE SET expires_at = excluded.expires_at, meta = excluded.meta"
                .into(),
            select: format!(
                "SELECT t.task_id, t.status, t.result, t.date_done, t.traceback, t.children, {}, {}, {}, {}, {}, {}, x.meta \
                 FROM celery_taskmeta t LEFT JOIN qtask_result_ext x ON x.task_id = t.task_id \
                 WHERE (x.expires_at IS NULL OR x.expires_at > ?1) AND ",
                col("name"),
                col("args"),
                col("kwargs"),
                col("worker"),
                col("retries"),
                col("queue"),
            ),
            expire: vec![
                "DELETE FROM celery_taskmeta WHERE task_id IN (SELECT task_id FROM qtask_result_ext WHERE expires_at <= ?1)".into(),
                "DELETE FROM celery_tasksetmeta WHERE 'taskset:' || taskset_id IN \
                 (SELECT task_id FROM qtask_result_ext WHERE expires_at <= ?1)"
                    .into(),
                "DELETE FROM qtask_result_ext WHERE expires_at <= ?1".into(),
                "DELETE FROM qtask_chord_part WHERE group_id IN (SELECT group_id FROM qtask_chord WHERE expires_at <= ?1)".into(),
                "DELETE FROM qtask_chord WHERE expires_at <= ?1".into(),
                "DELETE FROM qtask_chord_part WHERE created_at < ?1 - 86400000 \
                 AND group_id NOT IN (SELECT group_id FROM qtask_chord)"
                    .into(),
            ],
        }
    }
}

/// The SQLite result backend.
#[derive(Debug)]
pub(crate) struct SqliteBackend {
    pool: SqlitePool,
    sql: Sql,
    codec: ResultCodec,
    _shutdown: watch::Sender<()>,
}

fn expires_ms(ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|t| now_ms().saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX / 2)))
}

fn raw_from(row: &SqliteRow) -> Result<(String, Raw), sqlx::Error> {
    let date: Option<String> = row.try_get(3)?;
    Ok((
        row.try_get(0)?,
        Raw {
            status: row.try_get(1)?,
            result: row.try_get(2)?,
            date_done: date.as_deref().and_then(parse_sqlite_datetime),
            traceback: row.try_get(4)?,
            children: row.try_get(5)?,
            name: row.try_get(6)?,
            args: row.try_get(7)?,
            kwargs: row.try_get(8)?,
            worker: row.try_get(9)?,
            retries: row.try_get(10)?,
            queue: row.try_get(11)?,
            side: row.try_get(12)?,
        },
    ))
}

impl SqliteBackend {
    pub(crate) fn new(pool: SqlitePool, layout: &CeleryLayout, cleanup_interval: Duration, codec: ResultCodec) -> Self {
        let (tx, mut stop) = watch::channel(());
        let sql = Sql::new(layout);
        let (p, stmts) = (pool.clone(), sql.expire.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(cleanup_interval) => {}
                }
                if let Err(e) = expire(&p, &stmts).await {
                    tracing::warn!(error = %e, "deleting expired results failed");
                }
            }
        });
        SqliteBackend { pool, sql, codec, _shutdown: tx }
    }

    pub(crate) async fn cleanup(&self, before: Option<NaiveDateTime>) -> Result<(), BackendError> {
        expire(&self.pool, &self.sql.expire).await.map_err(|e| db_err("cleanup", e))?;
        if let Some(before) = before {
            let b = sqlite_datetime(&before);
            for s in [
                "DELETE FROM celery_taskmeta WHERE date_done < ?1",
                "DELETE FROM celery_tasksetmeta WHERE date_done < ?1",
            ] {
                sqlx::query(s).bind(&b).execute(&self.pool).await.map_err(|e| db_err("cleanup", e))?;
            }
        }
        Ok(())
    }

    pub(crate) async fn store(&self, meta: &ResultMeta, ttl: Option<Duration>) -> Result<(), BackendError> {
        let e = codec::encode(&self.codec, meta)?;
        let err = |e| db_err("storing result", e);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        let changed = sqlx::query(&self.sql.store)
            .bind(&meta.task_id)
            .bind(&e.status)
            .bind(&e.result)
            .bind(sqlite_datetime(&e.date_done))
            .bind(&e.traceback)
            .bind(&e.children)
            .bind(&e.name)
            .bind(&e.args)
            .bind(&e.kwargs)
            .bind(&e.worker)
            .bind(e.retries)
            .bind(&e.queue)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected();
        if changed > 0 {
            sqlx::query(&self.sql.ext_upsert)
                .bind(&meta.task_id)
                .bind(expires_ms(ttl))
                .bind(&e.side)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    pub(crate) async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        let row = sqlx::query(&format!("{} t.task_id = ?2", self.sql.select))
            .bind(now_ms())
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err("reading result", e))?;
        match row {
            None => Ok(None),
            Some(row) => {
                let (_, raw) = raw_from(&row).map_err(|e| db_err("decoding result row", e))?;
                codec::decode(&self.codec, task_id, raw).map(Some)
            }
        }
    }

    pub(crate) async fn get_many(&self, ids: &[String]) -> Result<Vec<Option<ResultMeta>>, BackendError> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("?{}", i + 2)).collect();
            let sql = format!("{} t.task_id IN ({})", self.sql.select, marks.join(", "));
            let mut q = sqlx::query(&sql).bind(now_ms());
            for id in chunk {
                q = q.bind(id);
            }
            let rows = q.fetch_all(&self.pool).await.map_err(|e| db_err("reading results", e))?;
            for row in rows {
                let (id, raw) = raw_from(&row).map_err(|e| db_err("decoding result row", e))?;
                let meta = codec::decode(&self.codec, &id, raw)?;
                found.insert(id, meta);
            }
        }
        Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
    }

    pub(crate) async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        let err = |e| db_err("forgetting result", e);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        sqlx::query("DELETE FROM celery_taskmeta WHERE task_id = ?1")
            .bind(task_id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        sqlx::query("DELETE FROM qtask_result_ext WHERE task_id = ?1")
            .bind(task_id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    pub(crate) async fn save_group(
        &self,
        group_id: &str,
        ids: &[String],
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        let bytes = codec::encode_group(&self.codec, group_id, ids)?;
        let err = |e| db_err("saving group", e);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        sqlx::query(
            "INSERT INTO celery_tasksetmeta (taskset_id, result, date_done) VALUES (?1, ?2, ?3) \
             ON CONFLICT (taskset_id) DO UPDATE SET result = excluded.result, date_done = excluded.date_done",
        )
        .bind(group_id)
        .bind(bytes)
        .bind(sqlite_datetime(&chrono::Utc::now().naive_utc()))
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        sqlx::query(&self.sql.ext_upsert)
            .bind(format!("taskset:{group_id}"))
            .bind(expires_ms(ttl))
            .bind(None::<String>)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    pub(crate) async fn get_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError> {
        let row: Option<Option<Vec<u8>>> = sqlx::query_scalar(
            "SELECT g.result FROM celery_tasksetmeta g LEFT JOIN qtask_result_ext x ON x.task_id = 'taskset:' || g.taskset_id \
             WHERE g.taskset_id = ?1 AND (x.expires_at IS NULL OR x.expires_at > ?2)",
        )
        .bind(group_id)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_err("reading group", e))?;
        match row {
            None | Some(None) => Ok(None),
            Some(Some(b)) => codec::decode_group(&self.codec, group_id, &b).map(Some),
        }
    }

    pub(crate) async fn chord_init(
        &self,
        group_id: &str,
        size: u64,
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        let size = i64::try_from(size).map_err(|_| BackendError::new(ErrorKind::Other, "chord size too large"))?;
        sqlx::query(
            "INSERT INTO qtask_chord (group_id, size, done, expires_at, created_at) VALUES (?1, ?2, 0, ?3, ?4) \
             ON CONFLICT (group_id) DO UPDATE SET size = excluded.size, expires_at = excluded.expires_at",
        )
        .bind(group_id)
        .bind(size)
        .bind(expires_ms(ttl))
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| db_err("initialising chord", e))?;
        Ok(())
    }

    pub(crate) async fn chord_part(
        &self,
        group_id: &str,
        part: &ChordPart,
        ttl: Option<Duration>,
    ) -> Result<ChordJoin, BackendError> {
        let err = |e| db_err("recording chord part", e);
        let result = codec::encode_value(&self.codec, &part.result)?;
        let idx = i64::try_from(part.index).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        let inserted = sqlx::query(
            "INSERT INTO qtask_chord_part (group_id, task_id, idx, status, result, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (group_id, task_id, idx) DO NOTHING",
        )
        .bind(group_id)
        .bind(&part.task_id)
        .bind(idx)
        .bind(part.status.as_str())
        .bind(result)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(err)?
        .rows_affected();
        if inserted == 0 {
            tx.commit().await.map_err(err)?;
            return Ok(ChordJoin::Duplicate);
        }
        let counted: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE qtask_chord SET done = done + 1, expires_at = COALESCE(?2, expires_at) WHERE group_id = ?1 RETURNING done, size",
        )
        .bind(group_id)
        .bind(expires_ms(ttl))
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?;
        let Some((done, size)) = counted else {
            tx.commit().await.map_err(err)?;
            tracing::debug!(group_id, "chord part without chord_init; left to celery.chord_unlock");
            return Ok(ChordJoin::Waiting { done: 0, size: 0 });
        };
        if done != size {
            tx.commit().await.map_err(err)?;
            return Ok(ChordJoin::Waiting { done: done.max(0) as u64, size: size.max(0) as u64 });
        }
        let rows: Vec<(String, i64, String, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT task_id, idx, status, result FROM qtask_chord_part WHERE group_id = ?1 ORDER BY idx, task_id",
        )
        .bind(group_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        parts_from(&self.codec, group_id, rows).map(ChordJoin::Complete)
    }
}

async fn expire(pool: &SqlitePool, stmts: &[String]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let now = now_ms();
    for s in stmts {
        sqlx::query(s).bind(now).execute(&mut *tx).await?;
    }
    tx.commit().await
}
