//! The client side: broadcast a request, collect the replies by ticket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;
use crate::error::Error;

use super::{ControlRequest, Reply, PIDBOX_EXCHANGE, REPLY_EXCHANGE};

/// Sends control requests through any [`Broker`] and collects the replies
/// (what `celery inspect` / `celery control` and Flower do), so the command
/// line and the monitor share one implementation.
///
/// ```no_run
/// # async fn demo(broker: std::sync::Arc<dyn qcore::Broker>) -> Result<(), qcore::Error> {
/// use std::time::Duration;
/// use qcore::control::{Client, ControlRequest};
///
/// let client = Client::new(broker);
/// for reply in client.call(ControlRequest::new("ping"), Duration::from_secs(1), None).await? {
///     println!("{}: {}", reply.node, reply.value);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    broker: Arc<dyn Broker>,
    clock: Arc<AtomicU64>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("broker", &self.broker.describe()).finish()
    }
}

impl Client {
    /// A client on `broker`.
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Client { broker, clock: Arc::new(AtomicU64::new(0)) }
    }

    /// The broker it talks through.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// The client's Lamport clock (advanced by each request, adjusted by
    /// each reply's `clock` header).
    pub fn clock(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn forward(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn adjust(&self, received: u64) {
        let _ = self.clock.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |cur| Some(cur.max(received) + 1));
    }

    /// Broadcast `request` without waiting for replies (its `reply_to` is
    /// sent as it is). `expires_in` sets the `expires` header.
    pub async fn cast(&self, request: &ControlRequest, expires_in: Duration) -> Result<(), Error> {
        let msg = request.to_message(self.forward(), Some(crate::time::now_epoch() + expires_in.as_secs_f64()))?;
        self.broker.publish_fanout(PIDBOX_EXCHANGE, "", &msg).await?;
        Ok(())
    }

    /// Broadcast `request` and collect the replies to it until `timeout`
    /// has passed or `limit` replies came (without a limit, a request with
    /// a `destination` stops after one reply per node named, as Celery's
    /// client does). A reply with another ticket is skipped, a malformed
    /// one is logged and skipped. The request gets a ticket and a fresh
    /// reply routing key unless it has them.
    pub async fn call(
        &self,
        request: ControlRequest,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<Vec<Reply>, Error> {
        let mut out = Vec::new();
        self.call_with(request, timeout, limit, |r| out.push(r)).await?;
        Ok(out)
    }

    /// [`call`](Self::call), handing each reply to `on_reply` as it arrives
    /// (a command line prints them as they come).
    pub async fn call_with(
        &self,
        mut request: ControlRequest,
        timeout: Duration,
        limit: Option<usize>,
        mut on_reply: impl FnMut(Reply) + Send,
    ) -> Result<usize, Error> {
        let ticket = request.ticket.get_or_insert_with(|| uuid::Uuid::new_v4().to_string()).clone();
        if request.reply_to.is_none() {
            request = request.reply_to(uuid::Uuid::new_v4().to_string());
        }
        let routing_key = request.reply_to.as_ref().map(|r| r.routing_key.clone()).unwrap_or_default();
        let limit = limit.or_else(|| request.destination.as_ref().filter(|d| !d.is_empty()).map(Vec::len));
        // Listen before asking, so no reply is missed.
        let mut sub = self.broker.subscribe(REPLY_EXCHANGE, &routing_key).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        self.cast(&request, timeout).await?;
        let mut got = 0;
        while limit.is_none_or(|l| got < l) {
            let msg = match tokio::time::timeout_at(deadline, sub.recv()).await {
                Err(_elapsed) => break,
                Ok(Ok(Some((_, msg)))) => msg,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(e.into()),
            };
            let replies = match Reply::from_message(&msg) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a malformed control reply");
                    continue;
                }
            };
            for reply in replies {
                if reply.ticket.as_deref() != Some(ticket.as_str()) {
                    continue;
                }
                if let Some(c) = reply.clock {
                    self.adjust(c);
                }
                got += 1;
                on_reply(reply);
            }
        }
        Ok(got)
    }
}
