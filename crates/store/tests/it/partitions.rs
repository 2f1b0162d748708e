//! The partitioned delivery log: V8 keeps every row, maintenance creates ahead and drops only
//! whole expired partitions, an expired delivery has a clear answer, and a write that finds
//! no partition makes one.
//!
//! Maintenance takes its time as an argument, so these tests run it in 2040, where no
//! partition exists yet, under a policy of hours.

use std::collections::BTreeSet;
use std::time::Duration;

use aioka_core::disable::{DisableRule, Outcome};
use aioka_core::event::EventType;
use aioka_core::{ApiKeyId, DeliveryId, EventId, WebhookId};
use aioka_store::{
    AttemptRecord, EventSource, MAINTENANCE_LOCK, NewEvent, PartitionPolicy, RecordKind,
    ResendError, Store,
};
use aioka_testkit::TestDb;
use chrono::{DateTime, Utc};

use crate::{sql, webhook};

const RULE: DisableRule = DisableRule { threshold: 10 };

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

/// One-hour partitions kept three hours, two made ahead.
fn hours() -> PartitionPolicy {
    PartitionPolicy {
        retention: Duration::from_secs(3 * 3600),
        interval: Duration::from_secs(3600),
        ahead: 2,
    }
}

/// A stored event, received at `received` (now if `None`).
async fn event(db: &TestDb, received: Option<DateTime<Utc>>) -> EventId {
    let id = EventId::new();
    db.store
        .insert_direct_event(&NewEvent {
            id,
            event_type: EventType::VerdictNew,
            occurred_at: Utc::now(),
            body: "{}",
            source: EventSource::Test,
            accepted_at: None,
        })
        .await
        .unwrap();
    if let Some(received) = received {
        sql(db)
            .await
            .execute(
                "UPDATE events SET received_at = $2 WHERE id = $1",
                &[&id.as_uuid(), &received],
            )
            .await
            .unwrap();
    }
    id
}

/// A failed first attempt of `event` to `webhook`, with no retry left.
fn failure(event: EventId, webhook: WebhookId) -> AttemptRecord {
    AttemptRecord {
        delivery_id: DeliveryId::for_pair(event, webhook),
        event_id: event,
        webhook_id: webhook,
        attempt: 1,
        at: Utc::now(),
        kind: RecordKind::Attempt {
            outcome: Outcome::Failure,
            status_code: Some(500),
            error_kind: Some("http_status"),
            latency_ms: 3,
            snippet: None,
            next_retry_at: None,
        },
    }
}

async fn names(store: &Store) -> BTreeSet<String> {
    store
        .partitions()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect()
}

/// Both tables' partitions for the hours `from..to` of 2040-01-01.
fn hourly(from: u32, to: u32) -> BTreeSet<String> {
    (from..to)
        .flat_map(|h| {
            ["deliveries", "delivery_attempts"].map(|t| format!("{t}_p20400101t{h:02}0000"))
        })
        .collect()
}

async fn listed(store: &Store, owner: ApiKeyId, webhook: WebhookId) -> BTreeSet<DeliveryId> {
    store
        .list_deliveries(owner, webhook, None, 100)
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect()
}

/// Rows of a V7 database, as text, so the sets before and after compare whole rows.
const DELIVERY_ROWS: &str = "SELECT concat_ws('|', id, seq, event_id, webhook_id, status, attempts,
        last_attempt_at, next_attempt_at, skip_reason, created_at, updated_at) FROM deliveries";
const ATTEMPT_ROWS: &str = "SELECT concat_ws('|', delivery_id, attempt, attempted_at, status_code,
        error_kind, latency_ms, response_snippet, next_retry_at, recorded_at) FROM delivery_attempts";

