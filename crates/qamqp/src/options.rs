//! [`AmqpOptions`]: what the URL does not say.

use std::time::Duration;

use crate::tls::TlsOptions;

/// How a publish waits for the broker's confirm: qcore's, the type of
/// `broker_transport_options.confirm_publish`.
pub use qcore::config::ConfirmPublish;
/// The kind of queue [`declare_queue`](qcore::Broker::declare_queue) creates
/// for tasks: qcore's, the type of Celery's `task_default_queue_type`.
pub use qcore::config::QueueType;
use qcore::config::TaskQueue;

/// Settings of an [`AmqpBroker`](crate::AmqpBroker).
///
/// ```
/// let opts = qamqp::AmqpOptions::default().queue_max_priority(10).max_deliveries(Some(5));
/// assert_eq!(opts.queue_max_priority, Some(10));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AmqpOptions {
    /// `connection_name` client property (shown by `rabbitmqctl
    /// list_connections client_properties` and the management UI); the two
    /// connections of a broker get `/publish` and `/consume` appended.
    pub connection_name: String,
    /// `x-max-priority` for task queues (Celery's `task_queue_max_priority`).
    /// Unset (the default) declares no priority, like Celery. A queue that
    /// already exists with another value makes the declaration fail with a
    /// [`Config`](qcore::ErrorKind::Config) error (RabbitMQ's
    /// PRECONDITION_FAILED).
    pub queue_max_priority: Option<u8>,
    /// Classic or quorum task queues.
    pub queue_type: QueueType,
    /// Deliveries after which a message that was never acknowledged (a
    /// worker crashed on it, or it was requeued again and again) is moved to
    /// `<queue>.dead` with a reason instead of being delivered again.
    /// `None` delivers forever (Celery's behaviour). Default: 10.
    pub max_deliveries: Option<u32>,
    /// The node name whose remote-control queue `<node>.celery.pidbox` a
    /// subscription to `celery.pidbox` declares, read as a worker's
    /// `worker_hostname` ([`qcore::node_name`]; default `qtask@<hostname>`,
    /// the worker's default too).
    pub node_name: Option<String>,
    /// Longest wait between two reconnection attempts (backoff is
    /// exponential from 100 ms, with jitter).
    pub reconnect_max_delay: Duration,
    /// How long a publish waits for the broker's confirm (with
    /// [`ConfirmPublish::Pipelined`], how long a written message waits for
    /// it before it is written again).
    pub confirm_timeout: Duration,
    /// Whether a task publish returns once the broker confirmed it
    /// ([`ConfirmPublish::Each`]) or once it is written, its confirm awaited
    /// in the background ([`ConfirmPublish::Pipelined`], the default; see
    /// [`Broker::flush`](qcore::Broker::flush) for the guarantee).
    pub confirm_publish: ConfirmPublish,
    /// With [`ConfirmPublish::Pipelined`], how many written messages may
    /// wait for their confirm at once; a publish beyond waits for room.
    /// Default: 10,000.
    pub max_unconfirmed: usize,
    /// Certificates of `amqps://` connections (Celery's `broker_use_ssl`):
    /// by default the system's roots and no client certificate.
    pub tls: TlsOptions,
    /// Celery's `task_queues`: a listed queue is bound to its exchange
    /// (declared with its type) with its routing key instead of to the
    /// direct exchange of its own name; tasks for a queue on a topic or
    /// fanout exchange are published to that exchange with the queue's
    /// routing key (on a direct exchange, through the default exchange as
    /// Celery does).
    pub task_queues: Vec<TaskQueue>,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        AmqpOptions {
            connection_name: "qtask".into(),
            queue_max_priority: None,
            queue_type: QueueType::Classic,
            max_deliveries: Some(10),
            node_name: None,
            reconnect_max_delay: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(30),
            confirm_publish: ConfirmPublish::Pipelined,
            max_unconfirmed: 10_000,
            tls: TlsOptions::default(),
            task_queues: Vec::new(),
        }
    }
}

impl AmqpOptions {
    /// Set the connection name.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// Declare task queues with `x-max-priority`.
    pub fn queue_max_priority(mut self, max: u8) -> Self {
        self.queue_max_priority = Some(max);
        self
    }

    /// Declare quorum task queues.
    pub fn quorum(mut self) -> Self {
        self.queue_type = QueueType::Quorum;
        self
    }

    /// Set the poison-message limit (`None`: no limit).
    pub fn max_deliveries(mut self, max: Option<u32>) -> Self {
        self.max_deliveries = max;
        self
    }

    /// Set the node name used for the remote-control queue (the worker's
    /// `worker_hostname`, read by [`qcore::node_name`]).
    pub fn node_name(mut self, node: impl Into<String>) -> Self {
        self.node_name = Some(node.into());
        self
    }

    /// Set the longest reconnection backoff.
    pub fn reconnect_max_delay(mut self, d: Duration) -> Self {
        self.reconnect_max_delay = d;
        self
    }

    /// Declare these queues with their exchange and routing key.
    pub fn task_queues(mut self, queues: Vec<TaskQueue>) -> Self {
        self.task_queues = queues;
        self
    }

    /// Set how long a publish waits for its confirm.
    pub fn confirm_timeout(mut self, d: Duration) -> Self {
        self.confirm_timeout = d;
        self
    }

    /// Set how a publish waits for its confirm.
    pub fn confirm_publish(mut self, mode: ConfirmPublish) -> Self {
        self.confirm_publish = mode;
        self
    }

    /// Set how many pipelined messages may wait for their confirm at once.
    pub fn max_unconfirmed(mut self, n: usize) -> Self {
        self.max_unconfirmed = n;
        self
    }

    /// Set the TLS certificates of `amqps://` connections.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }
}

/// The wait before reconnection attempt `attempt`: none before the first
/// (`0`), then [`qcore::backoff::reconnect`] from 100 ms (about 100 ms, then
/// twice as long each time up to `max`, each wait drawn from 50–100 %).
pub(crate) fn backoff(attempt: u32, max: Duration) -> Duration {
    match attempt.checked_sub(1) {
        None => Duration::ZERO,
        Some(n) => qcore::backoff::reconnect(n, Duration::from_millis(100), max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let max = Duration::from_secs(5);
        assert_eq!(backoff(0, max), Duration::ZERO);
        for attempt in 1..40 {
            let d = backoff(attempt, max);
            assert!(d <= max, "{attempt}: {d:?}");
            assert!(d >= Duration::from_millis(50), "{attempt}: {d:?}");
        }
        assert!(backoff(30, max) >= max / 2);
    }
}
