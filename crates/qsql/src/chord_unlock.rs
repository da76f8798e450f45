//! Honouring `celery.chord_unlock`, the polling chord join Python Celery
//! uses with the database backend.
//!
//! A Python producer that sends a chord with a database result backend
//! does not count header results: it sends the header tasks and one
//! `celery.chord_unlock` task (countdown 1 s) with args
//! `[group_id, <body signature>]` and kwargs `{"interval", "max_retries",
//! "result": [[[id, null], null], ...], ...}`. The task checks whether all
//! header results are ready; if not it retries itself (countdown
//! `interval`, default 1 s), otherwise it calls the body with the list of
//! results, or fails the body with `ChordError` when a header task failed.
//!
//! A worker-side builtin task named `celery.chord_unlock` does exactly
//! that with the two functions here:
//!
//! ```no_run
//! # async fn run(backend: &dyn qcore::ResultBackend, args: Vec<serde_json::Value>,
//! #              kwargs: serde_json::Map<String, serde_json::Value>) -> Result<(), Box<dyn std::error::Error>> {
//! use qsql::{chord_unlock_ready, ChordUnlock, ChordUnlockRequest};
//! let req = ChordUnlockRequest::parse(&args, &kwargs)?;
//! match chord_unlock_ready(backend, &req.group_id, &req.result_ids).await? {
//!     ChordUnlock::NotReady => { /* retry the task after req.interval */ }
//!     ChordUnlock::Ready(values) => { /* apply req.body with `values` prepended to its args */ }
//!     ChordUnlock::Failed { task_id, exc } => { /* store FAILURE ChordError for the body, run its errbacks */ }
//!     _ => {}
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use qcore::{BackendError, ExceptionInfo, ProtocolError, ResultBackend, Signature, State};
use serde_json::{Map, Value};

use crate::backend::tuple_id;

/// The arguments of a `celery.chord_unlock` task.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChordUnlockRequest {
    /// The chord's group id.
    pub group_id: String,
    /// The body (callback) signature.
    pub body: Signature,
    /// The header task ids, in header order.
    pub result_ids: Vec<String>,
    /// How long to wait before checking again (Celery's default: 1 s).
    pub interval: Duration,
    /// How often to check before giving up (`None`: forever).
    pub max_retries: Option<u32>,
}

impl ChordUnlockRequest {
    /// Read the args and kwargs of a `celery.chord_unlock` message.
    pub fn parse(args: &[Value], kwargs: &Map<String, Value>) -> Result<Self, ProtocolError> {
        let group_id = args
            .first()
            .and_then(Value::as_str)
            .ok_or_else(|| ProtocolError::Invalid("celery.chord_unlock: args[0] must be the group id".into()))?
            .to_string();
        let body_value = args
            .get(1)
            .cloned()
            .ok_or_else(|| ProtocolError::Invalid("celery.chord_unlock: args[1] must be the body signature".into()))?;
        let body: Signature = serde_json::from_value(body_value)
            .map_err(|e| ProtocolError::Invalid(format!("celery.chord_unlock: body signature: {e}")))?;
        let result = kwargs.get("result").or_else(|| args.get(2));
        let result_ids = chord_unlock_result_ids(result.unwrap_or(&Value::Null))?;
        let interval = kwargs
            .get("interval")
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(Duration::from_secs(1), Duration::from_secs_f64);
        let max_retries =
            kwargs.get("max_retries").and_then(Value::as_u64).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        Ok(ChordUnlockRequest { group_id, body, result_ids, interval, max_retries })
    }
}

/// The header task ids from chord_unlock's `result` kwarg
/// (`[[[id, null], null], ...]`).
pub fn chord_unlock_result_ids(result: &Value) -> Result<Vec<String>, ProtocolError> {
    let items = result
        .as_array()
        .ok_or_else(|| ProtocolError::Invalid("celery.chord_unlock: result must be a list of result tuples".into()))?;
    items
        .iter()
        .map(|t| {
            tuple_id(t).ok_or_else(|| ProtocolError::Invalid(format!("celery.chord_unlock: {t} is not a result tuple")))
        })
        .collect()
}

/// The state of a chord header, as `celery.chord_unlock` sees it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ChordUnlock {
    /// Some header results are not ready: check again later.
    NotReady,
    /// Every header task succeeded: their results, in header order.
    Ready(Vec<Value>),
    /// A header task failed or was revoked: the body fails with
    /// `ChordError` (Celery: `Dependency <id> raised <exc>`).
    Failed {
        /// The failed header task.
        task_id: String,
        /// Its exception.
        exc: ExceptionInfo,
    },
}

/// Whether every header result of a chord is ready (one bulk read).
pub async fn chord_unlock_ready(
    backend: &dyn ResultBackend,
    group_id: &str,
    result_ids: &[String],
) -> Result<ChordUnlock, BackendError> {
    let metas = backend.get_many(result_ids).await?;
    let mut values = Vec::with_capacity(metas.len());
    for (id, meta) in result_ids.iter().zip(metas) {
        let Some(meta) = meta.filter(|m| m.status.is_ready()) else {
            tracing::trace!(group_id, task_id = %id, "chord header not ready");
            return Ok(ChordUnlock::NotReady);
        };
        if meta.status != State::Success {
            let exc = meta.exception().unwrap_or_else(|| {
                ExceptionInfo::new(meta.status.as_str(), format!("task {id} ended in {}", meta.status))
            });
            return Ok(ChordUnlock::Failed { task_id: id.clone(), exc });
        }
        values.push(meta.result);
    }
    Ok(ChordUnlock::Ready(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_captured_chord_unlock_message() {
        let raw = include_str!("../tests/fixtures/chord-unlock-message-default.raw.json");
        let env: Value = serde_json::from_str(raw).unwrap();
        let body =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, env["body"].as_str().unwrap()).unwrap();
        let decoded: Value = serde_json::from_slice(&body).unwrap();
        let args = decoded[0].as_array().unwrap().clone();
        let kwargs = decoded[1].as_object().unwrap().clone();
        let req = ChordUnlockRequest::parse(&args, &kwargs).unwrap();
        assert_eq!(req.group_id, "46035113-0bf3-4b38-8340-5105a7b4fea4");
        assert_eq!(req.body.task, "capapp.tsum");
        assert_eq!(
            req.result_ids,
            vec![
                "2bd2a187-980a-4767-b94e-4f535310c7a9".to_string(),
                "948557ed-bc1d-44ff-ad8f-f6046bd48992".to_string()
            ]
        );
        assert_eq!(req.interval, Duration::from_secs(1));
        assert_eq!(req.max_retries, None);
    }
}
