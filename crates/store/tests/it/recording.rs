//! `record_batch`: attempts counted once, failure counts in the order attempts started.

use aioka_core::disable::{DisableRule, Outcome};
use aioka_core::event::EventType;
use aioka_core::{DeliveryId, EncryptionKey, EventId, WebhookId, WebhookSecret};
use aioka_store::{AttemptRecord, EventSource, NewEvent, RecordKind, SeedWebhook, Store};
use aioka_testkit::TestDb;
use chrono::{DateTime, Duration, Utc};

const RULE: DisableRule = DisableRule { threshold: 10 };

struct Fixture {
    db: TestDb,
    webhook: WebhookId,
    t0: DateTime<Utc>,
}

impl Fixture {
    async fn new() -> Self {
        let db = TestDb::new().await;
        let key = EncryptionKey::generate();
        let webhook = db
            .store
            .seed_webhooks(
                &[SeedWebhook {
                    url: "https://example.test/hook".into(),
                    secret: None,
                }],
                &[EventType::VerdictNew],
                &WebhookSecret::generate(),
                &key,
                1,
            )
            .await
            .unwrap()[0];
        Self {
            db,
            webhook,
            t0: Utc::now() - Duration::seconds(60),
        }
    }

    fn store(&self) -> &Store {
        &self.db.store
    }

    /// A stored event and the record of attempt 1 of its delivery, started at `t0 + ms`.
    async fn attempt(&self, ms: i64, outcome: Outcome) -> AttemptRecord {
        let event = EventId::new();
        self.store()
            .insert_direct_event(&NewEvent {
                id: event,
                event_type: EventType::VerdictNew,
                occurred_at: Utc::now(),
                body: "{}",
                source: EventSource::Test,
                accepted_at: None,
            })
            .await
            .unwrap();
        AttemptRecord {
            delivery_id: DeliveryId::for_pair(event, self.webhook),
            event_id: event,
            webhook_id: self.webhook,
            attempt: 1,
            at: self.t0 + Duration::milliseconds(ms),
            kind: RecordKind::Attempt {
                outcome,
                status_code: Some(if outcome == Outcome::Success {
                    200
                } else {
                    500
                }),
                error_kind: None,
                latency_ms: 1,
                snippet: None,
                next_retry_at: None,
            },
        }
    }

