//! Deferred delivery (ETA/countdown) through delay queues.
//!
//! A message deferred until `t` is published to the fanout exchange
//! `qtask.delay.<ms>`, bound to the durable queue `qtask.delay.<ms>` whose
//! `x-message-ttl` is `<ms>` and whose `x-dead-letter-exchange` is the
//! default exchange `""`. The routing key of that publish is the target
//! queue, so when the TTL runs out RabbitMQ dead-letters the message back to
//! its queue (without `x-dead-letter-routing-key` it keeps its own routing
//! key). The original delivery is acked only after the broker confirmed the
//! delayed copy, so nothing is held unacked while it waits (RabbitMQ's
//! `consumer_timeout`, 30 minutes by default, would close the channel).
//!
//! Buckets are powers of two from 128 ms to 2³⁰ ms (12.4 days). One TTL per
//! queue means no head-of-line blocking (per-message TTLs expire only at the
//! head of a queue). A wait is split into hops: the largest bucket not longer
//! than the time left, and the 128 ms bucket for the last bit, so a message
//! is back at most ~128 ms late. The due time travels in the header
//! `x-qtask-eta` (ms since the epoch); a consumer that receives a message
//! whose due time has not come defers it again itself, so workers never see
//! an early one. Its `expiration` property (Celery's `expires` TTL) is kept
//! in `x-qtask-expiration` while it waits, because RabbitMQ would otherwise
//! expire it in the delay queue and send it back early, and is restored on
//! receipt; so are the headers (`x-death` and `x-first-death-*`, which
//! RabbitMQ adds on dead-lettering, are removed).
//!
//! The delay queues have no `x-expires` (a queue that only receives
//! publishes counts as unused, and expiring it would drop what it holds):
//! at most 24 small queues and exchanges stay declared.

use chrono::{DateTime, Utc};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, ExchangeKind};
use qcore::BrokerError;
use serde_json::Value;

use crate::core::Core;
use crate::fields::short;
use crate::props::{republish, H_ETA};

/// Name prefix of delay exchanges and queues.
pub(crate) const DELAY_PREFIX: &str = "qtask.delay.";
const MIN_BUCKET_MS: i64 = 1 << 7;
const MAX_BUCKET_MS: i64 = 1 << 30;

/// The bucket for a wait of `remaining_ms`: the largest power of two not
/// above it (at most 2³⁰), or the smallest bucket.
pub(crate) fn bucket_for(remaining_ms: i64) -> i64 {
    if remaining_ms <= MIN_BUCKET_MS {
        return MIN_BUCKET_MS;
    }
    let capped = remaining_ms.min(MAX_BUCKET_MS) as u64;
    1i64 << (63 - capped.leading_zeros())
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Whether a message due at `due_ms` must wait longer (1 ms of slack for
/// rounding).
pub(crate) fn is_early(due_ms: i64) -> bool {
    due_ms - now_ms() > 1
}

pub(crate) fn due_ms(until: DateTime<Utc>) -> i64 {
    until.timestamp_millis()
}

impl Core {
    async fn ensure_delay_bucket(&self, ms: i64) -> Result<String, BrokerError> {
        let name = format!("{DELAY_PREFIX}{ms}");
        let short_name = short(&name, "delay queue")?;
        let (short_name, what) = (&short_name, format!("declaring delay queue {name:?}"));
        self.declare_once(&format!("delay:{ms}"), || {
            self.admin(&what, |ch| async move {
                ch.exchange_declare(
                    short_name.clone(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions { durable: true, ..Default::default() },
                    FieldTable::default(),
                )
                .await?;
                let mut args = FieldTable::default();
                args.insert("x-message-ttl".into(), AMQPValue::LongInt(ms as i32));
                args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(LongString::from("")));
                ch.queue_declare(short_name.clone(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
                    .await?;
                ch.queue_bind(
                    short_name.clone(),
                    short_name.clone(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
            })
        })
        .await?;
        Ok(name)
    }

    /// Publish a copy of a received message (`raw` properties and `body`)
    /// that comes back to `queue` at `due_ms`, through the delay queues.
    /// `set` adds headers (the delivery count).
    pub(crate) async fn publish_deferred(
        &self,
        queue: &str,
        raw: &BasicProperties,
        body: &[u8],
        due_ms: i64,
        set: Vec<(&'static str, Value)>,
    ) -> Result<(), BrokerError> {
        let bucket = bucket_for(due_ms - now_ms());
        let exchange = self.ensure_delay_bucket(bucket).await?;
        let make = || {
            let mut headers = set.clone();
            headers.push((H_ETA, Value::from(due_ms)));
            republish(raw, headers, true)
        };
        tracing::debug!(queue, bucket_ms = bucket, due_ms, "deferring message");
        self.publish(&exchange, queue, body, &make).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(bucket_for(-5), 128);
        assert_eq!(bucket_for(1), 128);
        assert_eq!(bucket_for(128), 128);
        assert_eq!(bucket_for(200), 128);
        assert_eq!(bucket_for(256), 256);
        assert_eq!(bucket_for(800), 512);
        assert_eq!(bucket_for(3_600_000), 1 << 21);
        assert_eq!(bucket_for(i64::MAX), 1 << 30);
        // Hops for one hour: each is the largest power of two left, then 128 ms.
        let (mut left, mut hops) = (3_600_000i64, 0);
        while left > 0 {
            left -= bucket_for(left);
            hops += 1;
        }
        assert!(hops <= 20, "{hops}");
        assert!(left > -128, "late by {} ms", -left);
    }
}
