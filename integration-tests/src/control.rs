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

impl Control {
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