    async fn failures_and_active(&self) -> (i32, bool) {
        let (client, connection) = tokio_postgres::connect(&self.db.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT consecutive_failures, is_active FROM webhooks WHERE id = $1",
                &[&self.webhook.as_uuid()],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }
}

#[tokio::test]
async fn a_failure_sent_before_a_success_but_committed_after_it_does_not_count() {
    let f = Fixture::new().await;
    let failure = f.attempt(0, Outcome::Failure).await;
    let success = f.attempt(10, Outcome::Success).await;
    f.store().record_batch(&[success], RULE).await.unwrap();
    f.store().record_batch(&[failure], RULE).await.unwrap();
    assert_eq!(f.failures_and_active().await, (0, true));
}

#[tokio::test]
async fn a_batch_of_successes_older_than_the_counted_failures_does_not_reset_them() {
    let f = Fixture::new().await;
    let mut failures = Vec::new();
    for i in 0..9 {
        failures.push(f.attempt(100 + i, Outcome::Failure).await);
    }
    f.store().record_batch(&failures, RULE).await.unwrap();
    let old_success = f.attempt(5, Outcome::Success).await;
    f.store().record_batch(&[old_success], RULE).await.unwrap();
    assert_eq!(f.failures_and_active().await, (9, true));
    // The tenth failure in attempt order disables.
    let tenth = f.attempt(200, Outcome::Failure).await;
    let written = f.store().record_batch(&[tenth], RULE).await.unwrap();
    assert_eq!(written.disabled.len(), 1);
    assert_eq!(f.failures_and_active().await, (10, false));
}

#[tokio::test]
async fn a_record_seen_twice_counts_once_and_is_reported_as_a_duplicate() {
    let f = Fixture::new().await;
    let failure = f.attempt(0, Outcome::Failure).await;
    let first = f
        .store()
        .record_batch(std::slice::from_ref(&failure), RULE)
        .await
        .unwrap();
    assert_eq!(first.fresh, [true]);
    // The same attempt again, in a later batch and twice within one batch.
    let again = f
        .store()
        .record_batch(&[failure.clone(), failure.clone()], RULE)
        .await
        .unwrap();
    assert_eq!(again.fresh, [false, false]);
    assert_eq!(f.failures_and_active().await, (1, true));
    let other = f.attempt(5, Outcome::Failure).await;
    let both = f
        .store()
        .record_batch(&[other.clone(), other], RULE)
        .await
        .unwrap();
    assert_eq!(both.fresh, [true, false]);
    assert_eq!(f.failures_and_active().await, (2, true));
}

#[tokio::test]
async fn the_chain_state_tells_a_recorded_attempt_and_its_retry() {
    let f = Fixture::new().await;
    let mut failure = f.attempt(0, Outcome::Failure).await;
    let due = Utc::now() + Duration::seconds(5);
    if let RecordKind::Attempt { next_retry_at, .. } = &mut failure.kind {
        *next_retry_at = Some(due);
    }
    let before = f
        .store()
        .chain_state(failure.event_id, failure.delivery_id, 1)
        .await
        .unwrap();
    assert_eq!((before.attempts_made, before.recorded), (0, None));
    f.store()
        .record_batch(std::slice::from_ref(&failure), RULE)
        .await
        .unwrap();
    let after = f
        .store()
        .chain_state(failure.event_id, failure.delivery_id, 1)
        .await
        .unwrap();
    assert_eq!(after.attempts_made, 1);
    let recorded = after.recorded.unwrap();
    // PostgreSQL keeps microseconds.
    assert_eq!(
        recorded.at.timestamp_micros(),
        failure.at.timestamp_micros()
    );
    assert_eq!(
        recorded.next_retry_at.map(|t| t.timestamp_micros()),
        Some(due.timestamp_micros())
    );
    let next = f
        .store()
        .chain_state(failure.event_id, failure.delivery_id, 2)
        .await
        .unwrap();
    assert_eq!((next.attempts_made, next.recorded), (1, None));
}

#[tokio::test(flavor = "multi_thread")]
async fn of_many_copies_claiming_an_attempt_at_once_exactly_one_gets_it_until_its_lease_lapses() {
    use aioka_store::ClaimOutcome;
    let f = Fixture::new().await;
    let mut first = f.attempt(0, Outcome::Failure).await;
    // Failed with a retry due: the delivery stays pending.
    if let RecordKind::Attempt { next_retry_at, .. } = &mut first.kind {
        *next_retry_at = Some(Utc::now() + Duration::seconds(5));
    }
    let (event, delivery) = (first.event_id, first.delivery_id);
    let lease = std::time::Duration::from_secs(30);
    // No row before the first attempt is recorded: nothing to claim.
    let none = f
        .store()
        .claim_attempt(event, delivery, 1, lease)
        .await
        .unwrap();
    assert_eq!(none.outcome, ClaimOutcome::NoRow);
    f.store()
        .record_batch(std::slice::from_ref(&first), RULE)
        .await
        .unwrap();

    // Eight copies of attempt 2 ask at once, each on a connection of its own.
    let claims = futures_util::future::join_all(
        (0..8).map(|_| f.store().claim_attempt(event, delivery, 2, lease)),
    )
    .await;
    let outcomes: Vec<ClaimOutcome> = claims.into_iter().map(|c| c.unwrap().outcome).collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == ClaimOutcome::Claimed)
            .count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, ClaimOutcome::Claimed | ClaimOutcome::HeldByOther)),
        "{outcomes:?}"
    );
    // Attempt 1 is made: a copy of it claims nothing and is told so.
    let again = f
        .store()
        .claim_attempt(event, delivery, 1, lease)
        .await
        .unwrap();
    assert_eq!(again.outcome, ClaimOutcome::Made);
    assert!(again.state.recorded.is_some());

    // A claim whose holder died (its lease lapsed) is taken over.
    let short = std::time::Duration::from_millis(200);
    let third = f
        .store()
        .claim_attempt(event, delivery, 3, short)
        .await
        .unwrap();
    assert_eq!(third.outcome, ClaimOutcome::Claimed);
    let held = f
        .store()
        .claim_attempt(event, delivery, 3, short)
        .await
        .unwrap();
    assert_eq!(held.outcome, ClaimOutcome::HeldByOther);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let taken = f
        .store()
        .claim_attempt(event, delivery, 3, short)
        .await
        .unwrap();
    assert_eq!(taken.outcome, ClaimOutcome::Claimed);

    // The holder skips attempt 3 (its webhook was disabled): a skip records no attempt, and
    // the copies that wait on the claim are told the delivery has ended, not held.
    let skip = AttemptRecord {
        attempt: 3,
        kind: RecordKind::Skipped {
            reason: "webhook disabled",
        },
        ..first.clone()
    };
    f.store()
        .record_batch(std::slice::from_ref(&skip), RULE)
        .await
        .unwrap();
    let after_skip = f
        .store()
        .claim_attempt(event, delivery, 3, lease)
        .await
        .unwrap();
    assert_eq!(after_skip.outcome, ClaimOutcome::Made);
}

