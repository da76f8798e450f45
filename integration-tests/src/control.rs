//! Remote control (pidbox) and events between qtask and Python Celery 5.7,
//! written once for every broker: the Redis and RabbitMQ test files call
//! these checks with their URLs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use qtask::control::{Client, ControlRequest, Reply};
use serde_json::{json, Value};

use crate::interop::rust_app;
use crate::{python, python_dir, spawn_interop_worker, spawn_python_worker_named, unique, Proc, PyEnv, WorkerOpts};

/// How long a control call collects replies.
pub const CALL: Duration = Duration::from_secs(5);

/// One broker set-up of the control checks.
#[derive(Debug, Clone)]
pub struct Control {
    /// The broker URL of both sides.
    pub broker: String,
    /// The result backend URL of both sides.
    pub results: String,
    /// The `interop-worker` binary (from [`crate::interop_worker_bin!`]).
    pub worker_bin: PathBuf,
}

/// The one reply of `node` among `replies` (an error if none or several).
pub fn reply_of<'a>(replies: &'a [Reply], node: &str) -> Result<&'a Value> {
    let mine: Vec<&Reply> = replies.iter().filter(|r| r.node == node).collect();
    ensure!(mine.len() == 1, "expected one reply of {node}, got {replies:?}");
    Ok(&mine[0].value)
}

/// Start `events.py`: print the events of `node` until each of `types`
/// was seen; returns once it is subscribed.
pub fn spawn_event_receiver(broker: &str, node: &str, types: &[&str]) -> Result<Proc> {
    let mut cmd = std::process::Command::new(python());
    cmd.current_dir(python_dir())
        .env("PYAPP_BROKER", broker)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .arg("events.py")
        .arg(node)
        .arg(types.join(","))
        .arg("60");
    let mut p = Proc::spawn("events.py", cmd)?;
    p.wait_log("ready", Duration::from_secs(30))?;
    Ok(p)
}

/// The events a receiver printed (its JSON lines).
pub fn events_of(p: &Proc) -> Vec<Value> {
    p.log().lines().filter(|l| l.starts_with('{')).filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// `GET path` on 127.0.0.1:`port`, the body read as JSON.
pub fn http_get(port: u16, path: &str) -> Result<Value> {
    http(port, "GET", path)
}

/// `POST path` (empty body) on 127.0.0.1:`port`.
pub fn http_post(port: u16, path: &str) -> Result<Value> {
    http(port, "POST", path)
}

fn http(port: u16, method: &str, path: &str) -> Result<Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").context("no HTTP body")?;
    ensure!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"), "{method} {path}: {head}\n{body}");
    serde_json::from_str(body).with_context(|| format!("{method} {path} gave {body}"))
}

