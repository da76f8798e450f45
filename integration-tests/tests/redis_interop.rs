//! Python Celery 5.7 and qtask on one Redis, both directions, JSON and
//! msgpack: a Python producer with the qtask `interop-worker`, and a qtask
//! producer with a Python Celery worker (`pyapp.py`). The checks are the
//! ones of `amqp_interop` ([`integration_tests::interop`]).
//!
//! Every test owns its queue names (random suffix) on the shared Redis
//! (`QTASK_TEST_REDIS_URL`, default db 0) and its task ids; results are
//! read from the other side.

use anyhow::Result;
use integration_tests::{interop_worker_bin, redis_url, Interop, WorkerOpts};
use qtask::ContentType;

/// Broker and results on the shared Redis.
fn redis() -> Interop {
    let url = redis_url();
    Interop {
        broker: url.clone(),
        results: url.clone(),
        prefix: "",
        worker_bin: interop_worker_bin!().to_path_buf(),
        worker: WorkerOpts { backend: Some(url), ..Default::default() },
        py_vars: Vec::new(),
        qtask_results: None,
    }
}

// ---------------------------------------------------------------------------
// Python producer → qtask worker

#[test]
fn python_producer_to_qtask_worker_json() -> Result<()> {
    redis().python_to_qtask_messages("json")
}

#[test]
fn python_producer_to_qtask_worker_msgpack() -> Result<()> {
    redis().python_to_qtask_messages("msgpack")
}

#[test]
fn python_canvas_on_qtask_worker_json() -> Result<()> {
    redis().python_canvas_on_qtask("json")
}

#[test]
fn python_canvas_on_qtask_worker_msgpack() -> Result<()> {
    redis().python_canvas_on_qtask("msgpack")
}

/// A retrying task on a qtask worker (in this process: the interop worker's
/// task set has none), sent and read by Python.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_producer_sees_qtask_retries() -> Result<()> {
    for serializer in ["json", "msgpack"] {
        redis().python_sees_qtask_retries(serializer).await?;
    }
    Ok(())
}

/// On Redis 0 is the highest priority: tasks queued with priorities 9, 6,
/// 3, 0 (in that order, no worker running) run 0, 3, 6, 9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_priorities_on_qtask_worker() -> Result<()> {
    redis().python_priorities_on_qtask([9, 6, 3, 0], None).await
}

// ---------------------------------------------------------------------------
// qtask producer → Python worker

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qtask_producer_to_python_worker_json() -> Result<()> {
    redis().qtask_to_python_messages(ContentType::Json).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qtask_producer_to_python_worker_msgpack() -> Result<()> {
    redis().qtask_to_python_messages(ContentType::Msgpack).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qtask_canvas_on_python_worker_json() -> Result<()> {
    redis().qtask_canvas_on_python(ContentType::Json).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qtask_canvas_on_python_worker_msgpack() -> Result<()> {
    redis().qtask_canvas_on_python(ContentType::Msgpack).await
}

/// Priorities 9, 6, 3, 0 queued by qtask (no worker running) run 0, 3, 6,
/// 9 on a Python worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qtask_priorities_on_python_worker() -> Result<()> {
    redis().qtask_priorities_on_python([9, 6, 3, 0], None).await
}

// ---------------------------------------------------------------------------
// Both workers on one queue

/// A chord whose header runs partly on a Python worker and partly on the
/// qtask worker (some header tasks pinned to each, the rest on a queue both
/// consume) completes exactly once — twice over: once where a Python task
/// finishes the header last (Celery's join dispatches the body) and once
/// where a qtask task does (qredis's join dispatches it). The body
/// (`tasks.count_sum`, Python) counts its runs in a Redis key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chord_split_between_python_and_qtask_workers_completes_once() -> Result<()> {
    redis().chord_split_between_python_and_qtask_completes_once().await
}

// ---------------------------------------------------------------------------
// msgpack results (`result_serializer = "msgpack"`)

/// Python producer and qtask worker both set `result_serializer = "msgpack"`:
/// Python's `AsyncResult.get()` decodes with msgpack only, so every value,
/// failure and PROGRESS state it reads was stored by qtask as msgpack.
#[test]
fn python_producer_reads_qtask_msgpack_results() -> Result<()> {
    redis().python_results("msgpack").qtask_worker_results("msgpack").python_to_qtask_messages("msgpack")
}

/// A Python worker stores msgpack results; a qtask producer left at the
/// default `result_serializer` (JSON) reads them (values, failures,
/// PROGRESS, retries), as it reads JSON ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qtask_producer_reads_python_msgpack_results() -> Result<()> {
    redis().python_results("msgpack").qtask_to_python_messages(ContentType::Json).await
}

/// The mixed chord of `chord_split_between_python_and_qtask_workers_completes_once`
/// with both workers storing msgpack: the chord join's entries are msgpack
/// on both sides and the body still runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chord_split_with_msgpack_results_completes_once() -> Result<()> {
    redis()
        .python_results("msgpack")
        .qtask_worker_results("msgpack")
        .chord_split_between_python_and_qtask_completes_once()
        .await
}
