//! Recovery after an outage (`POST /v1/webhooks/{id}/recover`): what one webhook did not get
//! in a window of events, claimed for re-sending once each, in event order.
//!
//! Two kinds of delivery are recovered, both of the webhook's subscribed types, test events
//! excluded:
//! * a delivery that ended `failed` or `skipped` (it was disabled, say, when its turn came):
//!   claimed as a manual re-send claims it, a new series under the same delivery id;
//! * an event it was never sent: accepted before the webhook was last enabled again
//!   (`enabled_at`, V14), after it was registered, and fanned out past it, with no delivery
//!   row. Fan-out sends nothing to a disabled webhook, so these are the events of its outage;
//!   one accepted after the re-enable was fanned out to it and is never taken here (its first
//!   attempt may still be on its way, and must not be doubled).
//!
//! A claim turns the delivery pending (or creates it pending), so a second recovery of the same
//! window takes nothing twice while the first one's attempts run.

use std::collections::HashMap;

use aioka_core::event::EventType;
use aioka_core::messages::DeliveryTask;
use aioka_core::{ApiKeyId, DeliveryId, EventId, WebhookId};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::webhooks::{events_from_db, events_to_db};
use crate::{DeliveryStatus, ResendError, Store, StoreError};

/// Events read per query while looking for what to recover.
const SCAN_PAGE: i64 = 1_000;

/// What one recovery may take: at most `deliveries` deliveries, after looking at no more than
/// `events` events; the rest is left for a next call from [`Recovered::next_since`].
#[derive(Debug, Clone, Copy)]
pub struct RecoveryLimits {
    pub deliveries: usize,
    pub events: usize,
}

/// One delivery claimed for re-sending, and how to undo the claim if its task cannot be
/// published.
#[derive(Debug, Clone)]
pub struct RecoveredTask {
    /// The attempt to publish, untagged (the caller tags it).
    pub task: DeliveryTask,
    /// The delivery's status before the claim; `None` for an event it was never sent (the
    /// claim created its row).
    pub was: Option<DeliveryStatus>,
    /// The partition key of its row.
    pub(crate) key: DateTime<Utc>,
}

/// What [`Store::claim_recovery`] claimed.
#[derive(Debug, Default)]
pub struct Recovered {
    /// In event order (received, then event id).
    pub tasks: Vec<RecoveredTask>,
    /// Where a next call goes on (`since`), when a limit stopped this one before the window's
    /// end.
    pub next_since: Option<DateTime<Utc>>,
}

impl Recovered {
    /// How many claimed deliveries had ended with `status` (`None`: never sent).
    pub fn count(&self, was: Option<DeliveryStatus>) -> usize {
        self.tasks.iter().filter(|t| t.was == was).count()
    }
}

/// An event of the window as the scan sees it.
struct Seen {
    id: Uuid,
    received_at: DateTime<Utc>,
    /// Its fan-out has gone past this webhook (finished, or its cursor is at or beyond it).
    passed: bool,
}

