//! Deliveries and their attempts: created by their first attempt's record (a test event's
//! up front), updated in batches by the delivery service, listed for customers, re-sent on
//! request.
//!
//! Both tables are partitioned by their event's `received_at` (`event_received_at`, V8):
//! every writer takes it from the event row, so the keys `(id, event_received_at)` and
//! `(delivery_id, attempt, event_received_at)` deduplicate as `id` and `(delivery_id,
//! attempt)` did. A write that finds no partition for a row has the missing ones created
//! ([`Store::repair_partitions`]) and is made again.

use std::collections::{HashMap, HashSet};

use aioka_core::disable::{DisableReason, DisableRule, FailureHistory, Outcome};
use aioka_core::event::EventType;
use aioka_core::messages::DeliveryTask;
use aioka_core::{ApiKeyId, DeliveryId, EventId, WebhookId};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Store, StoreError};

/// A delivery's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its first attempt or a retry.
    Pending,
    Succeeded,
    /// Every attempt failed; kept, listable and re-sendable.
    Failed,
    /// Not sent: the webhook was disabled or deleted before its turn.
    Skipped,
}

impl DeliveryStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Skipped => "skipped",
        }
    }

    pub const ALL: [DeliveryStatus; 4] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Succeeded,
        DeliveryStatus::Failed,
        DeliveryStatus::Skipped,
    ];

    /// The status named `text` (as [`DeliveryStatus::as_str`] writes it), if any.
    pub fn from_name(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub(crate) fn parse(text: &str) -> Result<Self, StoreError> {
        Self::from_name(text).ok_or_else(|| StoreError::Corrupt(format!("delivery status {text}")))
    }
}

/// What one processed task produced, for the batch writer.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: DeliveryId,
    pub event_id: EventId,
    pub webhook_id: WebhookId,
    /// The attempt number of the task (for a skip: the attempt that was not made).
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub kind: RecordKind,
}

#[derive(Debug, Clone)]
pub enum RecordKind {
    /// An HTTP attempt was made.
    Attempt {
        outcome: Outcome,
        status_code: Option<u16>,
        error_kind: Option<&'static str>,
        latency_ms: u32,
        snippet: Option<String>,
        /// When the retry is due, if one was scheduled.
        next_retry_at: Option<DateTime<Utc>>,
    },
    /// The task was dropped without sending.
    Skipped { reason: &'static str },
}

impl AttemptRecord {
    fn status(&self) -> DeliveryStatus {
        match &self.kind {
            RecordKind::Skipped { .. } => DeliveryStatus::Skipped,
            RecordKind::Attempt {
                outcome: Outcome::Success,
                ..
            } => DeliveryStatus::Succeeded,
            RecordKind::Attempt {
                next_retry_at: Some(_),
                ..
            } => DeliveryStatus::Pending,
            RecordKind::Attempt { .. } => DeliveryStatus::Failed,
        }
    }

    /// Attempts actually made once this record is applied.
    fn attempts_made(&self) -> i32 {
        let n = i32::try_from(self.attempt).unwrap_or(i32::MAX);
        match self.kind {
            RecordKind::Skipped { .. } => n - 1,
            RecordKind::Attempt { .. } => n,
        }
    }
}

/// A webhook disabled by a batch, with the reason shown to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    pub webhook_id: WebhookId,
    pub reason: String,
}

/// What one [`Store::record_batch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchWritten {
    pub disabled: Vec<Disabled>,
    /// For each record of the batch, in order: `false` if its attempt was recorded before
    /// (a duplicate, which changed nothing), or its event is gone. Skips are always fresh.
    pub fresh: Vec<bool>,
    /// Partitions the batch had to create: no partition held some of its rows (maintenance
    /// is not running, or is behind).
    pub partitions_created: Vec<String>,
}

/// See [`Store::chain_state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    /// Attempts the delivery has made (0 when it has no row yet).
    pub attempts_made: u32,
    /// The asked-about attempt, if it is recorded.
    pub recorded: Option<RecordedAttempt>,
}

/// What [`Store::claim_attempt`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptClaim {
    /// The chain as it stood before the claim.
    pub state: ChainState,
    /// What the caller may do with the attempt.
    pub outcome: ClaimOutcome,
}

/// One attempt a task asks to claim ([`Store::claim_attempts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimAsk {
    /// The delivery's event: it gives the partition.
    pub event: EventId,
    pub delivery: DeliveryId,
    pub attempt: u32,
    /// A first attempt that may be late (older than half of `delivery.retry_sweep_after`):
    /// with no row yet, the claim creates its row for this webhook, pending and claimed, so
    /// the reach check (`Store::check_reach`) finds it there and a copy cannot be sent too.
    pub create_for: Option<WebhookId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The caller holds attempt n until the lease ends: it sends it.
    Claimed,
    /// The delivery has no row yet (its first attempt is not recorded): nothing to claim, the
    /// caller sends (a first attempt may repeat once after a crash).
    NoRow,
    /// Another copy holds the attempt and its lease runs: the caller puts its copy off.
    HeldByOther,
    /// The attempt is recorded, or a later one is, or the delivery has ended (succeeded,
    /// failed, or skipped because its webhook was disabled): nothing to send.
    Made,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedAttempt {
    pub at: DateTime<Utc>,
    /// When its retry was due, if one was scheduled.
    pub next_retry_at: Option<DateTime<Utc>>,
}

/// One attempt as the delivery log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    pub attempt: u32,
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub error_kind: Option<String>,
    pub latency_ms: u32,
    pub response_snippet: Option<String>,
    pub next_retry_at: Option<DateTime<Utc>>,
}

/// A delivery as the delivery log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub id: DeliveryId,
    pub seq: i64,
    pub event_id: EventId,
    pub event_type: EventType,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub skip_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub attempt_log: Vec<AttemptRow>,
    /// A test delivery (`POST /v1/webhooks/test`; its event's source is `test`).
    pub test: bool,
}

