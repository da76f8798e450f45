//! The [`Broker`] contract.
//!
//! # Contract
//!
//! * **Delivery guarantee: at least once.** A published message is delivered
//!   to one consumer of its queue until it is acked, rejected without requeue,
//!   dead-lettered or deferred. A consumer that disappears without acking
//!   (crash, lost connection) has its deliveries returned to the queue
//!   (immediately on AMQP, after the visibility timeout on Redis/SQL).
//! * **Ordering:** FIFO per queue and priority level, except that redelivered
//!   messages may be delivered ahead of older ones. Higher
//!   [`Properties::priority`](crate::Properties::priority) is delivered first
//!   where the broker supports priorities (Celery's numbers: 0–9, 9 highest on
//!   AMQP; qtask maps them onto each broker's scheme, see the adapter).
//! * **Leases are the adapter's job.** Where deliveries are handed out under
//!   a visibility timeout (Redis, SQL), the adapter renews the lease of every
//!   delivery its consumer holds, prefetched or running, for as long as the
//!   consumer or that delivery's [`Acker`] lives and the delivery is
//!   unsettled; so a live worker's long task (with `acks_late`) is never
//!   redelivered, whatever the visibility timeout. An acker dropped without
//!   settling stops its renewal: the message comes back after the timeout.
//!   Callers never renew anything.
//! * **Prefetch:** a consumer never holds more than
//!   [`ConsumeOptions::prefetch`] unacked deliveries; the worker asks for more
//!   only when it has room.
//! * **Disconnects:** methods return an error of kind
//!   [`Connection`](crate::ErrorKind::Connection) while the server is away;
//!   consumers reconnect by themselves and keep yielding deliveries; nothing
//!   acked is redelivered and nothing unacked is lost.
//! * **Dead letters:** [`Acker::dead_letter`] parks a message with a reason in
//!   a place where it can be listed, counted, re-driven and purged through
//!   the [`DeadLetters`] capability ([`Broker::dead_letters`]); it is never
//!   dropped.
//! * **Capabilities:** what a broker can do beyond the required methods is
//!   declared, not discovered by an error: [`Broker::capabilities`] (flags:
//!   priorities, deferred delivery) and accessors that return `None` when
//!   the ability is missing ([`Broker::dead_letters`]).
//! * **Fanout:** [`Broker::publish_fanout`] reaches every current subscriber
//!   of the exchange whose pattern matches (events, remote control); no
//!   persistence, like Celery's `celeryev` and `celery.pidbox`.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::{BrokerError, ErrorKind};
use crate::message::Message;

/// Options for [`Broker::consume`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumeOptions {
    /// Maximum unacked deliveries held by this consumer
    /// (worker concurrency × prefetch multiplier).
    pub prefetch: usize,
    /// A name for the consumer (logs, AMQP consumer tag).
    pub tag: String,
}

impl ConsumeOptions {
    /// Options with the given prefetch.
    pub fn new(prefetch: usize) -> Self {
        Self { prefetch: prefetch.max(1), tag: String::new() }
    }

    /// Set the consumer tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = tag.into();
        self
    }
}

/// Acknowledgement handle of one delivery. Every method is idempotent after
/// the first settlement (ack, reject, dead-letter, defer) succeeded.
#[async_trait]
pub trait Acker: Send + Sync {
    /// The message was handled; remove it for good.
    async fn ack(&self) -> Result<(), BrokerError>;
    /// Give the message back (`requeue`: to the back of its queue) or drop it
    /// when `requeue` is false.
    async fn reject(&self, requeue: bool) -> Result<(), BrokerError>;
    /// Park the message in the dead-letter place with `reason`.
    async fn dead_letter(&self, reason: &str) -> Result<(), BrokerError>;
    /// Hand the message back to the broker to be delivered again at `until`
    /// (ETA tasks), without holding it in worker memory. Only called on
    /// brokers whose [`Capabilities::defer`] is set; others return
    /// [`ErrorKind::Unsupported`].
    async fn defer(&self, until: DateTime<Utc>) -> Result<(), BrokerError> {
        let _ = until;
        Err(BrokerError::new(ErrorKind::Unsupported, "deferred delivery is not supported"))
    }
}

