//! # qconformance
//!
//! The conformance suites of the [`Broker`] and [`ResultBackend`] contracts
//! (see [`qcore::broker`] and [`qcore::backend`]), written once and run by
//! every adapter crate as a dev-dependency.
//!
//! An adapter implements [`BrokerFactory`] (or [`BackendFactory`]): a fresh
//! broker per case (give each its own key prefix if the adapter has one) and
//! the [`BrokerCapabilities`] the suite must know. Then one line in a test
//! file expands to one `#[test]` per case, each on its own multi-threaded
//! tokio runtime, so each case has its own name and failure message:
//!
//! ```no_run
//! // crates/qredis/tests/conformance.rs
//! use std::sync::Arc;
//! use std::time::Duration;
//! use qconformance::{broker_conformance, BrokerCapabilities, BrokerFactory, Priorities};
//! use qcore::{Broker, BrokerError};
//!
//! /// Each case gets its own key prefix; the brokers of one case share it.
//! struct Redis {
//!     prefix: String,
//! }
//!
//! #[qconformance::async_trait]
//! impl BrokerFactory for Redis {
//!     fn capabilities(&self) -> BrokerCapabilities {
//!         // `broker()` sets a 1 s visibility timeout.
//!         BrokerCapabilities::new(Duration::from_secs(2)).priorities(Priorities::LowerFirst).defer(true)
//!     }
//!     async fn broker(&self) -> Result<Arc<dyn Broker>, BrokerError> {
//!         // Ok(Arc::new(qredis::RedisBroker::connect("redis://127.0.0.1:6379", &self.prefix).await?))
//!         # let _ = &self.prefix;
//!         # Err(BrokerError::new(qcore::ErrorKind::Unsupported, "example"))
//!     }
//! }
//!
//! broker_conformance!(Redis { prefix: qconformance::unique("qconf") });
//! # fn main() {}
//! ```
//!
//! Factories can also be built from a closure: [`broker_fn`], [`backend_fn`].
//!
//! Every case uses its own queue names, exchanges and task ids (random
//! suffixes), so cases run in parallel on one shared server. A case that
//! takes longer than [`CASE_TIMEOUT`] fails.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Re-exported so a factory needs no `async-trait` dependency of its own.
pub use async_trait::async_trait;
use qcore::{BackendError, Broker, BrokerError, ResultBackend};

pub mod backend;
pub mod broker;

/// The longest one case may run before it fails.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Re-exported from qcore: how a broker orders by priority.
pub use qcore::Priorities;

/// What the broker suite needs to know about an adapter.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BrokerCapabilities {
    /// The longest time after a consumer is dropped without acking until its
    /// deliveries are given to another consumer: zero for memory and AMQP,
    /// the visibility timeout (plus the restore interval) for Redis/SQL,
    /// which the factory should set short (around a second).
    pub redelivery_after: Duration,
    /// The priority order the broker must declare in
    /// [`Broker::capabilities`] (`None`: no expectation).
    pub priorities: Option<Priorities>,
    /// Whether the broker must declare [`Acker::defer`](qcore::Acker::defer)
    /// (`None`: no expectation).
    pub defer: Option<bool>,
    /// Whether the broker must offer the
    /// [`DeadLetters`](qcore::DeadLetters) capability (`None`: no expectation).
    pub dead_letters: Option<bool>,
    /// How long the suite waits to conclude that something does *not*
    /// happen (no redelivery after an ack, nothing after a purge), on top of
    /// `redelivery_after`. Default 300 ms.
    pub quiet: Duration,
    /// How long the suite waits for something that must happen (a delivery,
    /// a length), on top of `redelivery_after`. Default 10 s.
    pub patience: Duration,
}

impl BrokerCapabilities {
    /// A broker that redelivers within `redelivery_after`. The cases follow
    /// the capabilities the broker declares; the expectations set here
    /// ([`priorities`](Self::priorities), [`defer`](Self::defer),
    /// [`dead_letters`](Self::dead_letters)) make every case check that the
    /// broker still declares them.
    pub fn new(redelivery_after: Duration) -> Self {
        BrokerCapabilities {
            redelivery_after,
            priorities: None,
            defer: None,
            dead_letters: None,
            quiet: Duration::from_millis(300),
            patience: Duration::from_secs(10),
        }
    }

    /// Expect the broker to declare this priority order.
    pub fn priorities(mut self, p: Priorities) -> Self {
        self.priorities = Some(p);
        self
    }