#[tokio::test]
async fn a_batch_of_claims_answers_each_ask_as_alone_and_one_copy_of_an_attempt_gets_it() {
    use aioka_store::{ClaimAsk, ClaimOutcome};
    let f = Fixture::new().await;
    let lease = std::time::Duration::from_secs(30);
    // a: attempt 1 failed, its retry due; b: no row yet; c: attempt 1 succeeded.
    let mut a = f.attempt(0, Outcome::Failure).await;
    if let RecordKind::Attempt { next_retry_at, .. } = &mut a.kind {
        *next_retry_at = Some(Utc::now() + Duration::seconds(5));
    }
    let b = f.attempt(1, Outcome::Failure).await;
    let c = f.attempt(2, Outcome::Success).await;
    f.store()
        .record_batch(&[a.clone(), c.clone()], RULE)
        .await
        .unwrap();
    let ask = |r: &AttemptRecord, attempt| ClaimAsk {
        event: r.event_id,
        delivery: r.delivery_id,
        attempt,
        create_for: None,
    };
    // Two copies of a's attempt 2 in one batch, between asks about other deliveries, and
    // a copy of a's attempt 1 (made).
    let claims = f
        .store()
        .claim_attempts(
            &[ask(&a, 2), ask(&b, 1), ask(&a, 2), ask(&c, 1), ask(&a, 1)],
            lease,
        )
        .await
        .unwrap();
    let outcomes: Vec<ClaimOutcome> = claims.iter().map(|c| c.outcome).collect();
    assert_eq!(
        outcomes,
        [
            ClaimOutcome::Claimed,
            ClaimOutcome::NoRow,
            ClaimOutcome::HeldByOther,
            ClaimOutcome::Made,
            ClaimOutcome::Made,
        ]
    );
    assert_eq!(claims[0].state.attempts_made, 1);
    assert!(claims[0].state.recorded.is_none());
    assert!(claims[3].state.recorded.is_some());
    assert!(claims[4].state.recorded.is_some());
    // The claim holds outside the batch too.
    let alone = f
        .store()
        .claim_attempt(a.event_id, a.delivery_id, 2, lease)
        .await
        .unwrap();
    assert_eq!(alone.outcome, ClaimOutcome::HeldByOther);
}

