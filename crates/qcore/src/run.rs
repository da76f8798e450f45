//! What a task run *means* in Celery's protocol, shared by the worker and
//! eager mode: starting the task on a tokio task of its own (a panic becomes
//! a FAILURE), STARTED, SUCCESS/FAILURE/RETRY storage, autoretry with
//! Celery's backoff, the retry message, callbacks, the next chain step,
//! errbacks, the chord join, REVOKED, and FAILURE `NotRegistered` for a task
//! the app does not know.
//!
//! This module is the worker's and eager mode's shared surface, not user
//! API: it is public only so that `qworker` can reach it, and it may change
//! in any release. The worker decides *when* and *under which limits* a run
//! happens (prefetch, ETA, rate and time limits, terminate, acks); this
//! module decides what the run means.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::app::{App, Parent};
use crate::backend::{ChordJoin, ChordPart};
use crate::error::Error;
use crate::message::{Message, TaskMessage};
use crate::result::{ExceptionInfo, ResultMeta};
use crate::signature::{CanvasKind, Signature};
use crate::state::State;
use crate::task::{RequestInfo, Retry, SoftLimit, Task, TaskContext, TaskError, TaskOptions, TaskResult};

/// How a run ended, for acks and events.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    /// SUCCESS stored (unless results are ignored).
    Succeeded {
        /// The return value.
        value: Value,
    },
    /// FAILURE stored.
    Failed {
        /// The exception.
        exc: ExceptionInfo,
        /// Traceback text.
        traceback: Option<String>,
    },
    /// RETRY stored and the retry message sent.
    Retried {
        /// The cause.
        exc: ExceptionInfo,
        /// When the next try runs.
        eta: DateTime<Utc>,
    },
    /// The task refused the message.
    Rejected {
        /// Put it back in the queue.
        requeue: bool,
        /// Why.
        reason: String,
    },
    /// Nothing recorded.
    Ignored,
}

/// The request info a run sees, from a decoded message and the `reply_to`
/// property of the message it came in.
pub fn request_info(
    msg: &TaskMessage,
    reply_to: Option<String>,
    hostname: &str,
    queue: &str,
    redelivered: bool,
) -> RequestInfo {
    RequestInfo {
        id: msg.id.clone(),
        task: msg.task.clone(),
        retries: msg.retries,
        root_id: msg.root_id.clone(),
        parent_id: msg.parent_id.clone(),
        group: msg.group.clone(),
        group_index: msg.group_index,
        eta: msg.eta,
        expires: msg.expires,
        hostname: hostname.to_string(),
        queue: queue.to_string(),
        args: msg.args.clone(),
        kwargs: msg.kwargs.clone(),
        ignore_result: msg.ignore_result,
        redelivered,
        reply_to,
    }
}

fn ignores(app: &App, opts: &TaskOptions, req: &RequestInfo) -> bool {
    req.ignore_result || opts.ignore_result || app.config().task_ignore_result
}

fn meta_for(app: &App, req: &RequestInfo, status: State, result: Value) -> ResultMeta {
    let mut m = ResultMeta::new(req.id.clone(), status, result);
    m.group_id = req.group.clone();
    m.parent_id = req.parent_id.clone();
    if app.config().result_extended {
        app.extend_meta(&mut m, req);
    }
    m
}

async fn store(app: &App, reply_to: Option<&str>, meta: &ResultMeta) -> Result<(), Error> {
    if let Some(b) = app.backend() {
        b.store_for(meta, Some(app.config().result_expires), reply_to).await?;
    }
    Ok(())
}

fn parent_of(req: &RequestInfo, result: Option<Value>) -> Parent {
    Parent { id: req.id.clone(), root_id: Some(req.root_id.clone().unwrap_or_else(|| req.id.clone())), result }
}

/// Store STARTED (`{"pid", "hostname"}`) when `track_started` is on.
pub async fn mark_started(app: &App, opts: &TaskOptions, req: &RequestInfo) -> Result<(), Error> {
    if opts.track_started.unwrap_or(app.config().task_track_started) && !ignores(app, opts, req) {
        let result = serde_json::json!({"pid": std::process::id(), "hostname": req.hostname});
        store(app, req.reply_to.as_deref(), &meta_for(app, req, State::Started, result)).await?;
    }
    Ok(())
}

