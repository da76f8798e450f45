//! The shared Broker and ResultBackend conformance suites against the shared
//! Redis (`QTASK_TEST_REDIS_URL`, else 127.0.0.1:6379), each case under its
//! own key prefix.

mod common;

use std::sync::Arc;
use std::time::Duration;

use qconformance::{
    backend_conformance, broker_conformance, BackendCapabilities, BackendFactory, BrokerCapabilities, BrokerFactory,
    Priorities,
};
use qcore::{BackendError, Broker, BrokerError, ContentType, ResultBackend, ResultCodec};
use qredis::{RedisBackend, RedisBackendOptions, RedisBroker, RedisOptions};

/// One key prefix per case; every broker it makes shares it (two workers on one server).
struct Redis {
    prefix: String,
    codec: ResultCodec,
}

impl Redis {
    fn new() -> Self {
        Redis { prefix: format!("{}:", qconformance::unique("qredis-conf")), codec: ResultCodec::default() }
    }

    /// Result documents (and chord parts, groups) written as msgpack.
    fn msgpack() -> Self {
        Redis { codec: ResultCodec::new(ContentType::Msgpack), ..Redis::new() }
    }
}

#[qconformance::async_trait]
impl BrokerFactory for Redis {
    fn capabilities(&self) -> BrokerCapabilities {
        // Visibility timeout 1 s, restore scans every 1/3 s.
        BrokerCapabilities::new(Duration::from_millis(1600))
            .priorities(Priorities::LowerFirst)
            .defer(true)
            .dead_letters(true)
    }

    async fn broker(&self) -> Result<Arc<dyn Broker>, BrokerError> {
        let opts = RedisOptions::default()
            .visibility_timeout(Duration::from_secs(1))
            .global_keyprefix(&self.prefix)
            .defer_poll_interval(Duration::from_millis(50));
        Ok(Arc::new(RedisBroker::connect(&common::redis_url(), opts).await?))
    }
}

#[qconformance::async_trait]
impl BackendFactory for Redis {
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities::new().push(true)
    }

    async fn backend(&self) -> Result<Arc<dyn ResultBackend>, BackendError> {
        let opts = RedisBackendOptions::default().global_keyprefix(&self.prefix).codec(self.codec.clone());
        Ok(Arc::new(RedisBackend::connect(&common::redis_url(), opts).await?))
    }
}

broker_conformance!(Redis::new());
backend_conformance!(Redis::new());
backend_conformance!(backend_conformance_msgpack, Redis::msgpack());