/// One message handed to a consumer.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// The queue it came from.
    pub queue: String,
    /// Whether it was delivered before (restored, requeued, redelivered).
    pub redelivered: bool,
    /// The acknowledgement handle.
    pub acker: Arc<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("queue", &self.queue)
            .field("redelivered", &self.redelivered)
            .field("task_id", &self.message.task_id())
            .finish()
    }
}

/// A stream of deliveries from one or more queues.
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery; waits until one is available. `Ok(None)` means the
    /// consumer was closed and will yield nothing more.
    async fn recv(&mut self) -> Result<Option<Delivery>, BrokerError>;

    /// Stop consuming once the deliveries handed out are settled: settlements
    /// a broker batches are sent (and waited for) before it returns, and
    /// deliveries taken but not handed out go back to their queues. The
    /// worker calls it at shutdown; dropping a consumer without it may leave
    /// the last batched acks unsent (the broker then redelivers those
    /// messages). Nothing more is received afterwards.
    async fn close(&mut self) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// A subscription to a fanout/topic exchange.
#[async_trait]
pub trait Subscription: Send {
    /// The next message with its routing key. `Ok(None)` when closed.
    async fn recv(&mut self) -> Result<Option<(String, Message)>, BrokerError>;
}

/// A message parked in the dead-letter place.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The message as it was delivered.
    pub message: Message,
    /// The queue it came from.
    pub queue: String,
    /// Why it was parked.
    pub reason: String,
}

/// Whether and how a broker orders deliveries by
/// [`Properties::priority`](crate::Properties::priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Priorities {
    /// Priorities are ignored: plain FIFO.
    #[default]
    Unsupported,
    /// 9 is delivered before 0 (AMQP `x-max-priority`, SQL, memory).
    HigherFirst,
    /// 0 is delivered before 9 (kombu's Redis transport).
    LowerFirst,
}

/// What a broker declares it can do, beyond the required methods of
/// [`Broker`]. Callers (the worker, the conformance suites) choose their
/// path from these flags instead of trying and reading an
/// [`ErrorKind::Unsupported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// How priorities are ordered.
    pub priorities: Priorities,
    /// [`Acker::defer`] hands a message back to be delivered at a time
    /// (ETA tasks wait in the broker, not in worker memory).
    pub defer: bool,
}

impl Capabilities {
    /// No optional ability.
    pub fn none() -> Self {
        Self::default()
    }

    /// Set how priorities are ordered.
    pub fn priorities(mut self, p: Priorities) -> Self {
        self.priorities = p;
        self
    }

    /// Set whether [`Acker::defer`] is supported.
    pub fn defer(mut self, supported: bool) -> Self {
        self.defer = supported;
        self
    }
}

/// The dead-letter place of a broker: what [`Acker::dead_letter`] parked,
/// per source queue. Reached through [`Broker::dead_letters`].
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Messages parked for `queue`, oldest first, at most `limit`.
    async fn list(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BrokerError>;

    /// How many messages are parked for `queue`.
    async fn count(&self, queue: &str) -> Result<u64, BrokerError>;

    /// Move up to `limit` parked messages of `queue`, oldest first, back to
    /// the end of `queue`, unchanged; returns how many moved. A message is
    /// never lost on the way: it is in the queue before it leaves the
    /// dead-letter place (a crash in between can leave it in both).
    async fn redrive(&self, queue: &str, limit: usize) -> Result<u64, BrokerError>;

    /// Delete every message parked for `queue`; returns how many.
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError>;
}

