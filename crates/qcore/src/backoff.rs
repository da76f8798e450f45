//! The one wait between attempts to reach a server again (reconnects,
//! retried acks and result writes): capped exponential backoff with equal
//! jitter, so clients that lost the same server do not come back in step.
//!
//! A task's own retry countdown is not this: it follows Celery's
//! `retry_backoff` rules (see [`TaskOptions`](crate::TaskOptions)).
//!
//! ```
//! use std::time::Duration;
//! let d = qcore::backoff::reconnect(3, Duration::from_millis(100), Duration::from_secs(5));
//! assert!(d >= Duration::from_millis(400) && d <= Duration::from_millis(800));
//! ```

use std::time::Duration;

/// The wait before attempt `attempt` (0 first): the nominal
/// `base × 2^attempt`, capped at `max`, then drawn uniformly from its
/// upper half (equal jitter: between 50 % and 100 % of the nominal).
pub fn reconnect(attempt: u32, base: Duration, max: Duration) -> Duration {
    let nominal = base.saturating_mul(1u32 << attempt.min(31)).min(max);
    let half = nominal / 2;
    let span = u64::try_from((nominal - half).as_micros()).unwrap_or(u64::MAX);
    half + Duration::from_micros(fastrand::u64(0..=span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_base_up_to_the_cap_with_equal_jitter() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 0..200 {
            let nominal = base.saturating_mul(2u32.saturating_pow(attempt)).min(max);
            for _ in 0..50 {
                let d = reconnect(attempt, base, max);
                assert!(
                    d >= nominal / 2 && d <= nominal,
                    "attempt {attempt}: {d:?} not in [{:?}, {nominal:?}]",
                    nominal / 2
                );
            }
        }
        assert_eq!(reconnect(0, Duration::ZERO, max), Duration::ZERO);
        assert!(reconnect(u32::MAX, Duration::MAX, Duration::MAX) >= Duration::MAX / 2);
    }

    #[test]
    fn waits_are_spread() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(10));
        let waits: std::collections::HashSet<Duration> = (0..100).map(|_| reconnect(4, base, max)).collect();
        assert!(waits.len() > 10, "jitter drew only {} distinct waits", waits.len());
    }
}
