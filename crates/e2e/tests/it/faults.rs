//! Faults: the broker drops every connection of the system mid-flow. Nothing accepted is lost.

use std::collections::BTreeSet;
use std::time::Duration;

use aioka_core::event::EventType;
use serde_json::json;

use crate::{PATIENCE, System, sample};

#[tokio::test]
async fn dropped_broker_connections_lose_no_accepted_event() {
    let system = System::start().await;
    let receiver = system.receiver().await;
    let customer = system.customer().await;
    let producer = system.producer().await;
    let mut webhooks = Vec::new();
    for i in 0..5 {
        let (id, _) = system
            .register(
                &customer,
                &format!("{}?w={i}", receiver.url),
                &["verdict.new"],
            )
            .await;
        webhooks.push(id.parse::<aioka_core::WebhookId>().unwrap());
    }
    // Slow answers keep deliveries in flight when the connections drop.
    receiver.delay(Duration::from_millis(300));
    let mut accepted = BTreeSet::new();
    for i in 0..5 {
        let mut body = sample(EventType::VerdictNew);
        body["id"] = json!(format!("before-{i}"));
        accepted.insert(system.publish(&producer, body).await);
    }
    receiver.wait_for(1, PATIENCE).await;

    let in_flight_at_fault = receiver.received().len();
    let closed = aioka_e2e::close_connections(&format!("@{}\"}}", system.broker.prefix));
    assert!(closed >= 3, "closed {closed} connections");
    // The fault landed mid-flight: some of the first 25 deliveries had arrived, not all.
    assert!(
        in_flight_at_fault < 25,
        "the fault did not land mid-flight: all {in_flight_at_fault} deliveries had arrived"
    );
    // A producer retries what was not accepted (503); what was accepted must arrive.
    for i in 0..5 {
        let mut body = sample(EventType::VerdictNew);
        body["id"] = json!(format!("after-{i}"));
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let response = system.post("/v1/events", &producer, &body).await;
            if response.status() == 202 {
                let id: serde_json::Value = response.json().await.unwrap();
                accepted.insert(id["id"].as_str().unwrap().to_owned());
                break;
            }
            assert_eq!(
                response.status(),
                503,
                "only unavailability may refuse a valid event"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway never recovered"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(accepted.len(), 10);

    // At-least-once, by sets: the delivery ids that arrived are exactly the (accepted event,
    // webhook) pairs; an attempt cut off mid-flight may repeat, with the same delivery id.
    let expected: BTreeSet<String> = accepted
        .iter()
        .flat_map(|event| {
            let event: aioka_core::EventId = event.parse().unwrap();
            webhooks
                .iter()
                .map(move |w| aioka_core::DeliveryId::for_pair(event, *w).to_string())
        })
        .collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let delivered: BTreeSet<String> = receiver
            .received()
            .iter()
            .map(|r| r.header("x-aioka-delivery").to_owned())
            .collect();
        let unexpected: Vec<_> = delivered.difference(&expected).collect();
        assert!(
            unexpected.is_empty(),
            "delivered but never accepted: {unexpected:?}"
        );
        if delivered == expected {
            break;
        }
        let lost: Vec<_> = expected.difference(&delivered).take(5).collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} pairs delivered; missing, e.g. {lost:?}",
            delivered.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The services report ready again, by themselves.
    system.wait_ready().await;
}

#[tokio::test]
async fn a_fan_out_left_half_done_by_a_dead_worker_is_finished_by_the_next() {
    let system = crate::System::start_with(crate::Options {
        env: vec![("AIOKA__FANOUT__CLAIM_LEASE", "1s".into())],
        ..crate::Options::default()
    })
    .await;
    let receiver = system.receiver().await;
    let producer = system.producer().await;
    let mut webhooks = Vec::new();
    for _ in 0..3 {
        let customer = system.customer().await;
        for _ in 0..5 {
            webhooks.push(
                system
                    .register(&customer, &receiver.url, &["regime.change"])
                    .await
                    .0,
            );
        }
    }
    let mut body = sample(EventType::RegimeChange);
    body["id"] = json!("regime-2026-04-20T13:45");
    body["timestamp"] = json!("2026-04-20T13:45:00Z");
    // A fanout worker claimed this event, published its first chunk, and died: its message
    // comes back to the next worker, which finds the claim still held.
    let event = aioka_core::event::parse_ingest(&body).unwrap();
    let envelope = String::from_utf8(event.envelope.to_body()).unwrap();
    let store = &system.db.store;
    let claim = store
        .claim_fanout(
            &aioka_store::NewEvent {
                id: event.id,
                event_type: event.envelope.event,
                occurred_at: event.occurred_at,
                body: &envelope,
                source: aioka_store::EventSource::Http,
                accepted_at: None,
            },
            Duration::from_secs(1),
            uuid::Uuid::new_v4(),
        )
        .await
        .unwrap();
    assert_eq!(claim, aioka_store::Claim::Claimed { cursor: None });

    system.publish(&producer, body).await;
    let received = receiver.wait_for(15, PATIENCE).await;
    let distinct: BTreeSet<&str> = received
        .iter()
        .map(|r| r.header("x-aioka-delivery"))
        .collect();
    assert_eq!(
        distinct.len(),
        15,
        "every subscriber receives the event once the claim lapses"
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (tasks, done) = store.fanout_progress(event.id).await.unwrap().unwrap();
        if done {
            assert_eq!(tasks, 15);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fan-out never completed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_fan_out_claim_is_released_by_its_holders_guard_and_by_nobody_else() {
    let system = System::start().await;
    let store = &system.db.store;
    let body = sample(EventType::VerdictNew);
    let event = aioka_core::event::parse_ingest(&body).unwrap();
    let envelope = String::from_utf8(event.envelope.to_body()).unwrap();
    let new = aioka_store::NewEvent {
        id: event.id,
        event_type: event.envelope.event,
        occurred_at: event.occurred_at,
        body: &envelope,
        source: aioka_store::EventSource::Http,
        accepted_at: None,
    };
    // A lease far longer than the test: only a release can free the claim.
    let lease = Duration::from_secs(3600);
    let (holder, other) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let claim = |who| store.claim_fanout(&new, lease, who);
    assert_eq!(
        claim(holder).await.unwrap(),
        aioka_store::Claim::Claimed { cursor: None }
    );

    store.release_fanout(event.id, other).await.unwrap();
    assert_eq!(
        claim(other).await.unwrap(),
        aioka_store::Claim::HeldByOther,
        "only the holder's release frees the claim"
    );

    // The holder's handler is cut off (its future dropped): the guard gives the claim back.
    drop(store.claim_guard(event.id, holder));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match claim(other).await.unwrap() {
            aioka_store::Claim::Claimed { .. } => break,
            c => assert!(
                tokio::time::Instant::now() < deadline,
                "the dropped guard never released the claim: {c:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    system.stop().await;
}

/// The backend of this test database whose statement waits on an advisory lock, if any.
async fn stalled_backend(client: &tokio_postgres::Client) -> Option<i32> {
    client
        .query_opt(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND wait_event = 'advisory'",
            &[],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
}

/// `count` webhooks to `url` for `regime.change`, five per customer key, in id order: the
/// order fan-out walks them in, so consecutive runs of the chunk size are its chunks.
async fn regime_subscribers(
    system: &System,
    url: &str,
    count: usize,
) -> Vec<aioka_core::WebhookId> {
    let mut webhooks: Vec<aioka_core::WebhookId> = Vec::new();
    while webhooks.len() < count {
        let customer = system.customer().await;
        for _ in 0..5.min(count - webhooks.len()) {
            let (id, _) = system.register(&customer, url, &["regime.change"]).await;
            webhooks.push(id.parse().unwrap());
        }
    }
    webhooks.sort_by_key(|w| w.as_uuid());
    webhooks
}

#[tokio::test]
async fn a_fan_out_cut_off_after_k_chunks_is_resumed_by_another_without_republishing_them() {
    // n = 5 chunks of 7 (35 webhooks); the first fanout is cut off after k = 2 confirmed
    // chunks. Pipelined, it has handed chunks 3 and 4 to the broker by then, never chunk 5.
    const CHUNK: usize = 7;
    const K: usize = 2;
    let system = System::start_with(crate::Options {
        fanout: false,
        ..crate::Options::default()
    })
    .await;
    let receiver = system.receiver().await;
    let producer = system.producer().await;
    let webhooks = regime_subscribers(&system, &receiver.url, CHUNK * 5).await;

    // The fault: once k chunks are recorded, the next progress write of the event hangs in
    // PostgreSQL (a trigger of this test's own database waits on a lock the test holds), as
    // a write stuck behind a lock or a dying server would.
    let (db, connection) = tokio_postgres::connect(&system.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    db.batch_execute(&format!(
        "CREATE FUNCTION e2e_stall() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_advisory_xact_lock(7007); RETURN NEW; END $$;
         CREATE TRIGGER e2e_stall BEFORE UPDATE ON events FOR EACH ROW
           WHEN (OLD.fanout_tasks >= {} AND NEW.fanout_tasks > OLD.fanout_tasks)
           EXECUTE FUNCTION e2e_stall();
         SELECT pg_advisory_lock(7007);",
        K * CHUNK
    ))
    .await
    .unwrap();

    let first = system.spawn_fanout().await;
    let event: aioka_core::EventId = system
        .publish(&producer, sample(EventType::RegimeChange))
        .await
        .parse()
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let stalled = loop {
        if let Some(pid) = stalled_backend(&db).await {
            break pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fan-out never reached its chunk {}",
            K + 1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let store = &system.db.store;
    assert_eq!(
        store.fanout_progress(event).await.unwrap(),
        Some(((K * CHUNK) as i64, false)),
        "the cursor stands after k confirmed chunks"
    );

    // Kill that fan-out: stop its process and cut its stuck database session, so the write
    // never lands. Its message goes back to the queue.
    first.shutdown.cancel();
    db.execute("SELECT pg_terminate_backend($1)", &[&stalled])
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, first.task)
        .await
        .expect("the first fanout stops")
        .unwrap()
        .unwrap();
    db.batch_execute(
        "DROP TRIGGER e2e_stall ON events; DROP FUNCTION e2e_stall(); SELECT pg_advisory_unlock_all();",
    )
    .await
    .unwrap();
    assert_eq!(
        store.fanout_progress(event).await.unwrap(),
        Some(((K * CHUNK) as i64, false)),
        "the cut-off write did not land"
    );

    // Another fanout resumes.
    let second = system.spawn_fanout().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let tasks = loop {
        if let Some((tasks, true)) = store.fanout_progress(event).await.unwrap() {
            break tasks;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second fanout never finished: {:?}",
            store.fanout_progress(event).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let expected: Vec<String> = webhooks
        .iter()
        .map(|w| aioka_core::DeliveryId::for_pair(event, *w).to_string())
        .collect();
    let all: BTreeSet<String> = expected.iter().cloned().collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let seen = loop {
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        for r in receiver.received() {
            *seen
                .entry(r.header("x-aioka-delivery").to_owned())
                .or_default() += 1;
        }
        if all.iter().all(|d| seen.contains_key(d)) {
            break seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing deliveries: {:?}",
            all.iter()
                .filter(|d| !seen.contains_key(*d))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Late duplicates would show within moments.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seen = seen;
    for r in receiver.received().iter().skip(seen.values().sum()) {
        *seen
            .entry(r.header("x-aioka-delivery").to_owned())
            .or_default() += 1;
    }

    let unexpected: Vec<&String> = seen.keys().filter(|d| !all.contains(*d)).collect();
    assert!(
        unexpected.is_empty(),
        "deliveries of nothing published: {unexpected:?}"
    );
    let confirmed = &expected[..K * CHUNK];
    let again: Vec<(&String, usize)> = confirmed
        .iter()
        .map(|d| (d, seen[d]))
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(
        again.is_empty(),
        "the first {K} chunks were published again: {again:?}"
    );
    // The rest: every one delivered; the two chunks in the air when the first fanout was cut
    // off may come twice (same delivery ids), the last chunk only once.
    let rest = &expected[K * CHUNK..];
    assert!(rest.iter().all(|d| (1..=2).contains(&seen[d])), "{seen:?}");
    let last = &expected[(K + 2) * CHUNK..];
    assert!(last.iter().all(|d| seen[d] == 1), "{seen:?}");
    assert_eq!(
        tasks,
        webhooks.len() as i64,
        "k chunks by the first fanout and the rest by the second"
    );
    second.shutdown.cancel();
    second.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_fan_out_whose_claim_was_taken_over_stops_and_leaves_the_event_to_the_new_holder() {
    // n = 5 chunks of 7. The first fanout stalls in its third progress write, past its
    // lease, without holding the event's row; a second fanout takes the claim over and
    // finishes. When the first wakes it must write nothing and publish no more.
    const CHUNK: usize = 7;
    const K: usize = 2;
    let system = System::start_with(crate::Options {
        fanout: false,
        env: vec![
            ("AIOKA__FANOUT__CLAIM_LEASE", "1s".into()),
            // Each fanout takes one message: the event's second copy waits for the second.
            ("AIOKA__FANOUT__PREFETCH", "1".into()),
        ],
        ..crate::Options::default()
    })
    .await;
    let receiver = system.receiver().await;
    let producer = system.producer().await;
    let webhooks = regime_subscribers(&system, &receiver.url, CHUNK * 5).await;

    // The fault: the first progress write after k chunks waits, before it touches any row,
    // on a lock the test holds (a statement trigger of this test's own database), as a
    // worker paused or partitioned away past its lease would. Later writers pass: the
    // first still holds lock 7008.
    let (db, connection) = tokio_postgres::connect(&system.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    db.batch_execute(&format!(
        "CREATE FUNCTION e2e_stall() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF current_query() LIKE '%fanout_tasks = fanout_tasks +%'
              AND (SELECT max(fanout_tasks) FROM events) >= {}
              AND pg_try_advisory_xact_lock(7008) THEN
             PERFORM pg_advisory_xact_lock(7007);
           END IF;
           RETURN NULL;
         END $$;
         CREATE TRIGGER e2e_stall BEFORE UPDATE ON events FOR EACH STATEMENT
           EXECUTE FUNCTION e2e_stall();
         SELECT pg_advisory_lock(7007);",
        K * CHUNK
    ))
    .await
    .unwrap();

    let first = system.spawn_fanout().await;
    let mut body = sample(EventType::RegimeChange);
    body["id"] = json!("regime-taken-over");
    let event: aioka_core::EventId = system
        .publish(&producer, body.clone())
        .await
        .parse()
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while stalled_backend(&db).await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first fanout never reached its chunk {}",
            K + 1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let store = &system.db.store;
    assert_eq!(
        store.fanout_progress(event).await.unwrap(),
        Some(((K * CHUNK) as i64, false))
    );

    // The producer sends the event again; a second fanout takes that copy, waits out the
    // first one's lease, and finishes the event.
    assert_eq!(system.publish(&producer, body).await, event.to_string());
    let second = system.spawn_fanout().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while store.fanout_progress(event).await.unwrap() != Some((webhooks.len() as i64, true)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second fanout never finished: {:?}",
            store.fanout_progress(event).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The first wakes: its stale write must be refused and it must publish nothing more.
    db.batch_execute("SELECT pg_advisory_unlock(7007);")
        .await
        .unwrap();
    let expected: Vec<String> = webhooks
        .iter()
        .map(|w| aioka_core::DeliveryId::for_pair(event, *w).to_string())
        .collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let seen: BTreeSet<String> = receiver
            .received()
            .iter()
            .map(|r| r.header("x-aioka-delivery").to_owned())
            .collect();
        if expected.iter().all(|d| seen.contains(d)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "deliveries missing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for a stale writer to do its worst: write, publish the last chunk again, finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        store.fanout_progress(event).await.unwrap(),
        Some((webhooks.len() as i64, true)),
        "the stale writer counted its chunk again"
    );
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for r in receiver.received() {
        *seen
            .entry(r.header("x-aioka-delivery").to_owned())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), expected.len(), "{seen:?}");
    let last = &expected[(K + 2) * CHUNK..];
    let twice: Vec<_> = last.iter().filter(|d| seen[*d] != 1).collect();
    assert!(
        twice.is_empty(),
        "the stale fanout published the last chunk after losing its claim: {twice:?}"
    );

    // Both stop; the first one's copy was acknowledged as a duplicate once the event was
    // done, not handed back.
    for fanout in [first, second] {
        fanout.shutdown.cancel();
        tokio::time::timeout(PATIENCE, fanout.task)
            .await
            .expect("the fanout stops")
            .unwrap()
            .unwrap();
    }
    let connection = system.broker.connect().await;
    let channel = connection.create_channel().await.unwrap();
    let queue = system.broker.topology().fanout_queue();
    let q = channel
        .queue_declare(
            queue.as_str().into(),
            aioka_queue::lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        q.message_count(),
        0,
        "an event message was left unacknowledged"
    );
}
