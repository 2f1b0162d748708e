//! `check_reach`: an event fanned out a while ago gets a due row for each webhook it surely
//! went to and that has none; and a late first attempt's claim creates its row.

use std::collections::BTreeSet;
use std::time::Duration as StdDuration;

use aioka_core::disable::Outcome;
use aioka_core::event::EventType;
use aioka_core::{DeliveryId, EventId, WebhookId};
use aioka_store::{ClaimAsk, ClaimOutcome, Store};
use aioka_testkit::TestDb;

use crate::recovery::{attempt, event, record, set_active};
use crate::sql;

const AFTER: StdDuration = StdDuration::from_secs(60);
const LEASE: StdDuration = StdDuration::from_secs(30);

/// A webhook for verdicts registered an hour ago (and not changed since).
async fn old_webhook(db: &TestDb) -> (WebhookId, aioka_core::ApiKeyId) {
    let (id, owner) = crate::webhook(db).await;
    sql(db)
        .await
        .execute(
            "UPDATE webhooks SET created_at = now() - interval '1 hour',
                                 updated_at = now() - interval '1 hour'
             WHERE id = $1",
            &[&id.as_uuid()],
        )
        .await
        .unwrap();
    (id, owner)
}

/// A verdict accepted `ago` seconds ago and fanned out a second later, not yet checked.
async fn fanned_out(db: &TestDb, ago: i64) -> EventId {
    let id = event(db, EventType::VerdictNew).await;
    sql(db)
        .await
        .execute(
            "UPDATE events SET received_at = now() - make_interval(secs => $2),
                               fanned_out_at = now() - make_interval(secs => $2 - 1),
                               reach_checked = false
             WHERE id = $1",
            &[&id.as_uuid(), &(ago as f64)],
        )
        .await
        .unwrap();
    id
}

async fn checked(db: &TestDb, event: EventId) -> bool {
    sql(db)
        .await
        .query_one(
            "SELECT reach_checked FROM events WHERE id = $1",
            &[&event.as_uuid()],
        )
        .await
        .unwrap()
        .get(0)
}

fn ask(event: EventId, webhook: WebhookId, create: bool) -> ClaimAsk {
    ClaimAsk {
        event,
        delivery: DeliveryId::for_pair(event, webhook),
        attempt: 1,
        create_for: create.then_some(webhook),
    }
}

async fn claim(store: &Store, asks: &[ClaimAsk]) -> Vec<ClaimOutcome> {
    store
        .claim_attempts(asks, LEASE)
        .await
        .unwrap()
        .iter()
        .map(|c| c.outcome)
        .collect()
}

