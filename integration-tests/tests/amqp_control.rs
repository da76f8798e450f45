//! Remote control and events between qtask and Python Celery 5.7 on the
//! shared RabbitMQ, results on the shared Redis
//! ([`integration_tests::control`]). Every test addresses its own worker by
//! node name and owns its queues.

use anyhow::Result;
use integration_tests::control::Control;
use integration_tests::{amqp_url, interop_worker_bin, redis_url};

fn amqp() -> Control {
    Control { broker: amqp_url(), results: redis_url(), worker_bin: interop_worker_bin!().to_path_buf() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qtask_client_reaches_python_worker() -> Result<()> {
    amqp().qtask_client_reaches_python_worker().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_receives_qtask_events() -> Result<()> {
    amqp().python_receives_qtask_events().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_controls_qtask_worker() -> Result<()> {
    amqp().python_controls_qtask_worker().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_while_no_worker_runs_never_runs() -> Result<()> {
    amqp().revoked_while_no_worker_runs_never_runs().await
}
