//! Remote control and events between qtask and Python Celery 5.7 on the
//! shared Redis ([`integration_tests::control`]). Every test addresses its
//! own worker by node name and owns its queues.

use anyhow::Result;
use integration_tests::control::Control;
use integration_tests::{interop_worker_bin, redis_url};

fn redis() -> Control {
    Control { broker: redis_url(), results: redis_url(), worker_bin: interop_worker_bin!().to_path_buf() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qtask_client_reaches_python_worker() -> Result<()> {
    redis().qtask_client_reaches_python_worker().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_receives_qtask_events() -> Result<()> {
    redis().python_receives_qtask_events().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_controls_qtask_worker() -> Result<()> {
    redis().python_controls_qtask_worker().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_while_no_worker_runs_never_runs() -> Result<()> {
    redis().revoked_while_no_worker_runs_never_runs().await
}

/// A thousand control calls leave no reply key without a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_lists_expire() -> Result<()> {
    redis().reply_lists_expire(1000).await
}

/// Flower 2.2 (`integration-tests/python/requirements.txt`) sees a qtask worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flower_sees_qtask_worker() -> Result<()> {
    redis().flower_sees_qtask_worker().await
}
