//! RabbitMQ for AIOKA Webhooks: the topology (names and arguments are the contract in
//! `proto/amqp.md`), a publisher that waits for every confirm, and message helpers.
//!
//! Every message is persistent, published `mandatory` with publisher confirms: a publish
//! returns `Ok` only when the broker has taken responsibility for the message, and an
//! unroutable message is an error, never a silent success.
#![forbid(unsafe_code)]

mod consumer;
pub mod permissions;
mod publisher;
mod shared;
mod topology;
mod trace;

pub use consumer::{
    ConsumerSpec, HANDED_BACK_WITHIN, PER_CHANNEL, REDELIVERED_HEADER, ack, consume, park,
    park_copy, requeue, run_consumer, sample_queue_depth,
};
pub use lapin;
pub use publisher::{Pending, Publisher, QueueError, connect, header_str, persistent_json};
pub use shared::{Published, SharedPublisher};
pub use topology::{
    ACCEPTED_AT_HEADER, AmqpSettings, DEFER_KEY, DELIVERY_KEY, PARK_REASON_HEADER,
    PARK_SOURCE_HEADER, Part, Topology,
};
pub use trace::{extract_trace_context, inject_trace_context};