/// Celery's `get_exponential_backoff_interval`.
fn backoff(app: &App, opts: &TaskOptions, retries: u32) -> Duration {
    let Some(factor) = opts.retry_backoff else {
        return retry_delay(app, opts);
    };
    let secs = factor.as_secs_f64() * 2f64.powi(retries.min(62) as i32);
    let capped = secs.min(opts.retry_backoff_max.as_secs_f64());
    if opts.retry_jitter {
        Duration::from_secs_f64(fastrand::f64() * capped)
    } else {
        Duration::from_secs_f64(capped)
    }
}

/// The countdown of a retry that names none.
fn retry_delay(app: &App, opts: &TaskOptions) -> Duration {
    opts.default_retry_delay.unwrap_or(app.config().task_default_retry_delay)
}

fn autoretries(opts: &TaskOptions, exc: &ExceptionInfo) -> bool {
    opts.autoretry_for.iter().any(|k| k == &exc.exc_type || k == "Exception" || k == "*")
}

/// Record the outcome of a run and send what follows from it.
pub async fn finish(
    app: &App,
    opts: &TaskOptions,
    msg: &TaskMessage,
    req: &RequestInfo,
    outcome: TaskResult,
) -> Result<Finished, Error> {
    let outcome = match outcome {
        Err(TaskError::Failure { exc, .. }) if autoretries(opts, &exc) => Err(TaskError::Retry(Retry {
            countdown: Some(backoff(app, opts, req.retries)),
            exc: Some(exc),
            ..Retry::default()
        })),
        other => other,
    };
    match outcome {
        Ok(value) => on_success(app, opts, msg, req, value).await,
        Err(TaskError::Failure { exc, traceback }) => on_failure(app, opts, msg, req, exc, traceback).await,
        Err(TaskError::Retry(r)) => on_retry(app, opts, msg, req, r).await,
        Err(TaskError::Reject { requeue, reason }) => Ok(Finished::Rejected { requeue, reason }),
        Err(TaskError::Ignore) => Ok(Finished::Ignored),
    }
}

async fn on_success(
    app: &App,
    opts: &TaskOptions,
    msg: &TaskMessage,
    req: &RequestInfo,
    value: Value,
) -> Result<Finished, Error> {
    for cb in msg.embed.callbacks.iter().flatten() {
        app.apply_signature(cb.clone(), Some(parent_of(req, Some(value.clone())))).await?;
    }
    if let Some(mut chain) = msg.embed.chain.clone().filter(|c| !c.is_empty()) {
        if let Some(mut next) = chain.pop() {
            if !chain.is_empty() {
                attach_rest(&mut next, chain);
            }
            app.apply_signature(next, Some(parent_of(req, Some(value.clone())))).await?;
        }
    }
    if !ignores(app, opts, req) {
        store(app, req.reply_to.as_deref(), &meta_for(app, req, State::Success, value.clone())).await?;
    }
    chord_part(app, msg, req, State::Success, value.clone()).await?;
    Ok(Finished::Succeeded { value })
}

fn attach_rest(next: &mut Signature, rest: Vec<Signature>) {
    let rest: Vec<Value> = rest.iter().map(Signature::to_value).collect();
    match next.kind() {
        CanvasKind::Chord => {
            if let Some((header, mut body)) = next.chord_parts() {
                attach_rest_value(&mut body, rest);
                next.kwargs.insert("header".into(), header.to_value());
                next.kwargs.insert("body".into(), body.to_value());
            }
        }
        _ => attach_rest_value(next, rest),
    }
}

fn attach_rest_value(sig: &mut Signature, rest: Vec<Value>) {
    match sig.options.get_mut("chain") {
        Some(Value::Array(existing)) => {
            let mut merged = existing.clone();
            merged.extend(rest);
            *existing = merged;
        }
        _ => {
            sig.options.insert("chain".into(), Value::Array(rest));
        }
    }
}

async fn run_errbacks(app: &App, errbacks: &[Signature], req: &RequestInfo, failed_id: &str) -> Result<(), Error> {
    for eb in errbacks {
        app.apply_signature(eb.clone(), Some(parent_of(req, Some(Value::String(failed_id.to_string()))))).await?;
    }
    Ok(())
}

