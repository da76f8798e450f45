//! The result backend on PostgreSQL: upserts with a SUCCESS guard, NOTIFY on
//! ready states, LISTEN-woken waits.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use qcore::{BackendError, ChordJoin, ChordPart, ErrorKind, ResultCodec, ResultMeta, State};
use sqlx::postgres::{PgListener, PgPool, PgRow};
use sqlx::Row;
use tokio::sync::{broadcast, watch, OnceCell};

use super::codec::{self, Encoded, Raw};
use crate::error::backend as db_err;
use crate::schema::CeleryLayout;
use crate::util::Names;

/// Prepared SQL texts for one schema and table layout.
#[derive(Debug)]
struct Sql {
    store: String,
    get: String,
    get_many: String,
    forget: String,
    save_group: String,
    get_group: String,
    chord_init: String,
    chord_part_insert: String,
    chord_incr: String,
    chord_parts: String,
    expire: Vec<String>,
    cleanup: Vec<String>,
}

fn ext_col(layout: &CeleryLayout, col: &str, ty: &str) -> String {
    if layout.has(col) {
        format!("t.{col}")
    } else {
        format!("NULL::{ty}")
    }
}

impl Sql {
    fn new(n: &Names, layout: &CeleryLayout) -> Sql {
        let tm = n.t("celery_taskmeta");
        let ts = n.t("celery_tasksetmeta");
        let ext = n.t("qtask_result_ext");
        let chord = n.t("qtask_chord");
        let part = n.t("qtask_chord_part");
        let (id_col, id_val) = if layout.task_seq {
            ("id, ", format!("nextval({}), ", n.seq_literal("task_id_sequence")))
        } else {
            ("", String::new())
        };
        let (gid_col, gid_val) = if layout.taskset_seq {
            ("id, ", format!("nextval({}), ", n.seq_literal("taskset_id_sequence")))
        } else {
            ("", String::new())
        };
        // Extended columns present in the table: written when the document has
        // them, otherwise left as they are.
        let extended: Vec<(&str, usize)> =
            [("name", 7), ("args", 8), ("kwargs", 9), ("worker", 10), ("retries", 11), ("queue", 12)]
                .into_iter()
                .filter(|(c, _)| layout.has(c))
                .collect();
        let mut cols = String::from("task_id, status, result, date_done, traceback, children");
        let mut vals = String::from("$1, $2, $3, $4, $5, $6");
        let mut sets = String::from(
            "status = EXCLUDED.status, result = EXCLUDED.result, date_done = EXCLUDED.date_done, \
             traceback = EXCLUDED.traceback, children = EXCLUDED.children",
        );
        for (c, i) in &extended {
            cols.push_str(&format!(", {c}"));
            vals.push_str(&format!(", ${i}"));
            sets.push_str(&format!(", {c} = COALESCE(EXCLUDED.{c}, t.{c})"));
        }
        let store = format!(
            "WITH m AS (\
               INSERT INTO {tm} AS t ({id_col}{cols}) VALUES ({id_val}{vals}) \
               ON CONFLICT (task_id) DO UPDATE SET {sets} \
               WHERE t.status IS DISTINCT FROM 'SUCCESS' \
                  OR EXISTS (SELECT 1 FROM {ext} x WHERE x.task_id = t.task_id AND x.expires_at <= now()) \
               RETURNING t.task_id), \
             x AS (\
               INSERT INTO {ext} (task_id, expires_at, meta) SELECT task_id, $13, $14 FROM m \
               ON CONFLICT (task_id) DO UPDATE SET expires_at = EXCLUDED.expires_at, meta = EXCLUDED.meta) \
             SELECT pg_notify($16, task_id) FROM m WHERE $15"
        );
        let select = format!(
            "SELECT t.task_id::text, t.status::text, t.result, t.date_done, t.traceback, t.children, {}, {}, {}, {}, {}, {}, x.meta \
             FROM {tm} t LEFT JOIN {ext} x ON x.task_id = t.task_id \
             WHERE (x.expires_at IS NULL OR x.expires_at > now()) AND ",
            ext_col(layout, "name", "text"),
            ext_col(layout, "args", "bytea"),
            ext_col(layout, "kwargs", "bytea"),
            ext_col(layout, "worker", "text"),
            ext_col(layout, "retries", "int4"),
            ext_col(layout, "queue", "text"),
        );
        let name_cast = |s: String| {
            s.replace("t.name,", "t.name::text,")
                .replace("t.worker,", "t.worker::text,")
                .replace("t.queue,", "t.queue::text,")
        };
        let select = name_cast(select);
        Sql {
            store,
            get: format!("{select} t.task_id = $1"),
            get_many: format!("{select} t.task_id = ANY($1)"),
            forget: format!("WITH d AS (DELETE FROM {ext} WHERE task_id = $1) DELETE FROM {tm} WHERE task_id = $1"),
            save_group: format!(
                "WITH g AS (\
                   INSERT INTO {ts} AS g ({gid_col}taskset_id, result, date_done) VALUES ({gid_val}$1, $2, $3) \
                   ON CONFLICT (taskset_id) DO UPDATE SET result = EXCLUDED.result, date_done = EXCLUDED.date_done \
                   RETURNING g.taskset_id) \
                 INSERT INTO {ext} (task_id, expires_at) SELECT 'taskset:' || taskset_id, $4 FROM g \
                 ON CONFLICT (task_id) DO UPDATE SET expires_at = EXCLUDED.expires_at"
            ),
            get_group: format!(
                "SELECT g.result FROM {ts} g LEFT JOIN {ext} x ON x.task_id = 'taskset:' || g.taskset_id \
                 WHERE g.taskset_id = $1 AND (x.expires_at IS NULL OR x.expires_at > now())"
            ),
            chord_init: format!(
                "INSERT INTO {chord} (group_id, size, done, expires_at) VALUES ($1, $2, 0, $3) \
                 ON CONFLICT (group_id) DO UPDATE SET size = EXCLUDED.size, expires_at = EXCLUDED.expires_at"
            ),
            chord_part_insert: format!(
                "INSERT INTO {part} (group_id, task_id, idx, status, result) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (group_id, task_id, idx) DO NOTHING"
            ),
            chord_incr: format!(
                "UPDATE {chord} SET done = done + 1, expires_at = COALESCE($2, expires_at) WHERE group_id = $1 RETURNING done, size"
            ),
            chord_parts: format!("SELECT task_id::text, idx, status::text, result FROM {part} WHERE group_id = $1 ORDER BY idx, task_id"),
            expire: vec![
                format!("DELETE FROM {tm} t USING {ext} x WHERE x.task_id = t.task_id AND x.expires_at <= now()"),
                format!("DELETE FROM {ts} g USING {ext} x WHERE x.task_id = 'taskset:' || g.taskset_id AND x.expires_at <= now()"),
                format!("DELETE FROM {ext} WHERE expires_at <= now()"),
                format!("DELETE FROM {part} p USING {chord} c WHERE c.group_id = p.group_id AND c.expires_at <= now()"),
                format!("DELETE FROM {chord} WHERE expires_at <= now()"),
                format!(
                    "DELETE FROM {part} p WHERE p.created_at < now() - interval '1 day' \
                     AND NOT EXISTS (SELECT 1 FROM {chord} c WHERE c.group_id = p.group_id)"
                ),
            ],
            cleanup: vec![
                format!("DELETE FROM {tm} WHERE date_done < $1"),
                format!("DELETE FROM {ts} WHERE date_done < $1"),
            ],
        }
    }
}

