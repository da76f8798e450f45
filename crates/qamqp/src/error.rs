//! Mapping lapin errors onto qcore's portable [`ErrorKind`].

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use qcore::{BackendError, BrokerError, ErrorKind};

/// How an AMQP failure should be treated by the code that saw it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fault {
    /// The connection is gone (socket, heartbeat, server closed it): reconnect.
    Connection,
    /// The channel was closed (by this or another operation): open a new one
    /// and the operation may be retried.
    Channel,
    /// The server refused *this* operation with a channel error
    /// (PRECONDITION_FAILED, NOT_FOUND, ACCESS_REFUSED, RESOURCE_LOCKED...).
    /// The channel is dead; the error belongs to the caller.
    Refused(AMQPSoftError),
    /// Not recoverable by retrying (authentication, vhost, parsing).
    Fatal,
}

pub(crate) fn classify(e: &lapin::Error) -> Fault {
    use lapin::ErrorKind as K;
    match e.kind() {
        K::IOError(_) | K::MissingHeartbeatError | K::InvalidConnectionState(_) | K::RuntimeShutdownError(_) => {
            Fault::Connection
        }
        K::InvalidChannel(_) | K::InvalidChannelState(..) | K::ChannelsLimitReached => Fault::Channel,
        K::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => Fault::Refused(soft.clone()),
            AMQPErrorKind::Hard(hard) => match hard {
                AMQPHardError::CONNECTIONFORCED | AMQPHardError::INTERNALERROR | AMQPHardError::RESOURCEERROR => {
                    Fault::Connection
                }
                AMQPHardError::NOTALLOWED | AMQPHardError::INVALIDPATH => Fault::Fatal,
                _ => Fault::Connection,
            },
        },
        _ => Fault::Fatal,
    }
}

/// A broker error for a failed `what`, with a kind callers can act on.
pub(crate) fn broker_err(what: &str, e: lapin::Error) -> BrokerError {
    let (kind, hint) = kind_and_hint(&e);
    BrokerError::with_source(kind, format!("{what}{hint}"), e)
}

pub(crate) fn to_backend(e: BrokerError) -> BackendError {
    BackendError::with_source(e.kind(), e.message().to_string(), e)
}

fn kind_and_hint(e: &lapin::Error) -> (ErrorKind, &'static str) {
    match classify(e) {
        Fault::Connection | Fault::Channel => (ErrorKind::Connection, ""),
        Fault::Refused(AMQPSoftError::PRECONDITIONFAILED) => (
            ErrorKind::Config,
            " (PRECONDITION_FAILED: it already exists with other arguments, e.g. another x-max-priority, \
             queue type or durability; delete it or use the same settings as whoever declared it)",
        ),
        Fault::Refused(AMQPSoftError::NOTFOUND) => (ErrorKind::NotFound, ""),
        Fault::Refused(AMQPSoftError::ACCESSREFUSED) => (ErrorKind::Config, " (ACCESS_REFUSED)"),
        Fault::Refused(AMQPSoftError::RESOURCELOCKED) => {
            (ErrorKind::Other, " (RESOURCE_LOCKED: an exclusive queue of that name is used by another connection)")
        }
        Fault::Refused(_) => (ErrorKind::Protocol, ""),
        Fault::Fatal => match e.kind() {
            lapin::ErrorKind::ProtocolError(_) | lapin::ErrorKind::AuthProviderError(_) => (ErrorKind::Config, ""),
            _ => (ErrorKind::Protocol, ""),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;

    fn amqp(kind: AMQPErrorKind) -> lapin::Error {
        lapin::ErrorKind::ProtocolError(AMQPError::new(kind, "x".into())).into()
    }

    #[test]
    fn kinds() {
        let e = broker_err("declare", amqp(AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)));
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("PRECONDITION_FAILED"), "{e}");
        let e = broker_err("get", amqp(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = broker_err(
            "io",
            lapin::ErrorKind::IOError(std::sync::Arc::new(std::io::ErrorKind::BrokenPipe.into())).into(),
        );
        assert_eq!(e.kind(), ErrorKind::Connection);
        assert!(e.is_retryable());
        let e = broker_err("forced", amqp(AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED)));
        assert_eq!(e.kind(), ErrorKind::Connection);
    }
}
