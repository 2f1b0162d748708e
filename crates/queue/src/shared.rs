//! A publisher that reconnects: the gateway publishes from request handlers and must survive
//! a broker restart without restarting itself.

use lapin::{BasicProperties, Connection};
use tokio::sync::Mutex;

use crate::{Publisher, QueueError, Topology, connect};

/// A lazily connected, self-healing publisher. The first publish after a broken connection
/// reconnects and re-declares the topology.
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
        self.topology.declare(publisher.channel()).await?;
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

    /// Publishes several messages and waits for every confirm.
    pub async fn publish_all(
        &self,
        messages: Vec<(String, String, Vec<u8>, BasicProperties)>,
    ) -> Result<(), QueueError> {
        let publisher = self.get().await?;
        let mut pending = Vec::with_capacity(messages.len());
        let mut result = Ok(());
        for (exchange, key, body, props) in messages {
            match publisher.start(&exchange, &key, &body, props).await {
                Ok(p) => pending.push(p),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let confirmed = Publisher::confirm_all(pending).await;
        let result = result.and(confirmed);
        if matches!(result, Err(QueueError::Amqp(_))) {
            *self.live.lock().await = None;
        }
        result
    }
}