/// Longest time between two reads of a result being waited for when no
/// notification comes (rows written by Python Celery send none).
const RESULT_POLL_MAX: Duration = Duration::from_millis(500);

/// The PostgreSQL result backend.
#[derive(Debug)]
pub(crate) struct PgBackend {
    pool: PgPool,
    sql: Sql,
    codec: ResultCodec,
    channel: String,
    listener: OnceCell<broadcast::Sender<String>>,
    shutdown_rx: watch::Receiver<()>,
    _shutdown: watch::Sender<()>,
}

/// Run the expiry statements in one transaction, so that `now()` is the
/// same instant in all of them: run one by one, a group (or result) whose
/// expiry time fell between the statement deleting the group and the one
/// deleting its expiry row lost the row but not the group, and was then
/// readable for ever (no expiry row reads as "no ttl").
async fn expire(pool: &PgPool, stmts: &[String]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for s in stmts {
        sqlx::query(s).execute(&mut *tx).await?;
    }
    tx.commit().await
}

fn expires_at(ttl: Option<Duration>) -> Option<DateTime<Utc>> {
    ttl.and_then(|t| chrono::Duration::from_std(t).ok()).map(|d| Utc::now() + d)
}

fn raw_from(row: &PgRow) -> Result<(String, Raw), sqlx::Error> {
    Ok((
        row.try_get(0)?,
        Raw {
            status: row.try_get(1)?,
            result: row.try_get(2)?,
            date_done: row.try_get::<Option<NaiveDateTime>, _>(3)?,
            traceback: row.try_get(4)?,
            children: row.try_get(5)?,
            name: row.try_get(6)?,
            args: row.try_get(7)?,
            kwargs: row.try_get(8)?,
            worker: row.try_get(9)?,
            retries: row.try_get::<Option<i32>, _>(10)?.map(i64::from),
            queue: row.try_get(11)?,
            side: row.try_get(12)?,
        },
    ))
}

