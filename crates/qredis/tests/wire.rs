//! Byte-level compatibility with kombu 5.7 / Celery 5.7, against captured
//! fixtures (tests/fixtures, copied from the capture vectors) and the local
//! Redis.

mod common;

use std::time::Duration;

use common::{eventually, fixture, prefix, raw, redis, redis_url};
use qcore::{
    Broker, ChordJoin, ChordPart, ConsumeOptions, ErrorKind, ResultBackend, ResultMeta, State, TaskMessageBuilder,
};
use qredis::envelope;
use qredis::{RedisBackend, RedisBackendOptions, RedisBroker, RedisOptions};
use redis::AsyncCommands;
use serde_json::{json, Value};

fn tag_of(raw: &[u8]) -> String {
    let v: Value = serde_json::from_slice(raw).unwrap();
    v["properties"]["delivery_tag"].as_str().unwrap().to_string()
}

fn replace(haystack: &[u8], from: &str, to: &str) -> Vec<u8> {
    String::from_utf8(haystack.to_vec()).unwrap().replace(from, to).into_bytes()
}

async fn broker(prefix: &str, opts: RedisOptions) -> RedisBroker {
    RedisBroker::connect(&redis_url(), opts.global_keyprefix(prefix)).await.expect("connect to the local redis")
}