/// Which deliveries of a webhook a log page shows; every field that is set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    pub event_type: Option<EventType>,
    /// Created at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Created before this instant.
    pub until: Option<DateTime<Utc>>,
    /// This delivery alone.
    pub delivery: Option<DeliveryId>,
}

/// What a re-send needs.
#[derive(Debug, Clone)]
pub struct Resend {
    pub event_id: EventId,
    pub event_type: EventType,
    pub body: String,
    /// The number the re-sent attempt gets.
    pub attempt: u32,
    /// Whether it re-sends a test delivery (which keeps its mark).
    pub test: bool,
    /// The status before the claim, to restore if the task cannot be published.
    pub previous: DeliveryStatus,
}

/// A pending delivery whose next attempt is overdue, as [`Store::take_overdue_retries`]
/// returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverdueRetry {
    /// The attempt it waits for (attempts made + 1), rebuilt from the stored event, counted
    /// from its series' start; untagged (the caller tags it).
    pub task: DeliveryTask,
    /// When that attempt was due.
    pub due: DateTime<Utc>,
}

/// Why a re-send was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResendError {
    /// The webhook is not the owner's (or is deleted).
    #[error("no such webhook")]
    WebhookNotFound,
    /// The webhook has no such delivery in the log: it never existed, or it was dropped with
    /// its partition (see [`Store::log_window`]).
    #[error("no such delivery for this webhook")]
    NotFound,
    #[error("only failed or skipped deliveries can be re-sent; this one is {0}")]
    NotFailed(&'static str),
    #[error("the webhook is disabled; enable it with PATCH is_active: true first")]
    WebhookInactive,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for ResendError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for ResendError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Store(e.into())
    }
}

/// What the delivery service needs to send to a webhook.
#[derive(Debug, Clone)]
pub struct DeliveryTarget {
    pub id: WebhookId,
    pub url: String,
    pub secret_sealed: Vec<u8>,
    pub is_active: bool,
    pub deleted: bool,
    /// The owner's key is revoked: nothing more is sent, queued tasks included.
    pub key_revoked: bool,
    /// The owner's key is on the Free tier, which has no webhooks.
    pub key_free_tier: bool,
    /// The secret a rotation replaced, while its overlap lasts (see V13), and when it ends.
    pub previous_secret: Option<(Vec<u8>, DateTime<Utc>)>,
    /// Ordered delivery (`fifo`, V15).
    pub fifo: bool,
}

/// [`Store::claim_attempts`]' statement: the asks as arrays (delivery, attempt, event, and
/// the webhook a late first attempt creates its row for), answered one row each in the
/// order asked. The reads see the rows as they were before the
/// claim (a data-modifying CTE's effects are not visible to its own statement).
const CLAIM_ATTEMPTS: &str = "
    WITH u AS (
        SELECT u.delivery_id, u.attempt, u.ord, u.event_id, u.create_for,
               (SELECT received_at FROM events WHERE id = u.event_id) AS at
        FROM unnest($1::uuid[], $2::int4[], $3::uuid[], $5::uuid[]) WITH ORDINALITY
             AS u(delivery_id, attempt, event_id, create_for, ord)),
    claim AS (
        UPDATE deliveries d
        SET claimed_attempt = u.attempt,
            claim_until = now() + make_interval(secs => $4::bigint / 1000.0)
        FROM u
        WHERE d.id = u.delivery_id AND d.event_received_at = u.at AND d.attempts < u.attempt
          AND d.status = 'pending'
          AND (d.claimed_attempt IS NULL OR d.claimed_attempt < u.attempt
               OR d.claim_until <= now())
        RETURNING d.id),
    made AS (
        INSERT INTO deliveries (id, event_id, webhook_id, status, next_attempt_at,
                                claimed_attempt, claim_until, event_received_at)
        SELECT u.delivery_id, u.event_id, u.create_for, 'pending', now(), u.attempt,
               now() + make_interval(secs => $4::bigint / 1000.0), u.at
        FROM u
        WHERE u.create_for IS NOT NULL AND u.at IS NOT NULL
          AND EXISTS (SELECT 1 FROM webhooks w WHERE w.id = u.create_for)
        ON CONFLICT (id, event_received_at) DO NOTHING
        RETURNING id)
    SELECT d.attempts, a.attempted_at, a.next_retry_at,
           EXISTS (SELECT 1 FROM claim c WHERE c.id = u.delivery_id)
           OR EXISTS (SELECT 1 FROM made m WHERE m.id = u.delivery_id),
           d.status
    FROM u
    LEFT JOIN deliveries d ON d.id = u.delivery_id AND d.event_received_at = u.at
    LEFT JOIN delivery_attempts a
           ON a.delivery_id = u.delivery_id AND a.attempt = u.attempt
          AND a.event_received_at = u.at
    ORDER BY u.ord";

/// One answer of [`CLAIM_ATTEMPTS`] for attempt `attempt`.
fn claim_from_row(row: &tokio_postgres::Row, attempt: u32) -> Result<AttemptClaim, StoreError> {
    let made: Option<i32> = row.try_get(0)?;
    let at: Option<DateTime<Utc>> = row.try_get(1)?;
    let claimed: bool = row.try_get(3)?;
    let ended = row
        .try_get::<_, Option<String>>(4)?
        .is_some_and(|status| status != DeliveryStatus::Pending.as_str());
    let state = ChainState {
        attempts_made: made.map_or(0, |n| u32::try_from(n).unwrap_or(0)),
        recorded: at.map(|at| RecordedAttempt {
            at,
            next_retry_at: row.try_get(2).ok().flatten(),
        }),
    };
    let outcome = if claimed {
        ClaimOutcome::Claimed
    } else if made.is_none() {
        ClaimOutcome::NoRow
    } else if state.recorded.is_some() || state.attempts_made >= attempt || ended {
        ClaimOutcome::Made
    } else {
        ClaimOutcome::HeldByOther
    };
    Ok(AttemptClaim { state, outcome })
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The untagged task of a delivery's next attempt, from its stored state: (delivery, event,
/// webhook) ids, the event's type and body, the attempts made and the series' start.
pub(crate) fn next_attempt(
    (delivery, event, webhook): (Uuid, Uuid, Uuid),
    (event_type, body): (String, String),
    (attempts, series_start): (i32, i32),
    test: bool,
) -> Result<DeliveryTask, StoreError> {
    Ok(DeliveryTask {
        delivery_id: DeliveryId::from_uuid(delivery),
        event_id: EventId::from_uuid(event),
        webhook_id: WebhookId::from_uuid(webhook),
        event_type: event_type
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("event type {event_type}")))?,
        body,
        attempt: u32::try_from(attempts).unwrap_or(0) + 1,
        series_start: u32::try_from(series_start).unwrap_or(1).max(1),
        auth: None,
        test,
    })
}

