//! Fanout/topic subscriptions (events, remote control), declared as Celery
//! declares them.
//!
//! | exchange | queue | arguments | binding |
//! |---|---|---|---|
//! | `celeryev` (topic, durable) | `celeryev.<uuid4>` | `x-expires` 60000, `x-message-ttl` 5000 | the pattern (`#` when empty) |
//! | `celery.pidbox` (fanout, non-durable) | `<node>.celery.pidbox` | `x-expires` 10000, `x-message-ttl` 300000 | `""` |
//! | `reply.celery.pidbox` (direct, non-durable) | `<id>.reply.celery.pidbox` | `x-expires` 10000, `x-message-ttl` 300000 | the reply id |
//! | any other (topic, non-durable, auto-delete) | `<exchange>.<uuid4>` | `x-expires` 60000 | the pattern (`#` when empty) |
//!
//! Every queue is exclusive, auto-delete and non-durable, its arguments
//! signed 32-bit (`I`) like py-amqp's; messages are consumed with
//! `no_ack` (Celery does the same: events and control messages are not
//! persistent). After a connection loss the queue is declared and bound
//! again under the same name; what was published meanwhile is lost.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::AMQPSoftError;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::ExchangeKind;
use qcore::broker::topic_matches;
use qcore::{BrokerError, Message, Subscription};

use crate::core::{Core, ExchangeSpec};
use crate::error::{broker_err, classify, Fault};
use crate::fields::short;
use crate::options::backoff;
use crate::props;

/// What a subscription declares.
#[derive(Debug, Clone)]
pub(crate) struct SubSpec {
    exchange: ExchangeSpec,
    queue: String,
    binding: String,
    expires_ms: i32,
    message_ttl_ms: Option<i32>,
    /// Filter client-side (fanout exchanges ignore routing keys).
    filter: Option<String>,
}

impl SubSpec {
    pub(crate) fn new(exchange: &str, pattern: &str, node: &str) -> Result<Self, BrokerError> {
        let spec = ExchangeSpec::for_name(exchange)?;
        let uuid = uuid::Uuid::new_v4();
        let topic_binding = if pattern.is_empty() { "#".to_string() } else { pattern.to_string() };
        let (queue, binding, expires_ms, message_ttl_ms) = match exchange {
            "celeryev" => (format!("celeryev.{uuid}"), topic_binding, 60_000, Some(5_000)),
            qcore::control::PIDBOX_EXCHANGE => (format!("{node}.celery.pidbox"), String::new(), 10_000, Some(300_000)),
            qcore::control::REPLY_EXCHANGE if !pattern.is_empty() => {
                (format!("{pattern}.reply.celery.pidbox"), pattern.to_string(), 10_000, Some(300_000))
            }
            _ => match spec.kind {
                ExchangeKind::Topic => (format!("{exchange}.{uuid}"), topic_binding, 60_000, None),
                _ => (format!("{exchange}.{uuid}"), pattern.to_string(), 60_000, None),
            },
        };
        let filter = (spec.kind == ExchangeKind::Fanout && !pattern.is_empty()).then(|| pattern.to_string());
        short(&queue, "queue name")?;
        short(&binding, "routing key")?;
        Ok(SubSpec { exchange: spec, queue, binding, expires_ms, message_ttl_ms, filter })
    }

    fn args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongInt(self.expires_ms));
        if let Some(ttl) = self.message_ttl_ms {
            args.insert("x-message-ttl".into(), AMQPValue::LongInt(ttl));
        }
        args
    }
}

pub(crate) struct AmqpSubscription {
    core: Arc<Core>,
    spec: SubSpec,
    consumer: Option<(lapin::Channel, lapin::Consumer)>,
    failures: u32,
}

impl AmqpSubscription {
    /// Declare, bind and start consuming; the first time, errors go to the
    /// caller of `subscribe`.
    pub(crate) async fn start(core: Arc<Core>, spec: SubSpec) -> Result<Self, BrokerError> {
        let mut sub = AmqpSubscription { core, spec, consumer: None, failures: 0 };
        sub.consumer = Some(sub.open().await?);
        Ok(sub)
    }

    async fn open(&mut self) -> Result<(lapin::Channel, lapin::Consumer), BrokerError> {
        match self.try_open(&self.spec.queue.clone()).await {
            Err(e) if e.1 => {
                // An exclusive queue of that name belongs to another connection
                // (two workers with one node name): Celery warns and goes on.
                let alt = format!("{}.{}", uuid::Uuid::new_v4(), self.spec.queue);
                tracing::warn!(queue = %self.spec.queue, fallback = %alt, "queue is in use by another connection (duplicate node name?)");
                self.spec.queue = alt.clone();
                self.try_open(&alt).await.map_err(|e| e.0)
            }
            r => r.map_err(|e| e.0),
        }
    }

    /// `Err((error, locked))`.
    async fn try_open(&self, queue: &str) -> Result<(lapin::Channel, lapin::Consumer), (BrokerError, bool)> {
        let plain = |e: BrokerError| (e, false);
        let ch = self.core.consume_link.channel().await.map_err(plain)?;
        let lapin_err = |what: &str, e: lapin::Error| {
            let locked = classify(&e) == Fault::Refused(AMQPSoftError::RESOURCELOCKED);
            (broker_err(what, e), locked)
        };
        self.spec.exchange.declare(&ch).await.map_err(|e| lapin_err("declaring the exchange", e))?;
        let q = ShortString::try_new(queue)
            .map_err(|_| plain(BrokerError::new(qcore::ErrorKind::Config, "queue name too long")))?;
        ch.queue_declare(
            q.clone(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            self.spec.args(),
        )
        .await
        .map_err(|e| lapin_err(&format!("declaring queue {queue:?}"), e))?;
        let binding = short(&self.spec.binding, "routing key").map_err(plain)?;
        ch.queue_bind(
            q.clone(),
            self.spec.exchange.name.clone(),
            binding,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| lapin_err("binding the queue", e))?;
        let consumer = ch
            .basic_consume(
                q,
                "".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(|e| lapin_err(&format!("consuming from {queue:?}"), e))?;
        Ok((ch, consumer))
    }
}

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn recv(&mut self) -> Result<Option<(String, Message)>, BrokerError> {
        loop {
            if self.consumer.is_none() {
                tokio::time::sleep(backoff(self.failures, self.core.opts.reconnect_max_delay)).await;
                match self.open().await {
                    Ok(c) => self.consumer = Some(c),
                    Err(e) => {
                        self.failures = self.failures.saturating_add(1);
                        return Err(e);
                    }
                }
            }
            let Some((_, consumer)) = self.consumer.as_mut() else { continue };
            match consumer.next().await {
                Some(Ok(d)) => {
                    self.failures = 0;
                    let rk = d.routing_key.as_str().to_owned();
                    if self.spec.filter.as_deref().is_some_and(|p| !topic_matches(p, &rk)) {
                        continue;
                    }
                    let (message, _) = props::decode(&d.properties, d.data);
                    return Ok(Some((rk, message)));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, queue = %self.spec.queue, "subscription lost its channel; resubscribing");
                    self.consumer = None;
                    self.failures = self.failures.saturating_add(1);
                }
                None => {
                    tracing::warn!(queue = %self.spec.queue, "subscription cancelled by the broker; resubscribing");
                    self.consumer = None;
                    self.failures = self.failures.saturating_add(1);
                }
            }
        }
    }
}
