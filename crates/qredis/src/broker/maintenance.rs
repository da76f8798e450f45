//! Background duties of every consumer: keep its deliveries fresh, restore
//! expired deliveries (kombu's `restore_visible`, made safe for mixed
//! fleets), and move due deferred messages back onto their queues.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_redis::redis::{self, Value};
use qcore::BrokerError;
use serde_json::Value as Json;
use tokio::time::Instant;

use super::consumer::ConsumerState;
use super::{now_secs, Inner};
use crate::conn::{with_conn, with_conn_read};
use crate::envelope;
use crate::keys::{DELIVERIES_HEADER, SEP};
use crate::scripts;

/// How long the restore mutex is held at most (kombu uses 300 s; shorter so
/// that a scanner killed mid-scan does not hold up everyone's restores — a
/// scan outliving it is harmless, every move is a compare-and-move).
const MUTEX_TTL_MS: u64 = 10_000;
/// Entries examined per page of a restore scan.
const PAGE: usize = 500;
/// Pages per scan at most (the next scan goes on).
const MAX_PAGES: usize = 40;

/// A dead-letter record: `{"reason", "queue", "ts", "envelope"}` (JSON,
/// Python separators).
pub(crate) fn dead_record(reason: &str, queue: &str, envelope_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(envelope_json.len() + reason.len() + queue.len() + 64);
    out.extend_from_slice(b"{\"reason\": ");
    let _ = qcore::json::to_writer(&mut out, reason);
    out.extend_from_slice(b", \"queue\": ");
    let _ = qcore::json::to_writer(&mut out, queue);
    out.extend_from_slice(b", \"ts\": ");
    let _ = qcore::json::to_writer(&mut out, &now_secs());
    out.extend_from_slice(b", \"envelope\": ");
    out.extend_from_slice(envelope_json);
    out.push(b'}');
    out
}

/// Settle `tag` with the SETTLE script.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn settle(
    inner: &Inner,
    tag: &str,
    guard: &str,
    guard_value: &str,
    expected: &[u8],
    op: &str,
    dest: &str,
    payload: &[u8],
    score: f64,
) -> Result<bool, BrokerError> {
    let k = &inner.keys;
    let mut inv = scripts::SETTLE.prepare_invoke();
    inv.key(k.unacked_index()).key(k.unacked()).key(k.owner()).key(dest);
    inv.arg(tag).arg(guard).arg(guard_value).arg(expected).arg(op).arg(payload).arg(score);
    let n: i64 = with_conn!(inner.conn, BrokerError, "settle delivery", |c| inv.invoke_async::<i64>(c))?;
    Ok(n == 1)
}

/// Refresh the `unacked_index` score of every delivery `state` holds.
pub(crate) async fn refresh(inner: &Inner, state: &ConsumerState) -> Result<(), BrokerError> {
    let tags = state.snapshot();
    for chunk in tags.chunks(1000) {
        let k = &inner.keys;
        let mut inv = scripts::REFRESH.prepare_invoke();
        inv.key(k.unacked_index()).key(k.owner()).arg(now_secs()).arg(&state.token);
        for t in chunk {
            inv.arg(t);
        }
        let flags: Vec<i64> =
            with_conn!(inner.conn, BrokerError, "refresh deliveries", |c| inv.invoke_async::<Vec<i64>>(c))?;
        for (t, f) in chunk.iter().zip(flags) {
            if f == 0 && state.holds(t) {
                tracing::warn!(delivery_tag = %t, "delivery no longer held by this consumer (restored after the visibility timeout?)");
                state.release(t);
            }
        }
    }
    Ok(())
}

/// Move due deferred messages back; returns the next due time (UNIX s).
pub(crate) async fn move_due(inner: &Inner) -> Result<Option<f64>, BrokerError> {
    let key = inner.keys.delayed();
    loop {
        let mut inv = scripts::MOVE_DUE.prepare_invoke();
        inv.key(&key).arg(now_secs()).arg(500);
        let v: Vec<Value> =
            with_conn!(inner.conn, BrokerError, "move due messages", |c| inv.invoke_async::<Vec<Value>>(c))?;
        let moved = match v.first() {
            Some(Value::Int(n)) => *n,
            _ => 0,
        };
        if moved > 0 {
            tracing::debug!(moved, "deferred messages are due");
        }
        if moved < 500 {
            let next = match v.get(1) {
                Some(Value::BulkString(b)) => std::str::from_utf8(b).ok().and_then(|s| s.parse::<f64>().ok()),
                Some(Value::SimpleString(s)) => s.parse::<f64>().ok(),
                _ => None,
            };
            return Ok(next);
        }
    }
}

