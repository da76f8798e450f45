//! # qcore
//!
//! The core of qtask: Celery protocol v2 messages ([`Message`],
//! [`TaskMessage`]), task states ([`State`]), result documents
//! ([`ResultMeta`]), signatures and the canvas ([`Signature`], [`chain()`],
//! [`group()`], [`chord`]), the [`Task`] trait, the [`Broker`] and
//! [`ResultBackend`] contracts, and the [`App`] with its producer API.
//!
//! qcore does no I/O of its own: everything goes through the traits, which
//! adapter crates (`qmemory`, `qredis`, ...) implement.
//!
//! ```
//! use qcore::{chain, Signature};
//! let c = chain([Signature::new("tasks.add").arg(1).arg(2), Signature::new("tasks.add").arg(3)]);
//! assert_eq!(c.tasks().len(), 2);
//! ```

mod app;
mod async_result;
pub mod backend;
pub mod backoff;
pub mod broker;
pub mod chord_unlock;
pub mod config;
pub mod control;
pub mod driver;
mod error;
pub mod event;
pub mod json;
pub mod message;
mod node;
pub mod repr;
mod result;
#[doc(hidden)]
pub mod run;
mod signature;
mod state;
pub mod task;
pub mod time;
pub mod url;

pub use app::{App, AppBuilder, IntoSignature, Parent, PreparedSend, SendOptions, TypedSignature};
pub use async_result::AsyncResult;
pub use backend::{BackendCapabilities, ChordJoin, ChordPart, ChordSupport, ResultBackend};
pub use broker::{
    Acker, Broker, Capabilities, ConsumeOptions, Consumer, DeadLetter, DeadLetters, Delivery, Priorities, Subscription,
};
pub use config::Config;
pub use error::{BackendError, BrokerError, Error, ErrorKind, ProtocolError};
pub use message::{ContentType, Embed, Message, Properties, TaskMessage, TaskMessageBuilder};
pub use node::{hostname, node_name};
pub use result::{ExceptionInfo, ResultCodec, ResultMeta};
pub use signature::{chain, chord, group, CanvasKind, Signature};
pub use state::State;
pub use task::{
    Args, MaxRetries, RateLimit, RequestInfo, Retry, Task, TaskContext, TaskError, TaskOptions, TaskResult,
};

/// Re-exports used by code that `#[task]` generates.
#[doc(hidden)]
pub mod __private {
    pub use async_trait::async_trait;
    pub use serde_json;
    pub use tokio;
}