/// Repairs before making a write again: twice at most (the second repair finds anything
/// the first could not see, such as a partition dropped in between).
pub(crate) const REPAIRS: usize = 2;

impl Store {
    /// Creates a pending delivery of the stored `event` for each webhook (idempotent: the
    /// ids are derived from the event and the webhook, so a repeat inserts nothing new).
    #[tracing::instrument(skip_all, fields(event_id = %event, count = webhooks.len()))]
    pub async fn insert_pending_deliveries(
        &self,
        event: EventId,
        webhooks: &[WebhookId],
    ) -> Result<(), StoreError> {
        self.insert_for_pairs(
            event,
            webhooks,
            "INSERT INTO deliveries (id, event_id, webhook_id, status, event_received_at)
             SELECT t.d, e.id, t.w, 'pending', e.received_at
             FROM unnest($2::uuid[], $3::uuid[]) AS t(d, w)
             JOIN events e ON e.id = $1
             ON CONFLICT (id, event_received_at) DO NOTHING",
        )
        .await
    }

    /// Runs `statement` with `$1` the event, `$2` the delivery ids of its pairs with
    /// `webhooks` and `$3` the webhooks, repairing missing partitions.
    pub(crate) async fn insert_for_pairs(
        &self,
        event: EventId,
        webhooks: &[WebhookId],
        statement: &str,
    ) -> Result<(), StoreError> {
        self.query_for_pairs(event, webhooks, statement).await?;
        Ok(())
    }

    /// [`Store::insert_for_pairs`] for a statement that returns rows.
    pub(crate) async fn query_for_pairs(
        &self,
        event: EventId,
        webhooks: &[WebhookId],
        statement: &str,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let ids: Vec<Uuid> = webhooks
            .iter()
            .map(|w| DeliveryId::for_pair(event, *w).as_uuid())
            .collect();
        let hooks: Vec<Uuid> = webhooks.iter().map(|w| w.as_uuid()).collect();
        self.repairing(&[event.as_uuid()], || async {
            let client = self.pool.get().await?;
            let statement = client.prepare_cached(statement).await?;
            Ok(client
                .query(&statement, &[&event.as_uuid(), &ids, &hooks])
                .await?)
        })
        .await
    }

