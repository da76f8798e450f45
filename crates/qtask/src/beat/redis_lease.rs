//! [`RedisLease`]: the beat replicas' [`Lease`] on Redis.
//!
//! Keys (prefix `qtask.beat` by default, `?prefix=` in the URL):
//!
//! * `<prefix>:lease` — STRING `"<token> <owner>"`, `SET NX PX ttl`, taken
//!   by a Lua script that first `INCR`s `<prefix>:token`, so each holder's
//!   token is larger than every earlier one's; renewed (`PEXPIRE`) and
//!   released (`DEL`) by Lua scripts that first check the value is still
//!   the caller's.
//! * `<prefix>:fired:<entry>:<slot ms>` — the fire's deduplication key,
//!   `SET NX PX 24 h` by the fence script **only while** the lease value
//!   is the caller's, in the same script.
//! * `<prefix>:last` — HASH entry → last fired slot (ms), written by the
//!   same script; a new leader resumes from it.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use deadpool_redis::redis::{self, Script};
use deadpool_redis::{Pool, Runtime};
use qbeat::{Claim, Fence, Lease, DEFAULT_LEASE_TTL, FIRED_TTL};
use qcore::Error;

const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local t = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], t .. ' ' .. ARGV[2], 'PX', ARGV[1])
return t
";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// 0: not the leader; 1: already fired; 2: fire.
const FENCE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local last = tonumber(redis.call('HGET', KEYS[3], ARGV[3]) or '0')
if last < tonumber(ARGV[4]) then redis.call('HSET', KEYS[3], ARGV[3], ARGV[4]) end
return 2
";

/// How long one Redis call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`Lease`] on Redis (see the module's text).
pub struct RedisLease {
    pool: Pool,
    prefix: String,
    owner: String,
    ttl: Duration,
    display: String,
}

impl std::fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLease").field("at", &self.display).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("beat lease: {what}: {e}"))
}

impl RedisLease {
    /// A lease at `url` (`redis://`, `rediss://`; `?prefix=NAME` sets the
    /// key prefix), held by `owner` (a node name, for people reading the
    /// key), lasting [`DEFAULT_LEASE_TTL`].
    pub fn new(url: &str, owner: &str) -> Result<RedisLease, Error> {
        let url = url.trim();
        let display = qcore::url::redact(url);
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(Error::Config(format!("--lock {display}: expected a redis:// or rediss:// URL")));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut prefix = "qtask.beat".to_string();
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("prefix", v)) if !v.is_empty() => prefix = v.to_string(),
                _ => rest.push(pair),
            }
        }
        let redis_url = if rest.is_empty() { base.to_string() } else { format!("{base}?{}", rest.join("&")) };
        let pool = deadpool_redis::Config::from_url(redis_url)
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| Error::Config(format!("--lock {display}: {e}")))?;
        Ok(RedisLease { pool, prefix, owner: owner.to_string(), ttl: DEFAULT_LEASE_TTL, display })
    }

    /// Lasting `ttl` without renewal (at least a second).
    pub fn ttl(mut self, ttl: Duration) -> RedisLease {
        self.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    fn key(&self, k: &str) -> String {
        format!("{}:{k}", self.prefix)
    }

    fn value(&self, token: u64) -> String {
        format!("{token} {}", self.owner)
    }

    async fn call<T: redis::FromRedisValue>(&self, what: &str, inv: redis::ScriptInvocation<'_>) -> Result<T, Error> {
        let fut = async {
            let mut conn = self.pool.get().await.map_err(|e| err(what, e))?;
            inv.invoke_async::<T>(&mut conn).await.map_err(|e| err(what, e))
        };
        tokio::time::timeout(CALL_TIMEOUT, fut).await.map_err(|_| err(what, "timed out"))?
    }
}

#[async_trait]
impl Lease for RedisLease {
    fn describe(&self) -> String {
        format!("redis lease {} at {}", self.key("lease"), self.display)
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn acquire(&self) -> Result<Option<u64>, Error> {
        let script = Script::new(ACQUIRE);
        let mut inv = script.prepare_invoke();
        inv.key(self.key("lease")).key(self.key("token")).arg(self.ttl.as_millis() as u64).arg(&self.owner);
        self.call("acquire", inv).await
    }

    async fn renew(&self, token: u64) -> Result<bool, Error> {
        let script = Script::new(RENEW);
        let mut inv = script.prepare_invoke();
        inv.key(self.key("lease")).arg(self.value(token)).arg(self.ttl.as_millis() as u64);
        Ok(self.call::<i64>("renew", inv).await? == 1)
    }

    async fn release(&self, token: u64) -> Result<(), Error> {
        let script = Script::new(RELEASE);
        let mut inv = script.prepare_invoke();
        inv.key(self.key("lease")).arg(self.value(token));
        self.call::<i64>("release", inv).await.map(|_| ())
    }

    async fn fence(&self, token: u64, claim: &Claim) -> Result<Fence, Error> {
        let slot_ms = claim.slot.timestamp_millis();
        let script = Script::new(FENCE);
        let mut inv = script.prepare_invoke();
        inv.key(self.key("lease"))
            .key(self.key(&format!("fired:{}:{slot_ms}", claim.entry)))
            .key(self.key("last"))
            .arg(self.value(token))
            .arg(FIRED_TTL.as_millis() as u64)
            .arg(&claim.entry)
            .arg(slot_ms);
        Ok(match self.call::<i64>("fence", inv).await? {
            2 => Fence::Fire,
            1 => Fence::Duplicate,
            _ => Fence::NotLeader,
        })
    }

    async fn last_fired(&self) -> Result<HashMap<String, DateTime<Utc>>, Error> {
        let fut = async {
            let mut conn = self.pool.get().await.map_err(|e| err("last fired", e))?;
            redis::cmd("HGETALL")
                .arg(self.key("last"))
                .query_async::<HashMap<String, i64>>(&mut conn)
                .await
                .map_err(|e| err("last fired", e))
        };
        let map = tokio::time::timeout(CALL_TIMEOUT, fut).await.map_err(|_| err("last fired", "timed out"))??;
        Ok(map.into_iter().filter_map(|(k, ms)| Utc.timestamp_millis_opt(ms).single().map(|t| (k, t))).collect())
    }
}
