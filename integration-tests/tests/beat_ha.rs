//! Three `qtask beat --lock …` replicas (Redis, then PostgreSQL) on a 1 s interval: the
//! leader is killed (SIGKILL), the next one frozen (SIGSTOP) until a third
//! takes over, then resumed (SIGCONT). Every message the replicas sent is
//! read back from the queue with the slot it was sent for (the
//! `qtask_beat_slot` header): no slot twice, and the only holes are the two
//! failovers, each at most 15 s.
//!
//! Also: the beat answers remote-control `ping`, and `PgLease` fences an
//! expired holder. The tests own their queues, lease keys (`?prefix=` of
//! the lock URL, random) and PostgreSQL schemas.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use integration_tests::{qtask_cli, redis_cmd, redis_url, unique, wait_for, Proc};
use qtask::ConsumeOptions;

/// Where the replicas' lease lives, and how the test reads its holder.
enum LockAt {
    Redis { url: String, prefix: String },
    Pg { base: String, schema: String, pool: qtask::sqlx::PgPool },
}

impl LockAt {
    fn url(&self) -> String {
        match self {
            LockAt::Redis { url, prefix } => format!("{url}?prefix={prefix}"),
            LockAt::Pg { base, schema, .. } => format!("{base}?schema={schema}"),
        }
    }

    /// The pid in the holder's name (`<node>/<pid>`), while held.
    async fn leader(&self) -> Result<Option<u32>> {
        let owner = match self {
            LockAt::Redis { url, prefix } => redis_cmd(url, &["GET", &format!("{prefix}:lease")])?
                .text()
                .and_then(|v| v.split_once(' ').map(|(_, o)| o.to_string())),
            LockAt::Pg { schema, pool, .. } => {
                let sql = format!("SELECT owner FROM {schema}.qtask_beat_lease WHERE expires_at > now()");
                // An error: the first replica has not created the table yet.
                let owner: Option<String> =
                    qtask::sqlx::query_scalar(&sql).fetch_optional(pool).await.unwrap_or_default();
                owner
            }
        };
        Ok(owner.and_then(|o| o.rsplit_once('/').and_then(|(_, pid)| pid.parse().ok())))
    }

    async fn clean(&self) -> Result<()> {
        match self {
            LockAt::Redis { url, prefix } => {
                redis_cmd(
                    url,
                    &["DEL", &format!("{prefix}:lease"), &format!("{prefix}:token"), &format!("{prefix}:last")],
                )?;
            }
            LockAt::Pg { schema, pool, .. } => {
                qtask::sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(pool).await?;
            }
        }
        Ok(())
    }
}

async fn wait_queue(app: &qtask::App, queue: &str, at_least: u64) -> Result<()> {
    let broker = app.broker().clone();
    wait_for(&format!("{at_least} messages on {queue}"), Duration::from_secs(60), || {
        let (b, q) = (broker.clone(), queue.to_string());
        async move { Ok(b.queue_len(&q).await? >= at_least) }
    })
    .await
}