/// Turns an `Arc` of a broker into `Arc<dyn Any>`, so that code which
/// knows the adapter can reach its own API ([`downcast`]). Implemented for
/// every type; not a way to discover abilities (see [`Capabilities`]).
pub trait AsAny: Any + Send + Sync {
    /// `self` as `Arc<dyn Any>`.
    fn as_any_arc(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl<T: Any + Send + Sync> AsAny for T {
    fn as_any_arc(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// The adapter type `B` behind `broker`, for its own API (a PostgreSQL
/// broker's pool, say); `None` when the broker is of another type.
///
/// ```
/// # use std::sync::Arc;
/// # struct Other;
/// # fn demo(broker: &Arc<dyn qcore::Broker>) {
/// // e.g. qsql::PgBroker
/// let pg: Option<Arc<Other>> = qcore::broker::downcast::<Other>(broker);
/// # let _ = pg; }
/// ```
pub fn downcast<B: Any + Send + Sync>(broker: &Arc<dyn Broker>) -> Option<Arc<B>> {
    <dyn Broker as AsAny>::as_any_arc(broker.clone()).downcast::<B>().ok()
}

/// A message broker. Object safe: the app holds an `Arc<dyn Broker>`.
#[async_trait]
pub trait Broker: AsAny + Send + Sync + 'static {
    /// Create the queue (and whatever binds it) if it does not exist.
    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError>;

    /// Publish a message to a queue (Celery: default exchange, routing key =
    /// queue). Returns once the broker has it (confirmed where supported).
    async fn publish(&self, queue: &str, message: &Message) -> Result<(), BrokerError>;

    /// Publish several messages; adapters override this to batch round trips.
    async fn publish_many(&self, items: &[(String, Message)]) -> Result<(), BrokerError> {
        for (q, m) in items {
            self.publish(q, m).await?;
        }
        Ok(())
    }

    /// Wait until the broker holds every message [`publish`](Self::publish)
    /// or [`publish_many`](Self::publish_many) returned for before this call.
    ///
    /// Most adapters return from a publish once the broker has the message,
    /// and this returns at once. An adapter that pipelines (RabbitMQ's by
    /// default: a publish returns once the message is written to the
    /// connection, its publisher confirm awaited in the background, the
    /// message kept in memory and written again on a `basic.nack`, a lost
    /// connection or a confirm timeout) waits here for those confirms. An
    /// error means some message could not be confirmed after the adapter's
    /// retries (it was logged with its id); each such failure is reported by
    /// one `flush`. Call it before the process exits: a message whose
    /// confirm has not arrived when the process ends may be lost if the
    /// broker did not store it.
    async fn flush(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Start consuming from `queues` (earlier queues are not favoured).
    async fn consume(&self, queues: &[String], options: ConsumeOptions) -> Result<Box<dyn Consumer>, BrokerError>;

    /// Messages waiting in the queue (not counting unacked ones).
    async fn queue_len(&self, queue: &str) -> Result<u64, BrokerError>;

    /// Delete every waiting message of the queue; returns how many.
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError>;

    /// What this broker can do beyond the required methods.
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
    }

    /// The dead-letter place, where the broker parks messages
    /// ([`Acker::dead_letter`]); `None` if it has none.
    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        None
    }

    /// Publish to a fanout/topic exchange (events, remote control), or a
    /// control reply to the direct exchange
    /// [`REPLY_EXCHANGE`](crate::control::REPLY_EXCHANGE) with the client's
    /// reply routing key (its reply queue: Redis `LPUSH` onto
    /// `<routing_key>.reply.celery.pidbox`, AMQP the direct exchange).
    async fn publish_fanout(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<(), BrokerError>;

    /// Subscribe to an exchange; `pattern` uses AMQP topic syntax (`#`, `*`).
    /// For [`REPLY_EXCHANGE`](crate::control::REPLY_EXCHANGE), `pattern` is
    /// the reply routing key and the subscription is that client's reply
    /// queue, as kombu's client declares it.
    async fn subscribe(&self, exchange: &str, pattern: &str) -> Result<Box<dyn Subscription>, BrokerError>;

    /// Whether the broker is reachable now (readiness).
    async fn ping(&self) -> Result<(), BrokerError>;

    /// The broker URL with any password hidden, for logs.
    fn describe(&self) -> String;
}

/// Whether an AMQP-style topic `pattern` (`*` one word, `#` any words)
/// matches `routing_key`.
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    if pattern.is_empty() {
        return true;
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = routing_key.split('.').collect();
    go(&p, &k)
}

#[cfg(test)]
mod tests {
    use super::topic_matches;

    #[test]
    fn topic_patterns() {
        assert!(topic_matches("#", "task.multi"));
        assert!(topic_matches("worker.#", "worker.heartbeat"));
        assert!(topic_matches("task.*", "task.sent"));
        assert!(!topic_matches("task.*", "worker.online"));
        assert!(!topic_matches("task.*", "task.a.b"));
        assert!(topic_matches("", "anything"));
    }
}
