//! Fanout/topic exchanges as kombu emulates them on Redis: `PUBLISH` to
//! `/<db>.<exchange>/<routing_key>`, `PSUBSCRIBE` with `#` turned into `*`.

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_redis::redis::aio::{PubSubSink, PubSubStream};
use futures_util::StreamExt;
use qcore::broker::topic_matches;
use qcore::{BrokerError, Message, Subscription};

use super::Inner;
use crate::conn::{backoff, map_err};
use crate::envelope;

pub(crate) struct RedisSubscription {
    inner: Arc<Inner>,
    exchange: String,
    pattern: String,
    channel_pattern: String,
    stream: Option<(PubSubSink, PubSubStream)>,
    failures: u32,
}

impl RedisSubscription {
    pub(crate) async fn open(inner: Arc<Inner>, exchange: &str, pattern: &str) -> Result<Self, BrokerError> {
        let channel_pattern = inner.keys.fanout_pattern(exchange, pattern);
        let mut sub = RedisSubscription {
            inner,
            exchange: exchange.to_string(),
            pattern: pattern.to_string(),
            channel_pattern,
            stream: None,
            failures: 0,
        };
        sub.connect().await?;
        Ok(sub)
    }

    async fn connect(&mut self) -> Result<(), BrokerError> {
        let timeout = self.inner.opts.connect_timeout;
        let pubsub = match tokio::time::timeout(timeout, self.inner.conn.client().get_async_pubsub()).await {
            Ok(r) => r.map_err(|e| map_err::<BrokerError>("open pub/sub connection", e))?,
            Err(_) => {
                return Err(BrokerError::new(qcore::ErrorKind::Timeout, "opening a pub/sub connection timed out"))
            }
        };
        let (mut sink, stream) = pubsub.split();
        sink.psubscribe(&self.channel_pattern).await.map_err(|e| map_err::<BrokerError>("PSUBSCRIBE", e))?;
        self.stream = Some((sink, stream));
        Ok(())
    }
}

#[async_trait]
impl Subscription for RedisSubscription {
    async fn recv(&mut self) -> Result<Option<(String, Message)>, BrokerError> {
        loop {
            if self.stream.is_none() {
                if self.failures > 0 {
                    tokio::time::sleep(backoff(self.failures)).await;
                }
                if let Err(e) = self.connect().await {
                    self.failures = self.failures.saturating_add(1);
                    return Err(e);
                }
                self.failures = 0;
            }
            let Some((_, stream)) = self.stream.as_mut() else { continue };
            let Some(msg) = stream.next().await else {
                tracing::warn!(exchange = %self.exchange, "pub/sub connection lost; resubscribing");
                self.stream = None;
                self.failures = 1;
                continue;
            };
            let channel = msg.get_channel_name().to_string();
            let rk = self.inner.keys.routing_key_of(&self.exchange, &channel).to_string();
            if !self.pattern.is_empty() && !topic_matches(&self.pattern, &rk) {
                continue;
            }
            match envelope::decode(msg.get_payload_bytes()) {
                Ok(env) => return Ok(Some((rk, env.message))),
                Err(e) => {
                    // Pub/sub has no persistence and no dead-letter place.
                    tracing::warn!(channel = %channel, error = %e, "ignoring malformed fanout message");
                }
            }
        }
    }
}
