//! Ordered delivery (`"ordering": "fifo"`, V15): an ordered webhook's deliveries form a line in
//! the order their events were accepted (`accepted_at`, the gateway's stamp, or `received_at`
//! for an event published straight to the broker; then the event id), kept in `fifo_line`.
//! Only the head of the line, its earliest pending delivery, is sent; when it ends (succeeded,
//! failed after its last retry, skipped) the delivery service hands the turn to the next
//! ([`Store::next_in_line`]). Test events stand outside the line.

use std::time::Duration;

use aioka_core::messages::DeliveryTask;
use aioka_core::{EventId, WebhookId};

use crate::{Store, StoreError};

/// Whose turn it is, for a task of an ordered webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Nothing before it is pending: send it.
    Mine,
    /// An earlier delivery of the webhook is pending: it hands the turn on when it ends, so
    /// this copy can go.
    AfterDelivery,
    /// An earlier event of the webhook's types may not be in line yet: it is still being
    /// fanned out short of the webhook, or this event was stored so recently that one accepted
    /// before it may still be on its way to fan-out. Ask again shortly.
    AfterFanout,
}

/// An event's place in the order (`e` the events row).
pub(crate) const ACCEPTED: &str = "COALESCE(e.accepted_at, e.received_at)";

/// The webhook's line entries whose delivery is still pending (`$1` the webhook).
const IN_LINE: &str = "
    SELECT l.delivery_id, l.accepted_at, l.event_id, l.event_received_at
    FROM fifo_line l
    JOIN deliveries p ON p.id = l.delivery_id AND p.event_received_at = l.event_received_at
    WHERE l.webhook_id = $1 AND p.status = 'pending'";

impl Store {
    /// Whether the delivery of `event` to the ordered `webhook` may be sent now. `settle`:
    /// how long after an event is stored every event accepted before it is taken to be
    /// stored too (fan-out takes events in the order they were accepted, a few at a time).
    #[tracing::instrument(skip_all, fields(webhook_id = %webhook, event_id = %event))]
    pub async fn fifo_turn(
        &self,
        webhook: WebhookId,
        event: EventId,
        settle: Duration,
    ) -> Result<Turn, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(&format!(
                "WITH me AS (SELECT {ACCEPTED} AS at, e.received_at FROM events e WHERE e.id = $2),
                      line AS ({IN_LINE})
                 SELECT
                   EXISTS (
                     SELECT 1 FROM line, me
                     WHERE (line.accepted_at, line.event_id) < (me.at, $2)),
                   EXISTS (SELECT 1 FROM me
                           WHERE me.received_at > now() - make_interval(secs => $3::float8))
                   OR EXISTS (
                     SELECT 1 FROM events e, me, webhooks w
                     WHERE w.id = $1 AND e.fanned_out_at IS NULL
                       AND ({ACCEPTED}, e.id) < (me.at, $2)
                       AND e.source <> 'test' AND e.event_type = ANY(w.events)
                       AND (e.fanout_cursor IS NULL OR e.fanout_cursor < $1))"
            ))
            .await?;
        let row = client
            .query_one(
                &statement,
                &[&webhook.as_uuid(), &event.as_uuid(), &settle.as_secs_f64()],
            )
            .await?;
        Ok(if row.try_get(0)? {
            Turn::AfterDelivery
        } else if row.try_get(1)? {
            Turn::AfterFanout
        } else {
            Turn::Mine
        })
    }

    /// After a delivery of `webhook` ended: its entry (and any other of a delivery no longer
    /// pending) leaves the line, and the new head is returned if it waits for the start of a
    /// series (its first attempt, or a re-send's); its due time moves to now (so the retry
    /// sweep publishes it again if this task is lost). A head already in its series carries on
    /// by its own retries. `None` too for an unordered webhook, which has no line. Untagged.
    #[tracing::instrument(skip_all, fields(webhook_id = %webhook))]
    pub async fn next_in_line(
        &self,
        webhook: WebhookId,
    ) -> Result<Option<DeliveryTask>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(&format!(
                "WITH line AS ({IN_LINE}),
                 gone AS (
                     DELETE FROM fifo_line l
                     WHERE l.webhook_id = $1
                       AND l.delivery_id NOT IN (SELECT delivery_id FROM line)),
                 head AS (
                     SELECT line.delivery_id, line.event_received_at FROM line
                     ORDER BY line.accepted_at, line.event_id
                     LIMIT 1),
                 moved AS (
                     UPDATE deliveries d SET next_attempt_at = now()
                     FROM head
                     WHERE d.id = head.delivery_id AND d.event_received_at = head.event_received_at
                       AND COALESCE(d.series_start, 1) = d.attempts + 1
                     RETURNING d.id, d.event_id, d.attempts, COALESCE(d.series_start, 1))
                 SELECT m.*, e.event_type, e.body
                 FROM moved m JOIN events e ON e.id = m.event_id"
            ))
            .await?;
        let Some(row) = client.query_opt(&statement, &[&webhook.as_uuid()]).await? else {
            return Ok(None);
        };
        crate::deliveries::next_attempt(
            (row.try_get(0)?, row.try_get(1)?, webhook.as_uuid()),
            (row.try_get(4)?, row.try_get(5)?),
            (row.try_get(2)?, row.try_get(3)?),
            false,
        )
        .map(Some)
    }

    /// Puts the deliveries of the stored `event` to the ordered `webhooks` in their lines:
    /// each written pending (due now, for the retry sweep) with its line entry, before its
    /// task is published. Idempotent, as [`Store::insert_pending_deliveries`].
    #[tracing::instrument(skip_all, fields(event_id = %event, count = webhooks.len()))]
    pub async fn insert_in_line(
        &self,
        event: EventId,
        webhooks: &[WebhookId],
    ) -> Result<(), StoreError> {
        self.insert_for_pairs(
            event,
            webhooks,
            &format!(
                "WITH t AS (
                     SELECT t.d, t.w, e.id AS e, e.received_at AS k, {ACCEPTED} AS at
                     FROM unnest($2::uuid[], $3::uuid[]) AS t(d, w)
                     JOIN events e ON e.id = $1),
                 rows AS (
                     INSERT INTO deliveries (id, event_id, webhook_id, status,
                                             next_attempt_at, event_received_at)
                     SELECT d, e, w, 'pending', now(), k FROM t
                     ON CONFLICT (id, event_received_at) DO NOTHING)
                 INSERT INTO fifo_line (webhook_id, accepted_at, event_id, delivery_id,
                                        event_received_at)
                 SELECT w, at, e, d, k FROM t
                 ON CONFLICT DO NOTHING"
            ),
        )
        .await
    }
}
