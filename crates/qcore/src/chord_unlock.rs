//! `celery.chord_unlock`: the polling chord join Celery uses with result
//! backends that have no native join (its database backend), on both sides.
//!
//! * **Producer:** a chord sent to such a backend
//!   ([`ResultBackend::capabilities`] says [`ChordSupport::Unlock`](crate::backend::ChordSupport::Unlock)) sends its header
//!   tasks and one `celery.chord_unlock` message, as Celery's
//!   `fallback_chord_unlock` does: args `[group_id, <body signature>]`,
//!   kwargs `{"interval": null, "max_retries": null, "result": [[[id, null],
//!   null], ...]}`, countdown 1 s, on the body's queue (its `queue` option,
//!   else its route) with its priority. No counter is registered and header
//!   tasks do not count themselves, so the body is sent by the unlock task
//!   only: exactly once whichever workers (Python or qtask) run the header.
//! * **Worker:** every [`App`](crate::App) knows the builtin task
//!   `celery.chord_unlock` ([`App::task`](crate::App::task) finds it unless the application
//!   registered its own). Like Celery's `unlock_chord`: when a header result
//!   is not ready it retries itself after `interval` (default 1 s, Celery's
//!   `result_chord_retry_interval`), up to `max_retries` (default: forever);
//!   when all succeeded it sends the body with their results, in header
//!   order, as first argument; when one failed it stores FAILURE
//!   `ChordError("Dependency <id> raised <exc>")` for the body and calls the
//!   body's errbacks; when it runs out of retries it fails the body with
//!   `ChordError("chord_unlock could not be retried: ...")`. Its result is
//!   not stored (`ignore_result`, as in Celery).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::backend::ResultBackend;
use crate::error::{BackendError, ProtocolError};
use crate::result::ExceptionInfo;
use crate::signature::Signature;
use crate::state::State;
use crate::task::{Retry, Task, TaskContext, TaskError, TaskOptions, TaskResult};

/// The builtin task's name.
pub const CHORD_UNLOCK: &str = "celery.chord_unlock";

/// Celery's `result_chord_retry_interval` default: the unlock task's first
/// countdown and its retry interval when the message names none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

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
        let result = kwargs.get("result").or_else(|| args.get(4));
        let result_ids = chord_unlock_result_ids(result.unwrap_or(&Value::Null))?;
        let interval = kwargs
            .get("interval")
            .or_else(|| args.get(2))
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(DEFAULT_INTERVAL, Duration::from_secs_f64);
        let max_retries = kwargs
            .get("max_retries")
            .or_else(|| args.get(3))
            .and_then(Value::as_u64)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        Ok(ChordUnlockRequest { group_id, body, result_ids, interval, max_retries })
    }
}

/// The id of one result tuple: `[[id, parent], nested]`, `[id, parent]` or `id`.
pub fn result_tuple_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => a.first().and_then(result_tuple_id),
        _ => None,
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
            result_tuple_id(t)
                .ok_or_else(|| ProtocolError::Invalid(format!("celery.chord_unlock: {t} is not a result tuple")))
        })
        .collect()
}

