//! Remote control ("pidbox") messages as Celery sends them on `celery.pidbox`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::ProtocolError;
use crate::message::{Message, Properties};

/// The fanout exchange control requests are broadcast on.
pub const PIDBOX_EXCHANGE: &str = "celery.pidbox";
/// The direct exchange replies go to.
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";

/// Where a control reply goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyTo {
    /// Always `reply.celery.pidbox`.
    pub exchange: String,
    /// The client's reply id.
    pub routing_key: String,
}

/// A control request (`inspect ping`, `control revoke`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// Command name: `ping`, `revoke`, `terminate`, `stats`, ...
    pub method: String,
    /// Command arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
    /// Node names addressed; `None` = all.
    #[serde(default)]
    pub destination: Option<Vec<String>>,
    /// Node name pattern.
    #[serde(default)]
    pub pattern: Option<String>,
    /// How `pattern` matches (`glob`, `pcre`).
    #[serde(default)]
    pub matcher: Option<String>,
    /// Request id, echoed in the reply's `ticket` header.
    #[serde(default)]
    pub ticket: Option<String>,
    /// Where to reply; `None` = no reply wanted.
    #[serde(default)]
    pub reply_to: Option<ReplyTo>,
}

impl ControlRequest {
    /// Decode a request message.
    pub fn from_message(msg: &Message) -> Result<Self, ProtocolError> {
        msg.content_type()?.decode(&msg.body)
    }

    /// Whether the node `name` should run it.
    pub fn addressed_to(&self, name: &str) -> bool {
        match (&self.destination, &self.pattern) {
            (Some(d), _) if !d.is_empty() => d.iter().any(|n| n == name),
            (_, Some(p)) if !p.is_empty() => {
                crate::config::Route { pattern: p.clone(), queue: String::new() }.matches(name)
            }
            _ => true,
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

    /// Encode as a message (headers `clock`, `expires`).
    pub fn to_message(&self, clock: u64, timeout_secs: f64) -> Result<Message, ProtocolError> {
        let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        let mut headers = Map::new();
        headers.insert("clock".into(), clock.into());
        headers.insert("expires".into(), json!(now + timeout_secs));
        Ok(Message {
            headers,
            properties: Properties { delivery_mode: 2, ..Properties::default() },
            body: crate::json::to_vec(self)
                .map_err(|e| ProtocolError::Encode { what: "control request", reason: e.to_string() })?,
        })
    }
}

/// The broadcast Celery's `app.control.revoke(id, terminate=...)` sends.
pub fn revoke_request(task_id: &str, terminate: bool, reply_id: &str) -> Result<Message, ProtocolError> {
    let mut arguments = Map::new();
    arguments.insert("task_id".into(), json!([task_id]));
    if terminate {
        arguments.insert("terminate".into(), true.into());
        arguments.insert("signal".into(), "SIGTERM".into());
    }
    ControlRequest {
        method: "revoke".into(),
        arguments,
        destination: None,
        pattern: None,
        matcher: None,
        ticket: Some(uuid::Uuid::new_v4().to_string()),
        reply_to: Some(ReplyTo { exchange: REPLY_EXCHANGE.into(), routing_key: reply_id.into() }),
    }
    .to_message(0, 1.0)
}

/// A reply `{node: payload}` with headers `ticket` and `clock`.
pub fn reply_message(node: &str, ticket: Option<&str>, clock: u64, payload: Value) -> Result<Message, ProtocolError> {
    let mut headers = Map::new();
    headers.insert("ticket".into(), ticket.map(Value::from).unwrap_or(Value::Null));
    headers.insert("clock".into(), clock.into());
    let mut body = Map::new();
    body.insert(node.into(), payload);
    Ok(Message {
        headers,
        properties: Properties { delivery_mode: 1, ..Properties::default() },
        body: crate::json::to_vec(&body)
            .map_err(|e| ProtocolError::Encode { what: "control reply", reason: e.to_string() })?,
    })
}
