//! # qsql
//!
//! SQL adapters for qtask:
//!
//! * [`SqlBackend`]: Celery's **database result backend** (`celery_taskmeta`,
//!   `celery_tasksetmeta`) on PostgreSQL or SQLite, row for row and byte for
//!   byte what Python Celery writes, so Python and Rust share results;
//!   `LISTEN`/`NOTIFY` wakes waiters on PostgreSQL; chords are joined with an
//!   atomic counter.
//! * [`PgBroker`]: a **PostgreSQL broker** (`FOR UPDATE SKIP LOCKED`,
//!   leases, `NOTIFY` wakeups, priorities, delayed delivery, dead letters,
//!   fanout) with enqueue-on-commit ([`PgBroker::publish_in_tx`]).
//! * [`SqliteBroker`]: a **SQLite broker** in one file, safe for several
//!   processes on one machine: the zero-setup default.
//! * [`chord_unlock_ready`] and friends, re-exported from
//!   [`qcore::chord_unlock`]: the database backend has no native chord
//!   join, so chords are joined by the `celery.chord_unlock` task, which
//!   every qtask worker runs.
//!
//! URLs: `postgres://user@host/db?schema=name` (or `postgresql://`),
//! `sqlite://path/to/file.db` (created if missing), and for the result
//! backend only `sqlite::memory:`. qtask's own tables are created by
//! embedded migrations recorded in `qtask_schema_version`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use qcore::{App, Broker, ResultBackend};
//! use qsql::{PgBroker, SqlBackend, SqlOptions};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "postgres://postgres@127.0.0.1/test?schema=jobs";
//! let broker: Arc<dyn Broker> = Arc::new(PgBroker::connect(url, SqlOptions::new()).await?);
//! let backend: Arc<dyn ResultBackend> = Arc::new(SqlBackend::connect(url, SqlOptions::new()).await?);
//! let app = App::builder().broker(broker).backend(backend).build()?;
//! # let _ = app; Ok(()) }
//! ```

mod backend;
mod broker;
mod chord_unlock;
mod connect;
mod driver;
mod error;
mod options;
mod schema;
mod util;

use std::sync::Arc;

pub use backend::SqlBackend;
pub use broker::{PgBroker, SqliteBroker};
pub use chord_unlock::{chord_unlock_ready, chord_unlock_result_ids, ChordUnlock, ChordUnlockRequest};
pub use driver::{backend_url, POSTGRES, SQLITE};
pub use options::SqlOptions;

/// Connect the broker for `url`: [`PgBroker`] for `postgres://` /
/// `postgresql://`, [`SqliteBroker`] for `sqlite://`.
pub async fn connect_broker(url: &str, opts: SqlOptions) -> Result<Arc<dyn qcore::Broker>, qcore::BrokerError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteBroker::connect(url, opts).await?))
    } else {
        Ok(Arc::new(PgBroker::connect(url, opts).await?))
    }
}

#[cfg(test)]
mod send_tests {
    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn connect_futures_are_send() {
        let o = crate::SqlOptions::new;
        assert_send(&crate::SqlBackend::connect("sqlite::memory:", o()));
        assert_send(&crate::PgBroker::connect("postgres://x/y", o()));
        assert_send(&crate::SqliteBroker::connect("sqlite://x.db", o()));
        assert_send(&crate::connect_broker("sqlite://x.db", o()));
    }
}

/// Entry points of the fuzz targets (`fuzz/`). Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// Parse a `postgres://` / `sqlite://` URL with an optional schema
    /// option; the error message on failure.
    pub fn url(url: &str, schema: Option<&str>) -> Result<(), String> {
        crate::options::parse_url(url, schema).map(drop)
    }
}
