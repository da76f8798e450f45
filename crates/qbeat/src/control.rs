//! Remote control of a beat, as Celery 5.7's: the node `celerybeat@<host>`
//! on `celery.pidbox` answers `ping` while its loop is healthy (its last
//! tick at most `max(2 × max_interval, 60 s)` old) and stays silent
//! otherwise, so `celery inspect ping -d celerybeat@host` (or `qtask
//! inspect ping`) is a liveness probe. Every other method is ignored, as
//! Celery's beat ignores them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use qcore::control::{ControlRequest, Reply, RequestHeaders, PIDBOX_EXCHANGE, REPLY_EXCHANGE};
use qcore::App;
use tokio::sync::watch;

use crate::beat::{Clock, Status};

/// Celery's `beat_remote_control_max_tick_age` default: twice the longest
/// sleep of the loop, at least a minute.
pub fn max_tick_age(max_interval: Duration) -> Duration {
    (max_interval * 2).max(Duration::from_secs(60))
}

/// Whether a loop whose last tick was `last_tick` is healthy at `now`.
pub(crate) fn healthy(last_tick: Option<DateTime<Utc>>, now: DateTime<Utc>, max_age: Duration) -> bool {
    last_tick.is_some_and(|t| (now - t).to_std().unwrap_or(Duration::ZERO) <= max_age)
}

/// Answer `ping` as `node` while the status shows a healthy loop.
pub(crate) async fn control_loop(
    app: App,
    node: String,
    status: watch::Receiver<Status>,
    clock: Arc<dyn Clock>,
    max_age: Duration,
) {
    let broker = app.broker().clone();
    let lamport = AtomicU64::new(0);
    let mut attempt = 0u32;
    loop {
        let mut sub = match broker.subscribe(PIDBOX_EXCHANGE, "").await {
            Ok(s) => s,
            Err(e) if e.kind() == qcore::ErrorKind::Unsupported => {
                tracing::info!("beat: the broker has no fanout: no remote control (ping)");
                return;
            }
            Err(e) => {
                attempt += 1;
                tracing::warn!(error = %e, "beat: cannot subscribe to remote control; retrying");
                tokio::time::sleep(Duration::from_secs(u64::from(attempt.min(30)))).await;
                continue;
            }
        };
        attempt = 0;
        tracing::info!(node = %node, "beat: answering remote-control ping");
        loop {
            match sub.recv().await {
                Ok(Some((_, msg))) => {
                    let req = match ControlRequest::from_message(&msg) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(error = %e, "beat: ignoring a malformed control message");
                            continue;
                        }
                    };
                    if let Some(c) = RequestHeaders::from_message(&msg).clock {
                        let _ = lamport.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |cur| Some(cur.max(c) + 1));
                    }
                    if req.method != "ping" || !req.addressed_to(&node) {
                        continue;
                    }
                    let last_tick = status.borrow().last_tick;
                    if !healthy(last_tick, clock.now(), max_age) {
                        tracing::warn!(?last_tick, "beat: the loop is stale: not answering ping");
                        continue;
                    }
                    let Some(reply_to) = &req.reply_to else { continue };
                    let clock_value = lamport.fetch_add(1, Ordering::SeqCst) + 1;
                    match Reply::new(node.clone(), Reply::ok("pong")).to_message(req.ticket.as_deref(), clock_value) {
                        Ok(m) => {
                            if let Err(e) = broker.publish_fanout(REPLY_EXCHANGE, &reply_to.routing_key, &m).await {
                                tracing::warn!(error = %e, "beat: cannot send a ping reply");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "beat: cannot encode a ping reply"),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "beat: remote control subscription failed; resubscribing");
                    break;
                }
            }
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_secs(u64::from(attempt.min(30)))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_after_twice_the_loop_interval_at_least_a_minute() {
        assert_eq!(max_tick_age(Duration::from_secs(300)), Duration::from_secs(600));
        assert_eq!(max_tick_age(Duration::from_secs(5)), Duration::from_secs(60));
        let now = Utc::now();
        let max = Duration::from_secs(60);
        assert!(healthy(Some(now - chrono::TimeDelta::seconds(59)), now, max));
        assert!(!healthy(Some(now - chrono::TimeDelta::seconds(61)), now, max));
        assert!(!healthy(None, now, max));
    }
}