async fn on_failure(
    app: &App,
    opts: &TaskOptions,
    msg: &TaskMessage,
    req: &RequestInfo,
    exc: ExceptionInfo,
    traceback: Option<String>,
) -> Result<Finished, Error> {
    if !ignores(app, opts, req) {
        let mut meta = meta_for(app, req, State::Failure, exc.to_value());
        meta.traceback = traceback.clone();
        store(app, req.reply_to.as_deref(), &meta).await?;
    }
    run_errbacks(app, msg.embed.errbacks.as_deref().unwrap_or_default(), req, &req.id).await?;
    chord_part(app, msg, req, State::Failure, exc.to_value()).await?;
    Ok(Finished::Failed { exc, traceback })
}

async fn on_retry(
    app: &App,
    opts: &TaskOptions,
    msg: &TaskMessage,
    req: &RequestInfo,
    r: Retry,
) -> Result<Finished, Error> {
    let max = r.max_retries.or(opts.max_retries.resolve(app.config().task_max_retries));
    if max.is_some_and(|m| req.retries >= m) {
        let exc = r.exc.unwrap_or_else(|| {
            ExceptionInfo::celery(
                "MaxRetriesExceededError",
                format!("Can't retry {}[{}] args:{:?} kwargs:{:?}", req.task, req.id, req.args, req.kwargs),
            )
        });
        return on_failure(app, opts, msg, req, exc, None).await;
    }
    let countdown = r.countdown.unwrap_or_else(|| retry_delay(app, opts));
    let eta = r.eta.unwrap_or_else(|| Utc::now() + chrono::Duration::from_std(countdown).unwrap_or_default());
    let exc = r
        .exc
        .clone()
        .unwrap_or_else(|| ExceptionInfo::celery("Retry", format!("Retry in {}s", countdown.as_secs_f64())));
    let mut b = msg.to_builder();
    b.retries = req.retries + 1;
    b.eta = Some(eta);
    b.parent_id = Some(req.id.clone());
    b.origin = app.origin().to_string();
    // Celery's retry keeps the request's reply_to, so that rpc:// results
    // of the retried run still reach the original caller.
    b.reply_to = Some(req.reply_to.clone().unwrap_or_else(|| app.reply_to().to_string()));
    let retry_msg = b.build()?;
    if !ignores(app, opts, req) {
        store(app, req.reply_to.as_deref(), &meta_for(app, req, State::Retry, exc.to_value())).await?;
    }
    app.dispatch(&req.queue, retry_msg).await?;
    Ok(Finished::Retried { exc, eta })
}

/// Store REVOKED for a message that will not run (revoked, expired,
/// terminated) and settle its chord and errbacks.
pub async fn mark_revoked(app: &App, msg: &TaskMessage, req: &RequestInfo, reason: &str) -> Result<(), Error> {
    let exc = ExceptionInfo::revoked(reason);
    store(app, req.reply_to.as_deref(), &meta_for(app, req, State::Revoked, exc.to_value())).await?;
    run_errbacks(app, msg.embed.errbacks.as_deref().unwrap_or_default(), req, &req.id).await?;
    chord_part(app, msg, req, State::Revoked, exc.to_value()).await
}

async fn chord_part(
    app: &App,
    msg: &TaskMessage,
    req: &RequestInfo,
    status: State,
    result: Value,
) -> Result<(), Error> {
    let (Some(body), Some(gid)) = (&msg.embed.chord, &msg.group) else {
        return Ok(());
    };
    let backend = app.backend().ok_or(Error::NoBackend)?;
    if backend.capabilities().chords != crate::backend::ChordSupport::Native {
        // Joined by the `celery.chord_unlock` task the producer sent (as
        // Celery's backends without a native join do nothing here).
        return Ok(());
    }
    let part = ChordPart { task_id: req.id.clone(), index: msg.group_index.unwrap_or(0), status, result };
    let join = backend.chord_part(gid, &part, Some(app.config().result_expires)).await?;
    let ChordJoin::Complete(parts) = join else {
        return Ok(());
    };
    let body = body.clone();
    if let Some(bad) = parts.iter().find(|p| p.status != State::Success) {
        let cause = ExceptionInfo::from_value(&bad.result)
            .map(|e| crate::chord_unlock::exc_repr(&e))
            .unwrap_or_else(|| bad.status.to_string());
        let reason = format!("Dependency {} raised {}", bad.task_id, cause);
        return fail_chord_body(app, &body, gid, reason, req.root_id.clone()).await;
    }
    let values: Vec<Value> = parts.into_iter().map(|p| p.result).collect();
    app.apply_signature(body, Some(parent_of(req, Some(Value::Array(values))))).await?;
    Ok(())
}

