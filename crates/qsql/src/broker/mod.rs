//! The brokers: [`PgBroker`] and [`SqliteBroker`].

mod codec;
mod lease;
mod pg;
mod sqlite;

use async_trait::async_trait;
use qcore::{BrokerError, DeadLetter, Message, Subscription};
use serde_json::Map;
use tokio::sync::mpsc;

pub use pg::PgBroker;
pub use sqlite::SqliteBroker;

/// A dead-letter row as a [`DeadLetter`]; unreadable headers or properties
/// (the reason it was parked, often) are kept as raw text in a header.
fn dead_letter_from(queue: String, headers: &str, properties: &str, body: Vec<u8>, reason: String) -> DeadLetter {
    let message = codec::decode_message(headers, properties, body.clone()).unwrap_or_else(|_| {
        let mut h = Map::new();
        h.insert("x-qtask-raw-headers".into(), headers.into());
        h.insert("x-qtask-raw-properties".into(), properties.into());
        Message { headers: h, properties: Default::default(), body }
    });
    DeadLetter { message, queue, reason }
}

/// A subscription fed by a background task.
struct ChannelSubscription {
    rx: mpsc::Receiver<(String, Message)>,
}

#[async_trait]
impl Subscription for ChannelSubscription {
    async fn recv(&mut self) -> Result<Option<(String, Message)>, BrokerError> {
        Ok(self.rx.recv().await)
    }
}
