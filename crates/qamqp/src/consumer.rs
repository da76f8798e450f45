//! Task consumers and their ackers.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lapin::types::ShortString;
use lapin::BasicProperties;
use qcore::{Acker, BrokerError, Consumer, Delivery};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::acks::AckBatcher;
use crate::core::Core;
use crate::delay::{due_ms, is_early, now_ms};
use crate::direct::{DirectConn, Incoming, Out, RawDelivery};
use crate::fields::short;
use crate::options::{backoff, QueueType};
use crate::props::{self, republish, H_DEAD_REASON, H_DELIVERIES};

/// The dead-letter queue of `queue`.
pub(crate) fn dead_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// A subscription: the consumer's own connection, the queue of each
/// consumer tag, and the connection's ack batcher.
struct Session {
    out: Arc<Out>,
    conn: DirectConn,
    tags: HashMap<ShortString, usize>,
    acks: AckBatcher,
}

/// A consumer of task queues that survives connection loss: `recv` reopens
/// the channel, QoS and every `basic.consume` by itself.
pub(crate) struct AmqpConsumer {
    core: Arc<Core>,
    queues: Vec<String>,
    prefetch: u16,
    tag: String,
    session: Option<Session>,
    failures: u32,
}

impl AmqpConsumer {
    pub(crate) fn new(core: Arc<Core>, queues: Vec<String>, prefetch: usize, tag: String) -> Self {
        let prefetch = prefetch.clamp(1, usize::from(u16::MAX)) as u16;
        AmqpConsumer { core, queues, prefetch, tag, session: None, failures: 0 }
    }

    /// The `basic.qos` scope: per channel (`global`) only where it has to
    /// be, for several classic queues on one channel. With one queue a
    /// per-consumer limit is the same bound, and RabbitMQ enforces it in
    /// the queue process instead of asking the channel's limiter process
    /// for every delivery (about a quarter of its CPU per task here).
    /// Quorum queues take no global QoS: the limit is then per queue.
    fn global_qos(&self) -> bool {
        self.core.opts.queue_type == QueueType::Classic && self.queues.len() > 1
    }

    fn consumer_tag(&self, i: usize) -> String {
        if self.tag.is_empty() {
            String::new()
        } else {
            format!("{}.{i}", self.tag)
        }
    }

    /// Open the consumer's own connection ([`crate::direct`]; TLS on
    /// `amqps://`): declarations (idempotent, Celery's, made on the
    /// publishing connection), QoS, and one `basic.consume` per queue.
    async fn open(&self) -> Result<Session, BrokerError> {
        for q in &self.queues {
            let name = short(q, "queue name")?;
            let what = format!("declaring queue {q:?}");
            self.core
                .admin(&what, |ch| {
                    let name = name.clone();
                    async move { self.core.declare_task_queue(&ch, &name).await }
                })
                .await?;
        }
        let name = format!("{}/consume", self.core.opts.connection_name);
        let mut conn = DirectConn::open(&self.core.url, &self.core.opts.tls, &name).await?;
        conn.qos(self.prefetch, self.global_qos()).await?;
        let mut tags = HashMap::new();
        for (i, q) in self.queues.iter().enumerate() {
            let (queue, tag) = (short(q, "queue name")?, short(&self.consumer_tag(i), "consumer tag")?);
            let tag = conn.consume(queue.as_str(), tag.as_str()).await?;
            tags.insert(tag, i);
        }
        tracing::debug!(queues = ?self.queues, prefetch = self.prefetch, "consuming");
        let out = conn.out().clone();
        let acks = AckBatcher::start(out.clone());
        Ok(Session { out, conn, tags, acks })
    }

    /// Subscribe now, so that a refused declaration reaches `consume`'s caller.
    pub(crate) async fn started(mut self) -> Result<Self, BrokerError> {
        self.session = Some(self.open().await?);
        Ok(self)
    }

    fn counting(&self) -> bool {
        self.core.opts.max_deliveries.is_some() && self.core.opts.queue_type == QueueType::Classic
    }

