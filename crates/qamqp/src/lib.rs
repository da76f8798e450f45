//! # qamqp
//!
//! The AMQP 0-9-1 (RabbitMQ) broker and the `rpc://` result backend of
//! qtask, byte-compatible with Celery 5.7 / kombu 5.7 / py-amqp 5.4: a Python
//! Celery worker consumes what [`AmqpBroker`] publishes and the other way
//! round. Fanout publish/subscribe (`celeryev`, `celery.pidbox`) and the
//! direct `reply.celery.pidbox` replies are declared as Celery declares
//! them, so the worker's events and control replies reach Flower and
//! `celery inspect`. Apps connect it
//! through [`DRIVER`] (settings from the app's `Config`).
//!
//! ```no_run
//! use qamqp::{AmqpBroker, AmqpOptions};
//! use qcore::Broker;
//!
//! # async fn demo() -> Result<(), qcore::BrokerError> {
//! let broker = AmqpBroker::connect("amqp://guest:guest@127.0.0.1:5672/%2f", AmqpOptions::default()).await?;
//! broker.declare_queue("celery").await?;
//! assert_eq!(broker.describe(), "amqp://guest:***@127.0.0.1:5672/%2F");
//! # Ok(()) }
//! ```
//!
#![doc = include_str!("../docs/design.md")]

mod acks;
mod broker;
mod confirms;
mod consumer;
mod core;
mod delay;
mod direct;
mod driver;
mod error;
mod fields;
mod options;
mod props;
mod rpc;
mod subscription;
mod tls;
mod url;
#[cfg(test)]
mod wire_tests;

pub use broker::AmqpBroker;
pub use driver::DRIVER;
pub use options::{AmqpOptions, ConfirmPublish, QueueType};
pub use rpc::{RpcBackend, RpcOptions};
pub use tls::TlsOptions;
pub use url::AmqpUrl;

/// Entry points of the fuzz targets (`fuzz/`): the decoders that read the
/// broker's bytes, as the consumer's reader calls them. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// Parse a method frame's payload.
    pub fn method(payload: &[u8]) -> Result<(), qcore::BrokerError> {
        crate::direct::parse_method(payload).map(drop)
    }

    /// Parse a content header frame's payload and turn it, with `body`,
    /// into the message a consumer hands to the worker.
    pub fn content(header: &[u8], body: &[u8]) -> Result<qcore::Message, qcore::BrokerError> {
        let (_, props) = crate::direct::parse_content_header(header)?;
        Ok(crate::props::decode(&props, body.to_vec()).0)
    }
}