    /// Makes `write`; when it finds no partition for a row of `events`, has the missing ones
    /// created ([`Store::repair_partitions`]) and makes it again, [`REPAIRS`] times at most.
    pub(crate) async fn repairing<T, F, W>(
        &self,
        events: &[Uuid],
        write: W,
    ) -> Result<T, StoreError>
    where
        W: Fn() -> F,
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut repairs = 0;
        loop {
            match write().await {
                Err(e) if repairs < REPAIRS && e.is_missing_partition() => {
                    repairs += 1;
                    self.repair_partitions(events).await?;
                }
                other => return other,
            }
        }
    }

    /// Writes a batch of attempt records in one transaction: attempt rows, delivery states,
    /// and the failure counts of the webhooks concerned, applying the disable rule. Returns
    /// the webhooks this batch disabled and the records that were already there.
    ///
    /// Idempotent: an attempt is identified by (delivery, attempt number). A record whose
    /// attempt is already stored (a task redelivered after a crash and sent again) is a
    /// *duplicate*: it changes neither the delivery's state nor any failure count, and the
    /// caller must not start another retry for it. An older attempt never overwrites a newer
    /// one.
    ///
    /// A batch with a row no partition holds creates the missing partitions (those of events
    /// inside the retention; an event past it is removed, and its records dropped) and is
    /// written again.
    #[tracing::instrument(skip_all, fields(records = records.len()))]
    pub async fn record_batch(
        &self,
        records: &[AttemptRecord],
        rule: DisableRule,
    ) -> Result<BatchWritten, StoreError> {
        let mut created = Vec::new();
        let mut repairs = 0;
        loop {
            match self.write_batch(records, rule).await {
                Err(e) if repairs < REPAIRS && e.is_missing_partition() => {
                    repairs += 1;
                    let mut events: Vec<Uuid> =
                        records.iter().map(|r| r.event_id.as_uuid()).collect();
                    events.sort();
                    events.dedup();
                    created.extend(self.repair_partitions(&events).await?);
                }
                other => {
                    let mut written = other?;
                    written.partitions_created = created;
                    return Ok(written);
                }
            }
        }
    }

    /// One try of [`Store::record_batch`], in one transaction.
    async fn write_batch(
        &self,
        records: &[AttemptRecord],
        rule: DisableRule,
    ) -> Result<BatchWritten, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // The webhooks' rows are locked first, in id order (no deadlock between writers), so
        // batches touching one webhook apply in the order their attempt rows get their
        // `recorded_at`: the log shows the order the disable rule saw them in.
        let histories = lock_webhooks(&tx, records).await?;
        let stored = insert_attempts(&tx, records).await?;
        // A record is fresh if its insert took effect; of two records of one attempt in the
        // same batch only the first is.
        let mut taken = HashSet::new();
        let fresh: Vec<bool> = records
            .iter()
            .map(|r| match r.kind {
                RecordKind::Attempt { .. } => {
                    let key = (r.delivery_id, r.attempt);
                    stored.contains(&key) && taken.insert(key)
                }
                RecordKind::Skipped { .. } => true,
            })
            .collect();
        let counted: Vec<&AttemptRecord> = records
            .iter()
            .zip(&fresh)
            .filter_map(|(r, f)| f.then_some(r))
            .collect();
        upsert_deliveries(&tx, &counted).await?;
        let disabled = count_failures(&tx, &counted, histories, rule).await?;
        tx.commit().await?;
        Ok(BatchWritten {
            disabled,
            fresh,
            partitions_created: Vec::new(),
        })
    }

    /// Where the chain of `delivery` (of `event`) stands with respect to its attempt
    /// `attempt`: whether that attempt is recorded (and when its retry was due), and how many
    /// attempts the delivery has made. The delivery service reads it for redelivered tasks
    /// and retries, to tell an attempt already made from one still to make. The event pins
    /// the partition, so one partition's index is read, not each one's.
    #[tracing::instrument(skip_all, fields(delivery_id = %delivery, attempt))]
    pub async fn chain_state(
        &self,
        event: EventId,
        delivery: DeliveryId,
        attempt: u32,
    ) -> Result<ChainState, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT (SELECT attempts FROM deliveries
                         WHERE id = $1 AND event_received_at = k.at),
                        a.attempted_at, a.next_retry_at
                 FROM (SELECT (SELECT received_at FROM events WHERE id = $3) AS at) AS k
                 LEFT JOIN delivery_attempts a
                        ON a.delivery_id = $1 AND a.attempt = $2 AND a.event_received_at = k.at",
                &[&delivery.as_uuid(), &to_i32(attempt), &event.as_uuid()],
            )
            .await?;
        let made: Option<i32> = row.try_get(0)?;
        let at: Option<DateTime<Utc>> = row.try_get(1)?;
        Ok(ChainState {
            attempts_made: made.map_or(0, |n| u32::try_from(n).unwrap_or(0)),
            recorded: at.map(|at| RecordedAttempt {
                at,
                next_retry_at: row.try_get(2).ok().flatten(),
            }),
        })
    }

    /// Reads the chain like [`Store::chain_state`] and, unless attempt `attempt` (or a later
    /// one) is recorded, claims it for `lease`. One ask of [`Store::claim_attempts`].
    #[tracing::instrument(skip_all, fields(delivery_id = %delivery, attempt))]
    pub async fn claim_attempt(
        &self,
        event: EventId,
        delivery: DeliveryId,
        attempt: u32,
        lease: std::time::Duration,
    ) -> Result<AttemptClaim, StoreError> {
        let mut claims = self
            .claim_attempts(
                &[ClaimAsk {
                    event,
                    delivery,
                    attempt,
                    create_for: None,
                }],
                lease,
            )
            .await?;
        claims
            .pop()
            .ok_or_else(|| StoreError::Corrupt("a claim without an answer".into()))
    }

    /// For each ask, in order: reads the chain like [`Store::chain_state`] and, unless the
    /// attempt (or a later one) is recorded, claims it for `lease`. One statement per round,
    /// so of two copies of a task that ask at once exactly one gets the claim (the other's
    /// update waits for the first and then finds the claim taken). A lapsed claim (its
    /// holder died before recording) is taken over.
    ///
    /// A delivery asked about more than once is asked in a later round (one statement
    /// updates a row once): the second copy of an attempt finds the first's claim, as it
    /// would had it asked a moment later.
    #[tracing::instrument(skip_all, fields(asks = asks.len()))]
    pub async fn claim_attempts(
        &self,
        asks: &[ClaimAsk],
        lease: std::time::Duration,
    ) -> Result<Vec<AttemptClaim>, StoreError> {
        let mut answers: Vec<Option<AttemptClaim>> = vec![None; asks.len()];
        let mut left: Vec<usize> = (0..asks.len()).collect();
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(CLAIM_ATTEMPTS).await?;
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        while !left.is_empty() {
            let mut seen = HashSet::new();
            let (round, later): (Vec<usize>, Vec<usize>) = left
                .into_iter()
                .partition(|&i| seen.insert(asks[i].delivery));
            left = later;
            let deliveries: Vec<Uuid> = round.iter().map(|&i| asks[i].delivery.as_uuid()).collect();
            let attempts: Vec<i32> = round.iter().map(|&i| to_i32(asks[i].attempt)).collect();
            let events: Vec<Uuid> = round.iter().map(|&i| asks[i].event.as_uuid()).collect();
            let create: Vec<Option<Uuid>> = round
                .iter()
                .map(|&i| asks[i].create_for.map(|w| w.as_uuid()))
                .collect();
            // A created row may need its partition; the statement is atomic, so a failed one
            // is made again as it was.
            let rows = self
                .repairing(&events, || async {
                    Ok(client
                        .query(
                            &statement,
                            &[&deliveries, &attempts, &events, &lease_ms, &create],
                        )
                        .await?)
                })
                .await?;
            if rows.len() != round.len() {
                return Err(StoreError::Corrupt(format!(
                    "{} claims answered for {} asked",
                    rows.len(),
                    round.len()
                )));
            }
            for (row, &i) in rows.iter().zip(&round) {
                answers[i] = Some(claim_from_row(row, asks[i].attempt)?);
            }
        }
        answers
            .into_iter()
            .map(|a| a.ok_or_else(|| StoreError::Corrupt("a claim without an answer".into())))
            .collect()
    }

    /// The send targets of `ids` (found ones only; deleted ones are returned as deleted).
    #[tracing::instrument(skip_all, fields(count = ids.len()))]
    pub async fn delivery_targets(
        &self,
        ids: &[WebhookId],
    ) -> Result<Vec<DeliveryTarget>, StoreError> {
        let uuids: Vec<Uuid> = ids.iter().map(|w| w.as_uuid()).collect();
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT w.id, w.url, w.secret_sealed, w.is_active, w.deleted_at IS NOT NULL,
                        k.revoked_at IS NOT NULL, k.tier = 'free',
                        w.previous_secret_sealed, w.previous_secret_expires_at,
                        w.ordering = 'fifo'
                 FROM webhooks w JOIN api_keys k ON k.id = w.api_key_id
                 WHERE w.id = ANY($1)",
            )
            .await?;
        let rows = client.query(&statement, &[&uuids]).await?;
        rows.iter()
            .map(|r| {
                Ok(DeliveryTarget {
                    id: WebhookId::from_uuid(r.try_get(0)?),
                    url: r.try_get(1)?,
                    secret_sealed: r.try_get(2)?,
                    is_active: r.try_get(3)?,
                    deleted: r.try_get(4)?,
                    key_revoked: r.try_get(5)?,
                    key_free_tier: r.try_get::<_, Option<bool>>(6)?.unwrap_or(false),
                    previous_secret: match (r.try_get(7)?, r.try_get(8)?) {
                        (Some(sealed), Some(until)) => Some((sealed, until)),
                        _ => None,
                    },
                    fifo: r.try_get(9)?,
                })
            })
            .collect()
    }

    /// A page of a webhook's deliveries, newest first, each with every attempt; `None` if the
    /// webhook is not the owner's. `before` is the `seq` cursor of the previous page.
    #[tracing::instrument(skip_all, fields(key_id = %owner, webhook_id = %webhook))]
    pub async fn list_deliveries(
        &self,
        owner: ApiKeyId,
        webhook: WebhookId,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Option<Vec<DeliveryRecord>>, StoreError> {
        self.find_deliveries(owner, webhook, &DeliveryFilter::default(), before, limit)
            .await
    }

    /// One delivery of a webhook, with every attempt; `Ok(None)` if the webhook is not the
    /// owner's, `Ok(Some(None))` if it has no such delivery (or it left the log).
    #[tracing::instrument(skip_all, fields(key_id = %owner, webhook_id = %webhook, delivery_id = %delivery))]
    pub async fn get_delivery(
        &self,
        owner: ApiKeyId,
        webhook: WebhookId,
        delivery: DeliveryId,
    ) -> Result<Option<Option<DeliveryRecord>>, StoreError> {
        let filter = DeliveryFilter {
            delivery: Some(delivery),
            ..DeliveryFilter::default()
        };
        Ok(self
            .find_deliveries(owner, webhook, &filter, None, 1)
            .await?
            .map(|mut page| page.pop()))
    }

    /// A page of a webhook's deliveries that pass `filter`, newest first, each with every
    /// attempt; `None` if the webhook is not the owner's. `before` is the `seq` cursor of the
    /// previous page (of the same filter).
    #[tracing::instrument(skip_all, fields(key_id = %owner, webhook_id = %webhook))]
    pub async fn find_deliveries(
        &self,
        owner: ApiKeyId,
        webhook: WebhookId,
        filter: &DeliveryFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Option<Vec<DeliveryRecord>>, StoreError> {
        let client = self.pool.get().await?;
        let owned = client
            .query_opt(
                "SELECT 1 FROM webhooks WHERE id = $1 AND api_key_id = $2 AND deleted_at IS NULL",
                &[&webhook.as_uuid(), &owner.as_uuid()],
            )
            .await?;
        if owned.is_none() {
            return Ok(None);
        }
        let rows = client
            .query(
                "SELECT d.id, d.seq, d.event_id, e.event_type, d.status, d.attempts,
                        d.next_attempt_at, d.skip_reason, d.created_at, d.updated_at,
                        e.source = 'test'
                 FROM deliveries d JOIN events e ON e.id = d.event_id
                 WHERE d.webhook_id = $1 AND ($2::int8 IS NULL OR d.seq < $2)
                   AND ($4::text IS NULL OR d.status = $4)
                   AND ($5::text IS NULL OR e.event_type = $5)
                   AND ($6::timestamptz IS NULL OR d.created_at >= $6)
                   AND ($7::timestamptz IS NULL OR d.created_at < $7)
                   AND ($8::uuid IS NULL OR d.id = $8)
                 ORDER BY d.seq DESC LIMIT $3",
                &[
                    &webhook.as_uuid(),
                    &before,
                    &limit,
                    &filter.status.map(DeliveryStatus::as_str),
                    &filter.event_type.map(EventType::as_str),
                    &filter.since,
                    &filter.until,
                    &filter.delivery.map(|d| d.as_uuid()),
                ],
            )
            .await?;
        let mut deliveries = Vec::with_capacity(rows.len());
        for r in &rows {
            let event_type: String = r.try_get(3)?;
            let status: String = r.try_get(4)?;
            let attempts: i32 = r.try_get(5)?;
            deliveries.push(DeliveryRecord {
                id: DeliveryId::from_uuid(r.try_get(0)?),
                seq: r.try_get(1)?,
                event_id: EventId::from_uuid(r.try_get(2)?),
                event_type: event_type
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("event type {event_type}")))?,
                status: DeliveryStatus::parse(&status)?,
                attempts: u32::try_from(attempts).unwrap_or(0),
                next_attempt_at: r.try_get(6)?,
                skip_reason: r.try_get(7)?,
                created_at: r.try_get(8)?,
                updated_at: r.try_get(9)?,
                attempt_log: Vec::new(),
                test: r.try_get(10)?,
            });
        }
        let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id.as_uuid()).collect();
        let attempt_rows = client
            .query(
                "SELECT delivery_id, attempt, attempted_at, status_code, error_kind, latency_ms,
                        response_snippet, next_retry_at
                 FROM delivery_attempts WHERE delivery_id = ANY($1) ORDER BY delivery_id, attempt",
                &[&ids],
            )
            .await?;
        let mut by_delivery: HashMap<Uuid, Vec<AttemptRow>> = HashMap::new();
        for r in &attempt_rows {
            let attempt: i32 = r.try_get(1)?;
            let code: Option<i32> = r.try_get(3)?;
            let latency: i32 = r.try_get(5)?;
            by_delivery
                .entry(r.try_get(0)?)
                .or_default()
                .push(AttemptRow {
                    attempt: u32::try_from(attempt).unwrap_or(0),
                    attempted_at: r.try_get(2)?,
                    status_code: code.and_then(|c| u16::try_from(c).ok()),
                    error_kind: r.try_get(4)?,
                    latency_ms: u32::try_from(latency).unwrap_or(0),
                    response_snippet: r.try_get(6)?,
                    next_retry_at: r.try_get(7)?,
                });
        }
        for d in &mut deliveries {
            d.attempt_log = by_delivery.remove(&d.id.as_uuid()).unwrap_or_default();
        }
        Ok(Some(deliveries))
    }

    /// Claims a failed or skipped delivery of the owner's active webhook for a re-send: it
    /// becomes pending again and the caller publishes its task.
    #[tracing::instrument(skip_all, fields(webhook_id = %webhook, delivery_id = %delivery))]
    pub async fn claim_resend(
        &self,
        owner: ApiKeyId,
        webhook: WebhookId,
        delivery: DeliveryId,
    ) -> Result<Resend, ResendError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let owned = tx
            .query_opt(
                "SELECT 1 FROM webhooks WHERE id = $1 AND api_key_id = $2 AND deleted_at IS NULL",
                &[&webhook.as_uuid(), &owner.as_uuid()],
            )
            .await?;
        if owned.is_none() {
            return Err(ResendError::WebhookNotFound);
        }
        // By delivery id alone: each partition's index is probed (a few dozen).
        let row = tx
            .query_opt(
                "SELECT d.status, d.attempts, d.event_id, e.event_type, e.body, w.is_active,
                        d.event_received_at, e.source = 'test'
                 FROM deliveries d
                 JOIN webhooks w ON w.id = d.webhook_id
                 JOIN events e ON e.id = d.event_id
                 WHERE d.id = $1 AND d.webhook_id = $2
                 FOR UPDATE OF d",
                &[&delivery.as_uuid(), &webhook.as_uuid()],
            )
            .await?
            .ok_or(ResendError::NotFound)?;
        let status = DeliveryStatus::parse(row.try_get(0)?)?;
        if !matches!(status, DeliveryStatus::Failed | DeliveryStatus::Skipped) {
            return Err(ResendError::NotFailed(status.as_str()));
        }
        if !row.try_get::<_, bool>(5)? {
            return Err(ResendError::WebhookInactive);
        }
        let attempts: i32 = row.try_get(1)?;
        let event_type: String = row.try_get(3)?;
        let key: DateTime<Utc> = row.try_get(6)?;
        tx.execute(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = now(), skip_reason = NULL,
                                   claimed_attempt = NULL, series_start = attempts + 1,
                                   updated_at = now()
             WHERE id = $1 AND event_received_at = $2",
            &[&delivery.as_uuid(), &key],
        )
        .await?;
        tx.commit().await?;
        Ok(Resend {
            event_id: EventId::from_uuid(row.try_get(2)?),
            event_type: event_type
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("event type {event_type}")))?,
            body: row.try_get(4)?,
            attempt: u32::try_from(attempts).unwrap_or(0) + 1,
            test: row.try_get(7)?,
            previous: status,
        })
    }

    /// Takes up to `limit` pending deliveries whose next attempt was due more than `after`
    /// ago, oldest first, and moves their due time to now: the caller publishes each attempt
    /// again. An attempt is taken once, and again only when it is still missing `10 × after`
    /// later, so a backlog that holds retries late adds one copy each, not one per sweep.
    /// Rows another sweeper holds are skipped, so concurrent delivery processes take disjoint
    /// sets. A delivery whose event is gone is not returned.
    #[tracing::instrument(skip_all, fields(limit))]
    pub async fn take_overdue_retries(
        &self,
        after: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<OverdueRetry>, StoreError> {
        let client = self.pool.get().await?;
        let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "WITH due AS (
                     SELECT id, event_received_at, next_attempt_at FROM deliveries
                     WHERE status = 'pending'
                       AND next_attempt_at < now() - make_interval(secs => $1::bigint / 1000.0)
                       AND (swept_attempt IS NULL OR swept_attempt <= attempts
                            OR next_attempt_at
                               < now() - make_interval(secs => $1::bigint * 10 / 1000.0))
                       -- An ordered webhook's delivery waiting behind an earlier one is not
                       -- missing: only the head of its line is published again.
                       AND NOT EXISTS (
                           SELECT 1 FROM fifo_line me
                           JOIN fifo_line l ON l.webhook_id = me.webhook_id
                                           AND (l.accepted_at, l.event_id)
                                               < (me.accepted_at, me.event_id)
                           JOIN deliveries p ON p.id = l.delivery_id
                                            AND p.event_received_at = l.event_received_at
                           WHERE me.delivery_id = deliveries.id AND p.status = 'pending')
                     ORDER BY next_attempt_at
                     LIMIT $2
                     FOR UPDATE SKIP LOCKED),
                 moved AS (
                     UPDATE deliveries d SET next_attempt_at = now(),
                                             swept_attempt = d.attempts + 1
                     FROM due
                     WHERE d.id = due.id AND d.event_received_at = due.event_received_at
                     RETURNING d.id, d.event_id, d.webhook_id, d.attempts,
                               COALESCE(d.series_start, 1) AS series_start, due.next_attempt_at)
                 SELECT m.id, m.event_id, m.webhook_id, e.event_type, e.body, m.attempts,
                        m.series_start, e.source = 'test', m.next_attempt_at
                 FROM moved m JOIN events e ON e.id = m.event_id
                 ORDER BY m.next_attempt_at",
                &[&after_ms, &i64::from(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(OverdueRetry {
                    task: next_attempt(
                        (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
                        (r.try_get(3)?, r.try_get(4)?),
                        (r.try_get(5)?, r.try_get(6)?),
                        r.try_get::<_, Option<bool>>(7)?.unwrap_or(false),
                    )?,
                    due: r.try_get(8)?,
                })
            })
            .collect()
    }

    /// Undoes [`Store::claim_resend`] when the task could not be published.
    pub async fn unclaim_resend(
        &self,
        delivery: DeliveryId,
        previous: DeliveryStatus,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE deliveries SET status = $2, next_attempt_at = NULL WHERE id = $1 AND status = 'pending'",
                &[&delivery.as_uuid(), &previous.as_str()],
            )
            .await?;
        Ok(())
    }
}

