//! Options for [`App::apply_async`](super::App::apply_async), with Celery's names.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Map, Value};

use crate::message::ContentType;
use crate::signature::Signature;
use crate::time::format_iso;

/// When a message expires.
#[derive(Debug, Clone, Copy)]
pub(super) enum Expires {
    /// This long after it is sent.
    In(Duration),
    /// At this time.
    At(DateTime<Utc>),
}

/// Apply options, with Celery's names.
///
/// Sending one task, they go to its message as they are; sending a canvas
/// (chain, group, chord), they are written into the canvas signature's
/// options under Celery's names, as [`Signature::set`] and signatures
/// received from Python carry them.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    pub(super) countdown: Option<Duration>,
    pub(super) eta: Option<DateTime<Utc>>,
    pub(super) expires: Option<Expires>,
    pub(super) priority: Option<u8>,
    pub(super) queue: Option<String>,
    pub(super) task_id: Option<String>,
    pub(super) headers: Option<Map<String, Value>>,
    pub(super) link: Vec<Signature>,
    pub(super) link_error: Vec<Signature>,
    pub(super) serializer: Option<ContentType>,
    pub(super) ignore_result: Option<bool>,
    pub(super) time_limit: Option<Duration>,
    pub(super) soft_time_limit: Option<Duration>,
    pub(super) shadow: Option<String>,
    /// Set by [`SendOptions::option`]: Celery's names and JSON values, applied
    /// to the signature's options before the typed ones.
    pub(super) other: Map<String, Value>,
}

