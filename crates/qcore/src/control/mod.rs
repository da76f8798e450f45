//! Remote control ("pidbox"): the `inspect` / `control` requests Celery
//! broadcasts on `celery.pidbox` and the replies workers send back, for the
//! worker that answers them and for the clients (CLI, monitor) that ask.
//!
//! # Wire (FACTS §5)
//!
//! A request ([`ControlRequest`]) is a JSON map `{method, arguments,
//! destination, pattern, matcher, ticket, reply_to}` published to the fanout
//! exchange [`PIDBOX_EXCHANGE`] with routing key `""`, `delivery_mode` 2 and
//! headers `{"clock": <int>, "expires": <float epoch>}`
//! ([`ControlRequest::to_message`], [`RequestHeaders`]). On Redis that is a
//! `PUBLISH /<db>.celery.pidbox`; on AMQP a `basic.publish` to the
//! non-durable fanout exchange.
//!
//! A reply ([`Reply`]) is a one-entry map keyed by the node name
//! (`{"w1@host": {"ok": "pong"}}`) with `delivery_mode` 1 and headers
//! `{"ticket": <request ticket>, "clock": <int>}`, published to the direct
//! exchange [`REPLY_EXCHANGE`] with the request's `reply_to.routing_key`:
//! on Redis an `LPUSH <routing_key>.reply.celery.pidbox` (the list the
//! client polls), on AMQP a `basic.publish` to `reply.celery.pidbox`, routed
//! to the client's queue `<routing_key>.reply.celery.pidbox`. Through the
//! [`Broker`](crate::Broker) trait both sides are
//! `publish_fanout(REPLY_EXCHANGE, routing_key, reply)` and
//! `subscribe(REPLY_EXCHANGE, routing_key)`.
//!
//! A node runs a request when `destination` lists it, or when `pattern`
//! and `matcher` (`glob` or `pcre`) match its name, or when neither is set
//! ([`ControlRequest::addressed_to`], kombu's rule). The `expires` header is
//! not checked by workers (Celery's do not).
//!
//! Decoding never panics: a body that is not a request or a reply is a
//! [`ProtocolError`].
//!
//! ```
//! use qcore::control::{ControlRequest, Reply};
//! use serde_json::json;
//!
//! let req = ControlRequest::new("ping").reply_to("52f753b3").to(["w1@capture"]);
//! let msg = req.to_message(1, Some(1795314048.675506)).unwrap();
//! let back = ControlRequest::from_message(&msg).unwrap();
//! assert_eq!(back.method, "ping");
//! assert!(back.addressed_to("w1@capture"));
//! assert!(!back.addressed_to("w2@capture"));
//!
//! let reply = Reply::new("w1@capture", json!({"ok": "pong"}));
//! let msg = reply.to_message(back.ticket.as_deref(), 9).unwrap();
//! assert_eq!(msg.body, br#"{"w1@capture": {"ok": "pong"}}"#);
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::ProtocolError;
use crate::message::{Message, Properties};

mod client;
mod matcher;
pub mod revoked;

pub use client::Client;
pub use matcher::Matcher;

/// The fanout exchange control requests are broadcast on.
pub const PIDBOX_EXCHANGE: &str = "celery.pidbox";
/// The direct exchange replies go to.
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";
/// The name of a client's reply queue (Redis list) for a reply routing key:
/// `<routing_key>.reply.celery.pidbox`.
pub fn reply_queue(routing_key: &str) -> String {
    format!("{routing_key}.{REPLY_EXCHANGE}")
}

/// Where a control reply goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyTo {
    /// Always `reply.celery.pidbox`.
    pub exchange: String,
    /// The client's reply id.
    pub routing_key: String,
}

/// A control request (`inspect ping`, `control revoke`, ...): the body of a
/// pidbox broadcast, fields in Celery's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// Command name: `ping`, `revoke`, `stats`, ...
    pub method: String,
    /// Command arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
    /// Node names addressed; `None` = all.
    #[serde(default)]
    pub destination: Option<Vec<String>>,
    /// Node name pattern (see [`matcher`](Self::matcher)).
    #[serde(default)]
    pub pattern: Option<String>,
    /// How `pattern` matches: `glob` or `pcre` ([`Matcher`]).
    #[serde(default)]
    pub matcher: Option<String>,
    /// Request id, echoed in the reply's `ticket` header.
    #[serde(default)]
    pub ticket: Option<String>,
    /// Where to reply; `None` = no reply wanted.
    #[serde(default)]
    pub reply_to: Option<ReplyTo>,
}

/// The headers of a request message: the sender's Lamport `clock` and the
/// epoch second after which the client no longer waits (`expires`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RequestHeaders {
    /// The sender's clock.
    pub clock: Option<u64>,
    /// UNIX time (seconds) the request expires at.
    pub expires: Option<f64>,
}

impl RequestHeaders {
    /// Read the headers of a request message; a header of the wrong type
    /// reads as absent.
    pub fn from_message(msg: &Message) -> Self {
        RequestHeaders { clock: clock_of(&msg.headers), expires: msg.headers.get("expires").and_then(Value::as_f64) }
    }
}

