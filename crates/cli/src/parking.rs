//! `aioka parking list|replay`: the operator's view of the parking queue, where messages that
//! broke their contract or exhausted their queue's delivery limit wait, with their reason.
#![allow(clippy::print_stdout)]

use aioka_queue::lapin::message::BasicGetMessage;
use aioka_queue::lapin::options::{BasicAckOptions, BasicGetOptions};
use aioka_queue::lapin::types::{AMQPValue, FieldTable};
use aioka_queue::{
    DELIVERY_KEY, PARK_REASON_HEADER, PARK_SOURCE_HEADER, Publisher, Topology, header_str,
};
use anyhow::Context;
use serde_json::json;

const ORIGINAL_KEY_HEADER: &str = "x-aioka-original-routing-key";

/// Where a parked message came from and why, from our headers or RabbitMQ's `x-death`.
fn origin(topology: &Topology, message: &BasicGetMessage) -> (Option<String>, String) {
    let headers = message.delivery.properties.headers().as_ref();
    if let Some(source) = header_str(headers, PARK_SOURCE_HEADER) {
        let reason = header_str(headers, PARK_REASON_HEADER).unwrap_or_default();
        return (Some(source), reason);
    }
    // Dead-lettered by the broker (delivery limit): x-death names the queue.
    let queue = headers
        .and_then(|h| h.inner().get("x-death"))
        .and_then(|v| match v {
            AMQPValue::FieldArray(deaths) => deaths.as_slice().first().cloned(),
            _ => None,
        })
        .and_then(|first| match first {
            AMQPValue::FieldTable(t) => header_str(Some(&t), "queue"),
            _ => None,
        });
    let source = match queue.as_deref() {
        Some(q) if q == topology.fanout_queue() => Some("fanout".to_owned()),
        Some(q) if q == topology.delivery_queue() => Some("delivery".to_owned()),
        _ => None,
    };
    (
        source,
        "the queue's delivery limit was reached (poison message)".to_owned(),
    )
}

/// Prints up to `limit` parked messages without removing them.
pub async fn list(url: &str, topology: &Topology, limit: usize) -> anyhow::Result<()> {
    let connection = aioka_queue::connect(url, "aioka-cli").await?;
    let channel = connection.create_channel().await?;
    let mut shown = 0;
    while shown < limit {
        let Some(message) = channel
            .basic_get(
                topology.parking_queue().as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .context("reading the parking queue")?
        else {
            break;
        };
        let (source, reason) = origin(topology, &message);
        let props = &message.delivery.properties;
        println!(
            "{}",
            json!({
                "source": source,
                "reason": reason,
                "routing_key": header_str(props.headers().as_ref(), ORIGINAL_KEY_HEADER),
                "message_id": props.message_id().as_ref().map(|m| m.as_str()),
                "body": String::from_utf8_lossy(&message.delivery.data),
            })
        );
        shown += 1;
    }
    // Unacknowledged messages go back to the queue when the channel closes.
    connection.close(200, "listed".into()).await?;
    eprintln!("{shown} parked message(s) shown");
    Ok(())
}

/// Sends up to `limit` parked messages back to where they came from. A message whose origin
/// is unknown stays parked.
pub async fn replay(url: &str, topology: &Topology, limit: usize) -> anyhow::Result<()> {
    let connection = aioka_queue::connect(url, "aioka-cli").await?;
    let publisher = Publisher::new(&connection).await?;
    let channel = connection.create_channel().await?;
    let (mut replayed, mut kept) = (0, 0);
    for _ in 0..limit {
        let Some(message) = channel
            .basic_get(
                topology.parking_queue().as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        else {
            break;
        };
        let (source, _) = origin(topology, &message);
        let props = &message.delivery.properties;
        let destination = match source.as_deref() {
            // Parked by fanout, the original key is in a header; dead-lettered by the broker,
            // the message kept its own routing key.
            Some("fanout") => Some((
                topology.events_exchange(),
                header_str(props.headers().as_ref(), ORIGINAL_KEY_HEADER)
                    .unwrap_or_else(|| message.delivery.routing_key.as_str().to_owned()),
            )),
            // A task goes back to its webhook's shard; one that does not parse, to shard 0,
            // whose consumer parks it again.
            Some("delivery") => Some(
                match aioka_core::messages::Task::from_bytes(&message.delivery.data) {
                    Ok(aioka_core::messages::Task::V1(task)) => {
                        topology.task_route(task.webhook_id)
                    }
                    // Every webhook of a batch is in one shard.
                    Ok(aioka_core::messages::Task::V2(batch)) => match batch.webhooks.first() {
                        Some(webhook) => topology.task_route(*webhook),
                        None => (topology.deliveries_exchange(), DELIVERY_KEY.to_owned()),
                    },
                    Err(_) => (topology.deliveries_exchange(), DELIVERY_KEY.to_owned()),
                },
            ),
            _ => None,
        };
        let Some((exchange, key)) = destination else {
            kept += 1;
            continue;
        };
        let mut headers = props.headers().clone().unwrap_or_default();
        let cleaned: FieldTable = {
            let mut t = FieldTable::default();
            for (k, v) in headers.inner() {
                if !k.as_str().starts_with("x-aioka-park") && k.as_str() != "x-death" {
                    t.insert(k.clone(), v.clone());
                }
            }
            t
        };
        headers = cleaned;
        publisher
            .publish(
                &exchange,
                &key,
                &message.delivery.data,
                props.clone().with_headers(headers),
            )
            .await
            .with_context(|| format!("republishing to {exchange}"))?;
        message.delivery.ack(BasicAckOptions::default()).await?;
        replayed += 1;
    }
    connection.close(200, "replayed".into()).await?;
    eprintln!("{replayed} replayed, {kept} of unknown origin left parked");
    Ok(())
}

/// Deletes every parked message (after they have been read, or judged worthless).
pub async fn purge(url: &str, topology: &Topology) -> anyhow::Result<()> {
    let connection = aioka_queue::connect(url, "aioka-cli").await?;
    let channel = connection.create_channel().await?;
    let purged = channel
        .queue_purge(
            topology.parking_queue().as_str().into(),
            aioka_queue::lapin::options::QueuePurgeOptions::default(),
        )
        .await
        .context("purging the parking queue")?;
    connection.close(200, "purged".into()).await?;
    eprintln!("{purged} parked message(s) deleted");
    Ok(())
}
