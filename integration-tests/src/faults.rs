//! What the broker fault tests (`tests/redis_faults.rs`,
//! `tests/amqp_faults.rs`) share: waiting for tasks to start on a worker
//! about to be killed, a producer that keeps publishing through a broker
//! restart, and counting the results stored in Redis.

use std::time::Duration;

use anyhow::Result;
use qtask::{App, AsyncResult, State};
use tokio::task::JoinHandle;

use crate::tasks::add;
use crate::{redis_cmd, wait_for};

/// Wait (at most `limit`, failing with "timed out … waiting for `what`")
/// until exactly `n` of `results` are STARTED.
pub async fn wait_started<T>(what: &str, results: &[AsyncResult<T>], n: usize, limit: Duration) -> Result<()> {
    wait_for(what, limit, || {
        let results = results.to_vec();
        async move {
            let mut started = 0;
            for r in &results {
                if r.state().await? == State::Started {
                    started += 1;
                }
            }
            Ok(started == n)
        }
    })
    .await
}

/// Each task a [`retrying_producer`] published: its `i` and its result.
pub type Sent = Vec<(i64, AsyncResult<i64>)>;

/// A producer in the background for the broker-restart tests: it publishes
/// `tasks.add(i, i)` for `i` in `0..n`, pausing `pace` after each; a
/// publish that fails (the broker is down) is retried, as an application
/// would, after `retry` until it succeeds. Its output: every `i` with its
/// result, and how many publishes failed.
pub fn retrying_producer(app: App, n: i64, pace: Duration, retry: Duration) -> JoinHandle<(Sent, usize)> {
    tokio::spawn(async move {
        let mut sent = Vec::new();
        let mut failed_publishes = 0;
        for i in 0..n {
            loop {
                match app.delay(add::s(i, i)).await {
                    Ok(r) => {
                        sent.push((i, r));
                        break;
                    }
                    Err(_) => {
                        failed_publishes += 1;
                        tokio::time::sleep(retry).await;
                    }
                }
            }
            tokio::time::sleep(pace).await;
        }
        (sent, failed_publishes)
    })
}

/// How many results (`celery-task-meta-*` keys) the Redis of `url` holds.
pub fn stored_results(url: &str) -> Result<i64> {
    Ok(redis_cmd(url, &["EVAL", "return #redis.call('KEYS', 'celery-task-meta-*')", "0"])?.int())
}
