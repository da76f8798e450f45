//! # qamqp
//!
//! AMQP 0-9-1 (RabbitMQ) broker and `rpc://` result backend for qtask.
