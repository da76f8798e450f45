//! Mapping of driver errors onto qcore's portable [`ErrorKind`].

use qcore::{BackendError, BrokerError, ErrorKind};

/// The portable kind of a sqlx error.
pub(crate) fn kind_of(e: &sqlx::Error) -> ErrorKind {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => ErrorKind::Connection,
        sqlx::Error::PoolTimedOut => ErrorKind::Timeout,
        sqlx::Error::PoolClosed => ErrorKind::Closed,
        sqlx::Error::Configuration(_) => ErrorKind::Config,
        sqlx::Error::RowNotFound => ErrorKind::NotFound,
        sqlx::Error::Protocol(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_) => ErrorKind::Protocol,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or_default();
            match code {
                // PostgreSQL class 08 (connection exception), shutdown, too many connections.
                c if c.starts_with("08") => ErrorKind::Connection,
                "57P01" | "57P02" | "57P03" | "53300" => ErrorKind::Connection,
                // Serialization failure, deadlock, lock timeout, statement timeout: try again.
                "40001" | "40P01" | "55P03" | "57014" => ErrorKind::Timeout,
                // SQLite: SQLITE_BUSY (5, extended 261/517/773), SQLITE_LOCKED (6, 262).
                "5" | "6" | "261" | "262" | "517" | "773" => ErrorKind::Timeout,
                _ => ErrorKind::Other,
            }
        }
        _ => ErrorKind::Other,
    }
}

/// A [`BrokerError`] for a failed `what`.
pub(crate) fn broker(what: &str, e: sqlx::Error) -> BrokerError {
    BrokerError::with_source(kind_of(&e), what.to_string(), e)
}

/// A [`BackendError`] for a failed `what`.
pub(crate) fn backend(what: &str, e: sqlx::Error) -> BackendError {
    BackendError::with_source(kind_of(&e), what.to_string(), e)
}
