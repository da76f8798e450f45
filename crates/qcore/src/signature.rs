//! Signatures and the canvas: chain, group, chord, link, link_error.
//!
//! A [`Signature`] serializes exactly as Celery's signature dict
//! (`task, args, kwargs, options, subtask_type, immutable`). Canvas
//! primitives are signatures too: `celery.chain` (kwargs `tasks`),
//! `celery.group` (kwargs `tasks`) and `celery.chord` (kwargs `header`,
//! `body`, `kwargs`), so they nest and travel inside messages unchanged.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::time::format_iso;

/// A task invocation that can be sent later, passed around or nested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    /// Task name, or `celery.chain` / `celery.group` / `celery.chord`.
    pub task: String,
    /// Positional args (partial: a parent's result is prepended unless immutable).
    #[serde(default, deserialize_with = "de_args")]
    pub args: Vec<Value>,
    /// Keyword args.
    #[serde(default, deserialize_with = "de_kwargs")]
    pub kwargs: Map<String, Value>,
    /// Apply options (`task_id`, `queue`, `countdown`, `link`, ...), in order.
    #[serde(default, deserialize_with = "de_kwargs")]
    pub options: Map<String, Value>,
    /// `null`, `"chain"`, `"group"` or `"chord"`.
    #[serde(default)]
    pub subtask_type: Option<String>,
    /// When true, a parent's result is not prepended to args.
    #[serde(default)]
    pub immutable: bool,
    /// Keys qtask does not know (e.g. `chord_size`), kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn de_args<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Array(a)) => a,
        Some(Value::Null) | None => Vec::new(),
        Some(other) => vec![other],
    })
}

fn de_kwargs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        Some(Value::Object(m)) => Ok(m),
        Some(Value::Null) | None => Ok(Map::new()),
        Some(other) => Err(serde::de::Error::custom(format!("expected a map, got {other}"))),
    }
}

/// What kind of canvas node a signature is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanvasKind {
    /// A single task.
    Task,
    /// `celery.chain`.
    Chain,
    /// `celery.group`.
    Group,
    /// `celery.chord`.
    Chord,
}

impl Signature {
    /// A signature for the task `name` with no arguments.
    pub fn new(name: impl Into<String>) -> Self {
        Signature {
            task: name.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            options: Map::new(),
            subtask_type: None,
            immutable: false,
            extra: Map::new(),
        }
    }

    /// Replace the positional args.
    pub fn with_args(mut self, args: Vec<Value>) -> Self {
        self.args = args;
        self
    }

    /// Append one positional arg.
    pub fn arg(mut self, v: impl Into<Value>) -> Self {
        self.args.push(v.into());
        self
    }

    /// Set one keyword arg.
    pub fn kwarg(mut self, k: impl Into<String>, v: impl Into<Value>) -> Self {
        self.kwargs.insert(k.into(), v.into());
        self
    }

    /// Make it immutable (Celery's `.si()`): the parent's result is not prepended.
    pub fn immutable(mut self) -> Self {
        self.immutable = true;
        self
    }

    /// Set an apply option (Celery's `.set()`).
    pub fn set(mut self, k: impl Into<String>, v: impl Into<Value>) -> Self {
        self.options.insert(k.into(), v.into());
        self
    }

    /// Run no sooner than `d` from when it is sent (whole seconds are
    /// written as an integer, as Python's `countdown=5` is).
    pub fn countdown(self, d: Duration) -> Self {
        self.set("countdown", seconds(d))
    }

    /// Run no sooner than `eta`.
    pub fn eta(self, eta: DateTime<Utc>) -> Self {
        self.set("eta", format_iso(&eta))
    }

    /// Expire (REVOKED, expired) if not started within `d` of sending.
    pub fn expires_in(self, d: Duration) -> Self {
        self.set("expires", seconds(d))
    }

    /// Route to a queue.
    pub fn queue(self, q: impl Into<String>) -> Self {
        self.set("queue", q.into())
    }

    /// Message priority (0–9).
    pub fn priority(self, p: u8) -> Self {
        self.set("priority", p)
    }

    /// Use this task id.
    pub fn task_id(self, id: impl Into<String>) -> Self {
        self.set("task_id", id.into())
    }

