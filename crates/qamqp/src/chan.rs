//! The connection a delivery arrived on, to settle it: the consumer's own
//! connection ([`crate::direct`]). A lost connection is not an error when
//! settling: RabbitMQ puts what was not settled back in its queue.

use std::sync::Arc;

use qcore::BrokerError;

use crate::direct::Out;

#[derive(Clone)]
pub(crate) struct Chan(Arc<Out>);

fn settle_result(what: &str, r: Result<(), BrokerError>) -> Result<(), BrokerError> {
    match r {
        Err(e) if e.kind() == qcore::ErrorKind::Connection => {
            tracing::debug!(error = %e, "{what} on a lost connection ignored; RabbitMQ redelivers the message");
            Ok(())
        }
        r => r,
    }
}

impl Chan {
    pub(crate) fn new(out: Arc<Out>) -> Self {
        Chan(out)
    }

    /// Whether settling on it can still reach the broker.
    pub(crate) fn connected(&self) -> bool {
        self.0.connected()
    }

    /// Send `basic.ack`s, `(tag, multiple)`, in order, in one write.
    pub(crate) async fn acks(&self, frames: &[(u64, bool)]) -> Result<(), BrokerError> {
        settle_result("ack", self.0.acks(frames.iter().copied()).await)
    }

    /// `basic.reject`.
    pub(crate) async fn reject(&self, tag: u64, requeue: bool) -> Result<(), BrokerError> {
        settle_result("reject", self.0.reject(tag, requeue).await)
    }

    /// Close it; RabbitMQ requeues what was not settled.
    pub(crate) async fn close(&self) {
        self.0.close().await
    }
}
