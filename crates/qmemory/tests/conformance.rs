//! The Broker and ResultBackend conformance suites, run against qmemory.

use std::sync::Arc;
use std::time::Duration;

use qconformance::{backend_conformance, broker_conformance, BackendCapabilities, BrokerCapabilities, Priorities};
use qcore::{BackendError, Broker, BrokerError, ResultBackend};
use qmemory::{MemoryBackend, MemoryBroker};

/// One broker per case; every handle the case asks for is the same broker
/// (two "connections" to one in-process server).
fn broker_factory() -> impl qconformance::BrokerFactory {
    let broker = MemoryBroker::new();
    let caps =
        BrokerCapabilities::new(Duration::ZERO).priorities(Priorities::HigherFirst).defer(true).dead_letters(true);
    qconformance::broker_fn(caps, move || {
        let b = broker.clone();
        async move { Ok::<Arc<dyn Broker>, BrokerError>(Arc::new(b)) }
    })
}

fn backend_factory() -> impl qconformance::BackendFactory {
    let backend = MemoryBackend::new();
    let caps = BackendCapabilities::new()
        .push(true)
        .push_latency(Duration::from_millis(100))
        .min_ttl(Duration::from_millis(200))
        .expiry_grace(Duration::from_millis(500));
    qconformance::backend_fn(caps, move || {
        let b = backend.clone();
        async move { Ok::<Arc<dyn ResultBackend>, BackendError>(Arc::new(b)) }
    })
}

broker_conformance!(broker_factory());
backend_conformance!(backend_factory());