/// The kwargs of the `celery.chord_unlock` message a producer sends for the
/// header results `header_ids` (Celery's `fallback_chord_unlock`).
pub fn chord_unlock_kwargs(header_ids: &[String]) -> Map<String, Value> {
    let mut kw = Map::new();
    kw.insert("interval".into(), Value::Null);
    kw.insert("max_retries".into(), Value::Null);
    kw.insert("result".into(), Value::Array(header_ids.iter().map(|id| json!([[id, null], null])).collect()));
    kw
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

/// Python's `repr()` of an exception: `ValueError('boom')`.
pub(crate) fn exc_repr(exc: &ExceptionInfo) -> String {
    let args = crate::repr::args_repr(&exc.exc_message);
    // args_repr of one argument is `('boom',)`: an exception shows `('boom')`.
    let inner = match exc.exc_message.len() {
        1 => format!("({})", crate::repr::repr(&exc.exc_message[0])),
        _ => args,
    };
    format!("{}{inner}", exc.exc_type)
}

/// The builtin `celery.chord_unlock` task (see the module docs).
#[derive(Debug, Default)]
pub struct ChordUnlockTask;

/// The builtin tasks every [`App`](crate::App) knows.
pub(crate) fn builtin(name: &str) -> Option<Arc<dyn Task>> {
    (name == CHORD_UNLOCK).then(|| Arc::new(ChordUnlockTask) as Arc<dyn Task>)
}

#[async_trait]
impl Task for ChordUnlockTask {
    fn name(&self) -> &str {
        CHORD_UNLOCK
    }

    fn options(&self) -> TaskOptions {
        TaskOptions {
            max_retries: crate::task::MaxRetries::Unlimited,
            default_retry_delay: Some(DEFAULT_INTERVAL),
            ignore_result: true,
            ..TaskOptions::default()
        }
    }

    async fn run(&self, ctx: TaskContext, args: Vec<Value>, kwargs: Map<String, Value>) -> TaskResult {
        let req = ChordUnlockRequest::parse(&args, &kwargs).map_err(|e| TaskError::value_error(e.to_string()))?;
        let app = ctx.app().clone();
        let backend = app.backend().cloned().ok_or_else(|| {
            TaskError::fail("NotImplementedError", "celery.chord_unlock needs a result backend (set result_backend)")
        })?;
        let (error, cause) = match chord_unlock_ready(backend.as_ref(), &req.group_id, &req.result_ids).await {
            Ok(ChordUnlock::Ready(values)) => {
                let parent = crate::app::Parent {
                    id: ctx.id().to_string(),
                    root_id: Some(ctx.request().root_id.clone().unwrap_or_else(|| ctx.id().to_string())),
                    result: Some(Value::Array(values)),
                };
                app.apply_signature(req.body, Some(parent)).await.map_err(|e| TaskError::from_error(&e))?;
                return Ok(Value::Null);
            }
            Ok(ChordUnlock::Failed { task_id, exc }) => {
                let reason = format!("Dependency {task_id} raised {}", exc_repr(&exc));
                crate::run::fail_chord_body(&app, &req.body, &req.group_id, reason, ctx.request().root_id.clone())
                    .await
                    .map_err(|e| TaskError::from_error(&e))?;
                return Ok(Value::Null);
            }
            Ok(ChordUnlock::NotReady) => (None, None),
            Err(e) => (Some(e.to_string()), Some(ExceptionInfo::new("BackendError", e.to_string()))),
        };
        if req.max_retries.is_some_and(|max| ctx.retries() >= max) {
            // Celery: nothing will poll this chord again, so fail the body
            // instead of leaving it PENDING for ever.
            let cause = error.unwrap_or_else(|| {
                format!("MaxRetriesExceededError(\"Can't retry celery.chord_unlock[{}]\")", ctx.id())
            });
            let reason = format!("chord_unlock could not be retried: {cause}");
            crate::run::fail_chord_body(&app, &req.body, &req.group_id, reason.clone(), ctx.request().root_id.clone())
                .await
                .map_err(|e| TaskError::from_error(&e))?;
            return Err(TaskError::Failure { exc: ExceptionInfo::celery("ChordError", reason), traceback: None });
        }
        Err(TaskError::Retry(Retry {
            countdown: Some(req.interval),
            max_retries: req.max_retries,
            exc: cause,
            eta: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_show_as_python_reprs() {
        assert_eq!(exc_repr(&ExceptionInfo::new("ValueError", "boom")), "ValueError('boom')");
        let two = ExceptionInfo { exc_message: vec![json!("a"), json!(2)], ..ExceptionInfo::new("E", "") };
        assert_eq!(exc_repr(&two), "E('a', 2)");
    }

    #[test]
    fn producer_kwargs_parse_back() {
        let ids = vec!["a".to_string(), "b".to_string()];
        let kw = chord_unlock_kwargs(&ids);
        let body = Signature::new("tasks.xsum").to_value();
        let req = ChordUnlockRequest::parse(&[json!("g"), body], &kw).unwrap();
        assert_eq!(
            (req.group_id.as_str(), req.result_ids, req.interval, req.max_retries),
            ("g", ids, DEFAULT_INTERVAL, None)
        );
        assert!(ChordUnlockRequest::parse(&[json!(1)], &kw).is_err());
        assert!(ChordUnlockRequest::parse(&[json!("g"), json!({"task": "t"})], &Map::new()).is_err());
    }
}
