//! [`AmqpBroker`]: the [`Broker`] contract on RabbitMQ.

use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use qcore::{
    Broker, BrokerError, Capabilities, ConsumeOptions, Consumer, DeadLetter, DeadLetters, ErrorKind, Message,
    Priorities, Subscription,
};

use crate::consumer::{dead_queue, AmqpConsumer};
use crate::core::{Core, ExchangeSpec, MakeProps};
use crate::fields::{from_amqp, short};
use crate::options::{AmqpOptions, ConfirmPublish, QueueType};
use crate::props::{self, republish, H_DEAD_REASON};
use crate::subscription::{AmqpSubscription, SubSpec};
use crate::url::AmqpUrl;

/// A RabbitMQ broker speaking Celery's AMQP dialect. See the
/// [crate docs](crate) for what it declares and how it behaves.
///
/// It holds two connections, opened on first use: one for publishing and
/// declarations, one for consumers and subscriptions (RabbitMQ throttles a
/// publishing connection under memory pressure, which must not stop acks).
/// Cheap to clone.
#[derive(Clone)]
pub struct AmqpBroker {
    core: Arc<Core>,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker").field("url", &self.core.url.describe()).finish_non_exhaustive()
    }
}

impl AmqpBroker {
    /// Connect to `url` (see [`AmqpUrl`]): the publishing connection is
    /// opened now, so a wrong host, password or vhost fails here.
    pub async fn connect(url: &str, options: AmqpOptions) -> Result<Self, BrokerError> {
        let broker = Self::lazy(url, options)?;
        broker.core.publish_link.connection().await?;
        Ok(broker)
    }

    /// Like [`connect`](Self::connect), without connecting until first use.
    pub fn lazy(url: &str, options: AmqpOptions) -> Result<Self, BrokerError> {
        let url = AmqpUrl::parse(url)?;
        Ok(AmqpBroker { core: Core::new(url, options) })
    }

    /// The options in use.
    pub fn options(&self) -> &AmqpOptions {
        &self.core.opts
    }

    /// An `rpc://` result backend sharing this broker's connections; see
    /// [`RpcBackend`](crate::RpcBackend).
    pub async fn rpc_backend(&self, options: crate::RpcOptions) -> Result<crate::RpcBackend, qcore::BackendError> {
        crate::RpcBackend::with_core(self.core.clone(), options).await
    }

    pub(crate) fn node_name(&self) -> String {
        qcore::node_name(self.core.opts.node_name.as_deref())
    }

