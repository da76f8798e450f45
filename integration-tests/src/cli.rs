//! Running the `qtask` CLI ([`crate::qtask_cli`]) in the CLI tests
//! (`tests/redis_cli.rs`, `tests/amqp_cli.rs`).

use std::process::{Command, Output};

use anyhow::Result;

use crate::qtask_cli;

/// The CLI with no inherited QTASK_*/CELERY_* settings.
pub fn cli() -> Result<Command> {
    let mut cmd = Command::new(qtask_cli()?);
    for (k, _) in std::env::vars() {
        if k.starts_with("QTASK_") || k.starts_with("CELERY_") {
            cmd.env_remove(k);
        }
    }
    Ok(cmd)
}

/// Run `cmd` to the end; its command line, status, stdout and stderr are
/// printed to stderr (shown when the test fails).
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output()?;
    eprintln!(
        "{cmd:?} -> {}\nstdout: {}stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// The lines of `out`'s stdout.
pub fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// `qtask events --dump` shows a Python worker's events (`celery worker -E`)
/// on `broker`: one JSON object per line, Celery's fields, the task's
/// received/started/succeeded events and the worker's own.
pub fn events_dump_shows_a_python_worker(broker: &str) -> anyhow::Result<()> {
    use std::time::Duration;

    use serde_json::{json, Value};

    use crate::{spawn_python_worker_with, unique, Proc, PyEnv};

    let queue = unique("cli_events");
    let mut dump = cli()?;
    dump.args(["--broker", broker, "events", "--dump"]);
    let mut dump = Proc::spawn("qtask events --dump", dump)?;
    dump.wait_log("-> events: watching", Duration::from_secs(30))?;

    let node = format!("{}@cli-events", unique("py"));
    let env = PyEnv::new(broker, &queue);
    let env = PyEnv { backend: None, ..env };
    let _py = spawn_python_worker_with(&env, &[&queue], None, &["-E", "-n", &node])?;
    let out = run(cli()?.args(["--broker", broker, "call", "tasks.add", "--args", "[2, 3]", "--queue", &queue]))?;
    anyhow::ensure!(out.status.success(), "call failed");
    let id = lines(&out).first().cloned().unwrap_or_default();
    dump.wait_log(&format!(r#""uuid": "{id}", "result": "5""#), Duration::from_secs(60))?;

    let log = dump.log();
    let events: Vec<Value> =
        log.lines().filter(|l| l.starts_with('{')).map(serde_json::from_str).collect::<Result<_, _>>()?;
    let of = |t: &str| events.iter().filter(|e| e["type"] == json!(t)).cloned().collect::<Vec<_>>();
    let online = of("worker-online");
    assert!(online.iter().any(|e| e["hostname"] == json!(node) && e["sw_ident"] == json!("py-celery")), "{log}");
    for t in ["task-received", "task-started", "task-succeeded"] {
        let e = of(t).into_iter().find(|e| e["uuid"] == json!(id)).unwrap_or_default();
        assert_eq!(e["hostname"], json!(node), "{t} of {id} in:\n{log}");
        assert!(e["clock"].is_u64() && e["timestamp"].is_f64() && e["pid"].is_u64(), "{e}");
    }
    let received = of("task-received").into_iter().find(|e| e["uuid"] == json!(id)).unwrap_or_default();
    assert_eq!((&received["name"], &received["args"]), (&json!("tasks.add"), &json!("(2, 3)")), "{received}");
    let succeeded = of("task-succeeded").into_iter().find(|e| e["uuid"] == json!(id)).unwrap_or_default();
    assert!(succeeded["runtime"].is_f64(), "{succeeded}");
    // Each line is one whole event: its first field is hostname, its last type (Celery's order).
    for l in log.lines().filter(|l| l.starts_with('{')) {
        assert!(l.starts_with(r#"{"hostname": "#) && l.contains(r#""type": ""#), "{l}");
    }
    Ok(())
}

/// `qtask inspect` / `qtask control` / `qtask status` against a Python
/// Celery worker on `broker`, addressed by its node name: Celery's text
/// output, `--json`, a rate limit the worker really applies, a revoke it
/// really records, and exit 69 when nobody answers.
pub fn remote_control_of_a_python_worker(broker: &str) -> anyhow::Result<()> {
    use serde_json::{json, Value};

    use crate::{spawn_python_worker_with, unique, PyEnv};

    let queue = unique("cli_control");
    let node = format!("{}@cli-control", unique("py"));
    let env = PyEnv { backend: None, ..PyEnv::new(broker, &queue) }.var("PYAPP_REMOTE_CONTROL", "1");
    let _py = spawn_python_worker_with(&env, &[&queue], None, &["--without-heartbeat", "-n", &node])?;
    let remote = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        run(cli()?.args(["--broker", broker]).args(args).args(["-d", &node, "-t", "10"]))
    };
    let stdout = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();

    // Celery's text: `->  node: OK`, the reply indented, the node count.
    let out = remote(&["inspect", "ping"])?;
    assert!(out.status.success());
    assert_eq!(stdout(&out), format!("->  {node}: OK\n        pong\n\n1 node online.\n"));
    let out = remote(&["status"])?;
    assert_eq!(stdout(&out), format!("->  {node}: OK\n\n1 node online.\n"));
    let out = remote(&["inspect", "ping", "--json"])?;
    let v: Value = serde_json::from_str(stdout(&out).trim())?;
    assert_eq!(v, json!({ node.as_str(): {"ok": "pong"} }));

    let out = remote(&["inspect", "registered"])?;
    assert!(stdout(&out).contains(&format!("->  {node}: OK\n    * tasks.add\n")), "{}", stdout(&out));
    let out = remote(&["inspect", "active_queues", "-j"])?;
    let v: Value = serde_json::from_str(stdout(&out).trim())?;
    assert_eq!(v[&node][0]["name"], json!(queue), "{v}");

    // control rate_limit: Celery's reply, and the worker's registry changed.
    let out = remote(&["control", "rate_limit", "tasks.add", "7/m"])?;
    assert_eq!(stdout(&out), format!("->  {node}: OK\n        new rate limit set successfully\n"));
    let out = remote(&["control", "rate_limit", "tasks.nope", "7/m", "--json"])?;
    let v: Value = serde_json::from_str(stdout(&out).trim())?;
    assert_eq!(v, json!([{ node.as_str(): {"error": "unknown task"} }]));
    let out = remote(&["inspect", "registered", "rate_limit"])?;
    assert!(stdout(&out).contains("* tasks.add [rate_limit=7/m]"), "{}", stdout(&out));

    // control revoke: the worker records the id.
    let id = uuid::Uuid::new_v4().to_string();
    let out = remote(&["control", "revoke", &id])?;
    assert_eq!(stdout(&out), format!("->  {node}: OK\n        tasks {{'{id}'}} flagged as revoked\n"));
    let out = remote(&["inspect", "revoked", "--json"])?;
    let v: Value = serde_json::from_str(stdout(&out).trim())?;
    assert!(v[&node].as_array().is_some_and(|ids| ids.contains(&json!(id))), "{v}");

    // Nobody by that name: Celery's error and exit code.
    let out = run(cli()?.args(["--broker", broker, "inspect", "ping", "-d", "nobody@nowhere", "-t", "0.5"]))?;
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No nodes replied within time constraint"));
    // A command Celery does not know: a usage error naming the known ones.
    let out = run(cli()?.args(["--broker", broker, "control", "reboot"]))?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Available control commands: add_consumer,"));
    Ok(())
}

/// `interop-worker` takes Celery's worker flags besides its own: `-n`, `-E`,
/// `-c`, `-P` show in its banner and act (the node answers `qtask inspect`
/// under that name with 3 slots, and its task events reach `qtask events
/// --dump`).
pub fn interop_worker_takes_celery_worker_flags(bin: &std::path::Path, broker: &str) -> anyhow::Result<()> {
    use std::time::Duration;

    use serde_json::{json, Value};

    use crate::{unique, Proc};

    let queue = unique("cli_flags");
    let node = format!("{}@cli-flags", unique("rs"));
    let mut dump = cli()?;
    dump.args(["--broker", broker, "events", "--dump"]);
    let mut dump = Proc::spawn("qtask events --dump", dump)?;
    dump.wait_log("-> events: watching", Duration::from_secs(30))?;

    let mut cmd = std::process::Command::new(bin);
    cmd.args(["--broker", broker, "--queues", &queue, "-n", &node, "-E", "-c", "3", "-P", "threads"])
        .env("QTASK_LOG", "info");
    let mut worker = Proc::spawn("interop-worker", cmd)?;
    worker.wait_log("worker online", Duration::from_secs(30))?;
    let log = worker.log();
    for line in [
        format!(" -------------- {node} v"),
        ".> concurrency: 3 (threads)".to_string(),
        ".> task events: ON".to_string(),
        format!(".> {queue:<16} exchange={queue}(direct) key={queue}"),
        "[tasks]\n  . tasks.add\n".to_string(),
    ] {
        assert!(log.contains(&line), "banner without {line:?}:\n{log}");
    }

    // The node answers under its -n name; the text is Celery's.
    let out = run(cli()?.args(["--broker", broker, "inspect", "ping", "-d", &node, "-t", "10"]))?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("->  {node}: OK\n        pong\n\n1 node online.\n"));
    let out = run(cli()?.args(["--broker", broker, "inspect", "stats", "-d", &node, "-j"]))?;
    let stats: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())?;
    assert_eq!(stats[&node]["pool"]["max-concurrency"], json!(3), "{stats}");

    let out = run(cli()?.args(["--broker", broker, "call", "tasks.mul", "--args", "[6, 7]", "--queue", &queue]))?;
    let id = lines(&out).first().cloned().unwrap_or_default();
    dump.wait_log(&format!(r#""uuid": "{id}", "result": "42""#), Duration::from_secs(60))?;
    let events: Vec<Value> =
        dump.log().lines().filter(|l| l.starts_with('{')).map(serde_json::from_str).collect::<Result<_, _>>()?;
    let received = events.iter().find(|e| e["type"] == json!("task-received") && e["uuid"] == json!(id));
    assert_eq!(received.map(|e| &e["hostname"]), Some(&json!(node)), "{events:?}");
    assert!(events.iter().any(|e| e["type"] == json!("worker-online") && e["hostname"] == json!(node)));

    let status = worker.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "{}", worker.log());
    Ok(())
}
