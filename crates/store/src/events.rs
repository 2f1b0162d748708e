//! Events and their fan-out progress.
//!
//! Fan-out is resumable and claimed: a worker claims an event with a lease, walks the
//! subscribed webhooks in id order in chunks, and records after each confirmed chunk how far
//! it got. A worker that dies leaves the lease to lapse and the cursor where the last
//! confirmed chunk ended; the redelivered message resumes there. A second copy of the same
//! event (a producer sending twice) finds it claimed or done and is acknowledged as a
//! duplicate: an event's tasks are published once.
//!
//! Every progress write (advance the cursor, finish) names its writer and is made only while
//! that writer holds the claim, so a worker whose lease lapsed while another took over can
//! neither move the cursor back under the new holder nor mark the event done.

use std::time::Duration;

use aioka_core::event::EventType;
use aioka_core::{EventId, WebhookId};
use chrono::{DateTime, Utc};

use crate::{Store, StoreError};

/// See [`Store::claim_guard`].
#[derive(Debug)]
#[must_use = "dropping the guard releases the claim"]
pub struct ClaimGuard {
    store: Store,
    event: EventId,
    holder: uuid::Uuid,
    armed: bool,
}

impl ClaimGuard {
    /// The fan-out finished (or was never this holder's): nothing to release.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Outside a runtime (the process is ending) the lease lapses by itself.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, event, holder) = (self.store.clone(), self.event, self.holder);
            runtime.spawn(async move {
                if let Err(e) = store.release_fanout(event, holder).await {
                    tracing::debug!(error = %e, %event, "could not release a fan-out claim; it lapses");
                }
            });
        }
    }
}

/// A webhook an event is fanned out to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscriber {
    pub id: WebhookId,
    /// Its deliveries go one at a time in event order: fan-out writes their rows before it
    /// publishes their tasks, so that a later one can see it must wait.
    pub fifo: bool,
}

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    Http,
    Amqp,
    Test,
}

impl EventSource {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventSource::Http => "http",
            EventSource::Amqp => "amqp",
            EventSource::Test => "test",
        }
    }
}

/// An event to store.
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    pub id: EventId,
    pub event_type: EventType,
    pub occurred_at: DateTime<Utc>,
    pub body: &'a str,
    pub source: EventSource,
    /// When the gateway accepted it (`None`: published straight to the broker, or a test
    /// event). Kept only within the hour before it is stored: a stamp further off is a clock
    /// gone wrong, and the event is ordered by when it was stored.
    pub accepted_at: Option<DateTime<Utc>>,
}

/// The result of trying to claim an event's fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This worker fans out, starting after `cursor`.
    Claimed { cursor: Option<WebhookId> },
    /// The event was fanned out already.
    Done,
    /// Another worker holds a live lease on it.
    HeldByOther,
}

/// Whether a fan-out progress write (advance, finish) was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a lost claim means the worker must stop publishing"]
pub enum Progress {
    /// Written: the writer holds the claim.
    Recorded,
    /// Nothing written: another worker took the claim over after this writer's lease lapsed
    /// (or the event is done). The writer must stop and leave the event to the holder.
    ClaimLost,
}

impl Progress {
    fn from_updated(rows: u64) -> Self {
        if rows == 1 {
            Progress::Recorded
        } else {
            Progress::ClaimLost
        }
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Store {
    /// Stores the event if it is new and claims its fan-out for `lease` on behalf of
    /// `holder`. A claim held by someone else blocks until it lapses; one held by `holder`
    /// itself (a retry after a failed step) is taken again at once.
    #[tracing::instrument(skip_all, fields(event_id = %event.id))]
    pub async fn claim_fanout(
        &self,
        event: &NewEvent<'_>,
        lease: Duration,
        holder: uuid::Uuid,
    ) -> Result<Claim, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO events (id, event_type, occurred_at, body, source, accepted_at)
                     VALUES ($1, $2, $3, $4, $5,
                             CASE WHEN $6::timestamptz BETWEEN now() - interval '1 hour'
                                                           AND now() + interval '1 second'
                                  THEN $6::timestamptz END)
                     ON CONFLICT (id) DO NOTHING",
            )
            .await?;
        client
            .execute(
                &statement,
                &[
                    &event.id.as_uuid(),
                    &event.event_type.as_str(),
                    &event.occurred_at,
                    &event.body,
                    &event.source.as_str(),
                    &event.accepted_at,
                ],
            )
            .await?;
        let statement = client
            .prepare_cached(
                "UPDATE events SET fanout_lease_until = now() + $2::float8 * interval '1 second',
                                      fanout_holder = $3
                     WHERE id = $1 AND fanned_out_at IS NULL
                       AND (fanout_lease_until IS NULL OR fanout_lease_until < now()
                            OR fanout_holder = $3)
                     RETURNING fanout_cursor",
            )
            .await?;
        let claimed = client
            .query_opt(&statement, &[&event.id.as_uuid(), &seconds(lease), &holder])
            .await?;
        if let Some(row) = claimed {
            let cursor: Option<uuid::Uuid> = row.try_get(0)?;
            return Ok(Claim::Claimed {
                cursor: cursor.map(WebhookId::from_uuid),
            });
        }
        let statement = client
            .prepare_cached("SELECT fanned_out_at IS NOT NULL FROM events WHERE id = $1")
            .await?;
        let done: bool = client
            .query_one(&statement, &[&event.id.as_uuid()])
            .await?
            .try_get(0)?;
        Ok(if done {
            Claim::Done
        } else {
            Claim::HeldByOther
        })
    }

