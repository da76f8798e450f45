//! Coalesced acknowledgements: one `basic.ack(multiple)` for a run of
//! finished deliveries instead of one frame each.
//!
//! RabbitMQ spends about as much on a `basic.ack` as on the delivery it
//! settles, so a worker that acks every task on its own is bounded by the
//! broker's single queue process long before its own CPU. Each consumer
//! channel has one [`AckBatcher`]: ackers hand it their delivery tag and
//! return at once; it sends the acks in batches, at the latest
//! [`ACK_DELAY`] after the first of a batch, or as soon as the batch holds
//! [`batch_size`] tags.
//!
//! `basic.ack(tag, multiple = true)` settles *every* unacknowledged delivery
//! of the channel up to `tag`, so it is only sent for a tag below the lowest
//! delivery that is not settled yet. The batcher therefore learns of every
//! delivery (`Seen`, sent by the consumer before the delivery is handed
//! over) and of every delivery settled another way (`Done`: a reject, a
//! republish-and-ack). Tags are dense per channel (1, 2, 3, …), so a tag the
//! consumer has not seen yet (still buffered in another queue's stream) is a
//! gap, and a gap stops a multiple ack like an unsettled tag does. Acks above
//! the lowest unsettled tag go out one by one.
//!
//! An ack is therefore *sent* up to [`ACK_DELAY`] after `ack()` returns. If
//! the connection dies in between, RabbitMQ redelivers the message: at least
//! once, as for an ack lost in flight. [`AckBatcher::flush`] sends what is
//! pending and waits for it (the worker's shutdown calls it through
//! [`Consumer::close`](qcore::Consumer::close)).

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::options::BasicAckOptions;
use lapin::Channel;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::{classify, Fault};

/// The longest an acknowledged delivery waits for its batch to be sent.
pub(crate) const ACK_DELAY: Duration = Duration::from_millis(1);

/// How many acks make a batch worth sending at once, for a channel whose
/// prefetch (QoS) is `prefetch`: half the window, so that the broker can keep
/// delivering the other half while a batch fills.
pub(crate) fn batch_size(prefetch: u16) -> usize {
    usize::from(prefetch / 2).max(1)
}

enum Cmd {
    /// The consumer received this delivery tag.
    Seen(u64),
    /// Acknowledge this tag (in a batch).
    Ack(u64),
    /// This tag was settled directly (reject, or republish and ack).
    Done(u64),
    /// Send what is pending, then answer.
    Flush(oneshot::Sender<()>),
}

/// The handle of a channel's ack batcher. Cheap to clone.
#[derive(Clone)]
pub(crate) struct AckBatcher {
    tx: mpsc::UnboundedSender<Cmd>,
}

impl AckBatcher {
    /// Start the batcher of `channel`; it ends when every handle is dropped,
    /// after sending what is pending.
    pub(crate) fn start(channel: Channel, prefetch: u16) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, channel, batch_size(prefetch)));
        AckBatcher { tx }
    }

    /// The consumer received `tag` (call before the delivery is handed over).
    pub(crate) fn seen(&self, tag: u64) {
        let _ = self.tx.send(Cmd::Seen(tag));
    }

    /// Acknowledge `tag` in a batch.
    pub(crate) fn ack(&self, tag: u64) {
        let _ = self.tx.send(Cmd::Ack(tag));
    }

    /// `tag` was settled directly on the channel (the frame is already sent).
    pub(crate) fn done(&self, tag: u64) {
        let _ = self.tx.send(Cmd::Done(tag));
    }

    /// Send every pending ack and wait until they are written.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// What the batcher knows of the channel's deliveries.
#[derive(Debug, Default)]
struct Ledger {
    /// Every tag in `1..=contiguous` has been seen.
    contiguous: u64,
    /// Seen tags above `contiguous + 1` (deliveries read out of tag order).
    ahead: BTreeSet<u64>,
    /// Seen and neither settled nor pending.
    unsettled: BTreeSet<u64>,
    /// Acknowledged, not sent yet.
    pending: Vec<u64>,
}

/// One `basic.ack` to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AckFrame {
    tag: u64,
    multiple: bool,
}

impl Ledger {
    fn apply(&mut self, cmd: Cmd, waiters: &mut Vec<oneshot::Sender<()>>) {
        match cmd {
            Cmd::Seen(tag) => {
                self.unsettled.insert(tag);
                if tag == self.contiguous + 1 {
                    self.contiguous = tag;
                    while self.ahead.remove(&(self.contiguous + 1)) {
                        self.contiguous += 1;
                    }
                } else if tag > self.contiguous {
                    self.ahead.insert(tag);
                }
            }
            Cmd::Ack(tag) => {
                // Every acker settles once, and its `Seen` came first; an ack
                // of anything else would be a second ack of the tag, which
                // RabbitMQ answers by closing the channel.
                if self.unsettled.remove(&tag) {
                    self.pending.push(tag);
                } else {
                    tracing::warn!(tag, "ignoring an ack of a delivery that is not outstanding");
                }
            }
            Cmd::Done(tag) => {
                self.unsettled.remove(&tag);
            }
            Cmd::Flush(w) => waiters.push(w),
        }
    }

