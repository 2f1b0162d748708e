//! The reach check: every webhook an event was fanned out to gets a delivery row.
//!
//! An unordered webhook's delivery has no row until its first attempt is recorded, so a first
//! attempt the broker loses after confirming it (a RabbitMQ cluster node killed while it led
//! the shard queue: `cluster-kill9-node` lost five of one event's) left nothing that knew it
//! was missing; later attempts are safe, the retry sweep finds them by their rows. Once an
//! event has been fanned out for `after` (`delivery.retry_sweep_after`), each webhook it was
//! fanned out to should hold a row; [`Store::check_reach`] writes a pending one, already due,
//! for each that has none, and the retry sweep publishes that attempt like any overdue one.
//!
//! "Fanned out to" is read back from the webhooks as they are now, and only where that
//! cannot be wrong: subscribed and live now, registered and last enabled before the event
//! was accepted, and either active and unchanged since, or disabled after the fan-out
//! ended with the disable its last change (the copy is then recorded skipped, as a task
//! that waited through the disable is). A webhook changed otherwise (its events, say, or
//! disabled while the event was being fanned out) is left out: the check cannot know what
//! fan-out saw of it. (The first version counted a webhook disabled during the fan-out:
//! every chaos scenario then "found" 5 to 10 pairs fan-out had rightly passed over.)
//!
//! A first attempt that is merely late (a backlog) is not sent twice: a first attempt older
//! than half of `after` claims before it is sent, creating its row
//! (`ClaimAsk::create_for`), so the check finds the row; if the check wrote it first, the
//! claim takes it and the swept copy finds it held.

use std::time::Duration;

use aioka_core::event::EventType;
use aioka_core::{EventId, WebhookId};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Store, StoreError};

/// Subscribers read (and rows offered) per statement.
const PAGE: i64 = 10_000;
/// How long a process may take to check one event before another takes it over.
const LEASE: Duration = Duration::from_secs(300);

/// What one [`Store::check_reach`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// Events checked to the end.
    pub events: u64,
    /// Pairs looked at.
    pub pairs: u64,
    /// Deliveries that had no row and now have a pending one, due at once.
    pub missing: Vec<(EventId, WebhookId)>,
}

impl Store {
    /// Checks events fanned out more than `after` ago, oldest first, until `budget` pairs
    /// (event, webhook) were looked at or none is left; each event is checked whole. Every
    /// process may run it: an event is held by one at a time (a lease, taken over when its
    /// holder dies), and its rows are written idempotently.
    #[tracing::instrument(skip_all)]
    pub async fn check_reach(&self, after: Duration, budget: u64) -> Result<Reach, StoreError> {
        let mut reach = Reach::default();
        while reach.pairs < budget {
            let Some(event) = self.take_for_reach(after).await? else {
                break;
            };
            let mut cursor: Option<WebhookId> = None;
            loop {
                let page = self.reach_page(&event, cursor).await?;
                let Some(&last) = page.last() else {
                    break;
                };
                reach.pairs += page.len() as u64;
                for webhook in self.offer_rows(event.id, &page).await? {
                    reach.missing.push((event.id, webhook));
                }
                cursor = Some(last);
                if page.len() < PAGE as usize {
                    break;
                }
            }
            let client = self.pool.get().await?;
            client
                .execute(
                    "UPDATE events SET reach_checked = true, reach_check_until = NULL
                     WHERE id = $1",
                    &[&event.id.as_uuid()],
                )
                .await?;
            reach.events += 1;
        }
        Ok(reach)
    }

    /// The oldest event fanned out more than `after` ago and not yet checked, leased to this
    /// caller.
    async fn take_for_reach(&self, after: Duration) -> Result<Option<Taken>, StoreError> {
        let client = self.pool.get().await?;
        let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        let lease_s = LEASE.as_secs() as i64;
        // FOR NO KEY UPDATE: the recorder's inserts of this event's rows take a key-share
        // lock on it (the foreign key), which this does not block.
        let row = client
            .query_opt(
                "UPDATE events SET reach_check_until = now() + make_interval(secs => $2::bigint)
                 WHERE id = (SELECT id FROM events
                             WHERE NOT reach_checked AND fanned_out_at IS NOT NULL
                               AND fanned_out_at
                                   < now() - make_interval(secs => $1::bigint / 1000.0)
                               AND (reach_check_until IS NULL OR reach_check_until < now())
                             ORDER BY fanned_out_at
                             LIMIT 1
                             FOR NO KEY UPDATE SKIP LOCKED)
                 RETURNING id, event_type, received_at, fanned_out_at",
                &[&after_ms, &lease_s],
            )
            .await?;
        row.map(|r| {
            let event_type: String = r.try_get(1)?;
            Ok(Taken {
                id: EventId::from_uuid(r.try_get(0)?),
                event_type: event_type
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("event type {event_type}")))?,
                received_at: r.try_get(2)?,
                fanned_out_at: r.try_get(3)?,
            })
        })
        .transpose()
    }

    /// The next page of webhooks the event was surely fanned out to, in id order.
    async fn reach_page(
        &self,
        event: &Taken,
        after: Option<WebhookId>,
    ) -> Result<Vec<WebhookId>, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT w.id {}
                   AND w.created_at <= $1
                   AND (w.enabled_at IS NULL OR w.enabled_at <= $1)
                   -- Unchanged since the event was accepted; or disabled after its
                   -- fan-out ended, the disable its last change (its copy is then recorded
                   -- skipped). One disabled during the fan-out may have been passed over.
                   AND CASE WHEN w.is_active THEN w.updated_at <= $1
                            ELSE w.disabled_at > $4 AND w.disabled_at >= w.updated_at END
                   AND w.id > $2
                 ORDER BY w.id LIMIT $3",
                crate::events::subscribed(event.event_type)
            ))
            .await?;
        let from = after.map_or(Uuid::nil(), |w| w.as_uuid());
        let rows = client
            .query(
                &statement,
                &[&event.received_at, &from, &PAGE, &event.fanned_out_at],
            )
            .await?;
        rows.iter()
            .map(|r| Ok(WebhookId::from_uuid(r.try_get(0)?)))
            .collect()
    }

    /// Writes a pending row, due when the event was fanned out, for each pair of `event` and
    /// `webhooks` that has none; returns the webhooks that had none.
    async fn offer_rows(
        &self,
        event: EventId,
        webhooks: &[WebhookId],
    ) -> Result<Vec<WebhookId>, StoreError> {
        let rows = self
            .query_for_pairs(
                event,
                webhooks,
                "INSERT INTO deliveries (id, event_id, webhook_id, status, next_attempt_at,
                                         event_received_at)
                 SELECT t.d, e.id, t.w, 'pending', e.fanned_out_at, e.received_at
                 FROM unnest($2::uuid[], $3::uuid[]) AS t(d, w)
                 JOIN events e ON e.id = $1
                 ON CONFLICT (id, event_received_at) DO NOTHING
                 RETURNING webhook_id",
            )
            .await?;
        rows.iter()
            .map(|r| Ok(WebhookId::from_uuid(r.try_get(0)?)))
            .collect()
    }
}

/// An event taken for the check.
struct Taken {
    id: EventId,
    event_type: EventType,
    received_at: DateTime<Utc>,
    fanned_out_at: DateTime<Utc>,
}
