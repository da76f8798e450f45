//! Three `qtask beat --lock redis://…` replicas on a 1 s interval: the
//! leader is killed (SIGKILL), the next one frozen (SIGSTOP) until a third
//! takes over, then resumed (SIGCONT). Every message the replicas sent is
//! read back from the queue with the slot it was sent for (the
//! `qtask_beat_slot` header): no slot twice, and the only holes are the two
//! failovers, each at most 15 s.
//!
//! The test owns its queue and its lease keys (`?prefix=` of the lock URL,
//! random) on the shared Redis.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use integration_tests::{qtask_cli, redis_cmd, redis_url, unique, wait_for, Proc};
use qtask::ConsumeOptions;

/// The pid in the lease's value (`"<token> <node>/<pid>"`), if held.
fn leader(url: &str, key: &str) -> Result<Option<u32>> {
    let v = redis_cmd(url, &["GET", key])?.text();
    Ok(v.and_then(|v| v.rsplit_once('/').and_then(|(_, pid)| pid.parse().ok())))
}

async fn wait_queue(app: &qtask::App, queue: &str, at_least: u64) -> Result<()> {
    let broker = app.broker().clone();
    wait_for(&format!("{at_least} messages on {queue}"), Duration::from_secs(60), || {
        let (b, q) = (broker.clone(), queue.to_string());
        async move { Ok(b.queue_len(&q).await? >= at_least) }
    })
    .await
}

async fn wait_new_leader(url: &str, key: &str, not: &[u32]) -> Result<u32> {
    let mut found = None;
    wait_for("a new leader", Duration::from_secs(30), || {
        let l = leader(url, key);
        let ok = matches!(&l, Ok(Some(pid)) if !not.contains(pid));
        if let Ok(Some(pid)) = l {
            if ok {
                found = Some(pid);
            }
        }
        async move { Ok(ok) }
    })
    .await?;
    found.context("leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_fire_each_slot_once_through_kill_and_freeze() -> Result<()> {
    let url = redis_url();
    let queue = unique("beat_ha");
    let prefix = unique("beat_ha_lease");
    let lease_key = format!("{prefix}:lease");
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
    let lock = format!("{url}?prefix={prefix}");
    let mut beats: Vec<Proc> = (0..3)
        .map(|i| {
            let mut cmd = std::process::Command::new(&cli);
            cmd.args(["--broker", &url, "beat", "--lock", &lock, "-l", "info", "-n"])
                .arg(format!("beat{i}@ha"))
                .arg("--schedule")
                .arg(&file);
            Proc::spawn(&format!("qtask beat {i}"), cmd)
        })
        .collect::<Result<_>>()?;
    let app = qtask::app(&url).await?;
    let by_pid = |beats: &[Proc], pid: u32| beats.iter().position(|b| b.pid() == pid).context("a leader of ours");

    // The first leader sends.
    let first = wait_new_leader(&url, &lease_key, &[]).await?;
    wait_queue(&app, &queue, 3).await?;
    // SIGKILL: its lease expires, another replica takes over.
    let i = by_pid(&beats, first)?;
    beats[i].kill();
    let second = wait_new_leader(&url, &lease_key, &[first]).await?;
    let n = app.broker().queue_len(&queue).await?;
    wait_queue(&app, &queue, n + 3).await?;
    // SIGSTOP: frozen past its lease; the third takes over.
    let j = by_pid(&beats, second)?;
    beats[j].signal("STOP")?;
    let third = wait_new_leader(&url, &lease_key, &[first, second]).await?;
    let n = app.broker().queue_len(&queue).await?;
    wait_queue(&app, &queue, n + 3).await?;
    // SIGCONT: the stale leader wakes up, finds its lease gone and stands by.
    beats[j].signal("CONT")?;
    beats[j].wait_log("standing by", Duration::from_secs(30))?;
    let n = app.broker().queue_len(&queue).await?;
    wait_queue(&app, &queue, n + 3).await?;
    assert_eq!(leader(&url, &lease_key)?, Some(third), "the third replica still leads");
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
    redis_cmd(&url, &["DEL", &lease_key, &format!("{prefix}:token"), &format!("{prefix}:last")])?;
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
