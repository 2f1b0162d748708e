//! Change notices for webhooks (PostgreSQL LISTEN/NOTIFY), so delivery caches drop an entry
//! within moments of a delete, disable, re-enable or URL change.
//! <https://www.postgresql.org/docs/15/sql-notify.html>

use aioka_core::WebhookId;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::{DatabaseSettings, StoreError};

/// The channel the `webhooks_changed` trigger notifies.
pub const WEBHOOK_CHANGED: &str = "aioka_webhook_changed";

/// Listens on a dedicated connection. The receiver yields the id of each changed webhook and
/// ends when the connection ends: the caller must then assume it missed notices.
pub async fn listen_webhook_changes(
    settings: &DatabaseSettings,
) -> Result<mpsc::UnboundedReceiver<WebhookId>, StoreError> {
    let mut config: tokio_postgres::Config = settings
        .url
        .parse()
        .map_err(|e| StoreError::Config(format!("database.url is not valid: {e}")))?;
    config.connect_timeout(settings.connect_timeout);
    config.application_name("aioka-listener");
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if let Ok(uuid) = n.payload().parse::<uuid::Uuid>()
                        && tx.send(WebhookId::from_uuid(uuid)).is_err()
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "webhook change listener lost its connection");
                    break;
                }
            }
        }
        let _ = ended_tx.send(());
        // Dropping `tx` here ends the receiver: the caller learns it may have missed notices.
    });
    client
        .batch_execute(&format!("LISTEN {WEBHOOK_CHANGED}"))
        .await?;
    // The connection lives as long as its client: keep the client until the loop ends.
    tokio::spawn(async move {
        let _ = ended_rx.await;
        drop(client);
    });
    Ok(rx)
}