#[tokio::test]
async fn an_overdue_retry_is_taken_once_per_sweep_period_and_by_one_sweeper() {
    let f = Fixture::new().await;
    let after = std::time::Duration::from_secs(30);
    // Three deliveries failed attempt 1: one retry due 2 minutes ago, one due 10 s ago (not
    // overdue enough), one due 5 minutes ago that then succeeded on attempt 2.
    let mut records = Vec::new();
    for due_in in [-120, -10, -300] {
        let mut r = f.attempt(0, Outcome::Failure).await;
        if let RecordKind::Attempt { next_retry_at, .. } = &mut r.kind {
            *next_retry_at = Some(Utc::now() + Duration::seconds(due_in));
        }
        records.push(r);
    }
    f.store().record_batch(&records, RULE).await.unwrap();
    let success = AttemptRecord {
        attempt: 2,
        at: Utc::now(),
        kind: RecordKind::Attempt {
            outcome: Outcome::Success,
            status_code: Some(200),
            error_kind: None,
            latency_ms: 1,
            snippet: None,
            next_retry_at: None,
        },
        ..records[2].clone()
    };
    f.store()
        .record_batch(std::slice::from_ref(&success), RULE)
        .await
        .unwrap();

    // Two sweepers at once: only the overdue pending one, to exactly one of them, as attempt 2
    // of a series that began at 1, with its event's body and type.
    let (a, b) = tokio::join!(
        f.store().take_overdue_retries(after, 100),
        f.store().take_overdue_retries(after, 100)
    );
    let mut taken: Vec<_> = a.unwrap();
    taken.extend(b.unwrap());
    assert_eq!(taken.len(), 1, "{taken:?}");
    let t = &taken[0];
    assert_eq!(t.task.delivery_id, records[0].delivery_id);
    assert_eq!((t.task.attempt, t.task.series_start), (2, 1));
    assert_eq!(
        (t.task.event_type, t.task.body.as_str(), t.task.test),
        (EventType::VerdictNew, "{}", true)
    );
    // Taken means due now: the next sweep within `after` leaves it alone.
    assert!(
        f.store()
            .take_overdue_retries(after, 100)
            .await
            .unwrap()
            .is_empty()
    );
    // Its attempt was taken once: past `after` again it is left alone (a backlog may hold the
    // copy), and only past ten times `after` is it taken a second time.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let ids = |v: Vec<aioka_store::OverdueRetry>| {
        v.iter().map(|r| r.task.delivery_id).collect::<Vec<_>>()
    };
    let once = ids(f
        .store()
        .take_overdue_retries(std::time::Duration::from_millis(200), 100)
        .await
        .unwrap());
    assert!(!once.contains(&records[0].delivery_id), "{once:?}");
    assert!(
        once.contains(&records[1].delivery_id),
        "now overdue: {once:?}"
    );
    assert!(!once.contains(&records[2].delivery_id), "{once:?}");
    let twice = ids(f
        .store()
        .take_overdue_retries(std::time::Duration::from_millis(100), 100)
        .await
        .unwrap());
    assert_eq!(
        twice,
        vec![records[0].delivery_id],
        "past 10 × after, taken again"
    );
}

/// Recording the first attempt of a delivery whose row was written pending ahead of it (a
/// test event's: the gateway creates those rows) is a HOT update: no index of `deliveries`
/// covers a column that write changes, so the row is rewritten in its page and no index gains
/// an entry. V10's partial index on `status = 'pending'` broke this unnoticed.
#[tokio::test]
async fn recording_the_first_attempt_of_a_delivery_written_pending_is_a_hot_update() {
    let f = Fixture::new().await;
    let success = f.attempt(0, Outcome::Success).await;
    f.store()
        .insert_pending_deliveries(success.event_id, &[f.webhook])
        .await
        .unwrap();
    f.store()
        .record_batch(std::slice::from_ref(&success), RULE)
        .await
        .unwrap();
    let (client, connection) = tokio_postgres::connect(&f.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT tableoid::regclass::text, status FROM deliveries WHERE id = $1",
            &[&success.delivery_id.as_uuid()],
        )
        .await
        .unwrap();
    let (partition, status): (String, String) = (row.get(0), row.get(1));
    assert_eq!(status, "succeeded");
    // The partition holds this one delivery: its page 0 has the pending version and the
    // recorded one. HEAP_HOT_UPDATED (0x4000) marks the first, HEAP_ONLY_TUPLE (0x8000) the
    // second.
    let flags: Vec<i32> = client
        .query(
            "SELECT t_infomask2::int4 FROM heap_page_items(get_raw_page($1, 0))
             WHERE t_infomask2 IS NOT NULL ORDER BY lp",
            &[&partition],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(flags.len(), 2, "the pending row and its update: {flags:?}");
    assert!(
        flags[0] & 0x4000 != 0 && flags[1] & 0x8000 != 0,
        "the update of {partition} was not HOT (t_infomask2 {flags:x?})"
    );
}