    /// Call `callback` with this task's result when it succeeds.
    pub fn link(mut self, callback: Signature) -> Self {
        push_option_list(&mut self.options, "link", callback);
        self
    }

    /// Call `errback` when this task fails.
    pub fn link_error(mut self, errback: Signature) -> Self {
        push_option_list(&mut self.options, "link_error", errback);
        self
    }

    /// The frozen task id, if one was set.
    pub fn id(&self) -> Option<&str> {
        self.options.get("task_id").and_then(Value::as_str)
    }

    /// The canvas kind.
    pub fn kind(&self) -> CanvasKind {
        match (self.subtask_type.as_deref(), self.task.as_str()) {
            (Some("chain"), _) | (_, "celery.chain") => CanvasKind::Chain,
            (Some("group"), _) | (_, "celery.group") => CanvasKind::Group,
            (Some("chord"), _) | (_, "celery.chord") => CanvasKind::Chord,
            _ => CanvasKind::Task,
        }
    }

    /// The member signatures of a chain or group (`kwargs.tasks`).
    pub fn tasks(&self) -> Vec<Signature> {
        self.kwargs.get("tasks").cloned().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default()
    }

    /// The header and body of a chord.
    pub fn chord_parts(&self) -> Option<(Signature, Signature)> {
        let header: Signature = serde_json::from_value(self.kwargs.get("header")?.clone()).ok()?;
        let body: Signature = serde_json::from_value(self.kwargs.get("body")?.clone()).ok()?;
        Some((header, body))
    }

    /// Signatures in an option list (`link`, `link_error`).
    pub fn option_signatures(&self, key: &str) -> Vec<Signature> {
        match self.options.get(key) {
            Some(Value::Array(a)) => a.iter().filter_map(|v| serde_json::from_value(v.clone()).ok()).collect(),
            Some(v @ Value::Object(_)) => serde_json::from_value(v.clone()).map(|s| vec![s]).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// This signature as a JSON value.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Seconds as Python code usually passes them: `5` for whole seconds, else `2.5`.
fn seconds(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        Value::from(d.as_secs())
    } else {
        Value::from(d.as_secs_f64())
    }
}

fn push_option_list(options: &mut Map<String, Value>, key: &str, sig: Signature) {
    let v = sig.to_value();
    match options.get_mut(key) {
        Some(Value::Array(a)) => a.push(v),
        _ => {
            options.insert(key.into(), Value::Array(vec![v]));
        }
    }
}

fn canvas(name: &str, kind: &str, kwargs: Map<String, Value>) -> Signature {
    Signature {
        task: name.into(),
        args: Vec::new(),
        kwargs,
        options: Map::new(),
        subtask_type: Some(kind.into()),
        immutable: false,
        extra: Map::new(),
    }
}

/// Run the signatures one after another, each receiving its parent's result.
pub fn chain(tasks: impl IntoIterator<Item = Signature>) -> Signature {
    let tasks: Vec<Value> = tasks.into_iter().map(|s| s.to_value()).collect();
    let mut kw = Map::new();
    kw.insert("tasks".into(), Value::Array(tasks));
    canvas("celery.chain", "chain", kw)
}

/// Run the signatures in parallel.
pub fn group(tasks: impl IntoIterator<Item = Signature>) -> Signature {
    let tasks: Vec<Value> = tasks.into_iter().map(|s| s.to_value()).collect();
    let mut kw = Map::new();
    kw.insert("tasks".into(), Value::Array(tasks));
    canvas("celery.group", "group", kw)
}

/// Run `header` in parallel, then `body` with the list of their results.
pub fn chord(header: impl IntoIterator<Item = Signature>, body: Signature) -> Signature {
    let mut kw = Map::new();
    kw.insert("kwargs".into(), Value::Object(Map::new()));
    kw.insert("header".into(), group(header).to_value());
    kw.insert("body".into(), body.to_value());
    canvas("celery.chord", "chord", kw)
}

/// `chain![a, b, c]`: a chain of signatures.
#[macro_export]
macro_rules! chain {
    ($($sig:expr),+ $(,)?) => { $crate::chain([$($crate::Signature::from($sig)),+]) };
}

/// `group![a, b, c]`: a group of signatures.
#[macro_export]
macro_rules! group {
    ($($sig:expr),+ $(,)?) => { $crate::group([$($crate::Signature::from($sig)),+]) };
}
