//! The shared Broker contract (qconformance), against the RabbitMQ at
//! 127.0.0.1:5672, in this run's own vhost.

mod common;

use std::sync::Arc;
use std::time::Duration;

use qamqp::{AmqpBroker, AmqpOptions};
use qconformance::{broker_conformance, broker_fn, BrokerCapabilities, Priorities};

/// Queues without x-max-priority: FIFO whatever the priority.
fn plain_queues() -> BrokerCapabilities {
    BrokerCapabilities::new(Duration::ZERO).priorities(Priorities::Unsupported).defer(true).dead_letters(true)
}

// Priority queues (x-max-priority 9), poison-message counting on (default).
broker_conformance!(
    amqp,
    broker_fn(
        BrokerCapabilities::new(Duration::ZERO).priorities(Priorities::HigherFirst).defer(true).dead_letters(true),
        || async {
            let opts = AmqpOptions::default().queue_max_priority(9).connection_name("qconf-amqp");
            Ok(Arc::new(AmqpBroker::connect(&common::url(), opts).await?) as Arc<dyn qcore::Broker>)
        }
    )
);

// Plain queues as Celery declares them by default, no delivery counting.
broker_conformance!(
    amqp_celery_defaults,
    broker_fn(plain_queues(), || async {
        let opts = AmqpOptions::default().max_deliveries(None).connection_name("qconf-amqp-plain");
        Ok(Arc::new(AmqpBroker::connect(&common::url(), opts).await?) as Arc<dyn qcore::Broker>)
    })
);

// Quorum queues (RabbitMQ counts deliveries itself).
broker_conformance!(
    amqp_quorum,
    broker_fn(plain_queues(), || async {
        let opts = AmqpOptions::default().quorum().connection_name("qconf-amqp-quorum");
        Ok(Arc::new(AmqpBroker::connect(&common::url(), opts).await?) as Arc<dyn qcore::Broker>)
    })
);