impl Store {
    /// The status of one delivery, whoever owns it (operators and tests).
    pub async fn delivery_status(
        &self,
        id: DeliveryId,
    ) -> Result<Option<DeliveryStatus>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT status FROM deliveries WHERE id = $1",
                &[&id.as_uuid()],
            )
            .await?;
        row.map(|r| DeliveryStatus::parse(r.try_get(0)?))
            .transpose()
    }
}

/// Outcomes with the start times of their attempts.
type Timed = Vec<(DateTime<Utc>, Outcome)>;

/// Inserts the attempt rows of `records` (skips have none), in the order the attempts
/// happened. Returns the attempts that were new; one already stored is left as it was.
async fn insert_attempts(
    tx: &deadpool_postgres::Transaction<'_>,
    records: &[AttemptRecord],
) -> Result<HashSet<(DeliveryId, u32)>, StoreError> {
    let mut a_delivery = Vec::new();
    let mut a_event = Vec::new();
    let mut a_hook = Vec::new();
    let mut a_attempt = Vec::new();
    let mut a_at = Vec::new();
    let mut a_code: Vec<Option<i32>> = Vec::new();
    let mut a_error: Vec<Option<&str>> = Vec::new();
    let mut a_latency = Vec::new();
    let mut a_snippet: Vec<Option<&str>> = Vec::new();
    let mut a_next: Vec<Option<DateTime<Utc>>> = Vec::new();
    let mut ordered: Vec<&AttemptRecord> = records.iter().collect();
    ordered.sort_by_key(|r| r.at);
    for r in ordered {
        if let RecordKind::Attempt {
            status_code,
            error_kind,
            latency_ms,
            snippet,
            next_retry_at,
            ..
        } = &r.kind
        {
            a_delivery.push(r.delivery_id.as_uuid());
            a_event.push(r.event_id.as_uuid());
            a_hook.push(r.webhook_id.as_uuid());
            a_attempt.push(to_i32(r.attempt));
            a_at.push(r.at);
            a_code.push(status_code.map(i32::from));
            a_error.push(*error_kind);
            a_latency.push(to_i32(*latency_ms));
            a_snippet.push(snippet.as_deref());
            a_next.push(*next_retry_at);
        }
    }
    if a_delivery.is_empty() {
        return Ok(HashSet::new());
    }
    // Without foreign keys (V3) the writer checks that the event and the webhook exist; an
    // unpublished test event is removed with its deliveries, and its late records with it,
    // as is an event past the retention. The event gives the partition key.
    let statement = tx
        .prepare_cached(
            "INSERT INTO delivery_attempts (delivery_id, attempt, attempted_at, status_code,
                                            error_kind, latency_ms, response_snippet, next_retry_at,
                                            event_received_at)
             SELECT u.delivery_id, u.attempt, u.attempted_at, u.status_code, u.error_kind,
                    u.latency_ms, u.response_snippet, u.next_retry_at, e.received_at
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int4[], $5::timestamptz[],
                         $6::int4[], $7::text[], $8::int4[], $9::text[], $10::timestamptz[])
                  WITH ORDINALITY
                  AS u(delivery_id, event_id, webhook_id, attempt, attempted_at, status_code,
                       error_kind, latency_ms, response_snippet, next_retry_at, ord)
             JOIN events e ON e.id = u.event_id
             WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.id = u.webhook_id)
             -- Rows go in in attempt order, so recorded_at (clock_timestamp()) follows it
             -- within a batch as it follows the lock order between batches.
             ORDER BY u.ord
             ON CONFLICT (delivery_id, attempt, event_received_at) DO NOTHING
             RETURNING delivery_id, attempt",
        )
        .await?;
    let rows = tx
        .query(
            &statement,
            &[
                &a_delivery,
                &a_event,
                &a_hook,
                &a_attempt,
                &a_at,
                &a_code,
                &a_error,
                &a_latency,
                &a_snippet,
                &a_next,
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let attempt: i32 = r.try_get(1)?;
            Ok((
                DeliveryId::from_uuid(r.try_get(0)?),
                u32::try_from(attempt).unwrap_or(0),
            ))
        })
        .collect()
}

