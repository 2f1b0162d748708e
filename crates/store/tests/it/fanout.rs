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
        accepted_at: None,
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

/// The plan PostgreSQL makes for a chunk of subscribers, generic (as for a statement reused
/// with new parameters) and run: the index it walks and how many rows it read and dropped.
async fn chunk_plan(
    db: &TestDb,
    event_type: EventType,
    after: Option<uuid::Uuid>,
) -> (String, u64) {
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let query = aioka_store::subscribers_query(event_type, after.is_some());
    let (types, args) = match after {
        Some(a) => ("uuid, int8", format!("'{a}', 1000")),
        None => ("int8", "1000".to_owned()),
    };
    client
        .batch_execute(&format!(
            "SET plan_cache_mode = force_generic_plan; PREPARE chunk ({types}) AS {query}"
        ))
        .await
        .unwrap();
    let row = client
        .query_one(
            &format!("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE chunk ({args})"),
            &[],
        )
        .await
        .unwrap();
    let plan: serde_json::Value = row.get(0);
    // The scan of webhooks, wherever it sits under the limit and the join.
    fn scan(node: &serde_json::Value) -> Option<&serde_json::Value> {
        if node["Relation Name"] == "webhooks" {
            return Some(node);
        }
        node["Plans"].as_array()?.iter().find_map(scan)
    }
    let node = scan(&plan[0]["Plan"]).expect("a scan of webhooks");
    let index = node["Index Name"].as_str().unwrap_or("(none)").to_owned();
    let dropped = node["Rows Removed by Filter"].as_u64().unwrap_or(0);
    (index, dropped)
}

#[tokio::test]
async fn a_chunk_of_subscribers_reads_its_own_rows_not_every_webhook_before_it() {
    // 20 000 webhooks of verdict.new, then 20 of ghost.signal (ids in creation order, as
    // UUIDv7 makes them). Before V12 every chunk walked the primary key from its start:
    // a chunk in the middle read and dropped 10 000 rows, and a ghost.signal event read all
    // 20 000 to find its 20 (watched failing without V12's indexes: the plan walked
    // webhooks_pkey).
    let db = TestDb::new().await;
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let key = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO api_keys (id, name, kind, tier, key_hash, key_prefix)
             VALUES ($1, 'plan', 'customer', 'basic', sha256(convert_to($2, 'UTF8')), 'plan')",
            &[&key, &key.to_string()],
        )
        .await
        .unwrap();
    for (count, event) in [(20_000, "verdict.new"), (20, "ghost.signal")] {
        let ids: Vec<uuid::Uuid> = (0..count).map(|_| WebhookId::new().as_uuid()).collect();
        client
            .execute(
                "INSERT INTO webhooks (id, api_key_id, url, events, secret_sealed)
                 SELECT id, $2, 'https://example.com/' || id, ARRAY[$3::text], '\\x00'
                 FROM unnest($1::uuid[]) AS id",
                &[&ids, &key, &event],
            )
            .await
            .unwrap();
    }
    client.batch_execute("ANALYZE webhooks").await.unwrap();
    let middle: uuid::Uuid = client
        .query_one(
            "SELECT id FROM webhooks ORDER BY id OFFSET 10000 LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let (index, dropped) = chunk_plan(&db, EventType::VerdictNew, Some(middle)).await;
    assert_eq!(index, "webhooks_subscribed_verdict_new");
    assert_eq!(dropped, 0, "rows before the cursor were read");
    let (index, dropped) = chunk_plan(&db, EventType::GhostSignal, None).await;
    assert_eq!(index, "webhooks_subscribed_ghost_signal");
    assert_eq!(dropped, 0, "other types' subscribers were read");
    // And the pages are right: the 20 ghost.signal subscribers, in id order.
    let page = db
        .store
        .subscribers_page(EventType::GhostSignal, None, 1000)
        .await
        .unwrap();
    assert_eq!(page.len(), 20);
    assert!(
        page.windows(2)
            .all(|w| w[0].id.as_uuid() < w[1].id.as_uuid())
    );
    assert!(page.iter().all(|s| !s.fifo), "unordered unless asked");
}