    /// Turn a lapin delivery into one for the worker, or handle it here
    /// (poison message, early deferred message, uncounted redelivery) and
    /// return `None`.
    async fn prepare(&self, out: &Arc<Out>, acks: &AckBatcher, qi: usize, d: RawDelivery) -> Option<Delivery> {
        let RawDelivery { delivery_tag, redelivered, properties, data, .. } = d;
        let queue = self.queues.get(qi).cloned().unwrap_or_default();
        acks.seen(delivery_tag);
        let body = data.clone();
        let (message, internal) = props::decode(&properties, data);
        let counting = self.counting();
        let deliveries = match self.core.opts.queue_type {
            QueueType::Quorum => internal.delivery_count.unwrap_or(0) + 1,
            QueueType::Classic => internal.deliveries.unwrap_or(1) + u64::from(counting && redelivered),
        };
        let acker = Arc::new(AmqpAcker {
            core: self.core.clone(),
            out: out.clone(),
            acks: acks.clone(),
            tag: delivery_tag,
            queue: queue.clone(),
            raw: properties,
            body,
            deliveries,
            counting,
            settled: Mutex::new(false),
        });
        if let Some(max) = self.core.opts.max_deliveries {
            if deliveries > u64::from(max) {
                let reason = format!(
                    "poison message: delivered {deliveries} times without being acknowledged (max_deliveries = {max})"
                );
                tracing::error!(queue = %queue, task_id = message.task_id().unwrap_or("?"), %reason, "dead-lettering");
                if let Err(e) = acker.dead_letter(&reason).await {
                    tracing::warn!(error = %e, "could not dead-letter a poison message; it stays in its queue");
                    let _ = acker.plain_reject(true).await;
                }
                return None;
            }
        }
        if let Some(due) = internal.eta_ms.filter(|due| is_early(*due)) {
            match acker.defer_ms(due).await {
                Ok(()) => return None,
                Err(e) => tracing::warn!(error = %e, "could not defer an early message again; handing it over"),
            }
        }
        if counting && redelivered {
            // Persist the count of a redelivery (a consumer died holding it):
            // a copy with the new count replaces it at the back of the queue.
            match acker.requeue_counted(deliveries).await {
                Ok(()) => return None,
                Err(e) => tracing::warn!(error = %e, "could not record a redelivery; handing it over"),
            }
        }
        Some(Delivery { message, queue, redelivered: redelivered || deliveries > 1, acker })
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    async fn recv(&mut self) -> Result<Option<Delivery>, BrokerError> {
        loop {
            if self.session.is_none() {
                if self.failures > 0 {
                    tokio::time::sleep(backoff(self.failures, self.core.opts.reconnect_max_delay)).await;
                }
                match self.open().await {
                    Ok(s) => self.session = Some(s),
                    Err(e) => {
                        self.failures = self.failures.saturating_add(1);
                        return Err(e);
                    }
                }
            }
            let Some(session) = self.session.as_mut() else { continue };
            let next = match session.conn.next().await {
                Ok(Incoming::Delivery(d)) => match session.tags.get(&d.consumer_tag) {
                    Some(&queue) => Ok((queue, d)),
                    None => Err(format!("delivery for an unknown consumer tag {:?}; resubscribing", d.consumer_tag)),
                },
                Ok(Incoming::Cancelled(tag)) => {
                    Err(format!("consumer {tag:?} cancelled by the broker (queue deleted?); resubscribing"))
                }
                Err(e) => Err(format!("consumer lost its connection ({e}); resubscribing")),
            };
            match next {
                Ok((queue, d)) => {
                    self.failures = 0;
                    let (out, acks) = (session.out.clone(), session.acks.clone());
                    if let Some(delivery) = self.prepare(&out, &acks, queue, d).await {
                        return Ok(Some(delivery));
                    }
                }
                Err(why) => {
                    tracing::warn!(queues = ?self.queues, "{why}");
                    if let Some(session) = self.session.take() {
                        // Deliveries not settled yet go back to their queues
                        // when the connection closes (their acks are dropped).
                        session.out.close().await;
                    }
                    self.failures = self.failures.saturating_add(1);
                }
            }
        }
    }

    /// Send the pending acks, then close the channel: RabbitMQ puts the
    /// deliveries nobody settled back in their queues at once.
    async fn close(&mut self) -> Result<(), BrokerError> {
        if let Some(session) = self.session.take() {
            session.acks.flush().await;
            session.out.close().await;
        }
        Ok(())
    }
}

/// A lost connection is not an error when settling: RabbitMQ puts what was
/// not settled back in its queue.
fn lost_is_ok(what: &str, r: Result<(), BrokerError>) -> Result<(), BrokerError> {
    match r {
        Err(e) if e.kind() == qcore::ErrorKind::Connection => {
            tracing::debug!(error = %e, "{what} on a lost connection ignored; RabbitMQ redelivers the message");
            Ok(())
        }
        r => r,
    }
}

/// Settles one delivery on the connection it came from.
pub(crate) struct AmqpAcker {
    core: Arc<Core>,
    out: Arc<Out>,
    acks: AckBatcher,
    tag: u64,
    queue: String,
    raw: BasicProperties,
    body: Vec<u8>,
    deliveries: u64,
    counting: bool,
    settled: Mutex<bool>,
}

impl AmqpAcker {
    fn alive(&self) -> bool {
        let up = self.out.connected();
        if !up {
            tracing::debug!(queue = %self.queue, "delivery of a closed channel: RabbitMQ redelivers it; nothing to settle");
        }
        up
    }