/// Moves each delivery of `records` to the state of its newest record (creating its row on
/// its first attempt). Rows created here get their log order (seq) in attempt order.
async fn upsert_deliveries(
    tx: &deadpool_postgres::Transaction<'_>,
    records: &[&AttemptRecord],
) -> Result<(), StoreError> {
    let mut latest: HashMap<DeliveryId, &AttemptRecord> = HashMap::new();
    for r in records {
        let keep = latest.get(&r.delivery_id).is_none_or(|old| {
            (r.attempt, matches!(r.kind, RecordKind::Attempt { .. }))
                >= (old.attempt, matches!(old.kind, RecordKind::Attempt { .. }))
        });
        if keep {
            latest.insert(r.delivery_id, r);
        }
    }
    if latest.is_empty() {
        return Ok(());
    }
    let mut d_id = Vec::new();
    let mut d_event = Vec::new();
    let mut d_hook = Vec::new();
    let mut d_status = Vec::new();
    let mut d_attempts = Vec::new();
    let mut d_last: Vec<Option<DateTime<Utc>>> = Vec::new();
    let mut d_next: Vec<Option<DateTime<Utc>>> = Vec::new();
    let mut d_skip: Vec<Option<&str>> = Vec::new();
    let mut latest: Vec<&AttemptRecord> = latest.into_values().collect();
    latest.sort_by_key(|r| r.at);
    for r in latest {
        d_id.push(r.delivery_id.as_uuid());
        d_event.push(r.event_id.as_uuid());
        d_hook.push(r.webhook_id.as_uuid());
        d_status.push(r.status().as_str());
        d_attempts.push(r.attempts_made());
        match &r.kind {
            RecordKind::Attempt { next_retry_at, .. } => {
                d_last.push(Some(r.at));
                d_next.push(*next_retry_at);
                d_skip.push(None);
            }
            RecordKind::Skipped { reason } => {
                d_last.push(None);
                d_next.push(None);
                d_skip.push(Some(reason));
            }
        }
    }
    let statement = tx
        .prepare_cached(
            "INSERT INTO deliveries AS d (id, event_id, webhook_id, status, attempts,
                                      last_attempt_at, next_attempt_at, skip_reason,
                                      event_received_at)
         SELECT u.id, u.event_id, u.webhook_id, u.status, u.attempts, u.last_at, u.next_at, u.skip,
                e.received_at
         FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::int4[],
                     $6::timestamptz[], $7::timestamptz[], $8::text[])
              AS u(id, event_id, webhook_id, status, attempts, last_at, next_at, skip)
         JOIN events e ON e.id = u.event_id
         WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.id = u.webhook_id)
         ON CONFLICT (id, event_received_at) DO UPDATE SET
             status = EXCLUDED.status,
             attempts = EXCLUDED.attempts,
             last_attempt_at = COALESCE(EXCLUDED.last_attempt_at, d.last_attempt_at),
             next_attempt_at = EXCLUDED.next_attempt_at,
             skip_reason = EXCLUDED.skip_reason,
             updated_at = now()
         WHERE d.attempts <= EXCLUDED.attempts
           AND NOT (d.status = 'succeeded' AND d.attempts = EXCLUDED.attempts)",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &d_id,
            &d_event,
            &d_hook,
            &d_status,
            &d_attempts,
            &d_last,
            &d_next,
            &d_skip,
        ],
    )
    .await?;
    Ok(())
}

