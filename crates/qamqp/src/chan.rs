//! The channel a delivery arrived on, to settle it: a lapin channel (on
//! `amqps://`) or the consumer's own connection ([`crate::direct`]).

use std::sync::Arc;

use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::Channel;
use qcore::BrokerError;

use crate::direct::Out;
use crate::error::{broker_err, classify, Fault};

#[derive(Clone)]
pub(crate) enum Chan {
    Lapin(Channel),
    Direct(Arc<Out>),
}

/// A lost channel or connection is not an error when settling: RabbitMQ
/// puts what was not settled back in its queue.
fn settle_result(what: &str, r: Result<(), BrokerError>) -> Result<(), BrokerError> {
    match r {
        Err(e) if e.kind() == qcore::ErrorKind::Connection => {
            tracing::debug!(error = %e, "{what} on a lost channel ignored; RabbitMQ redelivers the message");
            Ok(())
        }
        r => r,
    }
}

fn lapin_result(what: &str, r: Result<(), lapin::Error>) -> Result<(), BrokerError> {
    match r {
        Err(e) if matches!(classify(&e), Fault::Channel | Fault::Connection) => {
            tracing::debug!(error = %e, "{what} on a lost channel ignored; RabbitMQ redelivers the message");
            Ok(())
        }
        r => r.map_err(|e| broker_err(what, e)),
    }
}

impl Chan {
    /// Whether settling on it can still reach the broker.
    pub(crate) fn connected(&self) -> bool {
        match self {
            Chan::Lapin(ch) => ch.status().connected(),
            Chan::Direct(out) => out.connected(),
        }
    }

    /// Send `basic.ack`s, `(tag, multiple)`, in order.
    pub(crate) async fn acks(&self, frames: &[(u64, bool)]) -> Result<(), BrokerError> {
        match self {
            Chan::Lapin(ch) => {
                for &(tag, multiple) in frames {
                    if !ch.status().connected() {
                        return Ok(());
                    }
                    lapin_result("ack", ch.basic_ack(tag, BasicAckOptions { multiple }).await)?;
                }
                Ok(())
            }
            Chan::Direct(out) => settle_result("ack", out.acks(frames.iter().copied()).await),
        }
    }

    /// `basic.reject`.
    pub(crate) async fn reject(&self, tag: u64, requeue: bool) -> Result<(), BrokerError> {
        match self {
            Chan::Lapin(ch) => lapin_result("reject", ch.basic_reject(tag, BasicRejectOptions { requeue }).await),
            Chan::Direct(out) => settle_result("reject", out.reject(tag, requeue).await),
        }
    }

    /// Close it; RabbitMQ requeues what was not settled.
    pub(crate) async fn close(&self) {
        match self {
            Chan::Lapin(ch) => {
                if ch.status().connected() {
                    if let Err(e) = ch.close(200, "OK".into()).await {
                        tracing::debug!(error = %e, "closing the consumer channel");
                    }
                }
            }
            Chan::Direct(out) => out.close().await,
        }
    }
}
