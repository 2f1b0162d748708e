//! Webhooks: registration, listing, deletion, and the limits that guard them.

use aioka_core::event::EventType;
use aioka_core::{ApiKeyId, DeliveryOrder, EncryptionKey, WebhookId, WebhookSecret};
use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use crate::{Store, StoreError};

/// A webhook to register. The secret is sealed here, bound to the webhook's id.
#[derive(Debug)]
pub struct NewWebhook<'a> {
    pub id: WebhookId,
    pub owner: ApiKeyId,
    pub url: &'a str,
    pub events: &'a [EventType],
    pub secret: &'a WebhookSecret,
    pub ordering: DeliveryOrder,
}

/// A stored webhook as the customer API shows it: never with its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    pub id: WebhookId,
    pub owner: ApiKeyId,
    pub url: String,
    pub events: Vec<EventType>,
    pub ordering: DeliveryOrder,
    pub is_active: bool,
    pub consecutive_failures: u32,
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Why a webhook could not be written, for the caller to explain.
#[derive(Debug, thiserror::Error)]
pub enum WebhookWriteError {
    #[error("this API key already has {0} webhooks, the most allowed")]
    LimitReached(u32),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for WebhookWriteError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for WebhookWriteError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Store(e.into())
    }
}

pub(crate) const COLUMNS: &str = "id, api_key_id, url, events, ordering, is_active, \
     consecutive_failures, disabled_reason, disabled_at, created_at, updated_at";

pub(crate) fn events_from_db(texts: Vec<String>) -> Result<Vec<EventType>, StoreError> {
    texts
        .iter()
        .map(|t| {
            t.parse()
                .map_err(|_| StoreError::Corrupt(format!("event type {t}")))
        })
        .collect()
}

pub(crate) fn events_to_db(events: &[EventType]) -> Vec<&'static str> {
    events.iter().map(|e| e.as_str()).collect()
}

pub(crate) fn ordering_from_db(text: &str) -> Result<DeliveryOrder, StoreError> {
    DeliveryOrder::from_name(text).ok_or_else(|| StoreError::Corrupt(format!("ordering {text}")))
}

pub(crate) fn from_row(row: &Row) -> Result<WebhookRecord, StoreError> {
    let failures: i32 = row.try_get("consecutive_failures")?;
    Ok(WebhookRecord {
        id: WebhookId::from_uuid(row.try_get("id")?),
        owner: ApiKeyId::from_uuid(row.try_get("api_key_id")?),
        url: row.try_get("url")?,
        events: events_from_db(row.try_get("events")?)?,
        ordering: ordering_from_db(row.try_get("ordering")?)?,
        is_active: row.try_get("is_active")?,
        consecutive_failures: u32::try_from(failures).unwrap_or(0),
        disabled_reason: row.try_get("disabled_reason")?,
        disabled_at: row.try_get("disabled_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    /// Registers a webhook unless its owner already has `max_per_key`. The owner's key row is
    /// locked for the count and the insert, so concurrent registrations cannot overshoot.
    #[tracing::instrument(skip_all, fields(webhook_id = %new.id, key_id = %new.owner))]
    pub async fn insert_webhook(
        &self,
        new: &NewWebhook<'_>,
        key: &EncryptionKey,
        max_per_key: u32,
    ) -> Result<WebhookRecord, WebhookWriteError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE",
            &[&new.owner.as_uuid()],
        )
        .await?;
        let count: i64 = tx
            .query_one(
                "SELECT count(*) FROM webhooks WHERE api_key_id = $1 AND deleted_at IS NULL",
                &[&new.owner.as_uuid()],
            )
            .await?
            .try_get(0)?;
        if count >= i64::from(max_per_key) {
            return Err(WebhookWriteError::LimitReached(max_per_key));
        }
        let sealed = key.seal_secret(new.secret, new.id.as_uuid().as_bytes());
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO webhooks (id, api_key_id, url, events, secret_sealed, ordering)
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
                ),
                &[
                    &new.id.as_uuid(),
                    &new.owner.as_uuid(),
                    &new.url,
                    &events_to_db(new.events),
                    &sealed,
                    &new.ordering.as_str(),
                ],
            )
            .await?;
        let record = from_row(&row)?;
        tx.commit().await?;
        Ok(record)
    }

    /// The owner's webhooks, oldest first.
    #[tracing::instrument(skip_all, fields(key_id = %owner))]
    pub async fn list_webhooks(&self, owner: ApiKeyId) -> Result<Vec<WebhookRecord>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM webhooks
                     WHERE api_key_id = $1 AND deleted_at IS NULL ORDER BY id"
                ),
                &[&owner.as_uuid()],
            )
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// One of the owner's webhooks; `None` if it does not exist, is deleted, or is another's.
    #[tracing::instrument(skip_all, fields(key_id = %owner, webhook_id = %id))]
    pub async fn get_webhook(
        &self,
        owner: ApiKeyId,
        id: WebhookId,
    ) -> Result<Option<WebhookRecord>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM webhooks
                     WHERE id = $1 AND api_key_id = $2 AND deleted_at IS NULL"
                ),
                &[&id.as_uuid(), &owner.as_uuid()],
            )
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Deletes one of the owner's webhooks; `false` if there was nothing to delete.
    #[tracing::instrument(skip_all, fields(key_id = %owner, webhook_id = %id))]
    pub async fn delete_webhook(&self, owner: ApiKeyId, id: WebhookId) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "UPDATE webhooks SET deleted_at = now(), is_active = false, updated_at = now()
                 WHERE id = $1 AND api_key_id = $2 AND deleted_at IS NULL",
                &[&id.as_uuid(), &owner.as_uuid()],
            )
            .await?;
        Ok(n == 1)
    }

    /// The sealed secret of a webhook, for tests and the delivery service.
    #[tracing::instrument(skip_all, fields(webhook_id = %id))]
    pub async fn webhook_secret_sealed(
        &self,
        id: WebhookId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT secret_sealed FROM webhooks WHERE id = $1",
                &[&id.as_uuid()],
            )
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }
}

