//! Connecting, and publishing with confirms.

use futures_util::future::try_join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use lapin::{Confirmation, PublisherConfirm};

/// A broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("no RabbitMQ node accepted a connection within 5 s")]
    ConnectTimeout,
    #[error("RabbitMQ refused the message (nack); it was not stored")]
    Nacked,
    #[error("no queue is bound for exchange '{exchange}' and routing key '{routing_key}'")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
}

/// How long one node may take to accept a connection before the next is tried.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens a connection named `name` (shown in the broker's connection list) to one of the
/// nodes `urls` names: one AMQP URL, or several separated by commas (the nodes of one
/// cluster). Each call starts at the next node in turn, so a process's connections spread
/// over the nodes and a reconnect after a node went away tries another first; nodes that
/// refuse or time out are skipped, and the error is the last node's. Each process starts
/// its turns at a random node: pods started with the same list do not all put their first
/// connection on the first node (scripts/chaos --cluster found node 3 of 3 holding none of
/// the services' connections when every process started at node 1).
pub async fn connect(urls: &str, name: &str) -> Result<Connection, QueueError> {
    static TURN: std::sync::OnceLock<std::sync::atomic::AtomicUsize> = std::sync::OnceLock::new();
    let nodes = split_urls(urls);
    let start = TURN
        .get_or_init(|| {
            use std::hash::BuildHasher;
            // A random seed without a dependency: the standard library's hasher keys.
            let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
            std::sync::atomic::AtomicUsize::new(seed as usize % 1024)
        })
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut last = None;
    for i in 0..nodes.len().max(1) {
        let url = nodes
            .get((start + i) % nodes.len().max(1))
            .copied()
            .unwrap_or(urls);
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties)).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(e)) => {
                tracing::debug!(node = %aioka_core::secret::redact_url(url), error = %e, "broker node refused; trying the next");
                last = Some(QueueError::Amqp(e));
            }
            Err(_) => {
                tracing::debug!(node = %aioka_core::secret::redact_url(url), "broker node timed out; trying the next");
                last = Some(QueueError::ConnectTimeout);
            }
        }
    }
    Err(last.unwrap_or(QueueError::ConnectTimeout))
}

/// The URLs of a comma-separated list, trimmed, empty entries dropped.
pub fn split_urls(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Properties of every message we publish: persistent JSON, with its id and trace context.
pub fn persistent_json(message_id: Option<&str>, headers: FieldTable) -> BasicProperties {
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_headers(headers);
    if let Some(id) = message_id {
        props = props.with_message_id(id.into());
    }
    if let Ok(since_epoch) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        props = props.with_timestamp(since_epoch.as_secs());
    }
    props
}

/// A header's value as text, whatever string type the publisher used.
pub fn header_str(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A channel in confirm mode. Cheap to clone; publishes from many tasks interleave safely.
#[derive(Clone, Debug)]
pub struct Publisher {
    channel: Channel,
}

/// A message handed to the broker whose confirm has not been awaited yet.
#[derive(Debug)]
pub struct Pending {
    confirm: PublisherConfirm,
    exchange: String,
    routing_key: String,
}

impl Pending {
    /// Waits for the broker's confirm: `Ok` only for an ack of a routed message.
    pub async fn confirmed(self) -> Result<(), QueueError> {
        match self.confirm.await? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) | Confirmation::Nack(Some(_returned)) => {
                Err(QueueError::Unroutable {
                    exchange: self.exchange,
                    routing_key: self.routing_key,
                })
            }
            Confirmation::Nack(None) => Err(QueueError::Nacked),
            // We always select confirm mode; reaching this is a bug worth failing on.
            Confirmation::NotRequested => Err(QueueError::Nacked),
        }
    }
}

impl Publisher {
    pub async fn new(connection: &Connection) -> Result<Self, QueueError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Hands a message to the broker, `mandatory`, without waiting for its confirm. Await
    /// [`Pending::confirmed`] (or use [`Publisher::confirm_all`]) before acting on it.
    pub async fn start(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Pending, QueueError> {
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await?;
        Ok(Pending {
            confirm,
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        })
    }

    /// Publishes one message and waits until the broker has confirmed it.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), QueueError> {
        self.start(exchange, routing_key, body, properties)
            .await?
            .confirmed()
            .await
    }

    /// Waits for every confirm of a batch; the first failure fails the batch (the caller
    /// retries it as a whole, and consumers are idempotent).
    pub async fn confirm_all(pending: Vec<Pending>) -> Result<(), QueueError> {
        try_join_all(pending.into_iter().map(Pending::confirmed)).await?;
        Ok(())
    }
}