/// Fail a chord's body with `ChordError(reason)` (Celery's
/// `chord_error_from_stack`): FAILURE stored under the body's id, then the
/// body's errbacks called with that id.
pub(crate) async fn fail_chord_body(
    app: &App,
    body: &Signature,
    gid: &str,
    reason: String,
    root_id: Option<String>,
) -> Result<(), Error> {
    let exc = ExceptionInfo::celery("ChordError", reason);
    let body_id = body.id().unwrap_or_default().to_string();
    if !body_id.is_empty() {
        let mut meta = ResultMeta::new(body_id.clone(), State::Failure, exc.to_value());
        meta.group_id = Some(gid.to_string());
        store(app, None, &meta).await?;
    }
    let errbacks = body.option_signatures("link_error");
    let body_req = RequestInfo { id: body_id.clone(), root_id, ..RequestInfo::default() };
    run_errbacks(app, &errbacks, &body_req, &body_id).await
}

/// Store FAILURE `NotRegistered` for a message naming a task this app does
/// not know (the worker then dead-letters the message).
pub async fn not_registered(app: &App, req: &RequestInfo) -> Result<(), Error> {
    let exc = ExceptionInfo::not_registered(&req.task);
    let mut meta = ResultMeta::new(req.id.clone(), State::Failure, exc.to_value());
    meta.group_id = req.group.clone();
    meta.parent_id = req.parent_id.clone();
    store(app, req.reply_to.as_deref(), &meta).await
}

/// A task run started by [`spawn`]: resolves to the task's outcome, a panic
/// as FAILURE `Panic(<message>)` and an abort as FAILURE `Cancelled`.
#[derive(Debug)]
pub struct Running {
    handle: tokio::task::JoinHandle<TaskResult>,
}

impl Running {
    /// Stops the run where it awaits next (hard time limit, terminate, cold
    /// shutdown).
    pub fn abort_handle(&self) -> tokio::task::AbortHandle {
        self.handle.abort_handle()
    }
}

impl Future for Running {
    type Output = TaskResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TaskResult> {
        Pin::new(&mut self.get_mut().handle).poll(cx).map(|r| r.unwrap_or_else(|e| Err(join_failure(e))))
    }
}

/// Start `task` with the arguments of `msg` on a tokio task of its own, so
/// that a panic becomes a FAILURE instead of taking the caller down.
pub fn spawn(task: Arc<dyn Task>, app: App, req: Arc<RequestInfo>, soft: Arc<SoftLimit>, msg: &TaskMessage) -> Running {
    let ctx = TaskContext::new(req, app, soft);
    let args = msg.args.clone();
    let kwargs = msg.kwargs.clone();
    Running { handle: tokio::spawn(async move { task.run(ctx, args, kwargs).await }) }
}

/// The FAILURE for a task whose tokio task did not return: a panic becomes
/// `Panic(<message>)`, a cancellation `Cancelled`.
fn join_failure(e: tokio::task::JoinError) -> TaskError {
    if !e.is_panic() {
        return TaskError::Failure {
            exc: ExceptionInfo::new("Cancelled", "task was cancelled").module("rust"),
            traceback: None,
        };
    }
    let p = e.into_panic();
    let text = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "task panicked".into());
    TaskError::Failure { exc: ExceptionInfo::new("Panic", text).module("rust"), traceback: None }
}

/// Run a task in the calling process (`task_always_eager`): the message is
/// serialized and decoded exactly as a worker would see it.
pub(crate) async fn run_eager(app: &App, msg: Message, queue: &str) -> Result<(), Error> {
    let tm = msg.decode_task()?;
    let req = request_info(&tm, msg.properties.reply_to.clone(), "eager@localhost", queue, false);
    let Some(task) = app.task(&tm.task) else {
        return not_registered(app, &req).await;
    };
    let opts = task.options();
    mark_started(app, &opts, &req).await?;
    let outcome = spawn(task, app.clone(), Arc::new(req.clone()), Arc::new(SoftLimit::default()), &tm).await;
    Box::pin(finish(app, &opts, &tm, &req, outcome)).await?;
    Ok(())
}
