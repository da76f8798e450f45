//! The Lua scripts qtask runs on Redis (each one atomic). Invoked with
//! `EVALSHA`, falling back to `EVAL` when the server does not know them yet.

use std::sync::LazyLock;

use deadpool_redis::redis::Script;

/// Pop up to `max` messages from the given lists (in order) and record each
/// one in `unacked`/`unacked_index` (kombu's ack emulation) and in
/// `qtask.unacked_owner`, in one step: a message is never only in the
/// client's memory.
///
/// KEYS: unacked_index, unacked, owner, list keys...
/// ARGV: now, max, owner token, spare tag base, n, then per list key: the
/// routing key as a JSON string, the dead-letter list key.
///
/// Returns a flat array `[list index, tag, envelope, ...]`. Envelopes that are
/// not JSON objects with a `properties.delivery_tag` string are moved to the
/// dead-letter list with a reason instead (a kombu worker's restore would
/// choke on them).
pub(crate) static FETCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local now, max, token, base, n = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local out, got, spare = {}, 0, 0
for i = 1, n do
  if got >= max then break end
  local items = redis.call('RPOP', KEYS[3 + i], max - got)
  if items then
    local rk, dead = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
    for _, env in ipairs(items) do
      local ok, doc = pcall(cjson.decode, env)
      local tag = nil
      if ok and type(doc) == 'table' and type(doc.properties) == 'table' then
        tag = doc.properties.delivery_tag
      end
      if type(tag) ~= 'string' or tag == '' then
        local why = ok and 'envelope has no properties.delivery_tag' or 'envelope is not valid JSON'
        redis.call('RPUSH', dead, '{"reason": "malformed message: ' .. why .. '", "queue": ' .. rk ..
          ', "ts": ' .. now .. ', "raw": ' .. cjson.encode(env) .. '}')
      else
        if redis.call('HEXISTS', KEYS[2], tag) == 1 then
          spare = spare + 1
          tag = base .. '.' .. spare
        end
        redis.call('ZADD', KEYS[1], now, tag)
        redis.call('HSET', KEYS[2], tag, '[' .. env .. ', "", ' .. rk .. ']')
        redis.call('HSET', KEYS[3], tag, token)
        out[#out + 1] = i
        out[#out + 1] = tag
        out[#out + 1] = env
        got = got + 1
      end
    end
  end
end
return out
"#,
    )
});

/// Settle one unacked delivery: remove it from `unacked`, `unacked_index`
/// and `qtask.unacked_owner`, then optionally push a payload somewhere — all
/// or nothing, and only if the guard holds.
///
/// KEYS: unacked_index, unacked, owner, destination (list or zset; unused for `drop`)
/// ARGV: tag, guard (`owner` | `stale`), owner token | highest allowed score,
/// expected unacked value (`''`: any), op (`drop` | `lpush` | `rpush` | `zadd`),
/// payload, zset score.
///
/// Returns 1 when settled, 0 when the guard failed (the delivery belongs to
/// someone else now, or was refreshed, or is gone).
pub(crate) static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local tag = ARGV[1]
if ARGV[2] == 'owner' then
  if redis.call('HGET', KEYS[3], tag) ~= ARGV[3] then return 0 end
else
  local s = redis.call('ZSCORE', KEYS[1], tag)
  if not s or tonumber(s) > tonumber(ARGV[3]) then return 0 end
end
local cur = redis.call('HGET', KEYS[2], tag)
if not cur then
  redis.call('ZREM', KEYS[1], tag)
  redis.call('HDEL', KEYS[3], tag)
  return 0
end
if ARGV[4] ~= '' and cur ~= ARGV[4] then return 0 end
redis.call('ZREM', KEYS[1], tag)
redis.call('HDEL', KEYS[2], tag)
redis.call('HDEL', KEYS[3], tag)
local op = ARGV[5]
if op == 'lpush' then
  redis.call('LPUSH', KEYS[4], ARGV[6])
elseif op == 'rpush' then
  redis.call('RPUSH', KEYS[4], ARGV[6])
elseif op == 'zadd' then
  redis.call('ZADD', KEYS[4], ARGV[7], ARGV[6])
end
return 1
"#,
    )
});

/// Ack several deliveries (kombu's `ZREM unacked_index; HDEL unacked`), each
/// only if its owner token still matches.
///
/// KEYS: unacked_index, unacked, owner. ARGV: tag, token, tag, token, ...
/// Returns one 1/0 per tag.
pub(crate) static ACK_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for i = 1, #ARGV, 2 do
  local tag = ARGV[i]
  if redis.call('HGET', KEYS[3], tag) == ARGV[i + 1] then
    redis.call('ZREM', KEYS[1], tag)
    redis.call('HDEL', KEYS[2], tag)
    redis.call('HDEL', KEYS[3], tag)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"#,
    )
});

/// Refresh the `unacked_index` score of deliveries still owned by a token.
///
/// KEYS: unacked_index, owner. ARGV: now, token, tags... Returns 1/0 per tag
/// (0: the delivery is no longer ours).
pub(crate) static REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[2] and redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"#,
    )
});

/// Move deferred messages that are due back to their lists, each exactly
/// once. Members are `<envelope>\n<list key>`.
///
/// KEYS: delayed. ARGV: now, limit. Returns `[moved, next due score or false]`.
pub(crate) static MOVE_DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for i = #items, 1, -1 do
  local m = items[i]
  local nl = string.find(m, '\n', 1, true)
  if nl then
    redis.call('RPUSH', string.sub(m, nl + 1), string.sub(m, 1, nl - 1))
  end
  redis.call('ZREM', KEYS[1], m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#items, nxt[2] or false}
"#,
    )
});

