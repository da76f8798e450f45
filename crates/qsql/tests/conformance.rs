//! The shared Broker and ResultBackend conformance suites, on PostgreSQL
//! (a schema per case) and SQLite (a file per case).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{PgSchema, TempDb};
use qconformance::{
    async_trait, backend_conformance, broker_conformance, BackendCapabilities, BackendFactory, BrokerCapabilities,
    BrokerFactory, Priorities,
};
use qcore::{BackendError, Broker, BrokerError, ResultBackend};
use qsql::{PgBroker, SqlBackend, SqlOptions, SqliteBroker};

/// Short leases so the redelivery cases run quickly.
const LEASE: Duration = Duration::from_millis(800);

fn broker_caps() -> BrokerCapabilities {
    BrokerCapabilities::new(LEASE + Duration::from_millis(700))
        .priorities(Priorities::HigherFirst)
        .defer(true)
        .dead_letters(true)
}

fn broker_opts() -> SqlOptions {
    SqlOptions::new().visibility_timeout(LEASE)
}

struct Pg(PgSchema);

#[async_trait]
impl BrokerFactory for Pg {
    fn capabilities(&self) -> BrokerCapabilities {
        broker_caps()
    }
    async fn broker(&self) -> Result<Arc<dyn Broker>, BrokerError> {
        Ok(Arc::new(PgBroker::connect(&self.0.url(), broker_opts()).await?))
    }
}

#[async_trait]
impl BackendFactory for Pg {
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities::new().push(true)
    }
    async fn backend(&self) -> Result<Arc<dyn ResultBackend>, BackendError> {
        let opts = SqlOptions::new().cleanup_interval(Duration::from_millis(500));
        Ok(Arc::new(SqlBackend::connect(&self.0.url(), opts).await?))
    }
}

/// The PostgreSQL backend storing msgpack values (`result_serializer = "msgpack"`).
struct PgMsgpack(PgSchema);

#[async_trait]
impl BackendFactory for PgMsgpack {
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities::new().push(true)
    }
    async fn backend(&self) -> Result<Arc<dyn ResultBackend>, BackendError> {
        let opts = SqlOptions::new()
            .cleanup_interval(Duration::from_millis(500))
            .codec(qcore::ResultCodec::new(qcore::ContentType::Msgpack));
        Ok(Arc::new(SqlBackend::connect(&self.0.url(), opts).await?))
    }
}

struct Lite(TempDb);

#[async_trait]
impl BrokerFactory for Lite {
    fn capabilities(&self) -> BrokerCapabilities {
        broker_caps()
    }
    async fn broker(&self) -> Result<Arc<dyn Broker>, BrokerError> {
        Ok(Arc::new(SqliteBroker::connect(&self.0.url(), broker_opts()).await?))
    }
}

#[async_trait]
impl BackendFactory for Lite {
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities::new()
    }
    async fn backend(&self) -> Result<Arc<dyn ResultBackend>, BackendError> {
        let opts = SqlOptions::new().cleanup_interval(Duration::from_millis(500));
        Ok(Arc::new(SqlBackend::connect(&self.0.url(), opts).await?))
    }
}

broker_conformance!(pg_broker, Pg(PgSchema::new()));
broker_conformance!(sqlite_broker, Lite(TempDb::new()));
backend_conformance!(pg_backend, Pg(PgSchema::new()));
backend_conformance!(pg_backend_msgpack, PgMsgpack(PgSchema::new()));
backend_conformance!(sqlite_backend, Lite(TempDb::new()));
