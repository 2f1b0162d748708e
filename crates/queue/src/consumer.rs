//! Consuming, acknowledging and parking.

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, Consumer};

use crate::{PARK_REASON_HEADER, PARK_SOURCE_HEADER, Publisher, QueueError, Topology};

/// Opens a channel with `prefetch` unacknowledged messages at most, and consumes `queue`.
/// The prefetch is the bound on work in flight: the broker sends no more until we ack.
pub async fn consume(
    connection: &Connection,
    queue: &str,
    tag: &str,
    prefetch: u16,
) -> Result<(Channel, Consumer), QueueError> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch.max(1), BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            ShortString::from(queue),
            ShortString::from(tag),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Acknowledges a message. `Ok(false)` from the broker means it will come again (the channel
/// closed first); consumers are idempotent, so that is logged, not treated as an error.
pub async fn ack(delivery: &Delivery) {
    match delivery.ack(BasicAckOptions::default()).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!("ack not delivered; the message will be redelivered"),
        Err(e) => tracing::warn!(error = %e, "ack failed; the message will be redelivered"),
    }
}

/// Returns a message to its queue (work could not finish, e.g. on shutdown).
pub async fn requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(e) = delivery.nack(options).await {
        tracing::warn!(error = %e, "nack failed; the message will be redelivered");
    }
}

/// Moves a message that breaks its contract to the parking queue, with the reason and its
/// origin in headers and its body and properties unchanged, then acknowledges it. Nothing is
/// lost and nothing loops: an operator can inspect and replay it.
pub async fn park(
    publisher: &Publisher,
    topology: &Topology,
    delivery: &Delivery,
    source: &str,
    reason: &str,
) -> Result<(), QueueError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from(PARK_REASON_HEADER),
        AMQPValue::LongString(LongString::from(reason)),
    );
    headers.insert(
        ShortString::from(PARK_SOURCE_HEADER),
        AMQPValue::LongString(LongString::from(source)),
    );
    headers.insert(
        ShortString::from("x-aioka-original-routing-key"),
        AMQPValue::LongString(LongString::from(delivery.routing_key.as_str())),
    );
    let properties = delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    publisher
        .publish(&topology.parking_exchange(), "", &delivery.data, properties)
        .await?;
    tracing::warn!(source, reason, "message parked");
    metrics::counter!("aioka_messages_parked_total", "source" => source.to_owned()).increment(1);
    ack(delivery).await;
    Ok(())
}