/// A webhook's row as the disable rule needs it.
struct Locked {
    active: bool,
    history: FailureHistory<DateTime<Utc>>,
}

/// Locks the rows of every webhook `records` attempted (skips change no count), in id order,
/// and reads their failure histories.
async fn lock_webhooks(
    tx: &deadpool_postgres::Transaction<'_>,
    records: &[AttemptRecord],
) -> Result<HashMap<WebhookId, Locked>, StoreError> {
    let mut ids: Vec<Uuid> = records
        .iter()
        .filter(|r| matches!(r.kind, RecordKind::Attempt { .. }))
        .map(|r| r.webhook_id.as_uuid())
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let statement = tx
        .prepare_cached(
            "SELECT id, is_active, failures_counted_since, failure_times FROM webhooks
             WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .await?;
    let rows = tx.query(&statement, &[&ids]).await?;
    rows.iter()
        .map(|row| {
            Ok((
                WebhookId::from_uuid(row.try_get(0)?),
                Locked {
                    active: row.try_get(1)?,
                    history: FailureHistory {
                        counted_since: row.try_get(2)?,
                        failures: row.try_get(3)?,
                    },
                },
            ))
        })
        .collect()
}

/// Applies the outcomes of the new attempts in `records` to their webhooks' failure
/// histories (locked by [`lock_webhooks`]), in the order the attempts started (the rule:
/// [`DisableRule::apply`]), and disables the webhooks that reached the threshold. Writes
/// only the rows whose history changed; returns the webhooks it disabled.
async fn count_failures(
    tx: &deadpool_postgres::Transaction<'_>,
    records: &[&AttemptRecord],
    histories: HashMap<WebhookId, Locked>,
    rule: DisableRule,
) -> Result<Vec<Disabled>, StoreError> {
    let mut outcomes: HashMap<WebhookId, Timed> = HashMap::new();
    for r in records {
        if let RecordKind::Attempt { outcome, .. } = r.kind {
            outcomes
                .entry(r.webhook_id)
                .or_default()
                .push((r.at, outcome));
        }
    }
    let mut disabled = Vec::new();
    let mut u_id = Vec::new();
    let mut u_since: Vec<Option<DateTime<Utc>>> = Vec::new();
    let mut u_times: Vec<String> = Vec::new();
    let mut u_count = Vec::new();
    let mut u_disable = Vec::new();
    let mut u_reason: Vec<Option<String>> = Vec::new();
    let mut ids: Vec<&WebhookId> = outcomes.keys().collect();
    ids.sort();
    for id in ids {
        let Some(locked) = histories.get(id) else {
            continue;
        };
        let state = rule.apply(&locked.history, &outcomes[id]);
        let disable = locked.active && state.disable.is_some();
        if state.history == locked.history && !disable {
            continue;
        }
        let reason = state.disable.as_ref().map(DisableReason::describe);
        if disable {
            disabled.push(Disabled {
                webhook_id: *id,
                reason: reason.clone().unwrap_or_default(),
            });
        }
        u_id.push(id.as_uuid());
        u_since.push(state.history.counted_since);
        u_count.push(to_i32(state.history.consecutive_failures()));
        u_times.push(timestamps_literal(&state.history.failures));
        u_disable.push(disable);
        u_reason.push(reason);
    }
    if u_id.is_empty() {
        return Ok(disabled);
    }
    // unnest cannot take an array of arrays of differing lengths: each history travels as
    // an array literal and is cast back.
    let statement = tx
        .prepare_cached(
            "UPDATE webhooks AS w SET
             failures_counted_since = u.since,
             failure_times = u.times::timestamptz[],
             consecutive_failures = u.count,
             is_active = w.is_active AND NOT u.disable,
             disabled_reason = CASE WHEN u.disable THEN u.reason ELSE w.disabled_reason END,
             disabled_at = CASE WHEN u.disable THEN now() ELSE w.disabled_at END,
             updated_at = CASE WHEN u.disable THEN now() ELSE w.updated_at END
         FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::int4[], $5::bool[], $6::text[])
              AS u(id, since, times, count, disable, reason)
         WHERE w.id = u.id",
        )
        .await?;
    tx.execute(
        &statement,
        &[&u_id, &u_since, &u_times, &u_count, &u_disable, &u_reason],
    )
    .await?;
    Ok(disabled)
}

/// A PostgreSQL array literal of timestamps (RFC 3339, exact to the microsecond).
fn timestamps_literal(times: &[DateTime<Utc>]) -> String {
    let inner: Vec<String> = times
        .iter()
        .map(|t| {
            format!(
                "\"{}\"",
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            )
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}