/// The replies of `celery -b BROKER <args> -j` (a map node → reply).
pub fn celery_json(broker: &str, args: &[&str]) -> Result<Value> {
    let out = std::process::Command::new(python())
        .current_dir(python_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-m", "celery", "-b", broker])
        .args(args)
        .args(["-j", "-t", "10"])
        .output()
        .context("cannot run celery")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "celery {args:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    serde_json::from_str(stdout.trim()).with_context(|| format!("celery {args:?} printed:\n{stdout}\n{stderr}"))
}

impl Control {
    /// `celery inspect|control ... -d node -j`: the reply of `node`.
    pub fn celery_reply(&self, node: &str, args: &[&str]) -> Result<Value> {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-d", node]);
        let replies = celery_json(&self.broker, &all)?;
        // `inspect -j` prints a map node → reply, `control -j` a list of them.
        let mine = match &replies {
            Value::Array(a) => a.iter().find_map(|r| r.get(node)),
            r => r.get(node),
        };
        mine.cloned().with_context(|| format!("no reply of {node} to {args:?}: {replies}"))
    }

    async fn client(&self) -> Result<Client> {
        Ok(Client::new(qtask::connect(&self.broker).await?))
    }

    /// A qtask worker on `queue` named `node`, with `env` settings.
    pub fn qtask_worker(&self, queue: &str, node: &str, env: &[(&str, &str)]) -> Result<Proc> {
        let mut opts = WorkerOpts { backend: Some(self.results.clone()), ..Default::default() };
        opts.env.push(("QTASK_WORKER_HOSTNAME".into(), node.into()));
        opts.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        spawn_interop_worker(&self.worker_bin, &self.broker, &[queue], &opts)
    }

    /// Python's `celery inspect` against a qtask worker: `ping`, `stats`,
    /// `registered`, `active_queues`, `active`, `reserved`, `revoked`; and
    /// `celery control` acting on it: `revoke`, `rate_limit`,
    /// `add_consumer`, `shutdown`.
    pub async fn python_controls_qtask_worker(&self) -> Result<()> {
        let queue = unique("ctl_rs");
        let node = format!("{}@qtask-test", unique("rsctl"));
        let mut worker = self.qtask_worker(&queue, &node, &[])?;
        let app = rust_app(&self.broker, &self.results, &queue, qtask::ContentType::Json, None).await?;

        ensure!(self.celery_reply(&node, &["inspect", "ping"])? == json!({"ok": "pong"}));
        let stats = self.celery_reply(&node, &["inspect", "stats"])?;
        ensure!(stats["pool"]["max-concurrency"].is_u64() && stats["pid"].is_u64(), "{stats}");
        ensure!(stats["clock"].is_string() && stats["broker"]["transport"].is_string(), "{stats}");
        let registered = self.celery_reply(&node, &["inspect", "registered"])?;
        ensure!(registered.as_array().is_some_and(|r| r.contains(&json!("tasks.add"))), "{registered}");
        let queues = self.celery_reply(&node, &["inspect", "active_queues"])?;
        ensure!(queues[0]["name"] == queue.as_str() && queues[0]["exchange"]["type"] == "direct", "{queues}");

        // active: a sleeping task is listed with Celery's request fields.
        let sleeper = app.delay(qtask::Signature::new("tasks.sleep").arg(3.0)).await?;
        let active = self.wait_reply(&node, &["inspect", "active"], |v| {
            v.as_array().is_some_and(|a| a.iter().any(|t| t["id"] == sleeper.id()))
        })?;
        let t = active.as_array().and_then(|a| a.iter().find(|t| t["id"] == sleeper.id())).context("active")?;
        ensure!(t["name"] == "tasks.sleep" && t["args"] == json!([3.0]) && t["hostname"] == node.as_str(), "{t}");
        ensure!(t["delivery_info"]["routing_key"] == queue.as_str() && t["time_start"].is_f64(), "{t}");

        // revoke: flagged, listed, and the task never runs.
        let id = uuid::Uuid::new_v4().to_string();
        let r = self.celery_reply(&node, &["control", "revoke", &id])?;
        ensure!(r == json!({"ok": format!("tasks {{'{id}'}} flagged as revoked")}), "{r}");
        let revoked = self.celery_reply(&node, &["inspect", "revoked"])?;
        ensure!(revoked.as_array().is_some_and(|r| r.contains(&json!(id))), "{revoked}");
        let opts = qtask::SendOptions::new().task_id(id.clone());
        let res = app.apply_async(qtask::Signature::new("tasks.add").arg(1).arg(1), opts).await?;
        match res.get(Duration::from_secs(30)).await {
            Err(qtask::Error::TaskFailed { state, .. }) if state == "REVOKED" => {}
            other => anyhow::bail!("a revoked task gave {other:?}"),
        }

        // rate_limit: 1/h lets one tasks.add run; the next waits, reserved.
        let r = self.celery_reply(&node, &["control", "rate_limit", "tasks.add", "1/h"])?;
        ensure!(r == json!({"ok": "new rate limit set successfully"}), "{r}");
        let first = app.delay(qtask::Signature::new("tasks.add").arg(2).arg(2)).await?;
        let second = app.delay(qtask::Signature::new("tasks.add").arg(3).arg(3)).await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let ready = loop {
            let ready = [first.ready().await?, second.ready().await?];
            if ready.iter().any(|r| *r) {
                break ready;
            }
            ensure!(std::time::Instant::now() < deadline, "neither rate-limited task ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let waiting = if ready[0] { second.id() } else { first.id() };
        // The other one is held by the rate limit (listed as reserved), not run.
        self.wait_reply(&node, &["inspect", "reserved"], |v| {
            v.as_array().is_some_and(|a| a.iter().any(|t| t["id"] == waiting))
        })?;
        ensure!(!app.result::<Value>(waiting).ready().await?, "the second task ran within a 1/h rate limit");
        let r = self.celery_reply(&node, &["control", "rate_limit", "tasks.add", "0"])?;
        ensure!(r == json!({"ok": "rate limit disabled successfully"}), "{r}");
        let unknown = self.celery_reply(&node, &["control", "rate_limit", "no.such.task", "1/s"])?;
        ensure!(unknown == json!({"error": "unknown task"}), "{unknown}");

        // add_consumer: a task sent to a new queue runs.
        let extra = unique("ctl_rs_extra");
        let r = self.celery_reply(&node, &["control", "add_consumer", &extra])?;
        ensure!(r == json!({"ok": format!("add consumer {extra}")}), "{r}");
        let opts = qtask::SendOptions::new().queue(extra.clone());
        let res = app.apply_async(qtask::Signature::new("tasks.add").arg(20).arg(22), opts).await?;
        ensure!(res.get(Duration::from_secs(30)).await? == json!(42));
        let queues = self.celery_reply(&node, &["inspect", "active_queues"])?;
        ensure!(queues.as_array().is_some_and(|q| q.iter().any(|q| q["name"] == extra.as_str())), "{queues}");

        // An unknown command is answered as kombu answers it.
        let objgraph = self.celery_reply(&node, &["inspect", "objgraph"])?;
        ensure!(objgraph["error"].is_string(), "{objgraph}");

        // shutdown: a warm shutdown; the process exits by itself.
        celery_json(&self.broker, &["control", "shutdown", "-d", &node]).ok();
        let status = worker.wait_exit(Duration::from_secs(30))?;
        ensure!(status.success(), "worker exited with {status}");
        Ok(())
    }

    /// Durable revokes: a task revoked while no worker runs (by a qtask
    /// producer, and by Python's `celery control revoke` heard by a worker
    /// that then stopped) is not run by a worker started later; the task
    /// sent after it on the same queue is.
    pub async fn revoked_while_no_worker_runs_never_runs(&self) -> Result<()> {
        let queue = unique("ctl_durable");
        let app = rust_app(&self.broker, &self.results, &queue, qtask::ContentType::Json, None).await?;
        // Heard by a worker that stops before the task is sent.
        let node = format!("{}@qtask-test", unique("rsdur"));
        let heard = uuid::Uuid::new_v4().to_string();
        {
            let mut first = self.qtask_worker(&unique("ctl_durable_other"), &node, &[])?;
            let r = self.celery_reply(&node, &["control", "revoke", &heard])?;
            ensure!(r["ok"].is_string(), "{r}");
            first.terminate(Duration::from_secs(30))?;
        }
        // Revoked by a producer while no worker runs.
        let by_app = uuid::Uuid::new_v4().to_string();
        app.revoke(&by_app, false).await?;
        let mut sent = Vec::new();
        for id in [&heard, &by_app] {
            let opts = qtask::SendOptions::new().task_id(id.clone());
            sent.push(app.apply_async(qtask::Signature::new("tasks.add").arg(1).arg(1), opts).await?);
        }
        let after = app.delay(qtask::Signature::new("tasks.add").arg(2).arg(2)).await?;
        let node2 = format!("{}@qtask-test", unique("rsdur"));
        let worker = self.qtask_worker(&queue, &node2, &[])?;
        ensure!(after.get(Duration::from_secs(30)).await? == json!(4));
        for r in &sent {
            crate::wait_for("the revoked task to be skipped", Duration::from_secs(30), || async {
                Ok(worker.log().contains(r.id()))
            })
            .await?;
            ensure!(r.state().await? == qtask::State::Revoked, "{} is {:?}", r.id(), r.state().await?);
        }
        let log = worker.log();
        ensure!(log.matches("not running task").count() >= 2, "the worker log does not show the skips:\n{log}");
        Ok(())
    }

    /// Redis: after many control calls, with clients that stop listening
    /// before the reply comes and clients that wait for it, no reply list
    /// the calls used is left without a TTL.
    pub async fn reply_lists_expire(&self, calls: usize) -> Result<()> {
        let queue = unique("ctl_ttl");
        let node = format!("{}@qtask-test", unique("rsttl"));
        let _worker = self.qtask_worker(&queue, &node, &[])?;
        let client = self.client().await?;
        let prefix = unique("ttl");
        for i in 0..calls {
            let req = ControlRequest::new("ping").to([node.as_str()]).reply_to(format!("{prefix}-{i}"));
            // Every other client gives up at once: the reply comes later.
            let wait = if i % 2 == 0 { CALL } else { Duration::ZERO };
            let replies = client.call(req, wait, None).await?;
            ensure!(wait.is_zero() || replies.len() == 1, "call {i}: {replies:?}");
        }
        // The last late reply, then look at every key of these calls.
        let last = client.call(ControlRequest::new("ping").to([node.as_str()]), CALL, None).await?;
        ensure!(last.len() == 1);
        let keys = crate::redis_cmd(&self.broker, &["KEYS", &format!("{prefix}-*")])?;
        let crate::Resp::Array(Some(keys)) = keys else { anyhow::bail!("KEYS gave {keys:?}") };
        let mut without_ttl = Vec::new();
        for k in &keys {
            let k = k.text().unwrap_or_default();
            if crate::redis_cmd(&self.broker, &["TTL", &k])?.int() == -1 {
                without_ttl.push(k);
            }
        }
        ensure!(
            without_ttl.is_empty(),
            "{} of {} reply keys have no TTL: {without_ttl:?}",
            without_ttl.len(),
            keys.len()
        );
        Ok(())
    }

    /// Real Flower 2.2 pointed at the broker lists a qtask worker in
    /// `/api/workers` (stats, registered tasks) and its tasks in
    /// `/api/tasks` with their state; its revoke API acts on the worker.
    pub async fn flower_sees_qtask_worker(&self) -> Result<()> {
        let queue = unique("ctl_flower");
        let node = format!("{}@qtask-test", unique("rsfl"));
        let _worker = self.qtask_worker(&queue, &node, &[("QTASK_WORKER_SEND_TASK_EVENTS", "true")])?;
        let port = crate::free_port()?;
        let mut cmd = std::process::Command::new(python());
        cmd.current_dir(python_dir())
            .env("FLOWER_UNAUTHENTICATED_API", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .args(["-m", "celery", "-b", &self.broker, "flower", "--address=127.0.0.1"])
            .arg(format!("--port={port}"));
        let mut flower = Proc::spawn("flower", cmd)?;
        flower.wait_log("Visit me at", Duration::from_secs(60))?;
        // Online in Flower's event state = its event receiver heard our
        // heartbeats, so it will hear the task's events too.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let status = http_get(port, "/api/workers?status=1")?;
            if status[node.as_str()] == true {
                break;
            }
            ensure!(std::time::Instant::now() < deadline, "Flower never saw {node} online: {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let app = rust_app(&self.broker, &self.results, &queue, qtask::ContentType::Json, None).await?;
        let ok = app.delay(qtask::Signature::new("tasks.add").arg(2).arg(3)).await?;
        ensure!(ok.get(Duration::from_secs(30)).await? == json!(5));

        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let workers = loop {
            let w = http_get(port, "/api/workers?refresh=1")?;
            if w[node.as_str()]["stats"].is_object() && w[node.as_str()]["registered"].is_array() {
                break w;
            }
            ensure!(std::time::Instant::now() < deadline, "Flower does not list {node}: {w}");
        };
        let mine = &workers[node.as_str()];
        ensure!(mine["registered"].as_array().is_some_and(|r| r.contains(&json!("tasks.add"))), "{mine}");
        ensure!(mine["stats"]["pool"]["max-concurrency"].is_u64(), "{mine}");
        let task = loop {
            let t = http_get(port, "/api/tasks")?;
            if t[ok.id()]["state"] == "SUCCESS" {
                break t[ok.id()].clone();
            }
            ensure!(std::time::Instant::now() < deadline, "Flower does not show {} as SUCCESS: {t}", ok.id());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        ensure!(task["worker"] == node.as_str() && task["result"] == "5" && task["args"] == "(2, 3)", "{task}");

        // Flower's revoke API reaches the qtask worker.
        let id = uuid::Uuid::new_v4().to_string();
        http_post(port, &format!("/api/task/revoke/{id}"))?;
        let client = self.client().await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let replies = client.call(ControlRequest::new("revoked").to([node.as_str()]), CALL, None).await?;
            if reply_of(&replies, &node)?.as_array().is_some_and(|a| a.contains(&json!(id))) {
                break;
            }
            ensure!(std::time::Instant::now() < deadline, "Flower's revoke did not reach {node}: {replies:?}");
        }
        Ok(())
    }

    /// Ask until the reply satisfies `ok` (at most 30 s).
    fn wait_reply(&self, node: &str, args: &[&str], ok: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.celery_reply(node, args)?;
            if ok(&v) {
                return Ok(v);
            }
            ensure!(std::time::Instant::now() < deadline, "{args:?} never gave the expected reply; last: {v}");
        }
    }

    /// Celery's own event receiver (what Flower and `celery events` use)
    /// sees a qtask worker started with task events on: `worker-online`,
    /// `worker-heartbeat` and the task events of a success and a failure,
    /// with Celery's fields.
    pub async fn python_receives_qtask_events(&self) -> Result<()> {
        let queue = unique("ctl_ev");
        let node = format!("{}@qtask-test", unique("rsev"));
        let types =
            ["worker-online", "worker-heartbeat", "task-received", "task-started", "task-succeeded", "task-failed"];
        let mut receiver = spawn_event_receiver(&self.broker, &node, &types)?;
        let _worker = self.qtask_worker(&queue, &node, &[("QTASK_WORKER_SEND_TASK_EVENTS", "true")])?;
        let app = rust_app(&self.broker, &self.results, &queue, qtask::ContentType::Json, None).await?;
        let ok = app.delay(qtask::Signature::new("tasks.add").arg(2).arg(3)).await?;
        assert_eq!(ok.get(Duration::from_secs(30)).await?, json!(5));
        let bad = app.delay(qtask::Signature::new("tasks.fail").arg("boom")).await?;
        ensure!(bad.get(Duration::from_secs(30)).await.is_err(), "tasks.fail succeeded");
        let status = receiver.wait_exit(Duration::from_secs(60))?;
        let events = events_of(&receiver);
        ensure!(status.success(), "events.py: {status}; log:\n{}", receiver.log());
        let find = |t: &str, id: Option<&str>| -> Result<&Value> {
            events
                .iter()
                .find(|e| e["type"] == t && id.is_none_or(|id| e["uuid"] == id))
                .with_context(|| format!("no {t} event in {events:?}"))
        };
        for e in &events {
            ensure!(e["hostname"] == node.as_str() && e["clock"].is_u64() && e["pid"].is_u64(), "{e}");
            ensure!(e["utcoffset"].is_number() && e["timestamp"].is_f64(), "{e}");
        }
        let hb = find("worker-heartbeat", None)?;
        ensure!(hb["freq"] == json!(2.0) && hb["active"].is_u64() && hb["processed"].is_u64(), "{hb}");
        ensure!(hb["loadavg"].as_array().is_some_and(|l| l.len() == 3), "{hb}");
        let received = find("task-received", Some(ok.id()))?;
        ensure!(received["name"] == "tasks.add" && received["args"] == "(2, 3)", "{received}");
        let succeeded = find("task-succeeded", Some(ok.id()))?;
        ensure!(succeeded["result"] == "5" && succeeded["runtime"].is_f64(), "{succeeded}");
        find("task-started", Some(ok.id()))?;
        let failed = find("task-failed", Some(bad.id()))?;
        ensure!(failed["exception"] == "ValueError('boom')", "{failed}");
        Ok(())
    }

    /// `qcore::control::Client` against a Python Celery worker: `ping`
    /// addressed by destination and by glob pattern, and `registered`.
    pub async fn qtask_client_reaches_python_worker(&self) -> Result<()> {
        let queue = unique("ctl_py");
        let node = format!("{}@qtask-test", unique("pyctl"));
        let env = PyEnv::with_backend(&self.broker, &self.results, &queue).var("PYAPP_REMOTE_CONTROL", "1");
        let _py = spawn_python_worker_named(&env, &[&queue], None, &node)?;
        let client = self.client().await?;

        let replies = client.call(ControlRequest::new("ping").to([node.as_str()]), CALL, None).await?;
        ensure!(reply_of(&replies, &node)? == &json!({"ok": "pong"}), "{replies:?}");

        let pattern = format!("{}*", &node[..node.find('@').context("node")?]);
        let req = ControlRequest::new("ping").matching(pattern, qtask::control::Matcher::Glob);
        let replies = client.call(req, CALL, Some(1)).await?;
        ensure!(reply_of(&replies, &node)? == &json!({"ok": "pong"}), "{replies:?}");

        let req = ControlRequest::new("registered").arg("taskinfoitems", json!([])).to([node.as_str()]);
        let replies = client.call(req, CALL, None).await?;
        let names = reply_of(&replies, &node)?.as_array().context("a list of names")?;
        ensure!(names.iter().any(|n| n == "tasks.add"), "{names:?}");
        Ok(())
    }
}
