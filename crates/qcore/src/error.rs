//! Error types with a portable [`ErrorKind`].
//!
//! Adapters box their driver errors as the `source` of a [`BrokerError`] or
//! [`BackendError`]; callers decide what to do from [`ErrorKind`] alone.

use std::fmt;

use crate::result::ExceptionInfo;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, independent of the broker or store behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The connection to the server failed or was lost. Retryable.
    Connection,
    /// An operation did not finish in time. Retryable.
    Timeout,
    /// The thing asked for does not exist (queue, key, task).
    NotFound,
    /// The peer answered something that breaks the protocol.
    Protocol,
    /// Bytes could not be encoded or decoded.
    Serialization,
    /// Configuration or URL is invalid.
    Config,
    /// The adapter was closed or shut down.
    Closed,
    /// The operation is not supported by this adapter.
    Unsupported,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Whether trying the same operation again later can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Connection | ErrorKind::Timeout)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::NotFound => "not found",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Serialization => "serialization",
            ErrorKind::Config => "configuration",
            ErrorKind::Closed => "closed",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Other => "other",
        };
        f.write_str(s)
    }
}

macro_rules! adapter_error {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name {
            kind: ErrorKind,
            message: String,
            source: Option<Source>,
        }

        impl $name {
            /// An error of `kind` with a human readable message.
            pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
                Self { kind, message: message.into(), source: None }
            }

            /// An error of `kind` caused by `source` (a driver error).
            pub fn with_source(
                kind: ErrorKind,
                message: impl Into<String>,
                source: impl Into<Source>,
            ) -> Self {
                Self { kind, message: message.into(), source: Some(source.into()) }
            }

            /// The portable kind of this error.
            pub fn kind(&self) -> ErrorKind {
                self.kind
            }

            /// Whether trying again later can succeed.
            pub fn is_retryable(&self) -> bool {
                self.kind.is_retryable()
            }

            /// The message without the kind prefix.
            pub fn message(&self) -> &str {
                &self.message
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($what, " {} error: {}"), self.kind, self.message)?;
                if let Some(src) = &self.source {
                    write!(f, ": {src}")?;
                }
                Ok(())
            }
        }

        impl std::error::Error for $name {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
            }
        }
    };
}

adapter_error!(
    /// An error from a [`Broker`](crate::Broker) implementation.
    BrokerError,
    "broker"
);
adapter_error!(
    /// An error from a [`ResultBackend`](crate::ResultBackend) implementation.
    BackendError,
    "result backend"
);

/// An error decoding or encoding a message or result document.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The content type is not one qtask speaks.
    #[error("unsupported content type {0:?}")]
    ContentType(String),
    /// The body could not be decoded.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The body could not be encoded.
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A required field is missing or has the wrong type.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// A stored result cannot be read: written with a serializer qtask does
    /// not read (pickle) or one `result_accept_content` refuses, or malformed.
    #[error("{0}")]
    Unreadable(String),
}

impl ProtocolError {
    pub(crate) fn decode(what: &'static str, reason: impl fmt::Display) -> Self {
        ProtocolError::Decode { what, reason: reason.to_string() }
    }
    pub(crate) fn encode(what: &'static str, reason: impl fmt::Display) -> Self {
        ProtocolError::Encode { what, reason: reason.to_string() }
    }
}

impl From<ProtocolError> for BrokerError {
    fn from(e: ProtocolError) -> Self {
        BrokerError::with_source(ErrorKind::Serialization, "message", e)
    }
}

impl From<ProtocolError> for BackendError {
    fn from(e: ProtocolError) -> Self {
        BackendError::with_source(ErrorKind::Serialization, "result document", e)
    }
}

/// The error of the producer API ([`App`](crate::App), [`AsyncResult`](crate::AsyncResult)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The result backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A message or result could not be encoded or decoded.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The task ran and failed (or was revoked); this is the remote error.
    #[error("task {task_id} ended in {state}: {exc}")]
    TaskFailed {
        /// The id of the task.
        task_id: String,
        /// FAILURE or REVOKED.
        state: String,
        /// The remote exception.
        exc: ExceptionInfo,
    },
    /// Waiting for a result took longer than the timeout.
    #[error("timed out waiting for task {0}")]
    Timeout(String),
    /// No result backend is configured, so results cannot be read.
    #[error("no result backend is configured (set result_backend)")]
    NoBackend,
    /// A configuration value is invalid.
    #[error("configuration error: {0}")]
    Config(String),
    /// The result has the wrong type for what the caller asked.
    #[error("result of task {task_id} has an unexpected type: {reason}")]
    ResultType {
        /// The id of the task.
        task_id: String,
        /// What did not match.
        reason: String,
    },
}
