//! Read-only audits of the delivery log, for the fault harness (`aioka-bench account`).
//!
//! Whole-table reads, meant for a test database of a few thousand webhooks and events: the
//! harness compares what the log says with what receivers saw, so it needs every row, in an
//! order that does not depend on commit order. No service calls these.

use aioka_core::{DeliveryId, EventId, WebhookId};
use chrono::{DateTime, Utc};

use crate::{DeliveryStatus, Store, StoreError};

/// One webhook's state as the delivery service left it.
#[derive(Debug, Clone)]
pub struct WebhookAudit {
    pub id: WebhookId,
    pub url: String,
    pub is_active: bool,
    pub consecutive_failures: i32,
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// One event's fan-out, as far as it went.
#[derive(Debug, Clone)]
pub struct EventAudit {
    pub id: EventId,
    pub fanout_tasks: i64,
    pub fanned_out_at: Option<DateTime<Utc>>,
}

/// One delivery row: its pair, where it ended, and why it was skipped if it was.
#[derive(Debug, Clone)]
pub struct DeliveryAudit {
    pub id: DeliveryId,
    pub event: EventId,
    pub webhook: WebhookId,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub skip_reason: Option<String>,
}

/// One recorded attempt, with the webhook of its delivery.
#[derive(Debug, Clone)]
pub struct AttemptAudit {
    pub delivery: DeliveryId,
    pub webhook: WebhookId,
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub error_kind: Option<String>,
    /// When its row was written (under the webhook's lock): the order the disable rule saw it.
    pub recorded_at: Option<DateTime<Utc>>,
}

impl AttemptAudit {
    /// A 2xx answer; anything else (another status, a timeout, a refused connection) failed.
    pub fn succeeded(&self) -> bool {
        matches!(self.status_code, Some(200..=299))
    }
}

impl Store {
    /// Every webhook that is not deleted, in id order.
    #[tracing::instrument(skip_all)]
    pub async fn audit_webhooks(&self) -> Result<Vec<WebhookAudit>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, url, is_active, consecutive_failures, disabled_reason, disabled_at
                 FROM webhooks WHERE deleted_at IS NULL ORDER BY id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(WebhookAudit {
                    id: WebhookId::from_uuid(r.try_get(0)?),
                    url: r.try_get(1)?,
                    is_active: r.try_get(2)?,
                    consecutive_failures: r.try_get(3)?,
                    disabled_reason: r.try_get(4)?,
                    disabled_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Every event, with how many tasks its fan-out published and when it ended.
    #[tracing::instrument(skip_all)]
    pub async fn audit_events(&self) -> Result<Vec<EventAudit>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query("SELECT id, fanout_tasks, fanned_out_at FROM events", &[])
            .await?;
        rows.iter()
            .map(|r| {
                Ok(EventAudit {
                    id: EventId::from_uuid(r.try_get(0)?),
                    fanout_tasks: r.try_get(1)?,
                    fanned_out_at: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// Every delivery row.
    #[tracing::instrument(skip_all)]
    pub async fn audit_deliveries(&self) -> Result<Vec<DeliveryAudit>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, event_id, webhook_id, status, attempts, skip_reason FROM deliveries",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(DeliveryAudit {
                    id: DeliveryId::from_uuid(r.try_get(0)?),
                    event: EventId::from_uuid(r.try_get(1)?),
                    webhook: WebhookId::from_uuid(r.try_get(2)?),
                    status: DeliveryStatus::parse(r.try_get(3)?)?,
                    attempts: r.try_get(4)?,
                    skip_reason: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Every recorded attempt, per webhook in attempt-time order: (webhook, attempted_at,
    /// delivery, attempt). That is the order the disable rule is defined in, whatever order
    /// the records were committed in.
    #[tracing::instrument(skip_all)]
    pub async fn audit_attempts(&self) -> Result<Vec<AttemptAudit>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT a.delivery_id, d.webhook_id, a.attempt, a.attempted_at, a.status_code,
                        a.error_kind, a.recorded_at
                 FROM delivery_attempts a
                 JOIN deliveries d ON d.id = a.delivery_id
                                  AND d.event_received_at = a.event_received_at
                 ORDER BY d.webhook_id, a.attempted_at, a.delivery_id, a.attempt",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AttemptAudit {
                    delivery: DeliveryId::from_uuid(r.try_get(0)?),
                    webhook: WebhookId::from_uuid(r.try_get(1)?),
                    attempt: r.try_get(2)?,
                    attempted_at: r.try_get(3)?,
                    status_code: r.try_get(4)?,
                    error_kind: r.try_get(5)?,
                    recorded_at: r.try_get(6)?,
                })
            })
            .collect()
    }
}