#[tokio::test]
async fn only_webhooks_surely_fanned_out_to_and_without_a_row_get_one_due_once_per_event() {
    let db = TestDb::new().await;
    let store = &db.store;
    let (reached, _) = old_webhook(&db).await;
    let (lost, _) = old_webhook(&db).await;
    let (disabled, disabled_owner) = old_webhook(&db).await;
    let (disabled_before, disabled_before_owner) = old_webhook(&db).await;
    let (disabled_during, disabled_during_owner) = old_webhook(&db).await;
    let (changed, _) = old_webhook(&db).await;
    let (_newcomer, _) = crate::webhook(&db).await;
    let old = fanned_out(&db, 600).await;
    let recent = fanned_out(&db, 10).await;
    record(store, old, reached, attempt(Outcome::Success)).await;
    // Disabled after the event's fan-out (its last change): its copy is recorded skipped.
    // Disabled an hour ago, or while the event was being fanned out (between its accepting
    // and the fan-out's end): fan-out may have given it nothing.
    set_active(store, disabled_owner, disabled, false).await;
    for (hook, owner, at) in [
        (
            disabled_before,
            disabled_before_owner,
            "now() - interval '1 hour'",
        ),
        (
            disabled_during,
            disabled_during_owner,
            "now() - interval '599.5 seconds'",
        ),
    ] {
        set_active(store, owner, hook, false).await;
        sql(&db)
            .await
            .execute(
                &format!("UPDATE webhooks SET disabled_at = {at}, updated_at = {at} WHERE id = $1"),
                &[&hook.as_uuid()],
            )
            .await
            .unwrap();
    }
    // Changed after the event was accepted: what fan-out saw of it is unknown.
    sql(&db)
        .await
        .execute(
            "UPDATE webhooks SET updated_at = now() WHERE id = $1",
            &[&changed.as_uuid()],
        )
        .await
        .unwrap();

    let reach = store.check_reach(AFTER, 1_000).await.unwrap();
    let missing: BTreeSet<_> = reach.missing.iter().copied().collect();
    assert_eq!(
        missing,
        BTreeSet::from([(old, lost), (old, disabled)]),
        "{reach:?}"
    );
    assert_eq!(reach.events, 1, "the recent event is not due: {reach:?}");
    assert_eq!(
        reach.pairs, 3,
        "reached, lost and disabled are the pairs looked at"
    );
    assert!(checked(&db, old).await);
    assert!(!checked(&db, recent).await);

    // The row is due at once: the retry sweep publishes attempt 1 of the lost delivery.
    let overdue = store.take_overdue_retries(AFTER, 100).await.unwrap();
    let tasks: BTreeSet<(DeliveryId, u32)> = overdue
        .iter()
        .map(|o| (o.task.delivery_id, o.task.attempt))
        .collect();
    assert_eq!(
        tasks,
        BTreeSet::from([
            (DeliveryId::for_pair(old, lost), 1),
            (DeliveryId::for_pair(old, disabled), 1)
        ])
    );

    // Checked once: a second check finds nothing left to do.
    assert_eq!(
        store.check_reach(AFTER, 1_000).await.unwrap().events,
        0,
        "an event is checked once"
    );
}

#[tokio::test]
async fn the_check_stops_between_events_once_its_budget_is_spent() {
    let db = TestDb::new().await;
    let store = &db.store;
    old_webhook(&db).await;
    old_webhook(&db).await;
    let first = fanned_out(&db, 900).await;
    let second = fanned_out(&db, 600).await;
    let reach = store.check_reach(AFTER, 1).await.unwrap();
    assert_eq!((reach.events, reach.pairs), (1, 2), "{reach:?}");
    assert!(checked(&db, first).await, "the oldest goes first");
    assert!(!checked(&db, second).await);
    assert_eq!(store.check_reach(AFTER, 1).await.unwrap().missing.len(), 2);
    assert!(checked(&db, second).await);
}

#[tokio::test]
async fn a_late_first_attempt_claims_by_creating_its_row_so_the_check_and_its_copy_send_nothing() {
    let db = TestDb::new().await;
    let store = &db.store;
    let (hook, _) = old_webhook(&db).await;
    let (other, _) = old_webhook(&db).await;
    let event = fanned_out(&db, 600).await;

    // The late original creates its row, claimed; a second late copy finds it held.
    assert_eq!(
        claim(store, &[ask(event, hook, true)]).await,
        [ClaimOutcome::Claimed]
    );
    assert_eq!(
        claim(store, &[ask(event, hook, true)]).await,
        [ClaimOutcome::HeldByOther]
    );
    // The check finds the row: only the other webhook had none.
    let reach = store.check_reach(AFTER, 1_000).await.unwrap();
    assert_eq!(reach.missing, vec![(event, other)]);

    // The check wrote the other's row first: the late original takes its claim, and the
    // swept copy (redelivered, so it claims without creating) finds it held.
    assert_eq!(
        claim(store, &[ask(event, other, true)]).await,
        [ClaimOutcome::Claimed]
    );
    assert_eq!(
        claim(store, &[ask(event, other, false)]).await,
        [ClaimOutcome::HeldByOther]
    );
    // Without `create_for` a delivery with no row is not claimed: the caller sends.
    let fresh = fanned_out(&db, 600).await;
    assert_eq!(
        claim(store, &[ask(fresh, hook, false)]).await,
        [ClaimOutcome::NoRow]
    );
}
