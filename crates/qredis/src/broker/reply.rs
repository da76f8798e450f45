//! Pidbox replies: the direct exchange `reply.celery.pidbox` as kombu
//! emulates it on Redis (FACTS §2.5, §5.2).
//!
//! A client's reply queue is the list `<routing_key>.reply.celery.pidbox`,
//! bound in `_kombu.binding.reply.celery.pidbox` (so a Python worker's
//! kombu routes its reply there) and polled with `BRPOP ... 1` over its four
//! priority lists. A reply is an `LPUSH` of the envelope onto that list.
//! Celery's client deletes its lists when it stops waiting, but a reply that
//! arrives after that recreates one that nobody deletes: qtask sets a TTL
//! ([`REPLY_TTL`]) on every reply list it pushes to, and the subscription
//! removes its binding and lists when dropped.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, Value};
use qcore::control::{reply_queue, REPLY_EXCHANGE};
use qcore::{BrokerError, ErrorKind, Message, Subscription};

use super::Inner;
use crate::conn::{backoff, map_err, with_conn};
use crate::envelope;
use crate::keys::binding_member;

/// How long a reply list qtask pushed to lives (kombu's reply queues carry
/// `x-message-ttl` 300 s on AMQP).
pub(crate) const REPLY_TTL: Duration = Duration::from_secs(300);

/// `LPUSH` the reply onto the client's list and give the list a TTL.
pub(crate) async fn publish(inner: &Inner, routing_key: &str, message: &Message) -> Result<(), BrokerError> {
    let tag = uuid::Uuid::new_v4().to_string();
    let env = envelope::encode(message, REPLY_EXCHANGE, routing_key, &tag);
    let key = inner.keys.queue(&reply_queue(routing_key), 0);
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("LPUSH").arg(&key).arg(&env).ignore().cmd("EXPIRE").arg(&key).arg(REPLY_TTL.as_secs()).ignore();
    with_conn!(inner.conn, BrokerError, "publish reply", |c| pipe.query_async::<()>(c))
}

/// A client's reply queue.
pub(crate) struct ReplySubscription {
    inner: Arc<Inner>,
    routing_key: String,
    member: String,
    keys: [String; 4],
    conn: Option<MultiplexedConnection>,
    failures: u32,
}

impl ReplySubscription {
    pub(crate) async fn open(inner: Arc<Inner>, routing_key: &str) -> Result<Self, BrokerError> {
        if routing_key.is_empty() {
            return Err(BrokerError::new(ErrorKind::Config, "a reply subscription needs a routing key"));
        }
        let queue = reply_queue(routing_key);
        let member = binding_member(routing_key, "", &queue);
        let keys = inner.keys.queue_keys(&queue);
        let binding = inner.keys.binding(REPLY_EXCHANGE);
        with_conn!(inner.conn, BrokerError, "bind reply queue", |c| redis::cmd("SADD")
            .arg(&binding)
            .arg(&member)
            .query_async::<i64>(c))?;
        Ok(ReplySubscription { inner, routing_key: routing_key.to_owned(), member, keys, conn: None, failures: 0 })
    }
}

#[async_trait]
impl Subscription for ReplySubscription {
    async fn recv(&mut self) -> Result<Option<(String, Message)>, BrokerError> {
        loop {
            if self.conn.is_none() {
                if self.failures > 0 {
                    tokio::time::sleep(backoff(self.failures)).await;
                }
                match self.inner.conn.dedicated(Duration::from_secs(5)).await {
                    Ok(c) => self.conn = Some(c),
                    Err(e) => {
                        self.failures = self.failures.saturating_add(1);
                        return Err(map_err("open reply connection", e));
                    }
                }
                self.failures = 0;
            }
            let Some(conn) = self.conn.as_mut() else { continue };
            let got: Result<Option<(String, Vec<u8>)>, _> =
                redis::cmd("BRPOP").arg(&self.keys).arg(1).query_async(conn).await;
            match got {
                Ok(None) => continue,
                Ok(Some((_, raw))) => match envelope::decode(&raw) {
                    Ok(env) => return Ok(Some((self.routing_key.clone(), env.message))),
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed control reply"),
                },
                Err(e) => {
                    self.conn = None;
                    self.failures = 1;
                    return Err(map_err("BRPOP reply", e));
                }
            }
        }
    }
}

impl Drop for ReplySubscription {
    /// Unbind and delete the lists, as Celery's client does when it stops
    /// collecting (in the background; without a runtime the TTL cleans up).
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let inner = self.inner.clone();
        let member = std::mem::take(&mut self.member);
        let keys = self.keys.clone();
        rt.spawn(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("SREM").arg(inner.keys.binding(REPLY_EXCHANGE)).arg(&member).ignore();
            for k in &keys {
                pipe.cmd("DEL").arg(k).ignore();
            }
            let r: Result<Value, BrokerError> =
                with_conn!(inner.conn, BrokerError, "unbind reply queue", |c| pipe.query_async::<Value>(c));
            if let Err(e) = r {
                tracing::debug!(error = %e, "could not remove a reply queue (its TTL will)");
            }
        });
    }
}