impl SendOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    /// A typed setter replaces what [`option`](Self::option) set under its name.
    fn typed(mut self, k: &str) -> Self {
        self.other.remove(k);
        self
    }

    /// Run no sooner than `d` from now.
    pub fn countdown(self, d: Duration) -> Self {
        let mut o = self.typed("countdown");
        o.countdown = Some(d);
        o
    }

    /// Run no sooner than `eta`.
    pub fn eta(self, eta: DateTime<Utc>) -> Self {
        let mut o = self.typed("eta");
        // Dates travel with microseconds, as Python's.
        o.eta = Some(eta.trunc_subsecs(6));
        o
    }

    /// Revoke as expired if not started within `d`.
    pub fn expires_in(self, d: Duration) -> Self {
        let mut o = self.typed("expires");
        o.expires = Some(Expires::In(d));
        o
    }

    /// Revoke as expired if not started by `at`.
    pub fn expires_at(self, at: DateTime<Utc>) -> Self {
        let mut o = self.typed("expires");
        o.expires = Some(Expires::At(at.trunc_subsecs(6)));
        o
    }

    /// Message priority (0–9).
    pub fn priority(self, p: u8) -> Self {
        let mut o = self.typed("priority");
        o.priority = Some(p);
        o
    }

    /// Send to this queue instead of the routed one.
    pub fn queue(self, q: impl Into<String>) -> Self {
        let mut o = self.typed("queue");
        o.queue = Some(q.into());
        o
    }

    /// Use this task id.
    pub fn task_id(self, id: impl Into<String>) -> Self {
        let mut o = self.typed("task_id");
        o.task_id = Some(id.into());
        o
    }

    /// Add a custom header (sent at the top level of the headers, as Celery does).
    pub fn header(mut self, k: impl Into<String>, v: impl Into<Value>) -> Self {
        match self.other.get_mut("headers") {
            // `option("headers", {...})` came first: add to it.
            Some(Value::Object(m)) => {
                m.insert(k.into(), v.into());
            }
            Some(_) => {}
            None => {
                self.headers.get_or_insert_with(Map::new).insert(k.into(), v.into());
            }
        }
        self
    }

    /// Call `callback` with the result on success.
    pub fn link(mut self, callback: Signature) -> Self {
        match self.other.get_mut("link") {
            Some(Value::Array(a)) => a.push(callback.to_value()),
            Some(_) => {}
            None => self.link.push(callback),
        }
        self
    }

    /// Call `errback` with the task id on failure.
    pub fn link_error(mut self, errback: Signature) -> Self {
        match self.other.get_mut("link_error") {
            Some(Value::Array(a)) => a.push(errback.to_value()),
            Some(_) => {}
            None => self.link_error.push(errback),
        }
        self
    }

    /// Body serializer for this message.
    pub fn serializer(self, ct: ContentType) -> Self {
        let mut o = self.typed("serializer");
        o.serializer = Some(ct);
        o
    }

    /// Do not store the result.
    pub fn ignore_result(self, ignore: bool) -> Self {
        let mut o = self.typed("ignore_result");
        o.ignore_result = Some(ignore);
        o
    }

    /// Hard time limit for this call.
    pub fn time_limit(self, d: Duration) -> Self {
        let mut o = self.typed("time_limit");
        o.time_limit = Some(d);
        o
    }

    /// Soft time limit for this call.
    pub fn soft_time_limit(self, d: Duration) -> Self {
        let mut o = self.typed("soft_time_limit");
        o.soft_time_limit = Some(d);
        o
    }

    /// Name shown in logs and monitors instead of the task name.
    pub fn shadow(self, name: impl Into<String>) -> Self {
        let mut o = self.typed("shadow");
        o.shadow = Some(name.into());
        o
    }

    /// Any other option by its Celery name (it replaces what a typed setter
    /// set under the same name).
    pub fn option(mut self, k: &str, v: impl Into<Value>) -> Self {
        match k {
            "countdown" => self.countdown = None,
            "eta" => self.eta = None,
            "expires" => self.expires = None,
            "priority" => self.priority = None,
            "queue" => self.queue = None,
            "task_id" => self.task_id = None,
            "headers" => self.headers = None,
            "link" => self.link.clear(),
            "link_error" => self.link_error.clear(),
            "serializer" => self.serializer = None,
            "ignore_result" => self.ignore_result = None,
            "time_limit" => self.time_limit = None,
            "soft_time_limit" => self.soft_time_limit = None,
            "shadow" => self.shadow = None,
            _ => {}
        }
        self.other.insert(k.into(), v.into());
        self
    }

    /// Apply what [`option`](Self::option) set to the signature's options
    /// (a `link`/`link_error` list adds to the signature's), leaving the
    /// typed options in `self`.
    pub(super) fn apply_other_to(&mut self, sig: &mut Signature) {
        for (k, v) in std::mem::take(&mut self.other) {
            match (k.as_str(), v) {
                ("link" | "link_error", Value::Array(items)) => add_signatures(&mut sig.options, &k, items),
                (_, v) => {
                    sig.options.insert(k, v);
                }
            }
        }
    }

    /// Write every option into the signature's options under Celery's
    /// names (sending a canvas, whose options travel as Celery's dict).
    pub(super) fn apply_to(mut self, mut sig: Signature) -> Signature {
        self.apply_other_to(&mut sig);
        let o = &mut sig.options;
        let mut set = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                o.insert(k.into(), v);
            }
        };
        set("countdown", self.countdown.map(|d| d.as_secs_f64().into()));
        set("eta", self.eta.map(|eta| format_iso(&eta).into()));
        set(
            "expires",
            self.expires.map(|e| match e {
                Expires::In(d) => d.as_secs_f64().into(),
                Expires::At(at) => format_iso(&at).into(),
            }),
        );
        set("priority", self.priority.map(Value::from));
        set("queue", self.queue.map(Value::from));
        set("task_id", self.task_id.map(Value::from));
        set("headers", self.headers.map(Value::Object));
        set("serializer", self.serializer.map(|ct| ct.mime().into()));
        set("ignore_result", self.ignore_result.map(Value::from));
        set("time_limit", self.time_limit.map(|d| d.as_secs_f64().into()));
        set("soft_time_limit", self.soft_time_limit.map(|d| d.as_secs_f64().into()));
        set("shadow", self.shadow.map(Value::from));
        for (k, sigs) in [("link", self.link), ("link_error", self.link_error)] {
            if !sigs.is_empty() {
                add_signatures(o, k, sigs.iter().map(Signature::to_value).collect());
            }
        }
        sig
    }
}

/// Add signatures to an option list of `options` (`link`, `link_error`): a
/// single signature there becomes the first of the list.
fn add_signatures(options: &mut Map<String, Value>, k: &str, items: Vec<Value>) {
    let entry = options.entry(k).or_insert(Value::Null);
    let mut list = match entry.take() {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        one => vec![one],
    };
    list.extend(items);
    *entry = Value::Array(list);
}
