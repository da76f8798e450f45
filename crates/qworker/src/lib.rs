//! # qworker
//!
//! The qtask worker. It consumes task messages from a [`Broker`](qcore::Broker),
//! runs them with bounded concurrency and prefetch, and records outcomes
//! through qcore's run semantics (`qcore::run`, shared with eager mode) so
//! results, retries and canvases follow Celery's protocol.
//!
//! What it does for every message:
//! * **malformed** → dead-lettered with the reason; **unknown task** → FAILURE
//!   `NotRegistered` stored and the message dead-lettered; **panic** → FAILURE.
//!   The worker keeps running in every case.
//! * **revoked** (remote `revoke`) or **expired** → REVOKED, acked.
//! * **ETA/countdown** in the future → handed back to the broker to be
//!   delivered when due ([`Acker::defer`](qcore::Acker::defer)), or held on a
//!   timer without a concurrency slot where the broker cannot defer.
//! * **rate limit** → the start is delayed, without holding a slot.
//! * acked before running (default) or after (`acks_late`); hard time limit
//!   aborts the task (FAILURE `TimeLimitExceeded`), the soft limit tells it
//!   ([`TaskContext::soft_limit`](qcore::TaskContext::soft_limit)).
//!
//! Monitoring and control, as a Celery worker: `worker-*` heartbeats and (with
//! [`WorkerBuilder::send_events`] or `worker_send_task_events`) `task-*`
//! events on `celeryev`, so Flower and `celery events` see the worker; it
//! answers `celery inspect` / `celery control` requests on `celery.pidbox`
//! (ping, stats, active, registered, revoke, rate_limit, add_consumer,
//! shutdown, ...); revoked ids are kept in the result backend and loaded at
//! start ([`qcore::control::revoked`]).
//!
//! Shutdown: [`WorkerHandle::shutdown`] (first SIGTERM/SIGINT) stops
//! consuming, returns prefetched-but-unstarted messages and lets running tasks
//! finish within `worker_shutdown_timeout`; [`WorkerHandle::cold_shutdown`]
//! (second signal) aborts running tasks and returns every unacked message.
//!
//! ```no_run
//! # async fn demo(app: qcore::App) -> Result<(), qcore::Error> {
//! let worker = qworker::Worker::builder(app).queues(["celery"]).concurrency(4).build();
//! worker.run_until_signal().await
//! # }
//! ```

mod control;
mod events;
mod execute;
mod ratelimit;
mod revokes;
mod worker;

pub use worker::{Worker, WorkerBuilder, WorkerHandle, WorkerStats};
