//! A publisher that reconnects: the gateway publishes from request handlers and must survive
//! a broker restart without restarting itself.

use futures_util::future::join_all;
use lapin::{BasicProperties, Connection};
use tokio::sync::Mutex;

use crate::{Publisher, QueueError, Topology, connect};

/// A lazily connected, self-healing publisher. The first publish after a broken connection
/// reconnects and re-declares the exchanges (only those: the gateway's broker user may
/// configure nothing else; fanout and delivery declare the queues).
#[derive(Debug)]
pub struct SharedPublisher {
    url: String,
    name: String,
    topology: Topology,
    live: Mutex<Option<(Connection, Publisher)>>,
}

impl SharedPublisher {
    pub fn new(url: &str, name: &str, topology: Topology) -> Self {
        Self {
            url: url.to_owned(),
            name: name.to_owned(),
            topology,
            live: Mutex::new(None),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// A connected publisher, connecting (and declaring the topology) if needed.
    pub async fn get(&self) -> Result<Publisher, QueueError> {
        let mut live = self.live.lock().await;
        if let Some((connection, publisher)) = live.as_ref()
            && connection.status().connected()
            && publisher.channel().status().connected()
        {
            return Ok(publisher.clone());
        }
        *live = None;
        let connection = connect(&self.url, &self.name).await?;
        let publisher = Publisher::new(&connection).await?;
        self.topology.declare_exchanges(publisher.channel()).await?;
        *live = Some((connection, publisher.clone()));
        Ok(publisher)
    }

    /// Whether a connection is up now (for readiness).
    pub async fn is_connected(&self) -> bool {
        self.get().await.is_ok()
    }

    /// Publishes and waits for the confirm; a broken connection is dropped so the next call
    /// reconnects.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), QueueError> {
        let publisher = self.get().await?;
        let result = publisher
            .publish(exchange, routing_key, body, properties)
            .await;
        if matches!(result, Err(QueueError::Amqp(_))) {
            *self.live.lock().await = None;
        }
        result
    }

    /// Publishes several messages and waits for every confirm, telling what became of each
    /// (in the order given): a batch can succeed in part, and the caller must know which
    /// messages the broker holds. A broken connection is dropped so the next call reconnects.
    /// `Err` only when no publisher could be had (nothing was sent).
    pub async fn publish_each(
        &self,
        messages: Vec<(String, String, Vec<u8>, BasicProperties)>,
    ) -> Result<Vec<Published>, QueueError> {
        let publisher = self.get().await?;
        let total = messages.len();
        let mut pending = Vec::with_capacity(total);
        for (exchange, key, body, props) in messages {
            match publisher.start(&exchange, &key, &body, props).await {
                Ok(p) => pending.push(p),
                Err(e) => {
                    tracing::warn!(error = %e, "publish failed; the rest of the batch is not sent");
                    break;
                }
            }
        }
        let mut outcomes: Vec<Published> = join_all(pending.into_iter().map(|p| async {
            match p.confirmed().await {
                Ok(()) => Published::Confirmed,
                Err(e) => Published::NotConfirmed(e),
            }
        }))
        .await;
        let broken = outcomes.len() < total
            || outcomes
                .iter()
                .any(|o| matches!(o, Published::NotConfirmed(QueueError::Amqp(_))));
        if broken {
            *self.live.lock().await = None;
        }
        outcomes.resize_with(total, || Published::NotStarted);
        Ok(outcomes)
    }
}

/// What became of one message of a batch ([`SharedPublisher::publish_each`]).
#[derive(Debug)]
pub enum Published {
    /// The broker confirmed it: it is stored.
    Confirmed,
    /// Handed over, but not confirmed: refused (a nack, or unroutable), or the channel failed
    /// before its confirm came, in which case the broker may hold it anyway.
    NotConfirmed(QueueError),
    /// Never handed to the broker (the channel failed before it).
    NotStarted,
}

impl Published {
    /// Whether the broker may hold the message (and so its consumer may act on it).
    pub fn may_be_stored(&self) -> bool {
        match self {
            Published::Confirmed | Published::NotConfirmed(QueueError::Amqp(_)) => true,
            Published::NotConfirmed(_) | Published::NotStarted => false,
        }
    }
}
