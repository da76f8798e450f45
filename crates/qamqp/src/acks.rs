//! Coalesced acknowledgements: one `basic.ack(multiple)` for a run of
//! finished deliveries instead of one frame each.
//!
//! RabbitMQ spends about as much on a `basic.ack` as on the delivery it
//! settles, so a worker that acks every task on its own is bounded by the
//! broker's single queue process long before its own CPU. Each consumer
//! channel has one [`AckBatcher`]: ackers hand it their delivery tag and
//! return at once; its task sends what is pending as soon as it is woken,
//! and the acks that arrive while it is writing form the next batch. Under
//! load batches grow by themselves; when idle an ack goes out at once. (A
//! batch held back for a size or a timer was measured no faster, and could
//! stall a small prefetch window on the timer.)
//!
//! `basic.ack(tag, multiple = true)` settles *every* unacknowledged delivery
//! of the channel up to `tag`, so it is only sent for a tag below the lowest
//! delivery that is not settled yet. The batcher therefore learns of every
//! delivery (`seen`, called by the consumer before the delivery is handed
//! over) and of every delivery settled another way (`done`: a reject, a
//! republish-and-ack). Tags are dense per channel (1, 2, 3, …), so a tag the
//! consumer has not seen yet (still buffered in another queue's stream) is a
//! gap, and a gap stops a multiple ack like an unsettled tag does. Acks above
//! the lowest unsettled tag go out one by one.
//!
//! An ack is therefore *sent* a moment after `ack()` returns. If the
//! connection dies in between, RabbitMQ redelivers the message: at least
//! once, as for an ack lost in flight. [`AckBatcher::flush`] sends what is
//! pending and waits for it (the worker's shutdown calls it through
//! [`Consumer::close`](qcore::Consumer::close)).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError};

use tokio::sync::{oneshot, Notify};

use crate::direct::Out;

/// What the consumer, the ackers and the batcher task share.
struct Shared {
    ledger: StdMutex<Ledger>,
    /// Wakes the task: the first ack since it last took the pending ones, a
    /// flush, the last handle gone.
    wake: Notify,
}

impl Shared {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Tells the task to send what is pending and stop when the last handle
/// goes.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.ledger().closed = true;
        self.0.wake.notify_one();
    }
}

/// The handle of a channel's ack batcher. Cheap to clone.
#[derive(Clone)]
pub(crate) struct AckBatcher(Arc<Handle>);

impl AckBatcher {
    /// Start the batcher of `channel`; it ends when every handle is dropped,
    /// after sending what is pending.
    pub(crate) fn start(channel: Arc<Out>) -> Self {
        let shared = Arc::new(Shared { ledger: StdMutex::new(Ledger::default()), wake: Notify::new() });
        tokio::spawn(run(shared.clone(), channel));
        AckBatcher(Arc::new(Handle(shared)))
    }

    fn shared(&self) -> &Shared {
        &self.0 .0
    }

    /// The consumer received `tag` (call before the delivery is handed over).
    pub(crate) fn seen(&self, tag: u64) {
        self.shared().ledger().seen(tag);
    }

    /// Acknowledge `tag` in the next batch. Only the first ack of a batch
    /// wakes the task, not every ack.
    pub(crate) fn ack(&self, tag: u64) {
        let shared = self.shared();
        let pending = {
            let mut ledger = shared.ledger();
            if !ledger.ack(tag) {
                return;
            }
            ledger.pending.len()
        };
        if pending == 1 {
            shared.wake.notify_one();
        }
    }

    /// `tag` was settled directly on the channel (the frame is already sent).
    pub(crate) fn done(&self, tag: u64) {
        self.shared().ledger().unsettled.remove(&tag);
    }

    /// Send every pending ack and wait until they are written.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        self.shared().ledger().waiters.push(tx);
        self.shared().wake.notify_one();
        let _ = rx.await;
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
    /// Flushes waiting for the next send.
    waiters: Vec<oneshot::Sender<()>>,
    /// Every handle is gone.
    closed: bool,
}

/// One `basic.ack` to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AckFrame {
    tag: u64,
    multiple: bool,
}

impl Ledger {
    fn seen(&mut self, tag: u64) {
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

    /// Queue the ack of `tag`; false if it is not outstanding. Every acker
    /// settles once and its `seen` came first: an ack of anything else would
    /// be a second ack of the tag, which RabbitMQ answers by closing the
    /// channel.
    fn ack(&mut self, tag: u64) -> bool {
        if self.unsettled.remove(&tag) {
            self.pending.push(tag);
            true
        } else {
            tracing::warn!(tag, "ignoring an ack of a delivery that is not outstanding");
            false
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

async fn send(channel: &Out, frames: Vec<AckFrame>) {
    if frames.is_empty() {
        return;
    }
    if !channel.connected() {
        tracing::debug!("acks of a closed connection dropped: RabbitMQ redelivers those messages");
        return;
    }
    match channel.acks(frames.iter().map(|f| (f.tag, f.multiple))).await {
        Ok(()) => {}
        Err(e) if e.kind() == qcore::ErrorKind::Connection => {
            tracing::debug!(error = %e, "acks on a lost connection dropped: RabbitMQ redelivers those messages");
        }
        Err(e) => tracing::warn!(error = %e, "basic.ack failed"),
    }
}

async fn run(shared: Arc<Shared>, channel: Arc<Out>) {
    loop {
        shared.wake.notified().await;
        let (frames, waiters, closed) = {
            let mut ledger = shared.ledger();
            (ledger.take_frames(), std::mem::take(&mut ledger.waiters), ledger.closed)
        };
        send(&channel, frames).await;
        for w in waiters {
            let _ = w.send(());
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Cmd {
        Seen(u64),
        Ack(u64),
        Done(u64),
    }

    fn apply(l: &mut Ledger, c: Cmd) {
        match c {
            Cmd::Seen(t) => l.seen(t),
            Cmd::Ack(t) => assert!(l.ack(t), "ack of {t} refused"),
            Cmd::Done(t) => {
                l.unsettled.remove(&t);
            }
        }
    }

    fn ledger(cmds: impl IntoIterator<Item = Cmd>) -> Ledger {
        let mut l = Ledger::default();
        for c in cmds {
            apply(&mut l, c);
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
        apply(&mut l, Cmd::Ack(6));
        assert_eq!(l.take_frames(), vec![single(6)]);
        apply(&mut l, Cmd::Ack(5));
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
        apply(&mut l, Cmd::Seen(3));
        assert_eq!(l.contiguous, 4, "seeing 3 closes the gap up to 4");
        apply(&mut l, Cmd::Ack(3));
        assert_eq!(l.take_frames(), vec![single(3)]);
    }

    #[test]
    fn a_second_ack_of_a_tag_is_refused() {
        let mut l = ledger([Cmd::Seen(1), Cmd::Ack(1)]);
        assert!(!l.ack(1));
        assert!(!l.ack(7), "never seen");
        assert_eq!(l.take_frames(), vec![single(1)]);
    }
}
