//! Per-worker rate limits (Celery's `rate_limit="10/s"`): a token bucket per
//! task name that delays starts without holding a concurrency slot.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::{Duration, Instant};

use qcore::RateLimit;

#[derive(Debug)]
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    updated: Instant,
}

/// Token buckets by task name.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Set or clear the limit of a task (remote control `rate_limit`).
    pub(crate) fn set(&self, task: &str, limit: Option<RateLimit>) {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match limit {
            Some(limit) => {
                b.insert(task.to_string(), Bucket { limit, tokens: limit.count as f64, updated: Instant::now() });
            }
            None => {
                b.remove(task);
            }
        }
    }

    /// Take one token for `task`, returning how long to wait first.
    fn reserve(&self, task: &str, default: Option<RateLimit>) -> Duration {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = match buckets.get_mut(task) {
            Some(b) => b,
            None => match default {
                Some(limit) => buckets.entry(task.to_string()).or_insert(Bucket {
                    limit,
                    tokens: limit.count as f64,
                    updated: Instant::now(),
                }),
                None => return Duration::ZERO,
            },
        };
        let rate = bucket.limit.count as f64 / bucket.limit.per.as_secs_f64();
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(bucket.limit.count as f64);
        bucket.updated = now;
        bucket.tokens -= 1.0;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / rate)
        }
    }

    /// Wait until `task` may start.
    pub(crate) async fn acquire(&self, task: &str, default: Option<RateLimit>) {
        let wait = self.reserve(task, default);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_spaces_out_starts() {
        let rl = RateLimiter::default();
        let limit = RateLimit { count: 2, per: Duration::from_secs(1) };
        assert_eq!(rl.reserve("t", Some(limit)), Duration::ZERO);
        assert_eq!(rl.reserve("t", Some(limit)), Duration::ZERO);
        let third = rl.reserve("t", Some(limit));
        assert!(third > Duration::from_millis(400) && third <= Duration::from_millis(500), "{third:?}");
        assert_eq!(rl.reserve("other", None), Duration::ZERO);
    }
}