#[test]
fn envelopes_round_trip_byte_for_byte() {
    for name in [
        "task-add-json.raw.json",
        "task-add-msgpack.raw.json",
        "task-options-countdown.raw.json",
        "task-priority-9.raw.json",
        "worker-retry-flaky.raw.json",
        "worker-heartbeat.raw.json",
        "inspect-ping.request0.raw.json",
    ] {
        let raw = fixture(name);
        let env = envelope::decode(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        let tag = env.delivery_tag.clone().expect("tag");
        let again = envelope::encode(&env.message, &env.exchange, &env.routing_key, &tag);
        assert_eq!(String::from_utf8(again).unwrap(), String::from_utf8(raw).unwrap(), "{name}");
    }
}

#[test]
fn captured_task_decodes_to_the_task_celery_sent() {
    let env = envelope::decode(&fixture("task-add-json.raw.json")).unwrap();
    let task = env.message.decode_task().unwrap();
    assert_eq!(task.task, "capapp.add");
    assert_eq!(task.args, vec![json!(2), json!(3)]);
    assert_eq!((env.exchange.as_str(), env.routing_key.as_str()), ("", "celery"));
    assert!(!env.redelivered);
    let restored = envelope::decode(&fixture("restored-message.raw.json")).unwrap();
    assert!(restored.redelivered);
    assert!(!restored.message.headers.contains_key("redelivered"), "transport flag leaked into the headers");
}

#[tokio::test]
async fn publish_writes_kombu_bytes_and_bindings() {
    let p = prefix("publish");
    let b = broker(&p, RedisOptions::default()).await;
    let captured = fixture("task-add-json.raw.json");
    let msg = envelope::decode(&captured).unwrap().message;
    b.publish("celery", &msg).await.unwrap();
    let mut c = raw(&redis_url()).await;
    let stored: Vec<Vec<u8>> = c.lrange(format!("{p}celery"), 0, -1).await.unwrap();
    assert_eq!(stored.len(), 1);
    let tag = tag_of(&stored[0]);
    assert_eq!(uuid::Uuid::parse_str(&tag).unwrap().get_version_num(), 4, "delivery tag is a uuid4");
    let want = replace(&captured, &tag_of(&captured), &tag);
    assert_eq!(String::from_utf8_lossy(&stored[0]), String::from_utf8_lossy(&want));
    for set in ["_kombu.binding.celery", "_kombu.binding_permanent.celery"] {
        let members: Vec<String> = c.smembers(format!("{p}{set}")).await.unwrap();
        assert_eq!(members, vec!["celery\x06\x16\x06\x16celery".to_string()], "{set}");
    }
    // Priorities land in kombu's keys; queue_len counts them all.
    let mut m9 = msg.clone();
    m9.properties.priority = 9;
    let mut m5 = msg.clone();
    m5.properties.priority = 5;
    b.publish_many(&[("celery".into(), m9), ("celery".into(), m5)]).await.unwrap();
    let l9: u64 = c.llen(format!("{p}celery\x06\x169")).await.unwrap();
    let l3: u64 = c.llen(format!("{p}celery\x06\x163")).await.unwrap();
    assert_eq!((l9, l3), (1, 1));
    assert_eq!(b.queue_len("celery").await.unwrap(), 3);
    assert_eq!(b.purge("celery").await.unwrap(), 3);
    assert_eq!(b.queue_len("celery").await.unwrap(), 0);
}

#[tokio::test]
async fn task_queues_bindings_are_written_under_their_exchange() {
    // Seed 004's Queue('high', Exchange('default'), routing_key='high'): kombu
    // finds the queue of a message published to `default`/`high` through
    // `_kombu.binding.default`.
    let p = prefix("task-queues");
    let decl = qcore::config::TaskQueue::new("high")
        .exchange("default", qcore::config::ExchangeType::Direct)
        .routing_key("hi");
    let mut opts = RedisOptions::default();
    opts.task_queues = vec![decl];
    let b = broker(&p, opts).await;
    b.declare_queue("high").await.unwrap();
    b.declare_queue("other").await.unwrap();
    let mut c = raw(&redis_url()).await;
    for (set, want) in [
        ("_kombu.binding.default", "hi\x06\x16\x06\x16high"),
        ("_kombu.binding_permanent.default", "hi\x06\x16\x06\x16high"),
        ("_kombu.binding.other", "other\x06\x16\x06\x16other"),
    ] {
        let members: Vec<String> = c.smembers(format!("{p}{set}")).await.unwrap();
        assert_eq!(members, vec![want.to_string()], "{set}");
    }
    let own: Vec<String> = c.smembers(format!("{p}_kombu.binding.high")).await.unwrap();
    assert!(own.is_empty(), "no binding under the queue's own name: {own:?}");
}

#[tokio::test]
async fn delivery_is_recorded_and_acked_as_kombu_does() {
    let p = prefix("unacked");
    let b = broker(&p, RedisOptions::default()).await;
    let unacked_value = fixture("unacked-hash-field-value.raw.json");
    let text = String::from_utf8(unacked_value.clone()).unwrap();
    let env = text.strip_prefix('[').and_then(|t| t.strip_suffix(", \"\", \"celery\"]")).unwrap().to_string();
    let tag = tag_of(env.as_bytes());
    let mut c = raw(&redis_url()).await;
    let _: i64 = c.lpush(format!("{p}celery"), &env).await.unwrap();
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let mut consumer = b.consume(&["celery".into()], ConsumeOptions::new(4)).await.unwrap();
    let d = consumer.recv().await.unwrap().unwrap();
    assert_eq!(d.message.task_name(), Some("capapp.late_sleeper"));
    let stored: Vec<u8> = c.hget(format!("{p}unacked"), &tag).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&stored), text, "unacked value differs from kombu's");
    let score: f64 = c.zscore(format!("{p}unacked_index"), &tag).await.unwrap();
    assert!(score >= before - 1.0 && score < before + 60.0, "unacked_index score {score} is not the delivery time");
    let owner: Option<String> = c.hget(format!("{p}qtask.unacked_owner"), &tag).await.unwrap();
    assert!(owner.is_some(), "qtask's delivery is not marked as its own");
    d.acker.ack().await.unwrap();
    let left: (u64, u64, u64) = redis::pipe()
        .hlen(format!("{p}unacked"))
        .zcard(format!("{p}unacked_index"))
        .hlen(format!("{p}qtask.unacked_owner"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(left, (0, 0, 0), "ack left entries behind");
}

/// A delivery a kombu worker made and lost (it died): qtask restores it,
/// after the foreign visibility timeout only, with exactly kombu's bytes.
#[tokio::test]
async fn restores_a_kombu_delivery_with_kombus_bytes() {
    let p = prefix("restore");
    let opts = RedisOptions::default()
        .visibility_timeout(Duration::from_secs(1))
        .foreign_visibility_timeout(Duration::from_secs(30))
        .max_deliveries(None);
    let b = broker(&p, opts).await;
    let restored = String::from_utf8(fixture("restored-message.raw.json")).unwrap();
    let original = restored.replace(", \"redelivered\": true}", "}");
    assert_ne!(original, restored);
    let tag = tag_of(original.as_bytes());
    let mut c = raw(&redis_url()).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let entry = format!("[{original}, \"\", \"celery\"]");
    // Delivered by kombu 10 s ago: older than qtask's timeout, younger than kombu's.
    let _: () = redis::pipe()
        .atomic()
        .zadd(format!("{p}unacked_index"), &tag, now - 10.0)
        .hset(format!("{p}unacked"), &tag, &entry)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(b.restore_expired().await.unwrap(), 0, "a running kombu task was stolen");
    let _: () = c.zadd(format!("{p}unacked_index"), &tag, now - 40.0).await.unwrap();
    assert_eq!(b.restore_expired().await.unwrap(), 1);
    let q: Vec<String> = c.lrange(format!("{p}celery"), 0, -1).await.unwrap();
    assert_eq!(q, vec![restored], "restored bytes differ from kombu's");
    let left: (u64, u64) =
        redis::pipe().hlen(format!("{p}unacked")).zcard(format!("{p}unacked_index")).query_async(&mut c).await.unwrap();
    assert_eq!(left, (0, 0));
    let mutex: Option<String> = c.get(format!("{p}unacked_mutex")).await.unwrap();
    assert_eq!(mutex, None, "unacked_mutex not released");
}

#[tokio::test]
async fn malformed_messages_are_dead_lettered_not_dropped() {
    let p = prefix("malformed");
    let b = broker(&p, RedisOptions::default()).await;
    let mut c = raw(&redis_url()).await;
    let key = format!("{p}q");
    let good = envelope::decode(&fixture("task-add-json.raw.json")).unwrap().message;
    let _: i64 = c.lpush(&key, "not json at all").await.unwrap();
    let _: i64 = c
        .lpush(&key, r#"{"body": "%%%", "properties": {"body_encoding": "base64", "delivery_tag": "t-1"}}"#)
        .await
        .unwrap();
    b.publish("q", &good).await.unwrap();
    let mut consumer = b.consume(&["q".into()], ConsumeOptions::new(8)).await.unwrap();
    let d = consumer.recv().await.unwrap().unwrap();
    assert_eq!(d.message.task_id(), good.task_id());
    d.acker.ack().await.unwrap();
    eventually(Duration::from_secs(10), "two dead letters", || {
        let b = b.clone();
        async move { b.dead_letters().expect("a dead-letter place").list("q", 10).await.unwrap().len() == 2 }
    })
    .await;
    let dead = b.dead_letters().expect("a dead-letter place").list("q", 10).await.unwrap();
    assert!(dead.iter().all(|d| d.reason.contains("malformed") && d.queue == "q"), "{dead:?}");
    assert_eq!(b.unacked_len().await.unwrap(), 0);
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_after_max_deliveries() {
    let p = prefix("poison");
    let opts = RedisOptions::default().visibility_timeout(Duration::from_millis(300)).max_deliveries(Some(2));
    let b = broker(&p, opts).await;
    let msg = envelope::decode(&fixture("task-add-json.raw.json")).unwrap().message;
    b.publish("q", &msg).await.unwrap();
    for round in 1..=2 {
        // A consumer takes it and "dies" (dropped without settling).
        let mut consumer = b.consume(&["q".into()], ConsumeOptions::new(1)).await.unwrap();
        let d = consumer.recv().await.unwrap().unwrap();
        assert_eq!(d.redelivered, round > 1);
        drop(d);
        drop(consumer);
        eventually(Duration::from_secs(10), "restore or dead-letter", || {
            let b = b.clone();
            async move {
                b.restore_expired().await.unwrap();
                b.queue_len("q").await.unwrap() == 1
                    || !b.dead_letters().expect("a dead-letter place").list("q", 1).await.unwrap().is_empty()
            }
        })
        .await;
    }
    let dead = b.dead_letters().expect("a dead-letter place").list("q", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("max_deliveries"), "{}", dead[0].reason);
    assert_eq!(dead[0].message.task_id(), msg.task_id());
    assert_eq!(b.queue_len("q").await.unwrap(), 0);
    let mut c = raw(&redis_url()).await;
    let parked: Vec<String> = c.lrange(format!("{p}qtask.dead.q"), 0, -1).await.unwrap();
    assert!(parked[0].contains("\"x-qtask-deliveries\": 1"), "{}", parked[0]);
    assert_eq!(b.dead_letters().expect("a dead-letter place").redrive("q", 10).await.unwrap(), 1);
    assert_eq!(b.queue_len("q").await.unwrap(), 1);
    // Redriven, it gets max_deliveries afresh: the restore counter is gone.
    let queued: Vec<String> = c.lrange(format!("{p}q"), 0, -1).await.unwrap();
    assert!(!queued[0].contains("x-qtask-deliveries"), "{}", queued[0]);
    assert_eq!(envelope::decode(queued[0].as_bytes()).unwrap().message, msg);
}

/// A dead-letter record as the broker writes it (`dead_record`).
fn dead_record(env: &[u8]) -> Vec<u8> {
    format!(r#"{{"reason": "parked", "queue": "q", "ts": 1.5, "envelope": {}}}"#, String::from_utf8_lossy(env))
        .into_bytes()
}

/// A record of an envelope that was not a message (as the fetch script writes it).
fn raw_record(text: &str) -> Vec<u8> {
    format!(
        r#"{{"reason": "malformed message: envelope is not valid JSON", "queue": "q", "ts": 1.5, "raw": "{text}"}}"#
    )
    .into_bytes()
}

fn numbered(i: usize, priority: u8) -> qcore::Message {
    let mut m = TaskMessageBuilder { id: format!("m-{i}"), task: "tests.redrive".into(), ..Default::default() }
        .build()
        .unwrap();
    m.properties.priority = priority;
    m
}

/// The four lists of queue `q` (priority steps 0, 3, 6, 9) under prefix `p`.
fn queue_keys(p: &str) -> [String; 4] {
    [format!("{p}q"), format!("{p}q\x06\x163"), format!("{p}q\x06\x166"), format!("{p}q\x06\x169")]
}

/// Lengths of the dead list and of the queue, read in one MULTI (one
/// consistent snapshot, whatever runs concurrently).
async fn dead_and_queued(c: &mut redis::aio::MultiplexedConnection, p: &str) -> (u64, u64) {
    let mut pipe = redis::pipe();
    pipe.atomic().llen(format!("{p}qtask.dead.q"));
    for k in queue_keys(p) {
        pipe.llen(k);
    }
    let lens: Vec<u64> = pipe.query_async(c).await.unwrap();
    (lens[0], lens[1..].iter().sum())
}

/// Task ids of the queue in delivery order, per priority list.
async fn queued_ids(c: &mut redis::aio::MultiplexedConnection, p: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for k in queue_keys(p) {
        let mut items: Vec<Vec<u8>> = c.lrange(k, 0, -1).await.unwrap();
        items.reverse(); // consumers pop from the right
        out.push(items.iter().map(|e| envelope::decode(e).unwrap().message.task_id().unwrap().to_string()).collect());
    }
    out
}

/// Redrive moves each record in the same atomic step that removes it from
/// the dead list: every snapshot taken while four redrivers on two
/// connections run at once sees each message in exactly one of the two
/// places, and at the end each is in the queue exactly once, oldest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redrive_never_loses_or_duplicates_a_message() {
    const N: usize = 300;
    let p = prefix("redrive");
    let (b1, b2) = (broker(&p, RedisOptions::default()).await, broker(&p, RedisOptions::default()).await);
    let mut c = raw(&redis_url()).await;
    let mut pipe = redis::pipe();
    let mut want: Vec<Vec<String>> = vec![Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for i in 0..N {
        let priority = if i % 3 == 0 { 9 } else { 0 };
        want[if priority == 9 { 3 } else { 0 }].push(format!("m-{i}"));
        let env = envelope::encode(&numbered(i, priority), "", "q", &uuid::Uuid::new_v4().to_string());
        pipe.rpush(format!("{p}qtask.dead.q"), dead_record(&env));
    }
    let _: () = pipe.query_async(&mut c).await.unwrap();
    let dead = b1.dead_letters().expect("a dead-letter place");
    assert_eq!(dead.count("q").await.unwrap(), N as u64);

    assert_eq!(dead.redrive("q", 5).await.unwrap(), 5);
    assert_eq!(dead_and_queued(&mut c, &p).await, (N as u64 - 5, 5));
    // More than one batch of the script in one call.
    assert_eq!(dead.redrive("q", 150).await.unwrap(), 150);
    assert_eq!(dead_and_queued(&mut c, &p).await, (N as u64 - 155, 155));

    let mut redrivers = Vec::new();
    for b in [&b1, &b2, &b1, &b2] {
        let b = b.clone();
        redrivers.push(tokio::spawn(async move {
            let dead = b.dead_letters().expect("a dead-letter place");
            let mut moved = 0;
            loop {
                let n = dead.redrive("q", 7).await.unwrap();
                moved += n;
                if n == 0 && dead.count("q").await.unwrap() == 0 {
                    return moved;
                }
            }
        }));
    }
    let mut snapshots = 0;
    loop {
        let (parked, queued) = dead_and_queued(&mut c, &p).await;
        assert_eq!(parked + queued, N as u64, "a message is in neither place or in both (snapshot {snapshots})");
        snapshots += 1;
        if parked == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut moved = 0;
    for r in redrivers {
        moved += r.await.unwrap();
    }
    assert_eq!(moved, N as u64 - 155, "the redrivers together moved each message once");
    assert_eq!(dead.count("q").await.unwrap(), 0);
    assert_eq!(b1.queue_len("q").await.unwrap(), N as u64);
    assert_eq!(queued_ids(&mut c, &p).await, want, "not each message once, oldest first");
}

/// A record without an envelope (what was parked was not a message) cannot
/// be redriven: it stays parked where it was, in order, and the messages
/// around it (beyond one batch) are redriven.
#[tokio::test]
async fn redrive_keeps_unreadable_records_parked_in_place() {
    let p = prefix("redrive-raw");
    let b = broker(&p, RedisOptions::default()).await;
    let dead = b.dead_letters().expect("a dead-letter place");
    let mut c = raw(&redis_url()).await;
    let dead_key = format!("{p}qtask.dead.q");
    let (raw1, raw2) = (raw_record("garbage one"), raw_record("garbage two"));
    let mut records = vec![raw1.clone()];
    for i in 0..120 {
        records.push(dead_record(&envelope::encode(&numbered(i, 0), "", "q", &format!("tag-{i}"))));
        if i == 0 {
            records.push(raw2.clone());
        }
    }
    let _: () = c.rpush(&dead_key, &records).await.unwrap();
    assert_eq!(dead.redrive("q", 1).await.unwrap(), 1);
    let left: Vec<Vec<u8>> = c.lrange(&dead_key, 0, 2).await.unwrap();
    assert_eq!(left, vec![raw1.clone(), raw2.clone(), records[3].clone()]);
    assert_eq!(dead.redrive("q", usize::MAX).await.unwrap(), 119);
    let left: Vec<Vec<u8>> = c.lrange(&dead_key, 0, -1).await.unwrap();
    assert_eq!(left, vec![raw1, raw2]);
    assert_eq!(dead.redrive("q", 10).await.unwrap(), 0);
    assert_eq!(dead.count("q").await.unwrap(), 2);
    let ids = queued_ids(&mut c, &p).await;
    assert_eq!(ids[0], (0..120).map(|i| format!("m-{i}")).collect::<Vec<_>>());
    let listed = dead.list("q", 10).await.unwrap();
    assert_eq!(listed[0].message.body, b"garbage one");
    assert_eq!(dead.purge("q").await.unwrap(), 2);
    assert_eq!(dead.count("q").await.unwrap(), 0);
    assert_eq!(dead.purge("q").await.unwrap(), 0);
}

#[tokio::test]
async fn fanout_uses_kombus_channels_and_bytes() {
    let p = prefix("fanout");
    let b = broker(&p, RedisOptions::default()).await;
    let captured = fixture("worker-heartbeat.raw.json");
    let msg = envelope::decode(&captured).unwrap().message;
    let client = redis::Client::open(redis_url()).unwrap();
    let mut ps = client.get_async_pubsub().await.unwrap();
    ps.psubscribe(format!("{p}/0.celeryev/*")).await.unwrap();
    let mut sub = b.subscribe("celeryev", "worker.#").await.unwrap();
    b.publish_fanout("celeryev", "worker.heartbeat", &msg).await.unwrap();
    let raw_msg = tokio::time::timeout(Duration::from_secs(5), async {
        use futures_util::StreamExt;
        ps.on_message().next().await.unwrap()
    })
    .await
    .unwrap();
    assert_eq!(raw_msg.get_channel_name(), format!("{p}/0.celeryev/worker.heartbeat"));
    let payload = raw_msg.get_payload_bytes().to_vec();
    let want = replace(&captured, &tag_of(&captured), &tag_of(&payload));
    assert_eq!(String::from_utf8_lossy(&payload), String::from_utf8_lossy(&want));
    let (rk, got) = tokio::time::timeout(Duration::from_secs(5), sub.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(rk, "worker.heartbeat");
    assert_eq!(got, msg);
}

#[tokio::test]
async fn results_are_stored_as_celery_stores_them() {
    let p = prefix("results");
    let be = RedisBackend::connect(&redis_url(), RedisBackendOptions::default().global_keyprefix(&p)).await.unwrap();
    let mut c = raw(&redis_url()).await;
    for name in ["success-add.raw.json", "failure-valueerror.raw.json"] {
        let captured = fixture(name);
        let meta = ResultMeta::from_json(&captured).unwrap();
        be.store(&meta, Some(Duration::from_secs(86_400))).await.unwrap();
        let key = format!("{p}celery-task-meta-{}", meta.task_id);
        let stored: Vec<u8> = c.get(&key).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&stored), String::from_utf8_lossy(&captured), "{name}");
        let ttl: i64 = c.ttl(&key).await.unwrap();
        assert!((86_300..=86_400).contains(&ttl), "{name}: ttl {ttl}");
    }
    // A SUCCESS written by Python is never overwritten.
    let success = fixture("success-add.raw.json");
    let id = ResultMeta::from_json(&success).unwrap().task_id;
    be.store(&ResultMeta::new(id.clone(), State::Started, Value::Null), None).await.unwrap();
    let stored: Vec<u8> = c.get(format!("{p}celery-task-meta-{id}")).await.unwrap();
    assert_eq!(stored, success);
}

#[tokio::test]
async fn groups_are_saved_as_celery_saves_them() {
    let p = prefix("groups");
    let be = RedisBackend::connect(&redis_url(), RedisBackendOptions::default().global_keyprefix(&p)).await.unwrap();
    let captured = fixture("group-saved-taskset-meta.raw.json");
    let v: Value = serde_json::from_slice(&captured).unwrap();
    let gid = v["result"][0][0].as_str().unwrap().to_string();
    let ids: Vec<String> =
        v["result"][1].as_array().unwrap().iter().map(|m| m[0][0].as_str().unwrap().to_string()).collect();
    be.save_group(&gid, &ids, Some(Duration::from_secs(86_400))).await.unwrap();
    let mut c = raw(&redis_url()).await;
    let stored: Vec<u8> = c.get(format!("{p}celery-taskset-meta-{gid}")).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&stored), String::from_utf8_lossy(&captured));
    assert_eq!(be.get_group(&gid).await.unwrap(), Some(ids));
}

/// A chord whose header ran partly in Python (which wrote `.j`/`.d` as
/// Celery does) and partly in Rust completes once, in index order, and is
/// cleaned up as Celery cleans up.
#[tokio::test]
async fn chord_join_interoperates_with_celerys_keys() {
    let p = prefix("chord");
    let be = RedisBackend::connect(&redis_url(), RedisBackendOptions::default().global_keyprefix(&p)).await.unwrap();
    let gid = uuid::Uuid::new_v4().to_string();
    let base = format!("{p}celery-taskset-meta-{gid}");
    let ttl = Some(Duration::from_secs(86_400));
    let mut c = raw(&redis_url()).await;
    let _: () = c.set(format!("{base}.c"), "stale-claim").await.unwrap();
    be.chord_init(&gid, 3, ttl).await.unwrap();
    let size: Option<String> = c.get(format!("{base}.s")).await.unwrap();
    assert_eq!(size.as_deref(), Some("3"));
    let claim: Option<String> = c.get(format!("{base}.c")).await.unwrap();
    assert_eq!(claim, None, "chord_init must delete .c");
    // Rust runs header part 2.
    let part =
        |i: u64, r: i64| ChordPart { task_id: format!("t{i}"), index: i, status: State::Success, result: json!(r) };
    assert_eq!(be.chord_part(&gid, &part(2, 20), ttl).await.unwrap(), ChordJoin::Waiting { done: 1, size: 3 });
    let j: Vec<(String, f64)> = c.zrange_withscores(format!("{base}.j"), 0, -1).await.unwrap();
    assert_eq!(j, vec![("[1, \"t2\", \"SUCCESS\", 20]".to_string(), 2.0)]);
    let d: Vec<String> = c.smembers(format!("{base}.d")).await.unwrap();
    assert_eq!(d, vec!["t2:2".to_string()]);
    // Python runs part 0 the way Celery records it.
    let _: () = redis::pipe()
        .sadd(format!("{base}.d"), "t0:0")
        .zadd(format!("{base}.j"), "[1, \"t0\", \"SUCCESS\", 0]", 0)
        .query_async(&mut c)
        .await
        .unwrap();
    // A redelivered Rust part counts once.
    assert_eq!(be.chord_part(&gid, &part(2, 20), ttl).await.unwrap(), ChordJoin::Duplicate);
    match be.chord_part(&gid, &part(1, 10), ttl).await.unwrap() {
        ChordJoin::Complete(parts) => {
            let got: Vec<(String, u64, Value)> = parts.into_iter().map(|p| (p.task_id, p.index, p.result)).collect();
            assert_eq!(got, vec![("t0".into(), 0, json!(0)), ("t1".into(), 1, json!(10)), ("t2".into(), 2, json!(20))]);
        }
        other => panic!("expected completion, got {other:?}"),
    }
    let claim: Option<String> = c.get(format!("{base}.c")).await.unwrap();
    assert_eq!(claim.as_deref(), Some("done"));
    let ttl_c: i64 = c.ttl(format!("{base}.c")).await.unwrap();
    assert!((1..=300).contains(&ttl_c));
    let left: u64 = redis::cmd("EXISTS")
        .arg(format!("{base}.j"))
        .arg(format!("{base}.s"))
        .arg(format!("{base}.d"))
        .arg(format!("{base}.t"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(left, 0, "chord keys left after completion");
    assert_eq!(be.chord_part(&gid, &part(1, 10), ttl).await.unwrap(), ChordJoin::Duplicate);
}

/// While a Python worker holds the dispatch claim, a Rust part never completes the chord.
#[tokio::test]
async fn chord_claimed_by_python_is_not_completed_twice() {
    let p = prefix("chord-claim");
    let be = RedisBackend::connect(&redis_url(), RedisBackendOptions::default().global_keyprefix(&p)).await.unwrap();
    let gid = uuid::Uuid::new_v4().to_string();
    let base = format!("{p}celery-taskset-meta-{gid}");
    be.chord_init(&gid, 1, None).await.unwrap();
    let mut c = raw(&redis_url()).await;
    let _: () = c.set_ex(format!("{base}.c"), "python-token", 6).await.unwrap();
    let part = ChordPart { task_id: "t0".into(), index: 0, status: State::Success, result: json!(1) };
    assert!(matches!(be.chord_part(&gid, &part, None).await.unwrap(), ChordJoin::Waiting { .. }));
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_are_errors() {
    let e = RedisBroker::connect("amqp://localhost", RedisOptions::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let e = RedisBroker::connect("redis://127.0.0.1:notaport", RedisOptions::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = RedisBroker::connect(&format!("redis://127.0.0.1:{port}"), RedisOptions::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    let e = RedisBackend::connect("redis://h/x", RedisBackendOptions::default()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let b = RedisBroker::connect(&redis_url(), RedisOptions::default()).await.unwrap();
    assert!(b.ping().await.is_ok());
    assert_eq!(b.describe(), qcore::url::redact(&redis_url()), "describe is the URL as given, password hidden");
}
