//! Handling of one delivery, from decoding to the final ack.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use qcore::run::{self, Finished};
use qcore::task::SoftLimit;
use qcore::{Acker, Delivery, ErrorKind, ExceptionInfo, TaskError, TaskMessage, TaskResult};

use crate::worker::{backoff, phase_at_least, Phase, Shared, TaskState};
use qcore::event::{exception_repr, EventData, TaskReceived};

/// How a run ended before its outcome is recorded.
enum RunEnd {
    Done(TaskResult),
    TimeLimit(f64),
    Terminated,
    Cold,
}

/// Decrements `reserved` when the delivery is settled, whatever the path.
struct Reservation<'a>(&'a Shared);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.reserved.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn settle<F, Fut>(what: &str, task_id: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), qcore::BrokerError>>,
{
    for attempt in 0..5u32 {
        match f().await {
            Ok(()) => return,
            Err(e) if e.is_retryable() && attempt < 4 => {
                tracing::warn!(task_id, error = %e, "{what} failed; retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => {
                tracing::error!(task_id, error = %e, "{what} failed; the broker will redeliver the message");
                return;
            }
        }
    }
}

async fn ack(acker: &Arc<dyn Acker>, id: &str) {
    settle("ack", id, || acker.ack()).await
}

async fn requeue(acker: &Arc<dyn Acker>, id: &str) {
    settle("requeue", id, || acker.reject(true)).await
}

async fn dead_letter(acker: &Arc<dyn Acker>, id: &str, reason: &str) {
    settle("dead-letter", id, || acker.dead_letter(reason)).await
}

/// Retry a result-recording step on transient errors before giving up.
async fn with_retries<T, F, Fut>(what: &str, id: &str, f: F) -> Result<T, qcore::Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, qcore::Error>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < 5 && is_transient(&e) => {
                attempt += 1;
                tracing::warn!(task_id = id, error = %e, attempt, "{what} failed; retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_transient(e: &qcore::Error) -> bool {
    match e {
        qcore::Error::Broker(b) => b.is_retryable(),
        qcore::Error::Backend(b) => b.is_retryable(),
        _ => false,
    }
}

pub(crate) async fn handle(shared: Arc<Shared>, delivery: Delivery, permit: OwnedSemaphorePermit) {
    let _reservation = Reservation(&shared);
    let Delivery { message, queue, redelivered, acker } = delivery;
    let max_size = shared.app.config().worker_max_message_size;
    let decoded = match (&shared.app.config().accept_content, message.content_type()) {
        _ if message.body.len() > max_size => Err(format!(
            "message too large: body of {} bytes, worker_max_message_size is {max_size}",
            message.body.len()
        )),
        (Some(accepted), Ok(ct)) if !accepted.contains(&ct) => {
            Err(format!("ContentDisallowed: refusing to deserialize content of type {} (accept_content)", ct.mime()))
        }
        _ => message.decode_task().map_err(|e| format!("malformed message: {e}")),
    };
    let msg = match decoded {
        Ok(m) => m,
        Err(reason) => {
            let id = message.task_id().unwrap_or("?").to_string();
            tracing::error!(task_id = %id, queue = %queue, %reason, "parking message in the dead-letter place");
            dead_letter(&acker, &id, &reason).await;
            shared.events.task(|| EventData::task_rejected(id, false));
            return;
        }
    };
    let id = msg.id.clone();
    let req =
        Arc::new(run::request_info(&msg, message.properties.reply_to.clone(), &shared.hostname, &queue, redelivered));
    let _tracking = shared.track(&req, message.properties.priority);
    shared.events.task(|| EventData::TaskReceived(TaskReceived::from_task(&msg)));
    let app = shared.app.clone();
    let mut phase = shared.phase.subscribe();

    // Revoked or expired before it started.
    if shared.is_revoked(&id) || shared.stamp_revoked(&msg.headers) {
        revoke_unstarted(&shared, &acker, &msg, &req, "revoked").await;
        return;
    }
    if msg.expires.is_some_and(|exp| exp <= Utc::now()) {
        revoke_unstarted(&shared, &acker, &msg, &req, "expired").await;
        return;
    }

    // ETA in the future: give it back to the broker, or hold it without a slot.
    let mut permit = Some(permit);
    if let Some(eta) = msg.eta.filter(|eta| *eta > Utc::now()) {
        // Only brokers that declare deferred delivery are asked; an
        // Unsupported error from one that does is handled the same way.
        let deferred = if app.broker().capabilities().defer {
            acker.defer(eta).await
        } else {
            Err(qcore::BrokerError::new(ErrorKind::Unsupported, "the broker does not declare deferred delivery"))
        };
        match deferred {
            Ok(()) => {
                tracing::debug!(task_id = %id, %eta, "deferred to the broker until its ETA");
                return;
            }
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                // Held here: free the prefetch slot so other work flows meanwhile.
                permit = None;
                shared.set_state(&id, TaskState::Scheduled { eta }, None);
                let wait = (eta - Utc::now()).to_std().unwrap_or_default();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = phase_at_least(&mut phase, Phase::Warm) => {
                        requeue(&acker, &id).await;
                        return;
                    }
                }
                if shared.is_revoked(&id) {
                    revoke_unstarted(&shared, &acker, &msg, &req, "revoked").await;
                    return;
                }
                if msg.expires.is_some_and(|exp| exp <= Utc::now()) {
                    revoke_unstarted(&shared, &acker, &msg, &req, "expired").await;
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(task_id = %id, error = %e, "deferring an ETA task failed; returning it to the queue");
                requeue(&acker, &id).await;
                return;
            }
        }
    }

    let Some(task) = app.task(&msg.task) else {
        tracing::error!(task_id = %id, task = %msg.task, "received unregistered task; parking it");
        if let Err(e) = run::not_registered(&app, &req).await {
            tracing::warn!(task_id = %id, error = %e, "could not store NotRegistered failure");
        }
        let reason = format!("NotRegistered: no task named {:?} on {}", msg.task, shared.hostname);
        dead_letter(&acker, &id, &reason).await;
        shared.events.task(|| EventData::task_rejected(id.as_str(), false));
        return;
    };
    let opts = task.options();

    // Rate limit, then a concurrency slot; shutdown returns the message.
    let default_limit = opts.rate_limit.or(app.config().task_default_rate_limit);
    tokio::select! {
        _ = shared.ratelimit.acquire(&msg.task, default_limit) => {}
        _ = phase_at_least(&mut phase, Phase::Warm) => {
            requeue(&acker, &id).await;
            return;
        }
    }
    let slot = tokio::select! {
        s = shared.slots.clone().acquire_owned() => match s {
            Ok(s) => s,
            Err(_) => { requeue(&acker, &id).await; return; }
        },
        _ = phase_at_least(&mut phase, Phase::Warm) => {
            requeue(&acker, &id).await;
            return;
        }
    };
    if shared.is_revoked(&id) {
        revoke_unstarted(&shared, &acker, &msg, &req, "revoked").await;
        return;
    }

    let acks_late = opts.acks_late.unwrap_or(app.config().task_acks_late);
    // Early ack: the task need not wait for the broker's reply (it is awaited
    // once the run ends, so the delivery is settled before this returns). If
    // the ack is lost the message comes back and runs again (at least once).
    // It is polled once here first: an ack that needs no I/O (AMQP queues it
    // for the channel's next batch) is then done without a task of its own.
    let early_ack = if acks_late {
        None
    } else {
        let (acker, id) = (acker.clone(), id.clone());
        let mut fut = Box::pin(async move { ack(&acker, &id).await });
        match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
            Poll::Ready(()) => None,
            Poll::Pending => Some(tokio::spawn(fut)),
        }
    };
    let (term_tx, term_rx) = oneshot::channel();
    let active = TaskState::Active { time_start: qcore::time::now_epoch(), acknowledged: !acks_late };
    shared.set_state(&id, active, Some(term_tx));
    shared.active.fetch_add(1, Ordering::Relaxed);
    shared.events.task(|| EventData::task_started(id.as_str()));
    if let Err(e) = run::mark_started(&app, &opts, &req).await {
        tracing::warn!(task_id = %id, error = %e, "could not store STARTED");
    }

