//! The delivery log under a retention of seconds: partitions are created and dropped while
//! a burst is delivered, and the log ends up holding exactly the deliveries of the events
//! inside the retention, each with every attempt; the older ones are gone with their events,
//! and the API says how far back the log reaches.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aioka_core::event::EventType;
use aioka_core::{DeliveryId, EventId, WebhookId};
use aioka_store::PartitionPolicy;
use aioka_testkit::Receiver;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::{Options, PATIENCE, System, sample};

const POLICY: PartitionPolicy = PartitionPolicy {
    retention: Duration::from_secs(10),
    interval: Duration::from_secs(2),
    ahead: 2,
};
/// How long events are published for: long enough that several partitions expire under it.
const BURST: Duration = Duration::from_secs(16);
const EVERY: Duration = Duration::from_millis(200);
/// Attempts of a delivery to the failing endpoint: the first and three retries.
const ATTEMPTS: u32 = 4;

/// What the test sees of the database while the burst runs.
#[derive(Debug, Default)]
struct Seen {
    /// Every event with its received_at, while it was stored.
    events: BTreeMap<EventId, DateTime<Utc>>,
    /// Every partition that existed at some point.
    partitions: BTreeSet<String>,
    /// When a partition was first seen gone.
    first_drop: Option<tokio::time::Instant>,
}