    /// Expect the broker to declare (or not) deferred delivery.
    pub fn defer(mut self, supported: bool) -> Self {
        self.defer = Some(supported);
        self
    }

    /// Expect the broker to offer (or not) the dead-letter capability.
    pub fn dead_letters(mut self, offered: bool) -> Self {
        self.dead_letters = Some(offered);
        self
    }

    /// Set the quiet window for negative checks.
    pub fn quiet(mut self, d: Duration) -> Self {
        self.quiet = d;
        self
    }

    /// Set the patience for positive checks.
    pub fn patience(mut self, d: Duration) -> Self {
        self.patience = d;
        self
    }
}

/// What the backend suite needs to know about an adapter.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackendCapabilities {
    /// Whether [`ResultBackend::wait`] is woken by a push (Redis pub/sub,
    /// PostgreSQL LISTEN, memory) rather than polling: the suite then expects
    /// the waiter to return within [`push_latency`](Self::push_latency).
    pub push: bool,
    /// The longest time from a store to a push-woken waiter. Default 250 ms.
    pub push_latency: Duration,
    /// The shortest ttl the store honours (Redis: 1 s). Default 1 s.
    pub min_ttl: Duration,
    /// How long after its ttl an entry may still be readable (lazy expiry,
    /// cleanup intervals). Default 5 s.
    pub expiry_grace: Duration,
    /// How long the suite waits for something that must happen. Default 10 s.
    pub patience: Duration,
}

impl BackendCapabilities {
    /// A polling store with a 1 s minimum ttl.
    pub fn new() -> Self {
        BackendCapabilities {
            push: false,
            push_latency: Duration::from_millis(250),
            min_ttl: Duration::from_secs(1),
            expiry_grace: Duration::from_secs(5),
            patience: Duration::from_secs(10),
        }
    }

    /// Set whether waits are woken by a push.
    pub fn push(mut self, push: bool) -> Self {
        self.push = push;
        self
    }

    /// Set the longest push latency.
    pub fn push_latency(mut self, d: Duration) -> Self {
        self.push_latency = d;
        self
    }

    /// Set the shortest ttl honoured.
    pub fn min_ttl(mut self, d: Duration) -> Self {
        self.min_ttl = d;
        self
    }

    /// Set the expiry grace.
    pub fn expiry_grace(mut self, d: Duration) -> Self {
        self.expiry_grace = d;
        self
    }

    /// Set the patience for positive checks.
    pub fn patience(mut self, d: Duration) -> Self {
        self.patience = d;
        self
    }
}

impl Default for BackendCapabilities {
    fn default() -> Self {
        Self::new()
    }
}

/// Creates a fresh broker for each case, and says what it can do.
#[async_trait]
pub trait BrokerFactory: Send + Sync {
    /// What the broker supports.
    fn capabilities(&self) -> BrokerCapabilities;
    /// A new broker (its own key prefix where the adapter has one). A case
    /// may call this more than once and expects the brokers to share queues
    /// (two workers on one server), so a prefix belongs to the factory value,
    /// which each case creates anew.
    async fn broker(&self) -> Result<Arc<dyn Broker>, BrokerError>;
}

/// Creates a fresh result backend for each case, and says what it can do.
#[async_trait]
pub trait BackendFactory: Send + Sync {
    /// What the backend supports.
    fn capabilities(&self) -> BackendCapabilities;
    /// A new backend. A case may call this more than once and expects them
    /// to share data, like [`BrokerFactory::broker`].
    async fn backend(&self) -> Result<Arc<dyn ResultBackend>, BackendError>;
}

/// A [`BrokerFactory`] from capabilities and a closure; see [`broker_fn`].
pub struct BrokerFn<F> {
    caps: BrokerCapabilities,
    make: F,
}

impl<F> std::fmt::Debug for BrokerFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerFn").field("caps", &self.caps).finish_non_exhaustive()
    }
}

/// A [`BrokerFactory`] from a closure returning a future of a broker.
///
/// ```
/// # use std::{sync::Arc, time::Duration};
/// let factory = qconformance::broker_fn(qconformance::BrokerCapabilities::new(Duration::ZERO), || async {
///     # let broker: Arc<dyn qcore::Broker> = unimplemented!();
///     Ok(broker)
/// });
/// # let _ = factory;
/// ```
pub fn broker_fn<F, Fut>(caps: BrokerCapabilities, make: F) -> BrokerFn<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<Arc<dyn Broker>, BrokerError>> + Send,
{
    BrokerFn { caps, make }
}