    let started = std::time::Instant::now();
    let (mut task_hard, mut task_soft) = (opts.time_limit, opts.soft_time_limit);
    if let Some((h, s)) = shared.time_limit_override(&msg.task) {
        // `time_limit` by remote control: Celery's seconds, 0/None = none.
        let secs = |v: Option<f64>| v.filter(|s| s.is_finite() && *s > 0.0).map(Duration::from_secs_f64);
        (task_hard, task_soft) = (secs(h), secs(s));
    }
    let hard = msg.timelimit.hard.map(Duration::from_secs_f64).or(task_hard).or(app.config().task_time_limit);
    let soft = msg.timelimit.soft.map(Duration::from_secs_f64).or(task_soft).or(app.config().task_soft_time_limit);
    let end = run_with_limits(&shared, task, &msg, req.clone(), hard, soft, term_rx, &mut phase).await;
    if let Some(h) = early_ack {
        let _ = h.await;
    }
    shared.active.fetch_sub(1, Ordering::Relaxed);
    drop(slot);
    let runtime = started.elapsed();

    let outcome = match end {
        // Revoked while it ran (without terminate): REVOKED stays, the
        // result is not stored over it and nothing follows it.
        RunEnd::Done(_) if shared.is_revoked(&id) => {
            if let Err(e) = with_retries("store REVOKED", &id, || run::mark_revoked(&app, &msg, &req, "revoked")).await
            {
                tracing::error!(task_id = %id, error = %e, "could not store REVOKED");
            }
            shared.processed.fetch_add(1, Ordering::Relaxed);
            shared.events.task(|| EventData::task_revoked(id.as_str(), false, None, false));
            if acks_late {
                ack(&acker, &id).await;
            }
            return;
        }
        RunEnd::Done(r) => r,
        RunEnd::TimeLimit(secs) => {
            tracing::error!(task_id = %id, secs, "hard time limit exceeded; task aborted");
            Err(TaskError::Failure { exc: ExceptionInfo::time_limit_exceeded(secs), traceback: None })
        }
        RunEnd::Terminated => {
            if let Err(e) =
                with_retries("store REVOKED", &id, || run::mark_revoked(&app, &msg, &req, "terminated")).await
            {
                tracing::error!(task_id = %id, error = %e, "could not store REVOKED");
            }
            shared.processed.fetch_add(1, Ordering::Relaxed);
            shared.events.task(|| EventData::task_revoked(id.as_str(), true, Some(15), false));
            if acks_late {
                ack(&acker, &id).await;
            }
            return;
        }
        RunEnd::Cold => {
            if acks_late {
                requeue(&acker, &id).await;
            } else {
                tracing::warn!(task_id = %id, "cold shutdown aborted an early-acked task; it will not run again");
            }
            return;
        }
    };