    fn props_for<'a>(message: &'a Message) -> impl Fn() -> Result<BasicProperties, BrokerError> + Send + Sync + 'a {
        move || props::encode(message)
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn declare_queue(&self, queue: &str) -> Result<(), BrokerError> {
        self.core.ensure_task_queue(queue).await
    }

    async fn publish(&self, queue: &str, message: &Message) -> Result<(), BrokerError> {
        // Celery publishes tasks to the default exchange, routing key = queue
        // (or to a topic/fanout exchange `task_queues` binds the queue to).
        let (exchange, key) = self.core.task_route(queue);
        match self.core.opts.confirm_publish {
            ConfirmPublish::Pipelined => {
                self.core.publish_pipelined(exchange, key, message.body.clone(), props::encode(message)?).await
            }
            ConfirmPublish::Each => self.core.publish(exchange, key, &message.body, &Self::props_for(message)).await,
        }
    }

    async fn publish_many(&self, items: &[(String, Message)]) -> Result<(), BrokerError> {
        if self.core.opts.confirm_publish == ConfirmPublish::Pipelined {
            let mut batch = Vec::with_capacity(items.len());
            for (queue, message) in items {
                let (exchange, key) = self.core.task_route(queue);
                batch.push((exchange, key, message.body.clone(), props::encode(message)?));
            }
            return self.core.publish_pipelined_many(batch).await;
        }
        let makers: Vec<_> = items.iter().map(|(_, m)| Self::props_for(m)).collect();
        let batch: Vec<(String, String, &[u8], MakeProps<'_>)> = items
            .iter()
            .zip(&makers)
            .map(|((q, m), make)| {
                let (exchange, key) = self.core.task_route(q);
                (exchange.to_string(), key.to_string(), m.body.as_slice(), make as MakeProps<'_>)
            })
            .collect();
        self.core.publish_batch(&batch).await
    }

    /// Waits for the confirms of the messages published before (pipelined
    /// mode, the default); see [`ConfirmPublish`].
    async fn flush(&self) -> Result<(), BrokerError> {
        self.core.flush().await
    }

    async fn consume(&self, queues: &[String], options: ConsumeOptions) -> Result<Box<dyn Consumer>, BrokerError> {
        if queues.is_empty() {
            return Err(BrokerError::new(ErrorKind::Config, "consume needs at least one queue"));
        }
        let consumer = AmqpConsumer::new(self.core.clone(), queues.to_vec(), options.prefetch, options.tag.clone());
        // Subscribe now so that errors (a refused declaration) reach the caller.
        let consumer = consumer.started().await?;
        Ok(Box::new(consumer))
    }

    async fn queue_len(&self, queue: &str) -> Result<u64, BrokerError> {
        let name = short(queue, "queue name")?;
        let name = &name;
        let r = self
            .core
            .admin(&format!("queue_len({queue:?})"), |ch| async move {
                ch.queue_declare(
                    name.clone(),
                    QueueDeclareOptions { passive: true, ..Default::default() },
                    FieldTable::default(),
                )
                .await
            })
            .await;
        match r {
            Ok(q) => Ok(u64::from(q.message_count())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let name = short(queue, "queue name")?;
        let name = &name;
        let r = self
            .core
            .admin(&format!("purge({queue:?})"), |ch| async move {
                ch.queue_purge(name.clone(), QueuePurgeOptions::default()).await
            })
            .await;
        match r {
            Ok(n) => Ok(u64::from(n)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn capabilities(&self) -> Capabilities {
        // x-max-priority is only declared on classic queues (quorum queues
        // of RabbitMQ 3.x ignore priorities).
        let priorities = match (self.core.opts.queue_type, self.core.opts.queue_max_priority) {
            (QueueType::Classic, Some(max)) if max > 0 => Priorities::HigherFirst,
            _ => Priorities::Unsupported,
        };
        Capabilities::none().priorities(priorities).defer(true)
    }

    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }

    async fn publish_fanout(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
        let spec = ExchangeSpec::for_name(exchange)?;
        let make = Self::props_for(message);
        for attempt in 0..2 {
            self.core.ensure_exchange(&spec).await?;
            match self.core.publish(exchange, routing_key, &message.body, &make).await {
                // An exchange deleted behind our back (auto-delete, broker
                // restart): declare it again once.
                Err(e) if e.kind() == ErrorKind::NotFound && attempt == 0 => self.core.forget_declarations(),
                r => return r,
            }
        }
        Ok(())
    }

    async fn subscribe(&self, exchange: &str, pattern: &str) -> Result<Box<dyn Subscription>, BrokerError> {
        let spec = SubSpec::new(exchange, pattern, &self.node_name())?;
        Ok(Box::new(AmqpSubscription::start(self.core.clone(), spec).await?))
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        let ch = self.core.publish_link.channel().await?;
        let _ = ch.close(200, "OK".into()).await;
        Ok(())
    }

    fn describe(&self) -> String {
        self.core.url.describe()
    }
}

/// Dead letters live in the durable classic queue `<queue>.dead`.
#[async_trait]
impl DeadLetters for AmqpBroker {
    /// Browses `<queue>.dead`: up to `limit` messages are fetched with
    /// `basic.get` on a channel of their own and put back with one
    /// `basic.nack(multiple, requeue)`, which returns them to their places.
    /// While a browse runs those messages are unacked, so a concurrent
    /// browse sees fewer of them.
    async fn list(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let dead = dead_queue(queue);
        let name = short(&dead, "queue name")?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ch = self.core.publish_link.channel().await?;
        match ch
            .queue_declare(
                name.clone(),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
        {
            Ok(_) => {}
            Err(e) => {
                let e = crate::error::broker_err("dead_letters", e);
                return if e.kind() == ErrorKind::NotFound { Ok(Vec::new()) } else { Err(e) };
            }
        }
        let mut out = Vec::new();
        let mut last_tag = None;
        while out.len() < limit {
            let got = ch
                .basic_get(name.clone(), BasicGetOptions { no_ack: false })
                .await
                .map_err(|e| crate::error::broker_err("reading dead letters (basic.get)", e))?;
            let Some(got) = got else { break };
            let d = got.delivery;
            last_tag = Some(d.delivery_tag);
            let reason = d
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(H_DEAD_REASON))
                .map(from_amqp)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let (message, _) = props::decode(&d.properties, d.data);
            out.push(DeadLetter { message, queue: queue.to_string(), reason });
        }
        if let Some(tag) = last_tag {
            ch.basic_nack(tag, BasicNackOptions { multiple: true, requeue: true })
                .await
                .map_err(|e| crate::error::broker_err("returning dead letters", e))?;
        }
        let _ = ch.close(200, "OK".into()).await;
        Ok(out)
    }

    /// The ready messages of `<queue>.dead` (passive `queue.declare`);
    /// messages a browse holds at that moment are not counted.
    async fn count(&self, queue: &str) -> Result<u64, BrokerError> {
        self.queue_len(&dead_queue(queue)).await
    }

    /// Takes the oldest messages of `<queue>.dead` one by one with
    /// `basic.get` on a channel of its own, publishes each to `queue`
    /// (confirmed, mandatory: a message no queue takes is returned, and the
    /// queue is declared again, never dropped) with its body and properties,
    /// less qtask's dead-letter reason
    /// and delivery count, and acks the `basic.get` only once the publish
    /// is confirmed. A failure in between leaves the message in both queues,
    /// never in neither. Messages a concurrent browse holds are skipped.
    async fn redrive(&self, queue: &str, limit: usize) -> Result<u64, BrokerError> {
        let dead = dead_queue(queue);
        let name = short(&dead, "queue name")?;
        if limit == 0 || self.count(queue).await? == 0 {
            return Ok(0);
        }
        self.core.ensure_task_queue(queue).await?;
        let ch = self.core.publish_link.channel().await?;
        let mut moved = 0u64;
        let result = async {
            while moved < limit as u64 {
                let got = ch
                    .basic_get(name.clone(), BasicGetOptions { no_ack: false })
                    .await
                    .map_err(|e| crate::error::broker_err("reading dead letters (basic.get)", e))?;
                let Some(got) = got else { break };
                let d = got.delivery;
                // Without x-qtask-dead-reason, x-qtask-deliveries and
                // x-delivery-count: delivered again, it is counted afresh.
                let make = || republish(&d.properties, Vec::new(), false);
                match self.core.publish_routed("", queue, &d.data, &make).await {
                    // The queue was deleted since it was declared: once more.
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        self.core.ensure_task_queue(queue).await?;
                        self.core.publish_routed("", queue, &d.data, &make).await?;
                    }
                    r => r?,
                }
                ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
                    .await
                    .map_err(|e| crate::error::broker_err("removing a redriven dead letter (basic.ack)", e))?;
                moved += 1;
            }
            Ok::<(), BrokerError>(())
        }
        .await;
        // Closing the channel returns a message taken but not acked (a failed publish).
        let _ = ch.close(200, "OK".into()).await;
        result.map(|()| moved)
    }

    /// `queue.purge` of `<queue>.dead` (0 when it does not exist).
    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        Broker::purge(self, &dead_queue(queue)).await
    }
}
