//! Task consumers and their ackers.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::stream::{SelectAll, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use qcore::{Acker, BrokerError, Consumer, Delivery};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::acks::AckBatcher;
use crate::core::Core;
use crate::delay::{due_ms, is_early, now_ms};
use crate::error::{broker_err, classify, Fault};
use crate::fields::short;
use crate::options::{backoff, QueueType};
use crate::props::{self, republish, H_DEAD_REASON, H_DELIVERIES};

/// The dead-letter queue of `queue`.
pub(crate) fn dead_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

type DeliveryStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = (usize, Result<lapin::message::Delivery, lapin::Error>)> + Send + Sync>,
>;

struct Session {
    channel: Channel,
    stream: SelectAll<DeliveryStream>,
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

    /// Open the channel: QoS, declarations (idempotent, Celery's), and one
    /// `basic.consume` per queue.
    async fn open(&self) -> Result<Session, BrokerError> {
        let ch = self.core.consume_link.channel().await?;
        // The limit is per channel (`global`) only where it has to be: for
        // several classic queues on one channel. With one queue a
        // per-consumer limit is the same bound, and RabbitMQ enforces it in
        // the queue process instead of asking the channel's limiter process
        // for every delivery (about a quarter of its CPU per task here).
        // Quorum queues take no global QoS: the limit is then per queue.
        let global = self.core.opts.queue_type == QueueType::Classic && self.queues.len() > 1;
        ch.basic_qos(self.prefetch, BasicQosOptions { global })
            .await
            .map_err(|e| broker_err("setting the prefetch (basic.qos)", e))?;
        let mut stream = SelectAll::new();
        for (i, q) in self.queues.iter().enumerate() {
            let name = short(q, "queue name")?;
            self.core
                .declare_task_queue(&ch, &name)
                .await
                .map_err(|e| broker_err(&format!("declaring queue {q:?}"), e))?;
            let tag = if self.tag.is_empty() { String::new() } else { format!("{}.{i}", self.tag) };
            let consumer = ch
                .basic_consume(
                    name,
                    short(&tag, "consumer tag")?,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| broker_err(&format!("consuming from {q:?}"), e))?;
            stream.push(Box::pin(consumer.map(move |d| (i, d))) as DeliveryStream);
        }
        tracing::debug!(queues = ?self.queues, prefetch = self.prefetch, "consuming");
        let acks = AckBatcher::start(ch.clone());
        Ok(Session { channel: ch, stream, acks })
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
    async fn prepare(
        &self,
        channel: &Channel,
        acks: &AckBatcher,
        qi: usize,
        d: lapin::message::Delivery,
    ) -> Option<Delivery> {
        let queue = self.queues.get(qi).cloned().unwrap_or_default();
        let lapin::message::Delivery { delivery_tag, redelivered, properties, data, .. } = d;
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
            channel: channel.clone(),
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
            match session.stream.next().await {
                Some((qi, Ok(d))) => {
                    self.failures = 0;
                    let (channel, acks) = (session.channel.clone(), session.acks.clone());
                    if let Some(delivery) = self.prepare(&channel, &acks, qi, d).await {
                        return Ok(Some(delivery));
                    }
                }
                Some((_, Err(e))) => {
                    tracing::warn!(error = %e, queues = ?self.queues, "consumer lost its channel; resubscribing");
                    self.session = None;
                    self.failures = self.failures.saturating_add(1);
                }
                None => {
                    tracing::warn!(queues = ?self.queues, "consumer cancelled by the broker; resubscribing");
                    self.session = None;
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
            if session.channel.status().connected() {
                if let Err(e) = session.channel.close(200, "OK".into()).await {
                    tracing::debug!(error = %e, "closing the consumer channel");
                }
            }
        }
        Ok(())
    }
}

/// Settles one delivery on the channel it came from.
pub(crate) struct AmqpAcker {
    core: Arc<Core>,
    channel: Channel,
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
        let up = self.channel.status().connected();
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
        let r = match self.channel.basic_ack(self.tag, BasicAckOptions::default()).await {
            Err(e) if matches!(classify(&e), Fault::Channel | Fault::Connection) => {
                tracing::debug!(error = %e, "ack on a lost channel ignored; RabbitMQ redelivers the message");
                Ok(())
            }
            r => r.map_err(|e| broker_err("ack", e)),
        };
        self.acks.done(self.tag);
        r
    }

    async fn plain_reject(&self, requeue: bool) -> Result<(), BrokerError> {
        if !self.alive() {
            return Ok(());
        }
        let r = match self.channel.basic_reject(self.tag, BasicRejectOptions { requeue }).await {
            Err(e) if matches!(classify(&e), Fault::Channel | Fault::Connection) => Ok(()),
            r => r.map_err(|e| broker_err("reject", e)),
        };
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
    /// returns; the frame follows as soon as the batcher's task runs.
    async fn ack(&self) -> Result<(), BrokerError> {
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