    /// Up to `limit` active webhooks subscribed to `event_type` after `after`, in id order, of
    /// keys that are neither revoked nor on the Free tier, each with whether it is ordered
    /// (`fifo`).
    #[tracing::instrument(skip_all, fields(event_type = %event_type))]
    pub async fn subscribers_page(
        &self,
        event_type: EventType,
        after: Option<WebhookId>,
        limit: i64,
    ) -> Result<Vec<Subscriber>, StoreError> {
        let client = self.pool.get().await?;
        let query = client
            .prepare_cached(&subscribers_query(event_type, after.is_some()))
            .await?;
        let rows = match after {
            Some(after) => client.query(&query, &[&after.as_uuid(), &limit]).await?,
            None => client.query(&query, &[&limit]).await?,
        };
        rows.iter()
            .map(|r| {
                Ok(Subscriber {
                    id: WebhookId::from_uuid(r.try_get(0)?),
                    fifo: r.try_get(1)?,
                })
            })
            .collect()
    }

    /// Records that tasks for webhooks up to `cursor` are confirmed, and renews the lease, if
    /// `holder` still holds the claim. A worker whose lease lapsed and whose event another
    /// worker took over gets [`Progress::ClaimLost`] and writes nothing: the cursor is the new
    /// holder's alone, so it never moves backwards under it, and the tasks are not counted
    /// twice.
    #[tracing::instrument(skip_all, fields(event_id = %event))]
    pub async fn advance_fanout(
        &self,
        event: EventId,
        holder: uuid::Uuid,
        cursor: WebhookId,
        added: i64,
        lease: Duration,
    ) -> Result<Progress, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "UPDATE events SET fanout_cursor = $2, fanout_tasks = fanout_tasks + $3,
                            fanout_lease_until = now() + $4::float8 * interval '1 second'
                     WHERE id = $1 AND fanout_holder = $5 AND fanned_out_at IS NULL",
            )
            .await?;
        let updated = client
            .execute(
                &statement,
                &[
                    &event.as_uuid(),
                    &cursor.as_uuid(),
                    &added,
                    &seconds(lease),
                    &holder,
                ],
            )
            .await?;
        Ok(Progress::from_updated(updated))
    }

    /// Marks the fan-out complete, if `holder` still holds the claim (see
    /// [`Store::advance_fanout`]): only the worker that published the last chunk may say the
    /// event is done.
    #[tracing::instrument(skip_all, fields(event_id = %event))]
    pub async fn finish_fanout(
        &self,
        event: EventId,
        holder: uuid::Uuid,
    ) -> Result<Progress, StoreError> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "UPDATE events SET fanned_out_at = now(), fanout_lease_until = NULL
                     WHERE id = $1 AND fanout_holder = $2 AND fanned_out_at IS NULL",
            )
            .await?;
        let updated = client
            .execute(&statement, &[&event.as_uuid(), &holder])
            .await?;
        Ok(Progress::from_updated(updated))
    }

    /// Gives up `holder`'s claim early (its worker failed or was cut off), so a redelivery
    /// can resume at once. A claim someone else holds now is left alone.
    #[tracing::instrument(skip_all, fields(event_id = %event))]
    pub async fn release_fanout(
        &self,
        event: EventId,
        holder: uuid::Uuid,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE events SET fanout_lease_until = NULL
                 WHERE id = $1 AND fanout_holder = $2 AND fanned_out_at IS NULL",
                &[&event.as_uuid(), &holder],
            )
            .await?;
        Ok(())
    }

    /// A guard that releases `holder`'s claim on `event` when dropped, unless disarmed. A
    /// fan-out cut off mid-way (its future dropped when the broker session ends under it)
    /// then lets the redelivered message resume at once instead of waiting out the lease.
    pub fn claim_guard(&self, event: EventId, holder: uuid::Uuid) -> ClaimGuard {
        ClaimGuard {
            store: self.clone(),
            event,
            holder,
            armed: true,
        }
    }

    /// The stored envelope of event `id`, if it was received (and is inside the retention).
    #[tracing::instrument(skip_all, fields(event_id = %id))]
    pub async fn event_body(&self, id: EventId) -> Result<Option<String>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt("SELECT body FROM events WHERE id = $1", &[&id.as_uuid()])
            .await?;
        row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
    }

    /// Stores an event that needs no fan-out (a test event addressed to chosen webhooks).
    #[tracing::instrument(skip_all, fields(event_id = %event.id))]
    pub async fn insert_direct_event(&self, event: &NewEvent<'_>) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                // Addressed to chosen webhooks, each given its row: nothing for the reach
                // check (`Store::check_reach`) to look at.
                "INSERT INTO events (id, event_type, occurred_at, body, source, fanned_out_at,
                                     reach_checked)
                 VALUES ($1, $2, $3, $4, $5, now(), true)",
                &[
                    &event.id.as_uuid(),
                    &event.event_type.as_str(),
                    &event.occurred_at,
                    &event.body,
                    &event.source.as_str(),
                ],
            )
            .await?;
        Ok(())
    }

    /// How many tasks the fan-out of `event` published, and whether it is complete.
    pub async fn fanout_progress(&self, event: EventId) -> Result<Option<(i64, bool)>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT fanout_tasks, fanned_out_at IS NOT NULL FROM events WHERE id = $1",
                &[&event.as_uuid()],
            )
            .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }
}