impl Store {
    /// Claims what `webhook` (the owner's, active) did not get among the events accepted in
    /// `since..until`: its failed and skipped deliveries, and the events it was never sent while
    /// disabled (see the module). Nothing is half-claimed: the claims are one transaction.
    #[tracing::instrument(skip_all, fields(webhook_id = %webhook))]
    pub async fn claim_recovery(
        &self,
        owner: ApiKeyId,
        webhook: WebhookId,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        limits: RecoveryLimits,
    ) -> Result<Recovered, ResendError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT events, created_at, enabled_at, is_active FROM webhooks
                 WHERE id = $1 AND api_key_id = $2 AND deleted_at IS NULL",
                &[&webhook.as_uuid(), &owner.as_uuid()],
            )
            .await?
            .ok_or(ResendError::WebhookNotFound)?;
        if !row.try_get::<_, bool>(3)? {
            return Err(ResendError::WebhookInactive);
        }
        let types = events_to_db(&events_from_db(row.try_get(0)?)?);
        let created_at: DateTime<Utc> = row.try_get(1)?;
        let enabled_at: Option<DateTime<Utc>> = row.try_get(2)?;
        let never_sent = |e: &Seen| {
            e.passed && e.received_at >= created_at && enabled_at.is_some_and(|t| e.received_at < t)
        };
        drop(client);

        let mut wanted: Vec<(Seen, Option<(DeliveryStatus, i32)>)> = Vec::new();
        let mut next_since = None;
        let mut after: Option<(DateTime<Utc>, Uuid)> = None;
        let mut looked = 0usize;
        'scan: loop {
            let page = self
                .scan_events(webhook, &types, since, until, after)
                .await?;
            let full = page.len() as i64 == SCAN_PAGE;
            let ended = self.ended_deliveries(webhook, &page).await?;
            for seen in page {
                if wanted.len() == limits.deliveries || looked == limits.events {
                    next_since = Some(seen.received_at);
                    break 'scan;
                }
                looked += 1;
                after = Some((seen.received_at, seen.id));
                match ended.get(&seen.id) {
                    Some(Some(state)) => {
                        let state = *state;
                        wanted.push((seen, Some(state)));
                    }
                    Some(None) => {}
                    None if never_sent(&seen) => wanted.push((seen, None)),
                    None => {}
                }
            }
            if !full {
                break;
            }
        }
        let tasks = self.claim_wanted(webhook, wanted).await?;
        Ok(Recovered { tasks, next_since })
    }

    /// Up to [`SCAN_PAGE`] events of `types` accepted in `since..until` after `after`, in
    /// (received, id) order, test events excluded.
    async fn scan_events(
        &self,
        webhook: WebhookId,
        types: &[&str],
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        after: Option<(DateTime<Utc>, Uuid)>,
    ) -> Result<Vec<Seen>, StoreError> {
        let client = self.pool.get().await?;
        let (after_at, after_id) = after.unwrap_or((since, Uuid::nil()));
        let rows = client
            .query(
                "SELECT id, received_at, fanned_out_at IS NOT NULL OR fanout_cursor >= $1
                 FROM events
                 WHERE received_at >= $2 AND received_at < $3
                   AND event_type = ANY($4::text[]) AND source <> 'test'
                   AND (received_at, id) > ($5, $6)
                 ORDER BY received_at, id
                 LIMIT $7",
                &[
                    &webhook.as_uuid(),
                    &since,
                    &until,
                    &types,
                    &after_at,
                    &after_id,
                    &SCAN_PAGE,
                ],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Seen {
                    id: r.try_get(0)?,
                    received_at: r.try_get(1)?,
                    passed: r.try_get::<_, Option<bool>>(2)?.unwrap_or(false),
                })
            })
            .collect()
    }

    /// The webhook's deliveries of `events`, by event: `Some((status, attempts))` for one that
    /// ended failed or skipped, `None` for any other (pending or succeeded). An event absent
    /// from the map has no delivery row. Looked up by primary key (the id is derived from the
    /// pair, the partition key is the event's).
    async fn ended_deliveries(
        &self,
        webhook: WebhookId,
        events: &[Seen],
    ) -> Result<HashMap<Uuid, Option<(DeliveryStatus, i32)>>, StoreError> {
        let ids: Vec<Uuid> = events
            .iter()
            .map(|e| DeliveryId::for_pair(EventId::from_uuid(e.id), webhook).as_uuid())
            .collect();
        let keys: Vec<DateTime<Utc>> = events.iter().map(|e| e.received_at).collect();
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT d.event_id, d.status, d.attempts
                 FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, k)
                 JOIN deliveries d ON d.id = u.id AND d.event_received_at = u.k",
                &[&ids, &keys],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let status = DeliveryStatus::parse(r.try_get(1)?)?;
                let ended = if matches!(status, DeliveryStatus::Failed | DeliveryStatus::Skipped) {
                    Some((status, r.try_get(2)?))
                } else {
                    None
                };
                Ok((r.try_get(0)?, ended))
            })
            .collect()
    }

    /// Claims what the scan found, in one transaction: ended deliveries turn pending for a new
    /// series, never-sent ones get a pending row. A delivery another recovery or re-send
    /// claimed in between is left to it. A missing partition is repaired and the claim made
    /// again.
    async fn claim_wanted(
        &self,
        webhook: WebhookId,
        wanted: Vec<(Seen, Option<(DeliveryStatus, i32)>)>,
    ) -> Result<Vec<RecoveredTask>, StoreError> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let (ended, fresh): (Vec<_>, Vec<_>) = wanted.iter().partition(|(_, s)| s.is_some());
        let pair = |e: &Seen| DeliveryId::for_pair(EventId::from_uuid(e.id), webhook).as_uuid();
        let ended_ids: Vec<Uuid> = ended.iter().map(|(e, _)| pair(e)).collect();
        let ended_keys: Vec<DateTime<Utc>> = ended.iter().map(|(e, _)| e.received_at).collect();
        let fresh_ids: Vec<Uuid> = fresh.iter().map(|(e, _)| pair(e)).collect();
        let fresh_events: Vec<Uuid> = fresh.iter().map(|(e, _)| e.id).collect();
        let fresh_keys: Vec<DateTime<Utc>> = fresh.iter().map(|(e, _)| e.received_at).collect();
        let all_events: Vec<Uuid> = wanted.iter().map(|(e, _)| e.id).collect();
        let all_ids: Vec<Uuid> = wanted.iter().map(|(e, _)| pair(e)).collect();
        let all_keys: Vec<DateTime<Utc>> = wanted.iter().map(|(e, _)| e.received_at).collect();
        let (claimed, bodies) = self
            .repairing(&fresh_events, || {
                self.claim_rows(
                    webhook,
                    (&ended_ids, &ended_keys),
                    (&fresh_ids, &fresh_events, &fresh_keys),
                    (&all_ids, &all_events, &all_keys),
                )
            })
            .await?;
        let mut tasks = Vec::with_capacity(claimed.len());
        for (seen, state) in wanted {
            let delivery = pair(&seen);
            let Some(&attempts) = claimed.get(&delivery) else {
                continue;
            };
            let Some((event_type, body)) = bodies.get(&seen.id) else {
                continue;
            };
            let attempt = u32::try_from(attempts).unwrap_or(0) + 1;
            tasks.push(RecoveredTask {
                task: DeliveryTask {
                    delivery_id: DeliveryId::from_uuid(delivery),
                    event_id: EventId::from_uuid(seen.id),
                    webhook_id: webhook,
                    event_type: *event_type,
                    body: body.clone(),
                    attempt,
                    series_start: attempt,
                    auth: None,
                    test: false,
                },
                was: state.map(|(status, _)| status),
                key: seen.received_at,
            });
        }
        Ok(tasks)
    }

    /// The claim's transaction: returns the attempts made so far of each delivery it claimed,
    /// and the type and body of each event.
    #[allow(clippy::type_complexity)]
    async fn claim_rows(
        &self,
        webhook: WebhookId,
        (ended_ids, ended_keys): (&[Uuid], &[DateTime<Utc>]),
        (fresh_ids, fresh_events, fresh_keys): (&[Uuid], &[Uuid], &[DateTime<Utc>]),
        (all_ids, all_events, all_keys): (&[Uuid], &[Uuid], &[DateTime<Utc>]),
    ) -> Result<(HashMap<Uuid, i32>, HashMap<Uuid, (EventType, String)>), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut claimed = HashMap::new();
        for row in tx
            .query(
                "UPDATE deliveries d
                 SET status = 'pending', next_attempt_at = now(), skip_reason = NULL,
                     claimed_attempt = NULL, series_start = d.attempts + 1, updated_at = now()
                 FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, k)
                 WHERE d.id = u.id AND d.event_received_at = u.k
                   AND d.status IN ('failed', 'skipped')
                 RETURNING d.id, d.attempts",
                &[&ended_ids, &ended_keys],
            )
            .await?
        {
            claimed.insert(row.try_get(0)?, row.try_get(1)?);
        }
        // next_attempt_at set: a task the broker loses is published again by the retry sweep.
        for row in tx
            .query(
                "INSERT INTO deliveries (id, event_id, webhook_id, status, next_attempt_at,
                                         series_start, event_received_at)
                 SELECT u.id, u.e, $4, 'pending', now(), 1, u.k
                 FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[]) AS u(id, e, k)
                 ON CONFLICT (id, event_received_at) DO NOTHING
                 RETURNING id, attempts",
                &[&fresh_ids, &fresh_events, &fresh_keys, &webhook.as_uuid()],
            )
            .await?
        {
            claimed.insert(row.try_get(0)?, row.try_get(1)?);
        }
        // An ordered webhook's recovered deliveries take their places in its line (a place
        // whose delivery another call left ended is ignored, then removed).
        tx.execute(
            &format!(
                "INSERT INTO fifo_line (webhook_id, accepted_at, event_id, delivery_id,
                                        event_received_at)
                 SELECT $1, {}, u.e, u.id, u.k
                 FROM unnest($2::uuid[], $3::uuid[], $4::timestamptz[]) AS u(id, e, k)
                 JOIN events e ON e.id = u.e
                 WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = $1 AND ordering = 'fifo')
                 ON CONFLICT DO NOTHING",
                crate::ordering::ACCEPTED
            ),
            &[&webhook.as_uuid(), &all_ids, &all_events, &all_keys],
        )
        .await?;
        let mut bodies = HashMap::new();
        for row in tx
            .query(
                "SELECT id, event_type, body FROM events WHERE id = ANY($1)",
                &[&all_events],
            )
            .await?
        {
            let event_type: String = row.try_get(1)?;
            let event_type = event_type
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("event type {event_type}")))?;
            bodies.insert(row.try_get(0)?, (event_type, row.try_get(2)?));
        }
        tx.commit().await?;
        Ok((claimed, bodies))
    }

    /// Undoes the claims of tasks that could not be published: a re-claimed delivery goes back
    /// to its status, a row the claim created is removed (if no attempt was made since).
    pub async fn unclaim_recovery(&self, tasks: &[RecoveredTask]) -> Result<(), StoreError> {
        let (ended, fresh): (Vec<&RecoveredTask>, Vec<&RecoveredTask>) =
            tasks.iter().partition(|t| t.was.is_some());
        let ids = |ts: &[&RecoveredTask]| -> Vec<Uuid> {
            ts.iter().map(|t| t.task.delivery_id.as_uuid()).collect()
        };
        let keys =
            |ts: &[&RecoveredTask]| -> Vec<DateTime<Utc>> { ts.iter().map(|t| t.key).collect() };
        let statuses: Vec<&str> = ended
            .iter()
            .filter_map(|t| t.was.map(DeliveryStatus::as_str))
            .collect();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "UPDATE deliveries d SET status = u.s, next_attempt_at = NULL
             FROM unnest($1::uuid[], $2::timestamptz[], $3::text[]) AS u(id, k, s)
             WHERE d.id = u.id AND d.event_received_at = u.k
               AND d.status = 'pending' AND d.attempts + 1 = d.series_start",
            &[&ids(&ended), &keys(&ended), &statuses],
        )
        .await?;
        tx.execute(
            "DELETE FROM deliveries d
             USING unnest($1::uuid[], $2::timestamptz[]) AS u(id, k)
             WHERE d.id = u.id AND d.event_received_at = u.k
               AND d.status = 'pending' AND d.attempts = 0",
            &[&ids(&fresh), &keys(&fresh)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
