//! Options for [`App::apply_async`](super::App::apply_async), with Celery's names.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::message::ContentType;
use crate::signature::Signature;
use crate::time::format_iso;

/// Apply options. Each setter stores Celery's option name, so the same keys
/// work in [`Signature::set`] and in signatures received from Python.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    options: Map<String, Value>,
}

impl SendOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    fn with(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.options.insert(k.into(), v.into());
        self
    }

    /// Run no sooner than `d` from now.
    pub fn countdown(self, d: Duration) -> Self {
        self.with("countdown", d.as_secs_f64())
    }

    /// Run no sooner than `eta`.
    pub fn eta(self, eta: DateTime<Utc>) -> Self {
        self.with("eta", format_iso(&eta))
    }

    /// Revoke as expired if not started within `d`.
    pub fn expires_in(self, d: Duration) -> Self {
        self.with("expires", d.as_secs_f64())
    }

    /// Revoke as expired if not started by `at`.
    pub fn expires_at(self, at: DateTime<Utc>) -> Self {
        self.with("expires", format_iso(&at))
    }

    /// Message priority (0–9).
    pub fn priority(self, p: u8) -> Self {
        self.with("priority", p)
    }

    /// Send to this queue instead of the routed one.
    pub fn queue(self, q: impl Into<String>) -> Self {
        self.with("queue", q.into())
    }

    /// Use this task id.
    pub fn task_id(self, id: impl Into<String>) -> Self {
        self.with("task_id", id.into())
    }

    /// Add a custom header (sent at the top level of the headers, as Celery does).
    pub fn header(mut self, k: impl Into<String>, v: impl Into<Value>) -> Self {
        let entry = self.options.entry("headers").or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(k.into(), v.into());
        }
        self
    }

    /// Call `callback` with the result on success.
    pub fn link(mut self, callback: Signature) -> Self {
        push(&mut self.options, "link", callback);
        self
    }

    /// Call `errback` with the task id on failure.
    pub fn link_error(mut self, errback: Signature) -> Self {
        push(&mut self.options, "link_error", errback);
        self
    }

    /// Body serializer for this message.
    pub fn serializer(self, ct: ContentType) -> Self {
        self.with("serializer", ct.mime())
    }

    /// Do not store the result.
    pub fn ignore_result(self, ignore: bool) -> Self {
        self.with("ignore_result", ignore)
    }

    /// Hard time limit for this call.
    pub fn time_limit(self, d: Duration) -> Self {
        self.with("time_limit", d.as_secs_f64())
    }

    /// Soft time limit for this call.
    pub fn soft_time_limit(self, d: Duration) -> Self {
        self.with("soft_time_limit", d.as_secs_f64())
    }

    /// Name shown in logs and monitors instead of the task name.
    pub fn shadow(self, name: impl Into<String>) -> Self {
        self.with("shadow", name.into())
    }

    /// Any other option by its Celery name.
    pub fn option(self, k: &str, v: impl Into<Value>) -> Self {
        self.with(k, v)
    }

    pub(crate) fn apply_to(self, sig: &mut Signature) {
        for (k, v) in self.options {
            match (k.as_str(), v) {
                ("link" | "link_error", Value::Array(items)) => {
                    for item in items {
                        let entry = sig.options.entry(k.clone()).or_insert_with(|| Value::Array(Vec::new()));
                        if let Value::Array(a) = entry {
                            a.push(item);
                        }
                    }
                }
                (_, v) => {
                    sig.options.insert(k, v);
                }
            }
        }
    }
}

fn push(options: &mut Map<String, Value>, k: &str, s: Signature) {
    let entry = options.entry(k).or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(a) = entry {
        a.push(s.to_value());
    }
}