/// Move dead letters of one queue back to the end of the queue, the whole
/// batch in one step: a record leaves the dead list in the same atomic step
/// that puts its envelope on the queue, so a crash or a lost reply can never
/// lose it, and a retried call cannot move it twice (compare-and-move: the
/// records must still be where the caller read them).
///
/// KEYS: dead list, the queue's lists of priority step 0, 3, 6, 9.
/// ARGV: skip (records at the head to leave alone), n, then per record read
/// from position skip on: the record as read, the envelope to push, the
/// destination (1–4: index of the priority list; 0: keep the record, it
/// cannot be redriven).
///
/// Only the longest prefix of the n records that still matches the list is
/// handled. Moved envelopes are `LPUSH`ed (the end of a kombu queue: its
/// consumers pop from the right), oldest first; kept records stay where
/// they were, in order. Returns `{moved, matched, kept}`.
pub(crate) static REDRIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local skip, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local cur = redis.call('LRANGE', KEYS[1], skip, skip + n - 1)
local matched = 0
for i = 1, #cur do
  if cur[i] ~= ARGV[3 * i] then break end
  matched = i
end
local moved, keep = 0, {}
for i = 1, matched do
  local dest = tonumber(ARGV[3 * i + 2])
  if dest >= 1 and dest <= 4 then
    redis.call('LPUSH', KEYS[1 + dest], ARGV[3 * i + 1])
    moved = moved + 1
  else
    keep[#keep + 1] = cur[i]
  end
end
if moved == 0 then return {0, matched, #keep} end
local head = {}
if skip > 0 then head = redis.call('LRANGE', KEYS[1], 0, skip - 1) end
redis.call('LTRIM', KEYS[1], skip + matched, -1)
for i = #keep, 1, -1 do redis.call('LPUSH', KEYS[1], keep[i]) end
for i = #head, 1, -1 do redis.call('LPUSH', KEYS[1], head[i]) end
return {moved, matched, #keep}
"#,
    )
});

/// Release a mutex only if it still holds our token.
///
/// KEYS: mutex. ARGV: token.
pub(crate) static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// Drop `qtask.unacked_owner` fields whose delivery is no longer in
/// `unacked` (settled by a kombu worker after a restore).
///
/// KEYS: owner, unacked. ARGV: cursor. Returns the next cursor.
pub(crate) static SWEEP_OWNERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local r = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', 200)
local fields = r[2]
for i = 1, #fields, 2 do
  if redis.call('HEXISTS', KEYS[2], fields[i]) == 0 then redis.call('HDEL', KEYS[1], fields[i]) end
end
return r[1]
"#,
    )
});

/// Store a result document unless SUCCESS is already stored, and publish it
/// on the key's channel (Celery: `SETEX` + `PUBLISH` in one MULTI after a
/// racy GET; here the guard is atomic).
///
/// KEYS: meta key. ARGV: document, expiry mode (`ex` | `px` | `''`), expiry.
/// Returns 1 when written, 0 when skipped.
pub(crate) static STORE_RESULT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if not ok then ok, doc = pcall(cmsgpack.unpack, cur) end
  if ok and type(doc) == 'table' and doc.status == 'SUCCESS' then return 0 end
end
if ARGV[2] == 'ex' then
  redis.call('SETEX', KEYS[1], ARGV[3], ARGV[1])
elseif ARGV[2] == 'px' then
  redis.call('PSETEX', KEYS[1], ARGV[3], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"#,
    )
});

/// Record one chord header result with Celery's keys (FACTS 6.4) and, when
/// all are in, claim the chord and clean up in the same step.
///
/// KEYS: `.j`, `.t`, `.s`, `.d`, `.c`. ARGV: task id, element
/// (`[1, tid, state, result]` JSON), group index, ttl seconds (`0`: none).
///
/// Returns `{code, done, size, parts...}` with code 1 = complete (this
/// caller sends the body; parts = element, score, ...), 0 = recorded and
/// waiting, -1 = duplicate or already finished; size -1 when `.s` is missing.
pub(crate) static CHORD_JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local jkey, tkey, skey, dkey, ckey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local tid, elem, idx, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local claim = redis.call('GET', ckey)
if claim == 'done' then return {-1, 0, 0} end
local added = redis.call('SADD', dkey, tid .. ':' .. idx)
if added == 1 then redis.call('ZADD', jkey, idx, elem) end
if ttl > 0 then
  redis.call('EXPIRE', dkey, ttl)
  redis.call('EXPIRE', jkey, ttl)
end
local count = redis.call('ZCOUNT', jkey, '-inf', '+inf')
local size = redis.call('GET', skey)
if not size then
  if added == 1 then return {0, count, -1} end
  return {-1, count, -1}
end
local total = tonumber(size) + tonumber(redis.call('GET', tkey) or '0')
if count >= total and not claim then
  local parts = redis.call('ZRANGE', jkey, 0, -1, 'WITHSCORES')
  redis.call('DEL', jkey, tkey, skey, dkey)
  redis.call('SET', ckey, 'done', 'EX', 300)
  local out = {1, count, total}
  for i = 1, #parts do out[#out + 1] = parts[i] end
  return out
end
if added == 1 then return {0, count, total} end
return {-1, count, total}
"#,
    )
});
