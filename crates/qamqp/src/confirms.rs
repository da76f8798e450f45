//! Pipelined publisher confirms: the bookkeeping of messages written to the
//! publishing channel whose confirm has not arrived yet.
//!
//! A pipelined publish takes a sequence number and a unit of capacity
//! ([`Unconfirmed::register`]), writes its frames, and hands the message with
//! its pending confirm to the tracker, a background task that awaits the
//! confirms in the order they were handed over. A confirmed message is
//! [`settle`](Unconfirmed::settle)d; a nacked one, one whose channel or
//! connection was lost before its confirm, or one not confirmed within the
//! timeout is written again (up to [`MAX_SENDS`] times in all) and only then
//! settled as a failure, which [`Unconfirmed::flush`] reports.

use std::collections::BTreeSet;
use std::sync::Arc;

use qcore::{BrokerError, ErrorKind};
use tokio::sync::{watch, Semaphore};

/// How many times a pipelined message is written before its failure is
/// reported (the first write and two more).
pub(crate) const MAX_SENDS: u32 = 3;

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    /// Sequence numbers registered and not settled yet.
    unsettled: BTreeSet<u64>,
    /// Messages given up on: (sequence number, kind, what happened).
    failures: Vec<(u64, ErrorKind, String)>,
}

/// Messages written and not confirmed yet, bounded by a capacity.
#[derive(Debug)]
pub(crate) struct Unconfirmed {
    state: watch::Sender<State>,
    capacity: Arc<Semaphore>,
}

impl Unconfirmed {
    /// At most `capacity` messages unconfirmed at once (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Unconfirmed { state: watch::Sender::new(State::default()), capacity: Arc::new(Semaphore::new(capacity.max(1))) }
    }

    /// A sequence number for a message about to be written; waits while
    /// `capacity` messages are unconfirmed.
    pub(crate) async fn register(&self) -> Result<u64, BrokerError> {
        let permit = self
            .capacity
            .acquire()
            .await
            .map_err(|_| BrokerError::new(ErrorKind::Closed, "the publisher is closed"))?;
        permit.forget();
        let mut seq = 0;
        self.state.send_modify(|s| {
            seq = s.next_seq;
            s.next_seq += 1;
            s.unsettled.insert(seq);
        });
        Ok(seq)
    }

    /// The message `seq` is confirmed (`failure` `None`), was given up on
    /// (its error is kept for [`flush`](Self::flush)), or was never written
    /// (`failure` `None`: its caller got the error).
    pub(crate) fn settle(&self, seq: u64, failure: Option<(ErrorKind, String)>) {
        let mut known = false;
        self.state.send_modify(|s| {
            known = s.unsettled.remove(&seq);
            if let (true, Some((kind, what))) = (known, failure) {
                s.failures.push((seq, kind, what));
            }
        });
        if known {
            self.capacity.add_permits(1);
        }
    }

    /// How many messages are written and not confirmed.
    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> usize {
        self.state.borrow().unsettled.len()
    }

    /// Wait until every message registered before this call is settled
    /// (confirmed or given up on); returns the first sequence number not
    /// waited for. Failures stay for [`flush`](Self::flush).
    pub(crate) async fn settled_before(&self) -> u64 {
        let target = {
            let s = self.state.borrow();
            if s.unsettled.is_empty() {
                return s.next_seq;
            }
            s.next_seq
        };
        let mut rx = self.state.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail here.
        let _ = rx.wait_for(|s| s.unsettled.first().is_none_or(|&first| first >= target)).await;
        target
    }

    /// Wait until every message registered before this call is settled;
    /// an error if any of them (or any earlier one not reported yet) was
    /// given up on. Failures are reported once.
    pub(crate) async fn flush(&self) -> Result<(), BrokerError> {
        let target = self.settled_before().await;
        let mut failed = Vec::new();
        self.state.send_if_modified(|s| {
            let before = s.failures.len();
            let (mine, later): (Vec<_>, Vec<_>) = s.failures.drain(..).partition(|f| f.0 < target);
            s.failures = later;
            failed = mine;
            before != s.failures.len()
        });
        match failed.first() {
            None => Ok(()),
            Some((_, kind, what)) => Err(BrokerError::new(
                *kind,
                format!(
                    "{} published message(s) were not confirmed by the broker after {MAX_SENDS} attempts; first: {what}",
                    failed.len()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn flush_waits_for_the_messages_registered_before_it() {
        let u = Arc::new(Unconfirmed::new(10));
        let a = u.register().await.unwrap();
        let b = u.register().await.unwrap();
        assert_eq!(u.outstanding(), 2);
        let flushing = tokio::spawn({
            let u = u.clone();
            async move { u.flush().await }
        });
        // The flush reads its target and waits (current-thread runtime).
        tokio::task::yield_now().await;
        assert!(!flushing.is_finished());
        // Registered after the flush began: the flush does not wait for it.
        let late = u.register().await.unwrap();
        u.settle(b, None);
        tokio::task::yield_now().await;
        assert!(!flushing.is_finished(), "a is not settled yet");
        u.settle(a, None);
        let r = tokio::time::timeout(Duration::from_secs(10), flushing).await.expect("flush returns").unwrap();
        r.unwrap();
        assert_eq!(u.outstanding(), 1);
        u.settle(late, None);
        u.flush().await.unwrap();
        assert_eq!(u.outstanding(), 0);
    }

    #[tokio::test]
    async fn a_failure_is_reported_by_one_flush() {
        let u = Unconfirmed::new(10);
        let a = u.register().await.unwrap();
        let b = u.register().await.unwrap();
        u.settle(a, Some((ErrorKind::Other, "basic.nack".into())));
        u.settle(b, None);
        let e = u.flush().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Other);
        assert!(e.to_string().contains("1 published message(s)"), "{e}");
        assert!(e.to_string().contains("basic.nack"), "{e}");
        u.flush().await.unwrap();
    }

    #[tokio::test]
    async fn settling_twice_or_unknown_numbers_changes_nothing() {
        let u = Unconfirmed::new(1);
        let a = u.register().await.unwrap();
        u.settle(a, None);
        u.settle(a, Some((ErrorKind::Other, "late".into())));
        u.settle(99, Some((ErrorKind::Other, "unknown".into())));
        u.flush().await.unwrap();
        // Capacity 1 is back exactly once: one register succeeds, a second waits.
        let _b = u.register().await.unwrap();
        assert_eq!(u.capacity.available_permits(), 0);
    }

    #[tokio::test]
    async fn register_waits_for_capacity() {
        let u = Arc::new(Unconfirmed::new(2));
        let a = u.register().await.unwrap();
        let _b = u.register().await.unwrap();
        let third = tokio::spawn({
            let u = u.clone();
            async move { u.register().await }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        u.settle(a, None);
        let c = tokio::time::timeout(Duration::from_secs(10), third).await.expect("capacity freed").unwrap().unwrap();
        assert_eq!(c, 2);
    }
}