impl Store {
    /// Removes the still-pending deliveries of `event` to `webhooks`: test-event tasks that
    /// were not confirmed. The event and its other deliveries stay. A task the broker held
    /// after all gets its row back from the recorder with its first attempt.
    #[tracing::instrument(skip_all, fields(event_id = %event, webhooks = webhooks.len()))]
    pub async fn discard_pending_deliveries(
        &self,
        event: EventId,
        webhooks: &[WebhookId],
    ) -> Result<(), StoreError> {
        let ids: Vec<uuid::Uuid> = webhooks.iter().map(|w| w.as_uuid()).collect();
        let client = self.pool.get().await?;
        client
            .execute(
                "DELETE FROM deliveries
                 WHERE event_id = $1 AND webhook_id = ANY($2::uuid[])
                   AND status = 'pending' AND attempts = 0
                   AND event_received_at = (SELECT received_at FROM events WHERE id = $1)",
                &[&event.as_uuid(), &ids],
            )
            .await?;
        Ok(())
    }

    /// Removes an event that never reached the broker, with its pending deliveries.
    #[tracing::instrument(skip_all, fields(event_id = %event))]
    pub async fn discard_event(&self, event: EventId) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "DELETE FROM deliveries
             WHERE event_id = $1
               AND event_received_at = (SELECT received_at FROM events WHERE id = $1)",
            &[&event.as_uuid()],
        )
        .await?;
        tx.execute("DELETE FROM events WHERE id = $1", &[&event.as_uuid()])
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The text of [`Store::subscribers_page`]'s query: `$1` the cursor and `$2` the limit when
/// `after`, else `$1` the limit. The type is a constant in the text (one of five fixed names,
/// never input), so the planner picks its partial index (V12) even in a generic plan, and the
/// cursor alone bounds the index scan. Public for the test that pins the plan.
#[doc(hidden)]
pub fn subscribers_query(event_type: EventType, after: bool) -> String {
    let select = format!(
        "SELECT w.id, w.ordering = 'fifo' {} AND w.is_active",
        subscribed(event_type)
    );
    if after {
        format!("{select} AND w.id > $1 ORDER BY w.id LIMIT $2")
    } else {
        format!("{select} ORDER BY w.id LIMIT $1")
    }
}

/// `FROM … WHERE …` of the webhooks subscribed to `event_type`: live, of a key that is
/// neither revoked nor on the free tier (active or not: fan-out adds that). The type is a
/// constant, so the planner can use its partial index (V12).
pub(crate) fn subscribed(event_type: EventType) -> String {
    format!(
        "FROM webhooks w JOIN api_keys k ON k.id = w.api_key_id
         WHERE w.events @> ARRAY['{}']::text[] AND w.deleted_at IS NULL
           AND k.revoked_at IS NULL AND k.tier <> 'free'",
        event_type.as_str()
    )
}