    fn count_header(&self, n: u64) -> Vec<(&'static str, Value)> {
        if self.counting && n > 1 {
            vec![(H_DELIVERIES, Value::from(n))]
        } else {
            Vec::new()
        }
    }

    async fn basic_ack(&self) -> Result<(), BrokerError> {
        if !self.alive() {
            return Ok(());
        }
        let r = lost_is_ok("ack", self.out.acks([(self.tag, false)].into_iter()).await);
        self.acks.done(self.tag);
        r
    }

    async fn plain_reject(&self, requeue: bool) -> Result<(), BrokerError> {
        if !self.alive() {
            return Ok(());
        }
        let r = lost_is_ok("reject", self.out.reject(self.tag, requeue).await);
        self.acks.done(self.tag);
        r
    }

    /// Settle once: later calls after a success are no-ops.
    async fn settle_with<F, Fut>(&self, f: F) -> Result<(), BrokerError>
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = Result<(), BrokerError>> + Send,
    {
        let mut settled = self.settled.lock().await;
        if *settled {
            return Ok(());
        }
        f().await?;
        *settled = true;
        Ok(())
    }

    /// Replace the message by a copy carrying delivery count `n`, then ack.
    async fn requeue_counted(&self, n: u64) -> Result<(), BrokerError> {
        self.settle_with(|| async move {
            if !self.alive() {
                return Ok(());
            }
            let make = || republish(&self.raw, self.count_header(n), false);
            self.core.publish("", &self.queue, &self.body, &make).await?;
            self.basic_ack().await
        })
        .await
    }

    async fn defer_ms(&self, due: i64) -> Result<(), BrokerError> {
        self.settle_with(|| async move {
            if !self.alive() {
                return Ok(());
            }
            let headers = self.count_header(self.deliveries);
            if is_early(due) {
                self.core.publish_deferred(&self.queue, &self.raw, &self.body, due, headers).await?;
            } else {
                let make = || republish(&self.raw, headers.clone(), false);
                self.core.publish("", &self.queue, &self.body, &make).await?;
            }
            self.basic_ack().await
        })
        .await
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    /// Queues the ack in the channel's next batch (see [`AckBatcher`]) and
    /// returns; the frame follows as soon as the batcher's task runs. Messages
    /// this broker published before (pipelined, see
    /// [`ConfirmPublish`](crate::ConfirmPublish)) are confirmed first, so a
    /// task's follow-up messages (chain steps, retries) are held by RabbitMQ
    /// before the message that sent them is acked.
    async fn ack(&self) -> Result<(), BrokerError> {
        self.core.unconfirmed.settled_before().await;
        self.settle_with(|| async {
            if self.alive() {
                self.acks.ack(self.tag);
            }
            Ok(())
        })
        .await
    }

    async fn reject(&self, requeue: bool) -> Result<(), BrokerError> {
        if requeue && self.counting {
            // Classic queues do not count redeliveries: requeue a copy that does.
            return self.requeue_counted(self.deliveries + 1).await;
        }
        self.settle_with(|| self.plain_reject(requeue)).await
    }

    async fn dead_letter(&self, reason: &str) -> Result<(), BrokerError> {
        self.settle_with(|| async move {
            if !self.alive() {
                return Ok(());
            }
            let dead = dead_queue(&self.queue);
            self.core.ensure_plain_queue(&dead).await?;
            let make = || republish(&self.raw, vec![(H_DEAD_REASON, Value::from(reason))], false);
            self.core.publish("", &dead, &self.body, &make).await?;
            self.basic_ack().await
        })
        .await
    }

    async fn defer(&self, until: DateTime<Utc>) -> Result<(), BrokerError> {
        let due = due_ms(until).max(now_ms());
        self.defer_ms(due).await
    }
}
