//! [`PgLease`]: the beat replicas' [`Lease`] on PostgreSQL.
//!
//! Tables (created when missing, in the URL's database and `?schema=`):
//!
//! * `qtask_beat_lease (name PK, token, owner, expires_at)` — one row per
//!   lease (`?prefix=NAME`, default `qtask.beat`); taken by an `INSERT … ON
//!   CONFLICT DO UPDATE … WHERE expires_at < clock_timestamp()`, with a
//!   token from the sequence `qtask_beat_lease_token`, larger than every
//!   earlier holder's; renewed and released only under the caller's token.
//! * `qtask_beat_fired (name, entry, slot)` — the fires' deduplication
//!   keys, inserted by the fence **in the same statement** that checks
//!   (`FOR SHARE`) that the lease is still held under the token and not
//!   expired; kept a day.
//! * `qtask_beat_last (name, entry, slot)` — the last fired slot per entry,
//!   written by the same statement.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qbeat::{Claim, Fence, Lease, DEFAULT_LEASE_TTL};
use qcore::Error;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row;

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("beat lease: {what}: {e}"))
}

/// A [`Lease`] on PostgreSQL (see the module's text).
pub struct PgLease {
    pool: PgPool,
    name: String,
    owner: String,
    ttl: Duration,
    display: String,
}

impl std::fmt::Debug for PgLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLease").field("at", &self.display).field("name", &self.name).finish_non_exhaustive()
    }
}

