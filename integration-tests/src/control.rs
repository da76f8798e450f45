//! Remote control (pidbox) and events between qtask and Python Celery 5.7,
//! written once for every broker: the Redis and RabbitMQ test files call
//! these checks with their URLs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use qtask::control::{Client, ControlRequest, Reply};
use serde_json::{json, Value};

use crate::{spawn_python_worker_named, unique, PyEnv};

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

impl Control {
    async fn client(&self) -> Result<Client> {
        Ok(Client::new(qtask::connect(&self.broker).await?))
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