async fn rows(client: &tokio_postgres::Client, query: &str) -> BTreeSet<String> {
    client
        .query(query, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn migrating_a_v7_database_keeps_every_delivery_and_attempt_and_seq_goes_on() {
    let db = TestDb::at_version(7).await;
    let (hook, owner) = webhook(&db).await;
    let client = sql(&db).await;
    // Events received 40 days, 5 days and an hour ago, deliveries of each with 1 to 3
    // attempts, and a delivery whose event is missing.
    client
        .batch_execute(&format!(
            "INSERT INTO events (id, event_type, occurred_at, body, source, received_at)
             SELECT gen_random_uuid(), 'verdict.new', now(), '{{}}', 'http', now() - d
             FROM unnest(ARRAY[interval '40 days', interval '5 days', interval '1 hour']) AS d;
             INSERT INTO deliveries (id, event_id, webhook_id, status, attempts, last_attempt_at,
                                     skip_reason, created_at)
             SELECT gen_random_uuid(), e.id, '{hook}', s, n, now(), NULLIF(s, 'failed'),
                    e.received_at + interval '1 second'
             FROM events e, unnest(ARRAY['failed', 'skipped'], ARRAY[3, 1]) AS t(s, n);
             INSERT INTO deliveries (id, event_id, webhook_id, status, created_at)
             VALUES (gen_random_uuid(), gen_random_uuid(), '{hook}', 'pending',
                     now() - interval '3 days');
             INSERT INTO delivery_attempts (delivery_id, attempt, attempted_at, status_code,
                                            error_kind, latency_ms, response_snippet, recorded_at)
             SELECT d.id, n, now() - n * interval '1 minute', 500, 'http_status', 7, 'no',
                    CASE WHEN n > 1 THEN clock_timestamp() END
             FROM deliveries d, generate_series(1, 3) AS n WHERE n <= GREATEST(d.attempts, 1);
             -- Sequence values taken by inserts that conflicted: seq must go on after them.
             SELECT nextval('deliveries_seq_seq') FROM generate_series(1, 5);",
            hook = hook.as_uuid()
        ))
        .await
        .unwrap();
    let deliveries = rows(&client, DELIVERY_ROWS).await;
    let attempts = rows(&client, ATTEMPT_ROWS).await;
    assert_eq!((deliveries.len(), attempts.len()), (7, 13));
    let last_seq: i64 = client
        .query_one("SELECT last_value FROM deliveries_seq_seq", &[])
        .await
        .unwrap()
        .get(0);

    db.store.migrate().await.unwrap();

    assert_eq!(rows(&client, DELIVERY_ROWS).await, deliveries);
    assert_eq!(rows(&client, ATTEMPT_ROWS).await, attempts);
    // Each row sits under its event's received_at (its own created_at if the event is
    // missing), and each attempt under its delivery's.
    let misplaced: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM deliveries d LEFT JOIN events e ON e.id = d.event_id
                     WHERE d.event_received_at <> COALESCE(e.received_at, d.created_at))
                  + (SELECT count(*) FROM delivery_attempts a
                     LEFT JOIN deliveries d ON d.id = a.delivery_id
                     WHERE d.event_received_at IS DISTINCT FROM a.event_received_at)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(misplaced, 0);
    let fillfactors: BTreeSet<Option<Vec<String>>> = client
        .query(
            "SELECT reloptions FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid
             WHERE i.inhparent = 'deliveries'::regclass",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        fillfactors,
        BTreeSet::from([Some(vec!["fillfactor=70".to_owned()])])
    );

    // The log reads the old rows (the delivery without an event is not listed, as before),
    // and a new delivery's seq follows the old sequence.
    assert_eq!(listed(&db.store, owner, hook).await.len(), 6);
    let fresh = event(&db, None).await;
    db.store
        .record_batch(&[failure(fresh, hook)], RULE)
        .await
        .unwrap();
    let page = db
        .store
        .list_deliveries(owner, hook, None, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page[0].id, DeliveryId::for_pair(fresh, hook));
    assert!(page[0].seq > last_seq, "{} after {last_seq}", page[0].seq);

    // The default retention (30 days) drops the 40-day-old day at once, and only it.
    let done = db.store.maintain_partitions().await.unwrap();
    assert_eq!(done.dropped.len(), 2, "{done:?}");
    assert_eq!(listed(&db.store, owner, hook).await.len(), 5);
}

#[tokio::test]
async fn maintenance_creates_partitions_ahead_and_drops_only_those_wholly_older_than_the_retention()
{
    let db = TestDb::new().await;
    let store = db.store.with_partition_policy(hours());
    let before = names(&store).await;
    let old = event(&db, Some(at("2040-01-01T10:10:00Z"))).await;
    let young = event(&db, Some(at("2040-01-01T11:10:00Z"))).await;

    let first = store
        .maintain_partitions_at(at("2040-01-01T10:30:00Z"))
        .await
        .unwrap();
    assert!(!first.skipped);
    assert_eq!(
        first.created.iter().cloned().collect::<BTreeSet<_>>(),
        hourly(10, 13)
    );
    // The day partitions V8 made around the real today all ended long before 07:30.
    assert_eq!(
        first.dropped.iter().cloned().collect::<BTreeSet<_>>(),
        before
    );
    assert_eq!(names(&store).await, hourly(10, 13));
    assert_eq!(first.log_starts_at, Some(at("2040-01-01T10:00:00Z")));

    let second = store
        .maintain_partitions_at(at("2040-01-01T12:59:00Z"))
        .await
        .unwrap();
    assert_eq!(
        second.created.iter().cloned().collect::<BTreeSet<_>>(),
        hourly(13, 15)
    );
    assert!(second.dropped.is_empty());

    // A second before 10:00's partition is wholly older than three hours, it stays.
    let straddling = store
        .maintain_partitions_at(at("2040-01-01T13:59:59Z"))
        .await
        .unwrap();
    assert!(straddling.dropped.is_empty(), "{straddling:?}");
    assert_eq!(straddling.events_trimmed, 0);
    assert!(store.fanout_progress(old).await.unwrap().is_some());

    let expired = store
        .maintain_partitions_at(at("2040-01-01T14:00:00Z"))
        .await
        .unwrap();
    assert_eq!(
        expired.dropped.iter().cloned().collect::<BTreeSet<_>>(),
        hourly(10, 11)
    );
    assert_eq!(names(&store).await, hourly(11, 17));
    assert_eq!(expired.log_starts_at, Some(at("2040-01-01T11:00:00Z")));
    // The event went with its partition; the younger one stays.
    assert_eq!(expired.events_trimmed, 1);
    assert!(store.fanout_progress(old).await.unwrap().is_none());
    assert!(store.fanout_progress(young).await.unwrap().is_some());

    let again = store
        .maintain_partitions_at(at("2040-01-01T14:00:00Z"))
        .await
        .unwrap();
    assert!(
        again.created.is_empty() && again.dropped.is_empty(),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_maintainer_that_finds_another_at_work_skips() {
    let db = TestDb::new().await;
    let store = db.store.with_partition_policy(hours());
    let other = sql(&db).await;
    other
        .execute("SELECT pg_advisory_lock($1)", &[&MAINTENANCE_LOCK])
        .await
        .unwrap();
    let skipped = store
        .maintain_partitions_at(at("2040-01-01T10:30:00Z"))
        .await
        .unwrap();
    assert!(skipped.skipped && skipped.created.is_empty(), "{skipped:?}");
    other
        .execute("SELECT pg_advisory_unlock($1)", &[&MAINTENANCE_LOCK])
        .await
        .unwrap();
    let done = store
        .maintain_partitions_at(at("2040-01-01T10:30:00Z"))
        .await
        .unwrap();
    assert!(!done.skipped && !done.created.is_empty(), "{done:?}");
}

#[tokio::test]
async fn a_delivery_whose_partition_was_dropped_is_gone_and_the_log_says_how_far_back_it_reaches() {
    let db = TestDb::new().await;
    let store = db.store.with_partition_policy(hours());
    let (hook, owner) = webhook(&db).await;
    store
        .maintain_partitions_at(at("2040-01-01T10:30:00Z"))
        .await
        .unwrap();
    let expiring = event(&db, Some(at("2040-01-01T10:10:00Z"))).await;
    let staying = event(&db, Some(at("2040-01-01T11:10:00Z"))).await;
    store
        .record_batch(&[failure(expiring, hook), failure(staying, hook)], RULE)
        .await
        .unwrap();
    let gone = DeliveryId::for_pair(expiring, hook);
    let kept = DeliveryId::for_pair(staying, hook);
    assert_eq!(
        listed(&store, owner, hook).await,
        BTreeSet::from([gone, kept])
    );

    store
        .maintain_partitions_at(at("2040-01-01T14:00:00Z"))
        .await
        .unwrap();

    assert_eq!(listed(&store, owner, hook).await, BTreeSet::from([kept]));
    assert!(matches!(
        store.claim_resend(owner, hook, gone).await,
        Err(ResendError::NotFound)
    ));
    let state = store.chain_state(expiring, gone, 1).await.unwrap();
    assert_eq!((state.attempts_made, state.recorded), (0, None));
    assert_eq!(store.delivery_status(gone).await.unwrap(), None);
    let window = store.log_window().await.unwrap();
    assert_eq!(window.starts_at, at("2040-01-01T11:00:00Z"));
    assert_eq!(window.retention, hours().retention);
    // The delivery kept can still be re-sent.
    assert!(store.claim_resend(owner, hook, kept).await.is_ok());
}

#[tokio::test]
async fn a_write_that_finds_no_partition_for_its_rows_creates_it_and_is_written() {
    let db = TestDb::new().await;
    let store = db.store.with_partition_policy(hours());
    let (hook, _) = webhook(&db).await;
    // Maintenance in 2040 leaves no partition for today's rows.
    store
        .maintain_partitions_at(at("2040-01-01T10:30:00Z"))
        .await
        .unwrap();
    let today = event(&db, None).await;

    let written = store
        .record_batch(&[failure(today, hook)], RULE)
        .await
        .unwrap();
    assert_eq!(written.fresh, [true]);
    assert_eq!(written.partitions_created.len(), 2, "{written:?}");
    let delivery = DeliveryId::for_pair(today, hook);
    let state = store.chain_state(today, delivery, 1).await.unwrap();
    assert_eq!(state.attempts_made, 1);
    assert!(state.recorded.is_some());

    // A test event's pending deliveries, written before any attempt, repair alike.
    store
        .maintain_partitions_at(at("2040-01-01T10:30:00Z"))
        .await
        .unwrap();
    let test_event = event(&db, None).await;
    store
        .insert_pending_deliveries(test_event, &[hook])
        .await
        .unwrap();
    assert_eq!(
        store
            .delivery_status(DeliveryId::for_pair(test_event, hook))
            .await
            .unwrap(),
        Some(aioka_store::DeliveryStatus::Pending)
    );
}

#[tokio::test]
async fn a_record_of_an_event_past_the_retention_whose_partition_is_gone_is_dropped() {
    let db = TestDb::new().await;
    let store = db.store.with_partition_policy(hours());
    let (hook, _) = webhook(&db).await;
    store
        .maintain_partitions_at(at("2040-01-01T10:30:00Z"))
        .await
        .unwrap();
    let before = names(&store).await;
    // Received five hours ago: its hour ended more than three hours ago.
    let old = event(&db, Some(Utc::now() - chrono::Duration::hours(5))).await;

    let written = store
        .record_batch(&[failure(old, hook)], RULE)
        .await
        .unwrap();
    assert_eq!(
        written.fresh,
        [false],
        "recorded as the record of a removed event"
    );
    assert!(written.partitions_created.is_empty());
    assert_eq!(
        names(&store).await,
        before,
        "no expired partition is made again"
    );
    assert!(store.fanout_progress(old).await.unwrap().is_none());
}

#[tokio::test]
async fn a_drop_held_up_by_a_long_transaction_blocks_no_writer_and_the_next_run_finishes_it() {
    let db = TestDb::new().await;
    let store = db.store.with_partition_policy(hours());
    let (hook, _) = webhook(&db).await;
    store
        .maintain_partitions_at(at("2040-01-01T10:30:00Z"))
        .await
        .unwrap();
    let expiring = event(&db, Some(at("2040-01-01T10:10:00Z"))).await;
    store
        .record_batch(&[failure(expiring, hook)], RULE)
        .await
        .unwrap();
    // A reader's transaction that has seen the partition, open for longer than maintenance
    // waits for a lock.
    let reader = sql(&db).await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM deliveries")
        .await
        .unwrap();

    let maintenance = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .maintain_partitions_at(at("2040-01-01T14:00:00Z"))
                .await
        }
    });
    // While the detach waits for the reader, writers go on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !maintenance.is_finished(),
        "the detach should be waiting for the reader"
    );
    let writer = event(&db, Some(at("2040-01-01T11:10:00Z"))).await;
    let started = std::time::Instant::now();
    store
        .record_batch(&[failure(writer, hook)], RULE)
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!maintenance.is_finished());

    // The detach gives up at its lock timeout, half done.
    assert!(maintenance.await.unwrap().is_err());
    let pending: Vec<_> = store
        .partitions()
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.detaching)
        .map(|p| p.name)
        .collect();
    assert_eq!(pending, ["deliveries_p20400101t100000"]);

    reader.batch_execute("COMMIT").await.unwrap();
    let done = store
        .maintain_partitions_at(at("2040-01-01T14:00:00Z"))
        .await
        .unwrap();
    assert_eq!(
        done.dropped.iter().cloned().collect::<BTreeSet<_>>(),
        hourly(10, 11),
        "{done:?}"
    );
    // (Nothing ran at 13:00, so its hour was never made ahead.)
    let kept: BTreeSet<_> = hourly(11, 13).union(&hourly(14, 17)).cloned().collect();
    assert_eq!(names(&store).await, kept);
}
