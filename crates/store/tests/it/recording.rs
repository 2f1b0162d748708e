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