/// Where a restored message goes: the queue its routing key names (default
/// exchange), or the queues bound to `exchange` with that routing key.
async fn resolve_queues(inner: &Inner, exchange: &str, routing_key: &str) -> Result<Vec<String>, BrokerError> {
    if exchange.is_empty() {
        return Ok(vec![routing_key.to_string()]);
    }
    let key = inner.keys.binding(exchange);
    let members: Vec<String> =
        with_conn_read!(inner.conn, BrokerError, "read bindings", |c| redis::cmd("SMEMBERS").arg(&key).query_async(c))?;
    let mut queues: Vec<String> = members
        .iter()
        .filter_map(|m| {
            let mut parts = m.splitn(3, SEP);
            let rk = parts.next()?;
            let _pattern = parts.next()?;
            let queue = parts.next()?;
            (rk == routing_key || rk.is_empty()).then(|| queue.to_string())
        })
        .collect();
    queues.dedup();
    if queues.is_empty() {
        queues.push(routing_key.to_string());
    }
    Ok(queues)
}

/// One restore scan under kombu's `unacked_mutex`. Returns how many
/// deliveries were restored or dead-lettered.
pub(crate) async fn restore_scan(inner: &Inner) -> Result<u64, BrokerError> {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mutex = inner.keys.unacked_mutex();
    let got: Option<String> = with_conn!(inner.conn, BrokerError, "lock unacked_mutex", |c| redis::cmd("SET")
        .arg(&mutex)
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(MUTEX_TTL_MS)
        .query_async(c))?;
    if got.is_none() {
        return Ok(0);
    }
    let result = scan_locked(inner).await;
    let mut inv = scripts::UNLOCK.prepare_invoke();
    inv.key(&mutex).arg(&token);
    if let Err(e) = with_conn!(inner.conn, BrokerError, "unlock unacked_mutex", |c| inv.invoke_async::<i64>(c)) {
        tracing::warn!(error = %e, "could not release unacked_mutex (it expires by itself)");
    }
    result
}

async fn scan_locked(inner: &Inner) -> Result<u64, BrokerError> {
    let now = now_secs();
    let own_cutoff = now - inner.opts.visibility_timeout.as_secs_f64();
    let foreign_cutoff = now - inner.opts.effective_foreign_timeout().as_secs_f64();
    let k = &inner.keys;
    let mut seen = HashSet::new();
    let mut start = "-inf".to_string();
    let mut done = 0u64;
    for _ in 0..MAX_PAGES {
        let raw: Vec<(String, f64)> =
            with_conn!(inner.conn, BrokerError, "scan unacked_index", |c| redis::cmd("ZRANGEBYSCORE")
                .arg(k.unacked_index())
                .arg(&start)
                .arg(own_cutoff)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(PAGE)
                .query_async(c))?;
        let full = raw.len() == PAGE;
        let Some(last) = raw.last().map(|(_, s)| *s) else { break };
        let page: Vec<(String, f64)> = raw.into_iter().filter(|(t, _)| seen.insert(t.clone())).collect();
        if page.is_empty() {
            break;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(k.owner());
        for (t, _) in &page {
            pipe.arg(t);
        }
        pipe.cmd("HMGET").arg(k.unacked());
        for (t, _) in &page {
            pipe.arg(t);
        }
        let (owners, values): (Vec<Option<String>>, Vec<Option<Vec<u8>>>) =
            with_conn!(inner.conn, BrokerError, "read unacked", |c| pipe.query_async(c))?;
        for (((tag, score), owner), value) in page.iter().zip(owners).zip(values) {
            let cutoff = if owner.is_some() { own_cutoff } else { foreign_cutoff };
            if *score > cutoff {
                continue;
            }
            match restore_one(inner, tag, cutoff, value).await {
                Ok(true) => done += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(delivery_tag = %tag, error = %e, "restore failed");
                    return Err(e);
                }
            }
        }
        if !full {
            break;
        }
        start = last.to_string();
    }
    if done > 0 {
        tracing::info!(restored = done, "restored unacknowledged messages after the visibility timeout");
    }
    Ok(done)
}