impl PgBackend {
    pub(crate) fn new(
        pool: PgPool,
        names: &Names,
        layout: &CeleryLayout,
        cleanup_interval: Duration,
        codec: ResultCodec,
    ) -> Self {
        let (tx, rx) = watch::channel(());
        let sql = Sql::new(names, layout);
        let this = PgBackend {
            pool,
            channel: names.channel("result"),
            sql,
            codec,
            listener: OnceCell::new(),
            shutdown_rx: rx,
            _shutdown: tx,
        };
        this.spawn_janitor(cleanup_interval);
        this
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn spawn_janitor(&self, every: Duration) {
        let pool = self.pool.clone();
        let stmts = self.sql.expire.clone();
        let mut stop = self.shutdown_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = expire(&pool, &stmts).await {
                    tracing::warn!(error = %e, "deleting expired results failed");
                }
            }
        });
    }

    /// Delete expired results now, and Celery rows finished before `before`.
    pub(crate) async fn cleanup(&self, before: Option<NaiveDateTime>) -> Result<(), BackendError> {
        expire(&self.pool, &self.sql.expire).await.map_err(|e| db_err("cleanup", e))?;
        if let Some(before) = before {
            for s in &self.sql.cleanup {
                sqlx::query(s).bind(before).execute(&self.pool).await.map_err(|e| db_err("cleanup", e))?;
            }
        }
        Ok(())
    }

    pub(crate) async fn store(&self, meta: &ResultMeta, ttl: Option<Duration>) -> Result<(), BackendError> {
        let e: Encoded = codec::encode(&self.codec, meta)?;
        sqlx::query(&self.sql.store)
            .bind(&meta.task_id)
            .bind(&e.status)
            .bind(&e.result)
            .bind(e.date_done)
            .bind(&e.traceback)
            .bind(&e.children)
            .bind(&e.name)
            .bind(&e.args)
            .bind(&e.kwargs)
            .bind(&e.worker)
            .bind(e.retries)
            .bind(&e.queue)
            .bind(expires_at(ttl))
            .bind(&e.side)
            .bind(e.ready)
            .bind(&self.channel)
            .execute(&self.pool)
            .await
            .map_err(|err| db_err("storing result", err))?;
        Ok(())
    }

    pub(crate) async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        let row = sqlx::query(&self.sql.get)
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
        let rows = sqlx::query(&self.sql.get_many)
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_err("reading results", e))?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in rows {
            let (id, raw) = raw_from(&row).map_err(|e| db_err("decoding result row", e))?;
            let meta = codec::decode(&self.codec, &id, raw)?;
            found.insert(id, meta);
        }
        Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
    }

    pub(crate) async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        sqlx::query(&self.sql.forget)
            .bind(task_id)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err("forgetting result", e))?;
        Ok(())
    }

    pub(crate) async fn save_group(
        &self,
        group_id: &str,
        ids: &[String],
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        let bytes = codec::encode_group(&self.codec, group_id, ids)?;
        sqlx::query(&self.sql.save_group)
            .bind(group_id)
            .bind(bytes)
            .bind(Utc::now().naive_utc())
            .bind(expires_at(ttl))
            .execute(&self.pool)
            .await
            .map_err(|e| db_err("saving group", e))?;
        Ok(())
    }

    pub(crate) async fn get_group(&self, group_id: &str) -> Result<Option<Vec<String>>, BackendError> {
        let row: Option<Option<Vec<u8>>> = sqlx::query_scalar(&self.sql.get_group)
            .bind(group_id)
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
        sqlx::query(&self.sql.chord_init)
            .bind(group_id)
            .bind(size)
            .bind(expires_at(ttl))
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
        let mut tx = self.pool.begin().await.map_err(err)?;
        let inserted = sqlx::query(&self.sql.chord_part_insert)
            .bind(group_id)
            .bind(&part.task_id)
            .bind(idx)
            .bind(part.status.as_str())
            .bind(result)
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected();
        if inserted == 0 {
            tx.commit().await.map_err(err)?;
            return Ok(ChordJoin::Duplicate);
        }
        let counted: Option<(i64, i64)> = sqlx::query_as(&self.sql.chord_incr)
            .bind(group_id)
            .bind(expires_at(ttl))
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        let Some((done, size)) = counted else {
            // No chord_init: a chord sent by Python Celery, joined by its
            // `celery.chord_unlock` task. The part is kept for inspection.
            tx.commit().await.map_err(err)?;
            tracing::debug!(group_id, "chord part without chord_init; left to celery.chord_unlock");
            return Ok(ChordJoin::Waiting { done: 0, size: 0 });
        };
        if done != size {
            tx.commit().await.map_err(err)?;
            return Ok(ChordJoin::Waiting { done: done.max(0) as u64, size: size.max(0) as u64 });
        }
        let rows: Vec<(String, i64, String, Option<Vec<u8>>)> =
            sqlx::query_as(&self.sql.chord_parts).bind(group_id).fetch_all(&mut *tx).await.map_err(err)?;
        tx.commit().await.map_err(err)?;
        parts_from(&self.codec, group_id, rows).map(ChordJoin::Complete)
    }

    /// The shared LISTEN connection, started on first use. Returns once the
    /// channel is being listened to.
    async fn listener(&self) -> Result<&broadcast::Sender<String>, BackendError> {
        self.listener
            .get_or_try_init(|| async {
                let mut l = PgListener::connect_with(&self.pool).await.map_err(|e| db_err("LISTEN connection", e))?;
                l.listen(&self.channel).await.map_err(|e| db_err("LISTEN", e))?;
                let (tx, _) = broadcast::channel(1024);
                let sender = tx.clone();
                let mut stop = self.shutdown_rx.clone();
                tokio::spawn(async move {
                    loop {
                        let next = tokio::select! {
                            _ = stop.changed() => return,
                            n = l.try_recv() => n,
                        };
                        match next {
                            Ok(Some(n)) => {
                                let _ = sender.send(n.payload().to_string());
                            }
                            // Reconnected: notifications may have been lost, make every waiter look.
                            Ok(None) => {
                                let _ = sender.send(String::new());
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "result LISTEN connection failed; retrying");
                                let _ = sender.send(String::new());
                                tokio::select! {
                                    _ = stop.changed() => return,
                                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                                }
                            }
                        }
                    }
                });
                Ok(tx)
            })
            .await
    }

    pub(crate) async fn wait(&self, task_id: &str, timeout: Duration) -> Result<ResultMeta, BackendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || BackendError::new(ErrorKind::Timeout, format!("task {task_id} not ready after {timeout:?}"));
        let mut rx = tokio::time::timeout_at(deadline, self.listener()).await.map_err(|_| timed_out())??.subscribe();
        // Only qtask writers NOTIFY: a result stored by a Python worker (or
        // a notification lost while the LISTEN connection was away) is
        // found by reading again, every 50 ms growing to RESULT_POLL_MAX.
        let mut poll = Duration::from_millis(50);
        loop {
            if let Some(meta) = self.get(task_id).await? {
                if meta.status.is_ready() {
                    return Ok(meta);
                }
            }
            let next_read = (tokio::time::Instant::now() + poll).min(deadline);
            poll = (poll * 2).min(RESULT_POLL_MAX);
            loop {
                match tokio::time::timeout_at(next_read, rx.recv()).await {
                    Err(_) if next_read >= deadline => return Err(timed_out()),
                    Err(_) => break,
                    Ok(Ok(id)) if id == task_id || id.is_empty() => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    // The listener task is gone (cannot happen while the backend
                    // lives); fall back to polling.
                    Ok(Err(broadcast::error::RecvError::Closed)) => {
                        tokio::time::sleep(Duration::from_millis(100).min(timeout)).await;
                        break;
                    }
                }
            }
        }
    }
}

/// Parts rows into [`ChordPart`]s, ordered by index.
pub(crate) fn parts_from(
    c: &ResultCodec,
    group_id: &str,
    rows: Vec<(String, i64, String, Option<Vec<u8>>)>,
) -> Result<Vec<ChordPart>, BackendError> {
    rows.into_iter()
        .map(|(task_id, idx, status, result)| {
            let result = match result {
                Some(b) => codec::decode_value(c, group_id, &format!("result of chord part {task_id}"), &b)?,
                None => serde_json::Value::Null,
            };
            Ok(ChordPart { task_id, index: idx.max(0) as u64, status: State::parse(&status), result })
        })
        .collect()
}
