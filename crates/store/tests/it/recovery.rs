//! `claim_recovery`: what a webhook did not get in a window, claimed once each, in event
//! order, within its limits.

use aioka_core::disable::{DisableRule, Outcome};
use aioka_core::event::EventType;
use aioka_core::{ApiKeyId, DeliveryId, EventId, WebhookId};
use aioka_store::{
    AttemptRecord, DeliveryStatus, EventSource, NewEvent, RecordKind, RecoveryLimits, Store,
    WebhookPatch,
};
use aioka_testkit::TestDb;
use chrono::{DateTime, Duration, Utc};

use crate::sql;

const RULE: DisableRule = DisableRule { threshold: 10 };
const WIDE: RecoveryLimits = RecoveryLimits {
    deliveries: 100,
    events: 100,
};

/// A webhook for verdicts, its owner, and a time before anything was accepted.
async fn webhook(db: &TestDb) -> (WebhookId, ApiKeyId, DateTime<Utc>) {
    let start = Utc::now() - Duration::seconds(1);
    let (id, owner) = crate::webhook(db).await;
    (id, owner, start)
}

/// A producer's event of `event_type`, fanned out (to whom it was: the test says).
pub(crate) async fn event(db: &TestDb, event_type: EventType) -> EventId {
    let id = EventId::new();
    db.store
        .insert_direct_event(&NewEvent {
            id,
            event_type,
            occurred_at: Utc::now(),
            body: "{\"n\":1}",
            source: EventSource::Http,
            accepted_at: None,
        })
        .await
        .unwrap();
    sql(db)
        .await
        .execute(
            "UPDATE events SET fanned_out_at = now() WHERE id = $1",
            &[&id.as_uuid()],
        )
        .await
        .unwrap();
    id
}

pub(crate) async fn record(store: &Store, event: EventId, webhook: WebhookId, kind: RecordKind) {
    store
        .record_batch(
            &[AttemptRecord {
                delivery_id: DeliveryId::for_pair(event, webhook),
                event_id: event,
                webhook_id: webhook,
                attempt: 1,
                at: Utc::now(),
                kind,
            }],
            RULE,
        )
        .await
        .unwrap();
}

pub(crate) fn attempt(outcome: Outcome) -> RecordKind {
    RecordKind::Attempt {
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
    }
}

pub(crate) async fn set_active(store: &Store, owner: ApiKeyId, webhook: WebhookId, active: bool) {
    store
        .update_webhook(
            owner,
            webhook,
            &WebhookPatch {
                is_active: Some(active),
                ..WebhookPatch::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn failed_skipped_and_never_sent_are_claimed_in_event_order_once_each_within_the_limits() {
    let db = TestDb::new().await;
    let store = &db.store;
    let (hook, owner, since) = webhook(&db).await;

    let failed = event(&db, EventType::VerdictNew).await;
    record(store, failed, hook, attempt(Outcome::Failure)).await;
    let succeeded = event(&db, EventType::VerdictNew).await;
    record(store, succeeded, hook, attempt(Outcome::Success)).await;
    set_active(store, owner, hook, false).await;
    let skipped = event(&db, EventType::VerdictNew).await;
    record(
        store,
        skipped,
        hook,
        RecordKind::Skipped {
            reason: "webhook disabled",
        },
    )
    .await;
    let never_sent = event(&db, EventType::VerdictNew).await;
    let other_type = event(&db, EventType::MacroAlert).await;
    assert!(matches!(
        store
            .claim_recovery(owner, hook, since, Utc::now(), WIDE)
            .await,
        Err(aioka_store::ResendError::WebhookInactive)
    ));
    set_active(store, owner, hook, true).await;
    // Accepted after the re-enable: fan-out sent it; its first attempt has no row yet.
    let live = event(&db, EventType::VerdictNew).await;
    let until = Utc::now() + Duration::seconds(1);

    // One at a time: each call takes the next in event order and says where to go on.
    let mut taken = Vec::new();
    let mut from = since;
    loop {
        let got = store
            .claim_recovery(
                owner,
                hook,
                from,
                until,
                RecoveryLimits {
                    deliveries: 1,
                    events: 100,
                },
            )
            .await
            .unwrap();
        taken.extend(
            got.tasks
                .iter()
                .map(|t| (t.task.event_id, t.task.attempt, t.task.series_start, t.was)),
        );
        match got.next_since {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(
        taken,
        [
            (failed, 2, 2, Some(DeliveryStatus::Failed)),
            // A skip made no attempt: its re-send is the first.
            (skipped, 1, 1, Some(DeliveryStatus::Skipped)),
            (never_sent, 1, 1, None),
        ]
    );
    for (event, status) in [
        (failed, Some(DeliveryStatus::Pending)),
        (skipped, Some(DeliveryStatus::Pending)),
        (never_sent, Some(DeliveryStatus::Pending)),
        (succeeded, Some(DeliveryStatus::Succeeded)),
        (other_type, None),
        (live, None),
    ] {
        let got = store
            .delivery_status(DeliveryId::for_pair(event, hook))
            .await
            .unwrap();
        assert_eq!(got, status, "{event}");
    }
    // Claimed is pending: the same window again takes nothing.
    let again = store
        .claim_recovery(owner, hook, since, until, WIDE)
        .await
        .unwrap();
    assert!(again.tasks.is_empty(), "{:?}", again.tasks);

    // An event limit stops the scan too, before anything is found.
    let capped = store
        .claim_recovery(
            owner,
            hook,
            since,
            until,
            RecoveryLimits {
                deliveries: 100,
                events: 2,
            },
        )
        .await
        .unwrap();
    assert!(capped.tasks.is_empty());
    assert!(capped.next_since.is_some());
}

#[tokio::test]
async fn undone_claims_restore_the_status_and_remove_the_rows_they_made() {
    let db = TestDb::new().await;
    let store = &db.store;
    let (hook, owner, since) = webhook(&db).await;
    let failed = event(&db, EventType::VerdictNew).await;
    record(store, failed, hook, attempt(Outcome::Failure)).await;
    set_active(store, owner, hook, false).await;
    let never_sent = event(&db, EventType::VerdictNew).await;
    set_active(store, owner, hook, true).await;

    let got = store
        .claim_recovery(owner, hook, since, Utc::now(), WIDE)
        .await
        .unwrap();
    assert_eq!(got.tasks.len(), 2);
    store.unclaim_recovery(&got.tasks).await.unwrap();
    let status = |event| store.delivery_status(DeliveryId::for_pair(event, hook));
    assert_eq!(status(failed).await.unwrap(), Some(DeliveryStatus::Failed));
    assert_eq!(status(never_sent).await.unwrap(), None);
    // And a next recovery takes both again.
    let again = store
        .claim_recovery(owner, hook, since, Utc::now(), WIDE)
        .await
        .unwrap();
    assert_eq!(again.tasks.len(), 2);
}
