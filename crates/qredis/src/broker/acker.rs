//! The acknowledgement handle of one Redis delivery.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qcore::{Acker, BrokerError};

use super::consumer::ConsumerState;
use super::maintenance::{dead_record, settle};
use super::Inner;
use crate::envelope;

pub(crate) struct RedisAcker {
    inner: Arc<Inner>,
    state: Arc<ConsumerState>,
    tag: String,
    queue: String,
    priority: u8,
    env: Vec<u8>,
    settled: tokio::sync::Mutex<bool>,
}

impl RedisAcker {
    pub(crate) fn new(
        inner: Arc<Inner>,
        state: Arc<ConsumerState>,
        tag: String,
        queue: String,
        priority: u8,
        env: Vec<u8>,
    ) -> Self {
        RedisAcker { inner, state, tag, queue, priority, env, settled: tokio::sync::Mutex::new(false) }
    }

    /// Run a settlement once: later calls are no-ops.
    async fn once<F>(&self, what: &str, f: F) -> Result<(), BrokerError>
    where
        F: std::future::Future<Output = Result<bool, BrokerError>>,
    {
        let mut done = self.settled.lock().await;
        if *done {
            return Ok(());
        }
        let held = f.await?;
        if !held {
            tracing::warn!(
                delivery_tag = %self.tag, queue = %self.queue, action = what,
                "delivery was no longer held by this consumer (restored after the visibility timeout?)"
            );
        }
        *done = true;
        self.state.release(&self.tag);
        Ok(())
    }

    async fn settle_to(&self, op: &str, dest: &str, payload: &[u8], score: f64) -> Result<bool, BrokerError> {
        settle(&self.inner, &self.tag, "owner", &self.state.token, b"", op, dest, payload, score).await
    }
}

#[async_trait]
impl Acker for RedisAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.once("ack", self.inner.ack(&self.tag, &self.state.token)).await
    }

    async fn reject(&self, requeue: bool) -> Result<(), BrokerError> {
        if requeue {
            // kombu: requeue goes to the back of the line (LPUSH), flagged redelivered.
            let env = envelope::mark_redelivered(&self.env, None).map(|(e, _)| e).unwrap_or_else(|_| self.env.clone());
            let dest = self.inner.keys.queue(&self.queue, self.priority);
            self.once("requeue", self.settle_to("lpush", &dest, &env, 0.0)).await
        } else {
            let dest = self.inner.keys.delayed();
            self.once("reject", self.settle_to("drop", &dest, b"", 0.0)).await
        }
    }

    async fn dead_letter(&self, reason: &str) -> Result<(), BrokerError> {
        let record = dead_record(reason, &self.queue, &self.env);
        let dest = self.inner.keys.dead(&self.queue);
        self.once("dead-letter", self.settle_to("rpush", &dest, &record, 0.0)).await
    }

    async fn defer(&self, until: DateTime<Utc>) -> Result<(), BrokerError> {
        let mut member = self.env.clone();
        member.push(b'\n');
        member.extend_from_slice(self.inner.keys.queue(&self.queue, self.priority).as_bytes());
        let score = until.timestamp_micros() as f64 / 1e6;
        let dest = self.inner.keys.delayed();
        self.once("defer", self.settle_to("zadd", &dest, &member, score)).await
    }
}

impl Drop for RedisAcker {
    fn drop(&mut self) {
        // Abandoned without settlement: stop refreshing it, so that the
        // visibility timeout hands it to another consumer.
        let settled = self.settled.try_lock().map(|g| *g).unwrap_or(true);
        if !settled {
            self.state.release(&self.tag);
        }
    }
}