impl PgLease {
    /// A lease at `url` (`postgres://`, `postgresql://`; `?schema=NAME`
    /// puts its tables in that schema, `?prefix=NAME` names the lease),
    /// held by `owner`, lasting [`DEFAULT_LEASE_TTL`]; creates its tables.
    pub async fn connect(url: &str, owner: &str) -> Result<PgLease, Error> {
        let url = url.trim();
        let display = qcore::url::redact(url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(Error::Config(format!("--lock {display}: expected a postgres:// URL")));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let (mut name, mut schema, mut rest) = ("qtask.beat".to_string(), None, Vec::new());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("prefix", v)) if !v.is_empty() => name = v.to_string(),
                Some(("schema", v)) => schema = Some(v.to_string()),
                _ => rest.push(pair),
            }
        }
        let pg_url = if rest.is_empty() { base.to_string() } else { format!("{base}?{}", rest.join("&")) };
        let mut options =
            PgConnectOptions::from_str(&pg_url).map_err(|e| Error::Config(format!("--lock {display}: {e}")))?;
        if let Some(s) = &schema {
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(Error::Config(format!("--lock {display}: invalid schema name {s:?}")));
            }
            options = options.options([("search_path", s.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(|e| err("connect", e))?;
        let mut tx = pool.begin().await.map_err(|e| err("create tables", e))?;
        let mut stmts = vec!["SELECT pg_advisory_xact_lock(hashtext('qtask_beat_install'))".to_string()];
        if let Some(s) = &schema {
            stmts.push(format!("CREATE SCHEMA IF NOT EXISTS {s}"));
        }
        stmts.extend(
            [
                "CREATE SEQUENCE IF NOT EXISTS qtask_beat_lease_token",
                "CREATE TABLE IF NOT EXISTS qtask_beat_lease (name text PRIMARY KEY, token bigint NOT NULL, \
                 owner text NOT NULL, expires_at timestamptz NOT NULL)",
                "CREATE TABLE IF NOT EXISTS qtask_beat_fired (name text NOT NULL, entry text NOT NULL, \
                 slot timestamptz NOT NULL, fired_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (name, entry, slot))",
                "CREATE INDEX IF NOT EXISTS qtask_beat_fired_at ON qtask_beat_fired (fired_at)",
                "CREATE TABLE IF NOT EXISTS qtask_beat_last (name text NOT NULL, entry text NOT NULL, \
                 slot timestamptz NOT NULL, PRIMARY KEY (name, entry))",
            ]
            .map(str::to_string),
        );
        for s in stmts {
            sqlx::query(&s).execute(&mut *tx).await.map_err(|e| err("create tables", e))?;
        }
        tx.commit().await.map_err(|e| err("create tables", e))?;
        Ok(PgLease { pool, name, owner: owner.to_string(), ttl: DEFAULT_LEASE_TTL, display })
    }

    /// Lasting `ttl` without renewal (at least a second).
    pub fn ttl(mut self, ttl: Duration) -> PgLease {
        self.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

#[async_trait]
impl Lease for PgLease {
    fn describe(&self) -> String {
        format!("postgres lease {:?} at {}", self.name, self.display)
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn acquire(&self) -> Result<Option<u64>, Error> {
        let row = sqlx::query(
            "INSERT INTO qtask_beat_lease AS l (name, token, owner, expires_at) \
             VALUES ($1, nextval('qtask_beat_lease_token'), $2, clock_timestamp() + $3 * interval '1 millisecond') \
             ON CONFLICT (name) DO UPDATE SET token = EXCLUDED.token, owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at \
             WHERE l.expires_at < clock_timestamp() \
             RETURNING token",
        )
        .bind(&self.name)
        .bind(&self.owner)
        .bind(self.ttl_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| err("acquire", e))?;
        let token = row.map(|r| r.get::<i64, _>(0)).map(|t| u64::try_from(t).unwrap_or(0));
        if token.is_some() {
            sqlx::query("DELETE FROM qtask_beat_fired WHERE name = $1 AND fired_at < now() - interval '1 day'")
                .bind(&self.name)
                .execute(&self.pool)
                .await
                .map_err(|e| err("prune", e))?;
        }
        Ok(token)
    }

    async fn renew(&self, token: u64) -> Result<bool, Error> {
        let n = sqlx::query(
            "UPDATE qtask_beat_lease SET expires_at = clock_timestamp() + $3 * interval '1 millisecond' \
             WHERE name = $1 AND token = $2 AND expires_at >= clock_timestamp()",
        )
        .bind(&self.name)
        .bind(i64::try_from(token).unwrap_or(-1))
        .bind(self.ttl_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| err("renew", e))?
        .rows_affected();
        Ok(n == 1)
    }

    async fn release(&self, token: u64) -> Result<(), Error> {
        sqlx::query("DELETE FROM qtask_beat_lease WHERE name = $1 AND token = $2")
            .bind(&self.name)
            .bind(i64::try_from(token).unwrap_or(-1))
            .execute(&self.pool)
            .await
            .map_err(|e| err("release", e))?;
        Ok(())
    }

    async fn fence(&self, token: u64, claim: &Claim) -> Result<Fence, Error> {
        let row = sqlx::query(
            "WITH l AS (SELECT 1 FROM qtask_beat_lease WHERE name = $1 AND token = $2 \
                          AND expires_at >= clock_timestamp() FOR SHARE), \
                  ins AS (INSERT INTO qtask_beat_fired (name, entry, slot) SELECT $1, $3, $4 FROM l \
                          ON CONFLICT DO NOTHING RETURNING 1), \
                  up AS (INSERT INTO qtask_beat_last AS t (name, entry, slot) SELECT $1, $3, $4 FROM ins \
                          ON CONFLICT (name, entry) DO UPDATE SET slot = GREATEST(t.slot, EXCLUDED.slot) RETURNING 1) \
             SELECT (SELECT count(*) FROM l), (SELECT count(*) FROM ins), (SELECT count(*) FROM up)",
        )
        .bind(&self.name)
        .bind(i64::try_from(token).unwrap_or(-1))
        .bind(&claim.entry)
        .bind(claim.slot)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| err("fence", e))?;
        let (held, fired): (i64, i64) = (row.get(0), row.get(1));
        Ok(match (held, fired) {
            (0, _) => Fence::NotLeader,
            (_, 0) => Fence::Duplicate,
            _ => Fence::Fire,
        })
    }

    async fn last_fired(&self) -> Result<HashMap<String, DateTime<Utc>>, Error> {
        let rows = sqlx::query("SELECT entry, slot FROM qtask_beat_last WHERE name = $1")
            .bind(&self.name)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| err("last fired", e))?;
        Ok(rows.into_iter().map(|r| (r.get::<String, _>(0), r.get::<DateTime<Utc>, _>(1))).collect())
    }
}
