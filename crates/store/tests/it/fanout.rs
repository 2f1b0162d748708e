//! Fan-out claims: only the holder of an event's claim may record its progress.

use std::time::Duration;

use aioka_core::event::{EventType, parse_ingest};
use aioka_core::{EventId, WebhookId};
use aioka_store::{Claim, EventSource, NewEvent, Progress};
use aioka_testkit::TestDb;

/// The event's fan-out row as stored: (cursor, tasks, done).
async fn progress(db: &TestDb, id: EventId) -> (Option<WebhookId>, i64, bool) {
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT fanout_cursor, fanout_tasks, fanned_out_at IS NOT NULL FROM events
             WHERE id = $1",
            &[&id.as_uuid()],
        )
        .await
        .unwrap();
    let cursor: Option<uuid::Uuid> = row.get(0);
    (cursor.map(WebhookId::from_uuid), row.get(1), row.get(2))
}

#[tokio::test]
async fn a_writer_whose_claim_was_taken_over_can_neither_advance_nor_finish() {
    let db = TestDb::new().await;
    let store = &db.store;
    let body =
        serde_json::json!({"event": "verdict.new", "data": EventType::VerdictNew.sample_data()});
    let valid = parse_ingest(&body).unwrap();
    let envelope = String::from_utf8(valid.envelope.to_body()).unwrap();
    let event = NewEvent {
        id: valid.id,
        event_type: valid.envelope.event,
        occurred_at: valid.occurred_at,
        body: &envelope,
        source: EventSource::Http,
    };
    let id = event.id;
    let (old, new) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let lease = Duration::from_secs(3600);
    // Chunk ends in webhook id order, as the fan-out walks them.
    let mut ends: Vec<WebhookId> = (0..3).map(|_| WebhookId::new()).collect();
    ends.sort_by_key(|w| w.as_uuid());
    let (first, second, third) = (ends[0], ends[1], ends[2]);

    // The old worker claims with a lease that has lapsed by its next statement and records
    // its first chunk (it still holds the claim: nobody took it yet). Its second chunk is in
    // the air when it stalls.
    assert_eq!(
        store
            .claim_fanout(&event, Duration::ZERO, old)
            .await
            .unwrap(),
        Claim::Claimed { cursor: None }
    );
    assert_eq!(
        store
            .advance_fanout(id, old, first, 7, Duration::ZERO)
            .await
            .unwrap(),
        Progress::Recorded
    );
    // The new worker takes the lapsed claim over, resumes after the first chunk, and gets
    // past two more.
    assert_eq!(
        store.claim_fanout(&event, lease, new).await.unwrap(),
        Claim::Claimed {
            cursor: Some(first)
        }
    );
    for end in [second, third] {
        assert_eq!(
            store.advance_fanout(id, new, end, 7, lease).await.unwrap(),
            Progress::Recorded
        );
    }

    // The old worker wakes and confirms its second chunk: nothing may be written, neither
    // its cursor (behind the holder's) nor its task count, nor a lease of its own, nor done.
    assert_eq!(
        store
            .advance_fanout(id, old, second, 7, lease)
            .await
            .unwrap(),
        Progress::ClaimLost
    );
    assert_eq!(
        store.finish_fanout(id, old).await.unwrap(),
        Progress::ClaimLost
    );
    assert_eq!(
        progress(&db, id).await,
        (Some(third), 21, false),
        "the stale writer moved the cursor back, counted tasks, or finished the event"
    );
    assert_eq!(
        store
            .claim_fanout(&event, lease, uuid::Uuid::new_v4())
            .await
            .unwrap(),
        Claim::HeldByOther,
        "the holder's lease stands"
    );

    // The holder finishes; the stale writer still cannot write afterwards.
    assert_eq!(
        store.finish_fanout(id, new).await.unwrap(),
        Progress::Recorded
    );
    assert_eq!(
        store
            .advance_fanout(id, old, third, 7, lease)
            .await
            .unwrap(),
        Progress::ClaimLost
    );
    assert_eq!(progress(&db, id).await, (Some(third), 21, true));
}