impl Store {
    /// Gives webhook `id` of `owner` a new secret, sealed here bound to the webhook's id, and
    /// keeps the one it replaces for `overlap` (none when zero): the delivery service signs
    /// with both until then. Returns when the old secret stops being used (`None`: at once),
    /// or `Ok(None)` in the outer option if the webhook is not the owner's.
    #[tracing::instrument(skip_all, fields(key_id = %owner, webhook_id = %id))]
    pub async fn rotate_secret(
        &self,
        owner: ApiKeyId,
        id: WebhookId,
        secret: &WebhookSecret,
        key: &EncryptionKey,
        overlap: std::time::Duration,
    ) -> Result<Option<Option<DateTime<Utc>>>, StoreError> {
        let sealed = key.seal_secret(secret, id.as_uuid().as_bytes());
        let overlap_ms = i64::try_from(overlap.as_millis()).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "UPDATE webhooks SET
                     previous_secret_sealed = CASE WHEN $4::int8 > 0 THEN secret_sealed END,
                     previous_secret_expires_at =
                         CASE WHEN $4::int8 > 0
                              THEN now() + make_interval(secs => $4::int8 / 1000.0) END,
                     secret_sealed = $3,
                     updated_at = now()
                 WHERE id = $1 AND api_key_id = $2 AND deleted_at IS NULL
                 RETURNING previous_secret_expires_at",
                &[&id.as_uuid(), &owner.as_uuid(), &sealed, &overlap_ms],
            )
            .await?;
        row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
    }
}

/// A change to a webhook: only the fields given change.
#[derive(Debug, Default)]
pub struct WebhookPatch<'a> {
    pub url: Option<&'a str>,
    pub events: Option<&'a [EventType]>,
    pub is_active: Option<bool>,
    pub ordering: Option<DeliveryOrder>,
}

/// Why a webhook shown as disabled by its owner says so.
const DISABLED_BY_CUSTOMER: &str = "disabled by the customer";

impl Store {
    /// Applies `patch` to one of the owner's webhooks. Enabling resets the failure count and
    /// clears the disable reason (and enabling a disabled one records when, for recovery);
    /// disabling records that the customer did it.
    #[tracing::instrument(skip_all, fields(key_id = %owner, webhook_id = %id))]
    pub async fn update_webhook(
        &self,
        owner: ApiKeyId,
        id: WebhookId,
        patch: &WebhookPatch<'_>,
    ) -> Result<Option<WebhookRecord>, StoreError> {
        let client = self.pool.get().await?;
        let events = patch.events.map(events_to_db);
        let row = client
            .query_opt(
                &format!(
                    "UPDATE webhooks SET
                         url = COALESCE($3, url),
                         events = COALESCE($4, events),
                         ordering = COALESCE($7, ordering),
                         is_active = COALESCE($5, is_active),
                         consecutive_failures = CASE WHEN $5 THEN 0 ELSE consecutive_failures END,
                         failure_times = CASE WHEN $5 THEN '{{}}' ELSE failure_times END,
                         failures_counted_since = CASE WHEN $5 THEN now()
                                                       ELSE failures_counted_since END,
                         disabled_reason = CASE WHEN $5 THEN NULL
                                                WHEN NOT $5 AND is_active THEN $6
                                                ELSE disabled_reason END,
                         disabled_at = CASE WHEN $5 THEN NULL
                                            WHEN NOT $5 AND is_active THEN now()
                                            ELSE disabled_at END,
                         enabled_at = CASE WHEN $5 AND NOT is_active THEN now()
                                           ELSE enabled_at END,
                         updated_at = now()
                     WHERE id = $1 AND api_key_id = $2 AND deleted_at IS NULL
                     RETURNING {COLUMNS}"
                ),
                &[
                    &id.as_uuid(),
                    &owner.as_uuid(),
                    &patch.url,
                    &events,
                    &patch.is_active,
                    &DISABLED_BY_CUSTOMER,
                    &patch.ordering.map(DeliveryOrder::as_str),
                ],
            )
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The owner's active webhooks (for test events sent to all of them).
    #[tracing::instrument(skip_all, fields(key_id = %owner))]
    pub async fn active_webhooks(&self, owner: ApiKeyId) -> Result<Vec<WebhookRecord>, StoreError> {
        Ok(self
            .list_webhooks(owner)
            .await?
            .into_iter()
            .filter(|w| w.is_active)
            .collect())
    }
}