    /// The frames that settle every pending tag: one multiple ack for those
    /// below the lowest unsettled (or unseen) tag, single acks for the rest.
    fn take_frames(&mut self) -> Vec<AckFrame> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let low = self.unsettled.first().copied().unwrap_or(u64::MAX).min(self.contiguous + 1);
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_unstable();
        let split = pending.partition_point(|&t| t < low);
        let mut frames = Vec::with_capacity(1 + pending.len() - split);
        if split > 0 {
            frames.push(AckFrame { tag: pending[split - 1], multiple: split > 1 });
        }
        frames.extend(pending[split..].iter().map(|&tag| AckFrame { tag, multiple: false }));
        frames
    }
}

async fn send(channel: &Channel, frames: Vec<AckFrame>) {
    for f in frames {
        if !channel.status().connected() {
            tracing::debug!("acks of a closed channel dropped: RabbitMQ redelivers those messages");
            return;
        }
        match channel.basic_ack(f.tag, BasicAckOptions { multiple: f.multiple }).await {
            Ok(()) => {}
            Err(e) if matches!(classify(&e), Fault::Channel | Fault::Connection) => {
                tracing::debug!(error = %e, "ack on a lost channel ignored; RabbitMQ redelivers the messages");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, tag = f.tag, multiple = f.multiple, "basic.ack failed");
                return;
            }
        }
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Cmd>, channel: Channel, batch: usize) {
    let mut ledger = Ledger::default();
    let mut waiters = Vec::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let (got, closed) = match deadline {
            None => match rx.recv().await {
                Some(c) => (Some(c), false),
                None => (None, true),
            },
            Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                Ok(Some(c)) => (Some(c), false),
                Ok(None) => (None, true),
                Err(_) => (None, false),
            },
        };
        let timed_out = got.is_none();
        if let Some(c) = got {
            ledger.apply(c, &mut waiters);
            while let Ok(c) = rx.try_recv() {
                ledger.apply(c, &mut waiters);
            }
        }
        if timed_out || closed || !waiters.is_empty() || ledger.pending.len() >= batch {
            send(&channel, ledger.take_frames()).await;
            deadline = None;
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
        } else if !ledger.pending.is_empty() && deadline.is_none() {
            deadline = Some(Instant::now() + ACK_DELAY);
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(cmds: impl IntoIterator<Item = Cmd>) -> Ledger {
        let mut l = Ledger::default();
        let mut w = Vec::new();
        for c in cmds {
            l.apply(c, &mut w);
        }
        l
    }

    fn single(tag: u64) -> AckFrame {
        AckFrame { tag, multiple: false }
    }

    #[test]
    fn a_run_of_acks_becomes_one_multiple_ack() {
        let mut l = ledger((1..=6).map(Cmd::Seen).chain((1..=4).rev().map(Cmd::Ack)));
        assert_eq!(l.take_frames(), vec![AckFrame { tag: 4, multiple: true }]);
        assert!(l.take_frames().is_empty());
        // 5 and 6 are still out: nothing may cover them.
        let mut w = Vec::new();
        l.apply(Cmd::Ack(6), &mut w);
        assert_eq!(l.take_frames(), vec![single(6)]);
        l.apply(Cmd::Ack(5), &mut w);
        assert_eq!(l.take_frames(), vec![single(5)]);
    }

    #[test]
    fn an_unsettled_delivery_stops_the_multiple_ack() {
        // 2 still runs: 1 alone below it, 3 and 4 one by one.
        let mut l = ledger([1, 2, 3, 4].map(Cmd::Seen).into_iter().chain([1, 3, 4].map(Cmd::Ack)));
        assert_eq!(l.take_frames(), vec![single(1), single(3), single(4)]);
    }

    #[test]
    fn a_directly_settled_delivery_no_longer_stops_it() {
        // 2 was rejected (its frame is out), so one multiple ack covers 1..4.
        let l = [1, 2, 3, 4].map(Cmd::Seen).into_iter().chain([Cmd::Done(2)]);
        let mut l = ledger(l.chain([1, 3, 4].map(Cmd::Ack)));
        assert_eq!(l.take_frames(), vec![AckFrame { tag: 4, multiple: true }]);
    }

    #[test]
    fn an_unseen_tag_is_a_gap() {
        // Tag 3 is still buffered in another queue's stream: it was delivered
        // to the channel, so a multiple ack of 4 would settle it unseen.
        let mut l = ledger([1, 2, 4].map(Cmd::Seen).into_iter().chain([1, 2, 4].map(Cmd::Ack)));
        assert_eq!(l.take_frames(), vec![AckFrame { tag: 2, multiple: true }, single(4)]);
        let mut w = Vec::new();
        l.apply(Cmd::Seen(3), &mut w);
        assert_eq!(l.contiguous, 4, "seeing 3 closes the gap up to 4");
        l.apply(Cmd::Ack(3), &mut w);
        assert_eq!(l.take_frames(), vec![single(3)]);
    }

    #[test]
    fn batch_size_is_half_the_window() {
        assert_eq!(batch_size(0), 1);
        assert_eq!(batch_size(1), 1);
        assert_eq!(batch_size(8), 4);
        assert_eq!(batch_size(64), 32);
    }
}