async fn restore_one(inner: &Inner, tag: &str, cutoff: f64, value: Option<Vec<u8>>) -> Result<bool, BrokerError> {
    let k = &inner.keys;
    let Some(value) = value else {
        // Index entry without payload: the script drops it.
        settle(inner, tag, "stale", &cutoff.to_string(), b"", "drop", &k.delayed(), b"", 0.0).await?;
        return Ok(false);
    };
    let parsed: Option<(Json, String, String)> = match serde_json::from_slice::<Json>(&value) {
        Ok(Json::Array(mut a)) if a.len() == 3 => {
            let rk = a.pop().and_then(|v| v.as_str().map(str::to_owned));
            let ex = a.pop().and_then(|v| v.as_str().map(str::to_owned));
            match (a.pop(), ex, rk) {
                (Some(env @ Json::Object(_)), Some(ex), Some(rk)) => Some((env, ex, rk)),
                _ => None,
            }
        }
        _ => None,
    };
    let Some((env, exchange, routing_key)) = parsed else {
        let raw = String::from_utf8_lossy(&value).into_owned();
        let record = qcore::json::to_vec(&serde_json::json!({
            "reason": "malformed unacked entry (not [envelope, exchange, routing_key])",
            "queue": "", "ts": now_secs(), "raw": raw,
        }))
        .unwrap_or_default();
        return settle(inner, tag, "stale", &cutoff.to_string(), &value, "rpush", &k.dead(""), &record, 0.0).await;
    };
    let env_bytes = qcore::json::to_vec(&env).unwrap_or_default();
    let priority = env.get("properties").and_then(|p| p.get("priority")).and_then(Json::as_u64).unwrap_or(0);
    let priority = priority.min(255) as u8;
    let queues = resolve_queues(inner, &exchange, &routing_key).await?;
    let queue = queues.first().cloned().unwrap_or_default();
    let deliveries = envelope::restores(&env_bytes) + 1;
    if let Some(max) = inner.opts.max_deliveries.filter(|m| deliveries >= u64::from(*m)) {
        let reason = format!("delivered {deliveries} times without an acknowledgement (max_deliveries = {max})");
        tracing::warn!(delivery_tag = %tag, queue = %queue, %reason, "dead-lettering poison message");
        let record = dead_record(&reason, &queue, &env_bytes);
        return settle(inner, tag, "stale", &cutoff.to_string(), &value, "rpush", &k.dead(&queue), &record, 0.0).await;
    }
    // The counter header is only written when there is a limit to count
    // against: without one, the restored bytes are exactly kombu's.
    let bump = inner.opts.max_deliveries.map(|_| DELIVERIES_HEADER);
    let (new_env, _) = match envelope::mark_redelivered(&env_bytes, bump) {
        Ok(x) => x,
        Err(e) => {
            let record = dead_record(&format!("cannot restore: {e}"), &queue, &env_bytes);
            return settle(inner, tag, "stale", &cutoff.to_string(), &value, "rpush", &k.dead(&queue), &record, 0.0)
                .await;
        }
    };
    // kombu restores to every queue the message routes to; all but the first
    // get a plain copy after the atomic move of the first.
    let moved =
        settle(inner, tag, "stale", &cutoff.to_string(), &value, "rpush", &k.queue(&queue, priority), &new_env, 0.0)
            .await?;
    if moved {
        for q in queues.iter().skip(1) {
            let key = k.queue(q, priority);
            with_conn!(inner.conn, BrokerError, "restore copy", |c| redis::cmd("RPUSH")
                .arg(&key)
                .arg(&new_env)
                .query_async::<i64>(c))?;
        }
    }
    Ok(moved)
}

/// The background loop of one consumer. Holds only a weak reference: it
/// ends once the consumer and all its ackers are gone.
pub(crate) async fn run(inner: Arc<Inner>, state: Weak<ConsumerState>) {
    let vis = inner.opts.visibility_timeout;
    let refresh_every = (vis / 3).max(Duration::from_millis(50));
    let restore_every = inner.opts.effective_restore_interval();
    let poll = inner.opts.defer_poll_interval.max(Duration::from_millis(10));
    let start = Instant::now();
    let (mut next_refresh, mut next_restore, mut next_move) = (start + refresh_every, start, start);
    let mut sweep_cursor = "0".to_string();
    let mut scans = 0u64;
    loop {
        let deadline = next_refresh.min(next_restore).min(next_move);
        tokio::time::sleep_until(deadline).await;
        let Some(st) = state.upgrade() else { return };
        let now = Instant::now();
        if now >= next_refresh {
            if let Err(e) = refresh(&inner, &st).await {
                tracing::warn!(error = %e, "refreshing deliveries failed");
            }
            next_refresh = Instant::now() + refresh_every;
        }
        if !st.alive.load(Ordering::Acquire) {
            // The consumer is gone; only its ackers remain: refresh only.
            next_restore = next_refresh;
            next_move = next_refresh;
            continue;
        }
        if now >= next_restore {
            match restore_scan(&inner).await {
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "restore scan failed"),
            }
            scans += 1;
            if scans.is_multiple_of(10) {
                let mut inv = scripts::SWEEP_OWNERS.prepare_invoke();
                inv.key(inner.keys.owner()).key(inner.keys.unacked()).arg(&sweep_cursor);
                match with_conn!(inner.conn, BrokerError, "sweep owners", |c| inv.invoke_async::<String>(c)) {
                    Ok(next) => sweep_cursor = next,
                    Err(e) => tracing::debug!(error = %e, "owner sweep failed"),
                }
            }
            let jitter = restore_every.mul_f64(fastrand::f64() * 0.2);
            next_restore = Instant::now() + restore_every - restore_every / 10 + jitter;
        }
        if now >= next_move {
            let wait = match move_due(&inner).await {
                Ok(Some(due)) => Duration::from_secs_f64((due - now_secs()).clamp(0.0, poll.as_secs_f64())),
                Ok(None) => poll,
                Err(e) => {
                    tracing::warn!(error = %e, "moving deferred messages failed");
                    poll
                }
            };
            next_move = Instant::now() + wait.max(Duration::from_millis(5));
        }
    }
}