    let finished = with_retries("record result", &id, || run::finish(&app, &opts, &msg, &req, outcome.clone())).await;
    shared.processed.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    match finished {
        Ok(Finished::Succeeded { value }) => {
            shared.succeeded.fetch_add(1, Ordering::Relaxed);
            if acks_late {
                ack(&acker, &id).await;
            }
            shared.events.task(|| EventData::task_succeeded(id.as_str(), qcore::repr::repr(&value), runtime));
        }
        Ok(Finished::Failed { exc, traceback }) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            if acks_late {
                if app.config().task_acks_on_failure_or_timeout {
                    ack(&acker, &id).await;
                } else {
                    dead_letter(&acker, &id, &format!("failed: {exc}")).await;
                }
            }
            tracing::warn!(task_id = %id, task = %msg.task, error = %exc, "task failed");
            shared.events.task(|| EventData::task_failed(id.as_str(), exception_repr(&exc), traceback));
        }
        Ok(Finished::Retried { exc, eta }) => {
            if acks_late {
                ack(&acker, &id).await;
            }
            tracing::info!(task_id = %id, task = %msg.task, %eta, error = %exc, "task will be retried");
            shared.events.task(|| EventData::task_retried(id.as_str(), exception_repr(&exc), None));
        }
        Ok(Finished::Rejected { requeue: again, reason }) => {
            if acks_late {
                if again {
                    requeue(&acker, &id).await;
                } else {
                    dead_letter(&acker, &id, &reason).await;
                }
            } else {
                tracing::warn!(task_id = %id, %reason, "task rejected its message after it was acked (use acks_late)");
            }
            shared.events.task(|| EventData::task_rejected(id.as_str(), again && acks_late));
        }
        Ok(Finished::Ignored) => {
            if acks_late {
                ack(&acker, &id).await;
            }
        }
        Err(e) => {
            tracing::error!(task_id = %id, error = %e, "could not record the outcome");
            if acks_late {
                // The result is not stored: run it again rather than lose it.
                requeue(&acker, &id).await;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_with_limits(
    shared: &Shared,
    task: Arc<dyn qcore::Task>,
    msg: &TaskMessage,
    req: Arc<qcore::RequestInfo>,
    hard: Option<Duration>,
    soft: Option<Duration>,
    term_rx: oneshot::Receiver<()>,
    phase: &mut tokio::sync::watch::Receiver<Phase>,
) -> RunEnd {
    let soft_limit = Arc::new(SoftLimit::default());
    let soft_timer = soft.map(|d| {
        let s = soft_limit.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            s.trigger();
        })
    });
    let join = run::spawn(task, shared.app.clone(), req, soft_limit, msg);
    let abort = join.abort_handle();
    let hard_sleep = async {
        match hard {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        r = join => RunEnd::Done(r),
        _ = hard_sleep => {
            abort.abort();
            RunEnd::TimeLimit(hard.map(|d| d.as_secs_f64()).unwrap_or_default())
        }
        _ = term_rx => {
            abort.abort();
            RunEnd::Terminated
        }
        _ = phase_at_least(phase, Phase::Cold) => {
            abort.abort();
            RunEnd::Cold
        }
    };
    if let Some(t) = soft_timer {
        t.abort();
    }
    end
}

async fn revoke_unstarted(
    shared: &Shared,
    acker: &Arc<dyn Acker>,
    msg: &TaskMessage,
    req: &qcore::RequestInfo,
    reason: &str,
) {
    tracing::info!(task_id = %msg.id, reason, "not running task");
    let app = &shared.app;
    if let Err(e) = with_retries("store REVOKED", &msg.id, || run::mark_revoked(app, msg, req, reason)).await {
        tracing::error!(task_id = %msg.id, error = %e, "could not store REVOKED");
    }
    ack(acker, &msg.id).await;
    shared.processed.fetch_add(1, Ordering::Relaxed);
    shared.events.task(|| EventData::task_revoked(msg.id.as_str(), false, None, reason == "expired"));
}