fn clock_of(headers: &Map<String, Value>) -> Option<u64> {
    match headers.get("clock")? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

impl ControlRequest {
    /// A request for `method` with no arguments, addressed to every node,
    /// with a fresh ticket and no reply wanted.
    pub fn new(method: impl Into<String>) -> Self {
        ControlRequest {
            method: method.into(),
            arguments: Map::new(),
            destination: None,
            pattern: None,
            matcher: None,
            ticket: Some(uuid::Uuid::new_v4().to_string()),
            reply_to: None,
        }
    }

    /// Add an argument.
    pub fn arg(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.arguments.insert(name.into(), value.into());
        self
    }

    /// Address these nodes only.
    pub fn to<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.destination = Some(nodes.into_iter().map(Into::into).collect());
        self
    }

    /// Address the nodes whose name matches `pattern`.
    pub fn matching(mut self, pattern: impl Into<String>, matcher: Matcher) -> Self {
        self.pattern = Some(pattern.into());
        self.matcher = Some(matcher.name().to_owned());
        self
    }

    /// Ask for replies on the reply routing key `routing_key`.
    pub fn reply_to(mut self, routing_key: impl Into<String>) -> Self {
        self.reply_to = Some(ReplyTo { exchange: REPLY_EXCHANGE.into(), routing_key: routing_key.into() });
        self
    }

    /// Decode a request message.
    pub fn from_message(msg: &Message) -> Result<Self, ProtocolError> {
        let req: ControlRequest = msg.content_type()?.decode(&msg.body)?;
        if req.method.is_empty() {
            return Err(ProtocolError::Invalid("control request without a method".into()));
        }
        Ok(req)
    }

    /// Encode as a message with headers `clock` and `expires` (UNIX seconds;
    /// Celery always sends one: now + the client's timeout).
    pub fn to_message(&self, clock: u64, expires: Option<f64>) -> Result<Message, ProtocolError> {
        let mut headers = Map::new();
        headers.insert("clock".into(), clock.into());
        headers.insert("expires".into(), expires.map(Value::from).unwrap_or(Value::Null));
        Ok(Message {
            headers,
            properties: Properties { delivery_mode: 2, ..Properties::default() },
            body: crate::json::to_vec(self).map_err(|e| ProtocolError::encode("control request", e))?,
        })
    }

    /// Whether the node `name` should run it (kombu's rule): `destination`
    /// lists it; or, without a destination, `pattern` matches it with
    /// `matcher`; or neither is set. A pattern without a matcher, an unknown
    /// matcher or an invalid pattern addresses no node.
    pub fn addressed_to(&self, name: &str) -> bool {
        if let Some(d) = self.destination.as_ref().filter(|d| !d.is_empty()) {
            return d.iter().any(|n| n == name);
        }
        match (self.pattern.as_deref().filter(|p| !p.is_empty()), self.matcher.as_deref()) {
            (Some(p), Some(m)) => Matcher::from_name(m).is_some_and(|m| m.matches(p, name)),
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    /// The task ids of a `revoke`/`terminate` request (a list or one string).
    pub fn task_ids(&self) -> Vec<String> {
        match self.arguments.get("task_id") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    }
}

/// The broadcast Celery's `app.control.revoke(id, terminate=...)` sends.
pub fn revoke_request(task_id: &str, terminate: bool, reply_id: &str) -> Result<Message, ProtocolError> {
    let mut req = ControlRequest::new("revoke").arg("task_id", json!([task_id]));
    if terminate {
        req = req.arg("terminate", true).arg("signal", "SIGTERM");
    }
    req.reply_to(reply_id).to_message(0, Some(crate::time::now_epoch() + 1.0))
}

/// One node's answer to a request: `{node: value}` on the wire, with the
/// request's `ticket` and the node's `clock` in the headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The node that answered (`w1@host`).
    pub node: String,
    /// What it answered (`{"ok": "pong"}`, a list of tasks, a stats map...).
    pub value: Value,
    /// The `ticket` header: the request this answers.
    pub ticket: Option<String>,
    /// The `clock` header: the node's Lamport clock.
    pub clock: Option<u64>,
}

impl Reply {
    /// A reply of `node` (headers unset until [`to_message`](Self::to_message)).
    pub fn new(node: impl Into<String>, value: Value) -> Self {
        Reply { node: node.into(), value, ticket: None, clock: None }
    }

    /// The replies in a reply message: one per entry of its map (Celery
    /// sends one), each with the message's `ticket` and `clock`.
    pub fn from_message(msg: &Message) -> Result<Vec<Reply>, ProtocolError> {
        let body: Map<String, Value> = msg.content_type()?.decode(&msg.body)?;
        let ticket = msg.headers.get("ticket").and_then(Value::as_str).map(str::to_owned);
        let clock = clock_of(&msg.headers);
        Ok(body.into_iter().map(|(node, value)| Reply { node, value, ticket: ticket.clone(), clock }).collect())
    }

    /// Encode as Celery's worker does: body `{node: value}`,
    /// `delivery_mode` 1, headers `ticket` then `clock`.
    pub fn to_message(&self, ticket: Option<&str>, clock: u64) -> Result<Message, ProtocolError> {
        let mut headers = Map::new();
        headers.insert("ticket".into(), ticket.map(Value::from).unwrap_or(Value::Null));
        headers.insert("clock".into(), clock.into());
        let mut body = Map::new();
        body.insert(self.node.clone(), self.value.clone());
        Ok(Message {
            headers,
            properties: Properties { delivery_mode: 1, ..Properties::default() },
            body: crate::json::to_vec(&body).map_err(|e| ProtocolError::encode("control reply", e))?,
        })
    }

    /// Celery's `{"ok": text}` answer.
    pub fn ok(text: impl Into<String>) -> Value {
        json!({ "ok": text.into() })
    }

    /// Celery's `{"error": text}` answer (an unknown command, a refused
    /// argument).
    pub fn error(text: impl Into<String>) -> Value {
        json!({ "error": text.into() })
    }
}