#[async_trait]
impl<F, Fut> BrokerFactory for BrokerFn<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<Arc<dyn Broker>, BrokerError>> + Send,
{
    fn capabilities(&self) -> BrokerCapabilities {
        self.caps.clone()
    }
    async fn broker(&self) -> Result<Arc<dyn Broker>, BrokerError> {
        (self.make)().await
    }
}

/// A [`BackendFactory`] from capabilities and a closure; see [`backend_fn`].
pub struct BackendFn<F> {
    caps: BackendCapabilities,
    make: F,
}

impl<F> std::fmt::Debug for BackendFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendFn").field("caps", &self.caps).finish_non_exhaustive()
    }
}

/// A [`BackendFactory`] from a closure returning a future of a backend.
pub fn backend_fn<F, Fut>(caps: BackendCapabilities, make: F) -> BackendFn<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<Arc<dyn ResultBackend>, BackendError>> + Send,
{
    BackendFn { caps, make }
}

#[async_trait]
impl<F, Fut> BackendFactory for BackendFn<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<Arc<dyn ResultBackend>, BackendError>> + Send,
{
    fn capabilities(&self) -> BackendCapabilities {
        self.caps.clone()
    }
    async fn backend(&self) -> Result<Arc<dyn ResultBackend>, BackendError> {
        (self.make)().await
    }
}

/// `<prefix>.<random hex>`: a name no other case or run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

/// Run one case on a fresh multi-threaded runtime, failing it after
/// [`CASE_TIMEOUT`]. Used by the macros.
#[doc(hidden)]
pub fn run_case<F: Future<Output = ()> + Send>(name: &str, case: F) {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => panic!("{name}: cannot start a tokio runtime: {e}"),
    };
    rt.block_on(async {
        if tokio::time::timeout(CASE_TIMEOUT, case).await.is_err() {
            panic!("{name}: did not finish within {CASE_TIMEOUT:?}");
        }
    });
}

/// One `#[test]` per broker case, in a module named `broker_conformance`
/// (or the name given first: `broker_conformance!(redis_broker, factory)`).
///
/// The factory expression is evaluated once per case and must implement
/// [`BrokerFactory`]; it sees the items of the calling module.
#[macro_export]
macro_rules! broker_conformance {
    ($name:ident, $factory:expr) => {
        $crate::__cases!($name, $factory, broker;
            round_trip_keeps_message,
            fifo_per_queue,
            consume_from_several_queues,
            ack_removes_for_good,
            reject_requeue_redelivers,
            reject_without_requeue_drops,
            dead_letter_parks_with_reason,
            dead_letters_count_redrive_purge,
            dropped_consumer_redelivers,
            prefetch_is_respected,
            queue_len_and_purge,
            priorities,
            defer,
            fanout_topic_patterns,
            ping,
            concurrent_consumers_get_each_message_once,
        );
    };
    ($factory:expr) => {
        $crate::broker_conformance!(broker_conformance, $factory);
    };
}

/// One `#[test]` per result backend case, in a module named
/// `backend_conformance` (or the name given first).
///
/// The factory expression is evaluated once per case and must implement
/// [`BackendFactory`]; it sees the items of the calling module.
#[macro_export]
macro_rules! backend_conformance {
    ($name:ident, $factory:expr) => {
        $crate::__cases!($name, $factory, backend;
            get_unknown_is_none,
            store_get_round_trip,
            success_is_never_overwritten,
            other_states_are_overwritten,
            ttl_expires,
            wait_wakes_on_store,
            wait_times_out,
            forget_deletes,
            get_many_keeps_order,
            groups,
            chord_completes_once_in_order,
            chord_counts_duplicates_once,
            chord_concurrent_parts_complete_once,
        );
    };
    ($factory:expr) => {
        $crate::backend_conformance!(backend_conformance, $factory);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __cases {
    ($name:ident, $factory:expr, $suite:ident; $($case:ident),* $(,)?) => {
        #[allow(unused_imports, clippy::module_inception)]
        mod $name {
            use super::*;
            $(
                #[test]
                fn $case() {
                    $crate::run_case(
                        concat!(stringify!($suite), "::", stringify!($case)),
                        async {
                            let factory = $factory;
                            $crate::$suite::$case(&factory).await
                        },
                    );
                }
            )*
        }
    };
}