/// A holder of the lease other than `not`, within 30 s.
async fn wait_new_leader(lock: &LockAt, not: &[u32]) -> Result<u32> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = lock.leader().await?.filter(|p| !not.contains(p)) {
            return Ok(pid);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("no new leader within 30 s (not {not:?})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_a_redis_lease_fire_each_slot_once_through_kill_and_freeze() -> Result<()> {
    replicas(LockAt::Redis { url: redis_url(), prefix: unique("beat_ha_lease") }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_a_postgres_lease_fire_each_slot_once_through_kill_and_freeze() -> Result<()> {
    let base = std::env::var("QTASK_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = qtask::sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&base).await?;
    replicas(LockAt::Pg { base, schema: unique("beat_ha"), pool }).await
}

async fn replicas(lock: LockAt) -> Result<()> {
    let url = redis_url();
    let queue = unique("beat_ha");
    let dir = std::env::temp_dir().join(unique("beat_ha"));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("schedule.toml");
    std::fs::write(
        &file,
        format!(
            "[beat_schedule.every-second]\ntask = \"tasks.add\"\nschedule = 1.0\nargs = [1, 2]\n\
             options = {{ queue = \"{queue}\" }}\n"
        ),
    )?;
    let cli = qtask_cli()?;
    let lock_url = lock.url();
    let mut beats: Vec<Proc> = (0..3)
        .map(|i| {
            let mut cmd = std::process::Command::new(&cli);
            cmd.args(["--broker", &url, "beat", "--lock", &lock_url, "-l", "info", "-n"])
                .arg(format!("beat{i}@ha"))
                .arg("--schedule")
                .arg(&file);
            Proc::spawn(&format!("qtask beat {i}"), cmd)
        })
        .collect::<Result<_>>()?;
    let app = qtask::app(&url).await?;
    let by_pid = |beats: &[Proc], pid: u32| beats.iter().position(|b| b.pid() == pid).context("a leader of ours");

    // The first leader sends.
    let first = wait_new_leader(&lock, &[]).await?;
    wait_queue(&app, &queue, 3).await?;
    // SIGKILL: its lease expires, another replica takes over.
    let i = by_pid(&beats, first)?;
    beats[i].kill();
    let second = wait_new_leader(&lock, &[first]).await?;
    let n = app.broker().queue_len(&queue).await?;
    wait_queue(&app, &queue, n + 3).await?;
    // SIGSTOP: frozen past its lease; the third takes over.
    let j = by_pid(&beats, second)?;
    beats[j].signal("STOP")?;
    let third = wait_new_leader(&lock, &[first, second]).await?;
    let n = app.broker().queue_len(&queue).await?;
    wait_queue(&app, &queue, n + 3).await?;
    // SIGCONT: the stale leader wakes up, finds its lease gone and stands by.
    beats[j].signal("CONT")?;
    beats[j].wait_log("standing by", Duration::from_secs(30))?;
    let n = app.broker().queue_len(&queue).await?;
    wait_queue(&app, &queue, n + 3).await?;
    assert_eq!(lock.leader().await?, Some(third), "the third replica still leads");
    for (k, b) in beats.iter_mut().enumerate() {
        if k != i {
            b.terminate(Duration::from_secs(20))?;
        }
    }
    // Every message, by slot.
    let total = app.broker().queue_len(&queue).await?;
    let mut consumer = app.broker().consume(std::slice::from_ref(&queue), ConsumeOptions::new(100)).await?;
    let mut slots: BTreeMap<chrono::DateTime<chrono::Utc>, u32> = BTreeMap::new();
    for _ in 0..total {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??.context("consumer ended")?;
        let slot = d.message.headers.get("qtask_beat_slot").and_then(|v| v.as_str()).context("a slot header")?;
        *slots.entry(chrono::DateTime::parse_from_rfc3339(slot)?.to_utc()).or_default() += 1;
        d.acker.ack().await?;
    }
    let twice: Vec<_> = slots.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "slots sent more than once: {twice:?}");
    let instants: Vec<_> = slots.keys().copied().collect();
    let mut holes = Vec::new();
    for w in instants.windows(2) {
        let gap = w[1] - w[0];
        assert_eq!(gap.num_milliseconds() % 1000, 0, "slots off the 1 s grid: {} then {}", w[0], w[1]);
        if gap > chrono::TimeDelta::seconds(1) {
            holes.push(gap);
        }
    }
    assert!(holes.len() <= 2, "holes besides the two failovers: {holes:?}");
    for h in &holes {
        assert!(*h <= chrono::TimeDelta::seconds(16), "a failover of {h} (more than 15 s without a slot)");
    }
    assert!(instants.len() >= 12, "{} slots", instants.len());
    eprintln!(
        "beat_ha: {} slots sent once each, failover holes {:?}",
        instants.len(),
        holes.iter().map(|h| h.num_seconds()).collect::<Vec<_>>()
    );
    lock.clean().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// `qtask beat -n NODE` answers remote-control `ping` as NODE (Celery 5.7's
/// beat node), to qtask's control client and to `celery inspect ping`, and
/// ignores every other method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qtask_beat_answers_ping_as_its_node() -> Result<()> {
    use qtask::control::{Client, ControlRequest};
    let url = redis_url();
    let node = format!("celerybeat@{}", unique("ping"));
    let dir = std::env::temp_dir().join(unique("beat_ping"));
    std::fs::create_dir_all(&dir)?;
    let queue = unique("beat_ping");
    let file = dir.join("schedule.toml");
    std::fs::write(
        &file,
        format!(
            "[beat_schedule.hourly]\ntask = \"tasks.add\"\nschedule = 3600.0\noptions = {{ queue = \"{queue}\" }}\n"
        ),
    )?;
    let mut cmd = std::process::Command::new(qtask_cli()?);
    cmd.args(["--broker", &url, "beat", "-l", "info", "-n", &node, "--schedule"]).arg(&file);
    let mut beat = Proc::spawn("qtask beat", cmd)?;
    beat.wait_log("answering remote-control ping", Duration::from_secs(30))?;
    let app = qtask::app(&url).await?;
    let client = Client::new(app.broker().clone());
    let replies = client.call(ControlRequest::new("ping").to([node.as_str()]), Duration::from_secs(10), None).await?;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].node, node);
    assert_eq!(replies[0].value, serde_json::json!({"ok": "pong"}));
    let stats = client.call(ControlRequest::new("stats").to([node.as_str()]), Duration::from_secs(2), None).await?;
    assert!(stats.is_empty(), "a beat answers ping only: {stats:?}");
    // Python Celery's command line sees it too.
    let out = std::process::Command::new(integration_tests::python())
        .args(["-m", "celery", "-b", &url, "inspect", "ping", "-t", "10", "-d", &node])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("pong") && text.contains(&node),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    beat.terminate(Duration::from_secs(20))?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// `PgLease` (`--lock postgres://…`): one holder at a time, tokens growing,
/// and a holder whose lease expired is fenced: no fire, no renewal; the
/// next holder sees the slots fired before. Expiry is forced by the test
/// (it owns the schema), not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_lease_fences_an_expired_holder() -> Result<()> {
    use qtask::beat::{Claim, Fence, Lease, PgLease};
    let base = std::env::var("QTASK_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = unique("beat_lease");
    let url = format!("{base}?schema={schema}&prefix=replicas");
    let a = PgLease::connect(&url, "a").await?;
    let b = PgLease::connect(&url, "b").await?;
    let ta = a.acquire().await?.context("a free lease is taken")?;
    assert_eq!(b.acquire().await?, None, "one holder at a time");
    assert!(a.renew(ta).await?);
    let slot = chrono::DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")?.to_utc();
    assert_eq!(a.fence(ta, &Claim::new("tick", slot)).await?, Fence::Fire);
    assert_eq!(a.fence(ta, &Claim::new("tick", slot)).await?, Fence::Duplicate);
    // The lease runs out (as when its holder is frozen).
    let pool = qtask::sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&base).await?;
    qtask::sqlx::query(&format!("UPDATE {schema}.qtask_beat_lease SET expires_at = now() - interval '1 second'"))
        .execute(&pool)
        .await?;
    assert_eq!(a.fence(ta, &Claim::new("tick", slot + chrono::TimeDelta::seconds(1))).await?, Fence::NotLeader);
    let tb = b.acquire().await?.context("an expired lease is taken")?;
    assert!(tb > ta, "tokens grow: {ta} then {tb}");
    assert!(!a.renew(ta).await?, "the old holder cannot renew");
    assert_eq!(a.fence(ta, &Claim::new("tick", slot + chrono::TimeDelta::seconds(2))).await?, Fence::NotLeader);
    assert_eq!(b.last_fired().await?.get("tick"), Some(&slot));
    assert_eq!(b.fence(tb, &Claim::new("tick", slot)).await?, Fence::Duplicate, "a slot fired before stays fired");
    assert_eq!(b.fence(tb, &Claim::new("tick", slot + chrono::TimeDelta::seconds(3))).await?, Fence::Fire);
    b.release(tb).await?;
    assert!(a.acquire().await?.is_some_and(|t| t > tb), "a released lease is free");
    qtask::sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&pool).await?;
    Ok(())
}