/// Reads the events and the partitions every 200 ms until `stop`.
async fn watch(
    system_db: String,
    store: aioka_store::Store,
    stop: tokio_util::sync::CancellationToken,
) -> Seen {
    let (db, connection) = tokio_postgres::connect(&system_db, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut seen = Seen::default();
    while !stop.is_cancelled() {
        for row in db
            .query("SELECT id, received_at FROM events", &[])
            .await
            .unwrap()
        {
            seen.events
                .insert(EventId::from_uuid(row.get(0)), row.get(1));
        }
        let now: BTreeSet<String> = store
            .partitions()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        if seen.first_drop.is_none() && seen.partitions.difference(&now).next().is_some() {
            seen.first_drop = Some(tokio::time::Instant::now());
        }
        seen.partitions.extend(now);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    seen
}

/// (delivery, attempt) of every request a receiver had.
fn requests(receiver: &Receiver) -> BTreeSet<(DeliveryId, u32)> {
    receiver
        .received()
        .iter()
        .map(|r| {
            (
                r.header("x-aioka-delivery").parse().unwrap(),
                r.header("x-aioka-attempt").parse().unwrap(),
            )
        })
        .collect()
}

/// Waits until `receiver` has had every request of `expected`, or has had none for 3 s (the
/// chains of events that expired on the way end early), or [`PATIENCE`] passed.
async fn settle(receiver: &Receiver, expected: &BTreeSet<(DeliveryId, u32)>) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (mut count, mut since) = (0, tokio::time::Instant::now());
    loop {
        let got = receiver.received().len();
        if got != count {
            (count, since) = (got, tokio::time::Instant::now());
        }
        if requests(receiver).is_superset(expected)
            || since.elapsed() > Duration::from_secs(3)
            || tokio::time::Instant::now() > deadline
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_come_and_go_under_a_burst_and_the_log_keeps_exactly_the_retention() {
    let mut system = System::start_with(Options {
        env: vec![
            ("AIOKA__DATABASE__PARTITION_INTERVAL", "2s".into()),
            ("AIOKA__DATABASE__RETENTION", "10s".into()),
            ("AIOKA__DATABASE__PARTITIONS_AHEAD", "2".into()),
        ],
        // The failing endpoint fails every attempt: it must not be disabled on the way, nor
        // have its retries put off (each by a second) for having many in flight.
        delivery_env: vec![
            ("AIOKA__DELIVERY__DISABLE_AFTER", "1000000".into()),
            ("AIOKA__DELIVERY__MAX_IN_FLIGHT_PER_WEBHOOK", "256".into()),
        ],
        ..Options::default()
    })
    .await;
    let ok = system.receiver().await;
    let failing = system.receiver().await;
    failing.respond_with(500);
    let customer = system.customer().await;
    let producer = system.producer().await;
    let mut ok_hooks = Vec::new();
    for _ in 0..3 {
        let (id, _) = system.register(&customer, &ok.url, &["macro.alert"]).await;
        ok_hooks.push(id.parse::<WebhookId>().unwrap());
    }
    let (failing_hook, _) = system
        .register(&customer, &failing.url, &["macro.alert"])
        .await;
    let failing_hook: WebhookId = failing_hook.parse().unwrap();

    // The burst, watched.
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(watch(
        system.db.url.clone(),
        system.db.store.clone(),
        stop.clone(),
    ));
    let mut published: Vec<(EventId, tokio::time::Instant)> = Vec::new();
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(EVERY);
    while started.elapsed() < BURST {
        tick.tick().await;
        let id = system
            .publish(&producer, sample(EventType::MacroAlert))
            .await;
        published.push((id.parse().unwrap(), tokio::time::Instant::now()));
    }
    let burst_ended = tokio::time::Instant::now();
    let ok_expected: BTreeSet<(DeliveryId, u32)> = published
        .iter()
        .flat_map(|(e, _)| ok_hooks.iter().map(|w| (DeliveryId::for_pair(*e, *w), 1)))
        .collect();
    let chain =
        |e: EventId| (1..=ATTEMPTS).map(move |a| (DeliveryId::for_pair(e, failing_hook), a));
    let failing_all: BTreeSet<(DeliveryId, u32)> =
        published.iter().flat_map(|(e, _)| chain(*e)).collect();
    settle(&ok, &ok_expected).await;
    settle(&failing, &failing_all).await;

    // The API says how far back the log reaches, and an expired delivery gets a clear 404.
    let log = system
        .deliveries(&customer, &failing_hook.to_string())
        .await;
    let starts: DateTime<Utc> = log["log_starts_at"].as_str().unwrap().parse().unwrap();
    let age = (Utc::now() - starts).num_milliseconds();
    assert!(
        (9_000..=14_000).contains(&age),
        "the log reaches back {age} ms with a retention of 10 s: {log}"
    );
    let first = DeliveryId::for_pair(published[0].0, failing_hook);
    let r = system
        .post(
            &format!("/v1/webhooks/{failing_hook}/deliveries/{first}/retry"),
            &customer,
            &json!(null),
        )
        .await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("keeps 10 seconds") && message.contains(&first.to_string()),
        "{body}"
    );
    let metrics = system
        .client
        .get(format!("{}/metrics", system.admins[1]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // Stop the services (records are flushed on the way out): maintenance holds still and
    // the log can be read whole.
    stop.cancel();
    let seen = watcher.await.unwrap();
    system.halt().await;
    let db = &system.db.store;
    let window = db.log_window().await.unwrap();

    // Partitions were dropped while events were still being published and delivered.
    let now: BTreeSet<String> = db
        .partitions()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    let dropped: Vec<_> = seen.partitions.difference(&now).collect();
    assert!(
        !dropped.is_empty(),
        "no partition was dropped: {:?}",
        seen.partitions
    );
    let first_drop = seen.first_drop.unwrap();
    let after_drop = published.iter().filter(|(_, at)| *at > first_drop).count();
    assert!(
        first_drop < burst_ended && after_drop >= 10,
        "the burst went on after the first drop for only {after_drop} events"
    );
    assert!(
        metrics.contains("aioka_partitions_dropped_total"),
        "fanout counts what it drops"
    );

    // Every event was stored (the watcher saw each), and splits at the log's start.
    assert_eq!(seen.events.len(), published.len());
    assert_eq!(
        window.starts_at,
        POLICY.range_of(window.starts_at).0,
        "at a boundary"
    );
    let (kept, expired): (Vec<_>, Vec<_>) = published
        .iter()
        .map(|(e, _)| (*e, seen.events[e]))
        .partition(|(_, received)| *received >= window.starts_at);
    assert!(
        !kept.is_empty() && !expired.is_empty(),
        "kept {}, expired {}",
        kept.len(),
        expired.len()
    );

    // Delivered: every delivery to the healthy endpoint; to the failing one, every attempt of
    // every event inside the retention. An event that expired while its retries were still
    // going (a chain outlived it) has its chain end early: a prefix of it, never a fork.
    assert_eq!(
        requests(&ok),
        ok_expected,
        "delivered to the healthy endpoint"
    );
    let got = requests(&failing);
    for (e, _) in &kept {
        let want: BTreeSet<_> = chain(*e).collect();
        assert!(
            got.is_superset(&want),
            "a kept event's chain is incomplete: {e}"
        );
    }
    for (e, _) in &expired {
        let attempts: Vec<u32> = chain(*e)
            .filter(|a| got.contains(a))
            .map(|(_, n)| n)
            .collect();
        assert!(
            !attempts.is_empty() && attempts.iter().copied().eq(1..=attempts.len() as u32),
            "attempts {attempts:?} of {e}"
        );
    }
    assert!(got.is_subset(&failing_all));

    // Recorded: exactly the deliveries of the events kept, each with every attempt; the
    // expired ones are gone with their events.
    let mut hooks = ok_hooks.clone();
    hooks.push(failing_hook);
    let deliveries: BTreeSet<DeliveryId> = kept
        .iter()
        .flat_map(|(e, _)| hooks.iter().map(|w| DeliveryId::for_pair(*e, *w)))
        .collect();
    let recorded: BTreeSet<DeliveryId> = db
        .audit_deliveries()
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(recorded, deliveries, "the log holds the retention exactly");
    let attempts_expected: BTreeSet<(DeliveryId, u32)> = kept
        .iter()
        .flat_map(|(e, _)| {
            let healthy: Vec<_> = ok_hooks
                .iter()
                .map(|w| (DeliveryId::for_pair(*e, *w), 1))
                .collect();
            healthy.into_iter().chain(chain(*e))
        })
        .collect();
    let attempts = db.audit_attempts().await.unwrap();
    let attempts_recorded: BTreeSet<(DeliveryId, u32)> = attempts
        .iter()
        .map(|a| (a.delivery, u32::try_from(a.attempt).unwrap()))
        .collect();
    assert_eq!(attempts_recorded, attempts_expected, "every attempt, once");
    let stored: BTreeSet<EventId> = db
        .audit_events()
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert!(
        expired.iter().all(|(e, _)| !stored.contains(e)),
        "an expired event is gone with its deliveries"
    );
    assert!(
        kept.iter().all(|(e, _)| stored.contains(e)),
        "an event whose deliveries are kept is kept"
    );

    // Some retry chain went on past its event's partition interval and was recorded under
    // the event's partition all the same.
    let received: BTreeMap<DeliveryId, DateTime<Utc>> = kept
        .iter()
        .map(|(e, at)| (DeliveryId::for_pair(*e, failing_hook), *at))
        .collect();
    assert!(
        attempts.iter().any(|a| received
            .get(&a.delivery)
            .is_some_and(|at| POLICY.range_of(a.attempted_at) != POLICY.range_of(*at))),
        "no retry chain crossed a partition boundary"
    );
}

#[tokio::test]
async fn a_redelivered_task_whose_event_expired_meanwhile_ends_its_chain_instead_of_looping() {
    let system = System::start().await;
    let (receiver, _, producer, _, _) = system.subscriber(&["verdict.new"]).await;
    receiver.respond_with(500);
    let attempts = |n: &str| {
        receiver
            .received()
            .iter()
            .filter(|r| r.header("x-aioka-attempt") == n)
            .count()
    };
    // Attempt records cannot be written while this transaction holds its lock: the first
    // attempt is sent and its task is in hand, unrecorded.
    let (lock, connection) = tokio_postgres::connect(&system.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    lock.batch_execute("BEGIN; LOCK TABLE delivery_attempts IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let event: EventId = system
        .publish(&producer, sample(EventType::VerdictNew))
        .await
        .parse()
        .unwrap();
    receiver.wait_for(1, PATIENCE).await;

    // The event expires (maintenance trims it so) while the record waits, and the task is
    // handed out again: it is sent again, as any redelivered task whose attempt is not
    // recorded.
    let (db, connection) = tokio_postgres::connect(&system.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    db.execute("DELETE FROM events WHERE id = $1", &[&event.as_uuid()])
        .await
        .unwrap();
    let name = format!("aioka-delivery@{}", system.broker.prefix);
    assert_eq!(
        aioka_e2e::close_connections(&format!("\"{name}\"")),
        1,
        "the fault did not land: no connection {name}"
    );
    receiver.wait_for(2, PATIENCE).await;
    assert_eq!(attempts("1"), 2);
    lock.batch_execute("ROLLBACK").await.unwrap();

    // Both records are dropped with the event; the redelivered task is done, not requeued to
    // be sent again, and no retry follows.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        (attempts("1"), receiver.received().len()),
        (2, 2),
        "the expired event's attempt was sent again and again, or retried"
    );
}
