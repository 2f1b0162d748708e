//! Retry chains under faults between the side effects of one attempt: a crash or a lost
//! connection after the send but before the ack, and a publisher channel the broker closes.
//! A crash may repeat the attempt that was in flight; it never starts a second series of
//! later attempts, and a repeated attempt is counted once.

use std::collections::BTreeMap;

use aioka_core::event::EventType;
use aioka_testkit::Receiver;
use lapin::options::ExchangeDeleteOptions;
use tokio_postgres::NoTls;

use crate::{PATIENCE, System, sample};

/// Deletes an exchange of the system's topology from the broker, under the running services.
async fn delete_exchange(system: &System, exchange: &str) {
    let connection = system.broker.connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

/// The fault landed: the service's broker connection (`before`) was replaced by a new one,
/// which only the closed publisher channel ending its session explains.
fn assert_reconnected(service: &str, before: &std::collections::BTreeSet<String>) {
    assert_eq!(before.len(), 1, "one {service} connection before the fault");
    let after = aioka_e2e::connections(service);
    assert!(
        after.len() == 1 && after.is_disjoint(before),
        "the session of {service} never ended: connections {before:?} then {after:?}"
    );
}

/// How many times the receiver saw each attempt number.
fn attempts_seen(receiver: &Receiver) -> BTreeMap<u32, usize> {
    let mut seen = BTreeMap::new();
    for r in receiver.received() {
        let n: u32 = r.header("x-aioka-attempt").parse().unwrap();
        *seen.entry(n).or_insert(0) += 1;
    }
    seen
}

/// Waits until the receiver has seen attempt `n`, or fails the test.
async fn wait_for_attempt(receiver: &Receiver, n: u32) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !attempts_seen(receiver).contains_key(&n) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "attempt {n} never came; seen {:?}",
            attempts_seen(receiver)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_task_redelivered_after_its_attempt_was_sent_does_not_fork_the_retry_chain() {
    let system = System::start().await;
    let (receiver, customer, producer, webhook, _) = system.subscriber(&["verdict.new"]).await;
    receiver.respond_with(500);

    // Attempt records cannot be written while this transaction holds its lock: the first
    // attempt is sent, and its task is in hand, unrecorded and unacked.
    let (db, connection) = tokio_postgres::connect(&system.db.url, NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    db.batch_execute("BEGIN; LOCK TABLE delivery_attempts IN EXCLUSIVE MODE")
        .await
        .unwrap();
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    wait_for_attempt(&receiver, 1).await;

    // The fault: delivery's broker connection goes, with the task in hand. The broker hands
    // it out again, and it is sent again while the first record is still waiting.
    let name = format!("aioka-delivery@{}", system.broker.prefix);
    assert_eq!(
        aioka_e2e::close_connections(&format!("\"{name}\"")),
        1,
        "the fault did not land: no connection {name}"
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while attempts_seen(&receiver).get(&1).copied().unwrap_or(0) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the redelivered task was never sent again: {:?}",
            attempts_seen(&receiver)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    db.batch_execute("ROLLBACK").await.unwrap();

    let logged = system
        .wait_for_delivery(&customer, &webhook, |d| d["status"] == "failed")
        .await;
    // Let any second series show itself: its last retry is due within a second or two.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let seen = attempts_seen(&receiver);
    assert_eq!(
        seen.get(&1),
        Some(&2),
        "attempt 1 was in flight: sent twice"
    );
    for n in 2..=4 {
        assert_eq!(
            seen.get(&n),
            Some(&1),
            "attempt {n} sent more than once: the chain forked ({seen:?})"
        );
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(logged["attempt_count"], 4);
    let hook = system.webhook(&customer, &webhook).await;
    assert_eq!(
        hook["consecutive_failures"], 4,
        "the repeated attempt counted twice"
    );
}

#[tokio::test]
async fn a_publisher_channel_closed_by_the_broker_ends_the_delivery_session_and_the_chain_goes_on()
{
    let system = System::start().await;
    let (receiver, customer, producer, webhook, _) = system.subscriber(&["verdict.new"]).await;
    receiver.respond_with(500);
    // Publishing the first retry to an exchange that is gone makes the broker close the
    // delivery service's publisher channel.
    let service = format!("\"aioka-delivery@{}\"", system.broker.prefix);
    let before = aioka_e2e::connections(&service);
    delete_exchange(&system, &system.broker.topology().retry_exchange()).await;
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    wait_for_attempt(&receiver, 1).await;
    // A new session declares the topology again, and the redelivered task schedules its
    // retry: the whole chain is sent.
    wait_for_attempt(&receiver, 4).await;
    assert_reconnected(&service, &before);
    let logged = system
        .wait_for_delivery(&customer, &webhook, |d| d["status"] == "failed")
        .await;
    assert_eq!(logged["attempt_count"], 4);
    let seen = attempts_seen(&receiver);
    assert!(
        (2..=4).all(|n| seen.get(&n) == Some(&1)),
        "each retry once: {seen:?}"
    );
    let hook = system.webhook(&customer, &webhook).await;
    assert_eq!(hook["consecutive_failures"], 4);
}

#[tokio::test]
async fn a_publisher_channel_closed_by_the_broker_ends_the_fanout_session_and_the_event_is_delivered()
 {
    let system = System::start().await;
    let (receiver, _customer, producer, _webhook, _) = system.subscriber(&["verdict.new"]).await;
    // Fan-out's first task publish goes to an exchange that is gone: the broker closes its
    // publisher channel. Before, fanout held the event forever while /readyz said 200.
    let service = format!("\"aioka-fanout@{}\"", system.broker.prefix);
    let before = aioka_e2e::connections(&service);
    delete_exchange(&system, &system.broker.topology().deliveries_exchange()).await;
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    let got = receiver.wait_for(1, PATIENCE).await;
    assert_eq!(got.len(), 1);
    assert_reconnected(&service, &before);
}

#[tokio::test]
async fn revoking_a_key_stops_its_queued_retries() {
    let system = System::start().await;
    let (receiver, customer, producer, webhook, _) = system.subscriber(&["verdict.new"]).await;
    receiver.respond_with(500);
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    // The webhook is in the delivery service's cache, and its retry is waiting in a tier.
    wait_for_attempt(&receiver, 1).await;
    let record = system
        .db
        .store
        .find_active_key(&aioka_core::ApiKey::from_header(&customer))
        .await
        .unwrap()
        .unwrap();
    assert!(system.db.store.revoke_key(record.id).await.unwrap());
    let sent_before = attempts_seen(&receiver).values().sum::<usize>();
    // The log is the owner's and the key is revoked, so read the state as an operator.
    let delivery = receiver.received()[0].header("x-aioka-delivery").to_owned();
    let id: aioka_core::DeliveryId = delivery.parse().unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = system.db.store.delivery_status(id).await.unwrap();
        if status == Some(aioka_store::DeliveryStatus::Skipped) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delivery was never skipped: {status:?}, attempts {:?}",
            attempts_seen(&receiver)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // At most the retry already in flight when the key was revoked went out.
    let sent = attempts_seen(&receiver).values().sum::<usize>();
    assert!(
        sent <= sent_before + 1,
        "retries went on after the key was revoked: {:?}",
        attempts_seen(&receiver)
    );
    let _ = webhook;
}

/// Publishes a copy of attempt `attempt` of the delivery of `event` to `webhook`, tagged with
/// the system's key as fanout and delivery tag theirs: what a retry scheduled twice, or a
/// chunk republished after a broker outage, puts in the queue.
async fn publish_copy(system: &System, event: &str, webhook: &str, attempt: u32) {
    let key = aioka_core::EncryptionKey::from_base64(
        system.env.get("AIOKA__SECURITY__SECRET_KEY").unwrap(),
    )
    .unwrap();
    let event_id: aioka_core::EventId = event.parse().unwrap();
    let webhook_id: aioka_core::WebhookId = webhook.parse().unwrap();
    let task = aioka_core::messages::DeliveryTask {
        delivery_id: aioka_core::DeliveryId::for_pair(event_id, webhook_id),
        event_id,
        webhook_id,
        event_type: EventType::VerdictNew,
        body: r#"{"event":"verdict.new","data":{"copy":true}}"#.into(),
        attempt,
        series_start: 1,
        auth: None,
        test: false,
    }
    .authenticated(&key.task_key());
    let connection = system.broker.connect().await;
    let channel = connection.create_channel().await.unwrap();
    let topology = system.broker.topology();
    let (exchange, routing_key) = topology.task_route(webhook_id);
    channel
        .basic_publish(
            exchange.as_str().into(),
            routing_key.as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            &aioka_core::messages::Task::V1(task).to_bytes(),
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_of_a_retry_taken_by_two_delivery_processes_at_once_send_it_once() {
    let system = System::start().await;
    let _second = system.spawn_delivery(&[]).await;
    let (receiver, customer, producer, webhook, _) = system.subscriber(&["verdict.new"]).await;
    // Attempt 1 fails; every answer takes 1.5 s, so the copies below arrive while the
    // scheduled retry (due 200 ms after attempt 1) is being sent.
    receiver.script(&[500]);
    receiver.delay(std::time::Duration::from_millis(1500));
    let event = system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    system
        .wait_for_delivery(&customer, &webhook, |d| d["attempt_count"] == 1)
        .await;

    // The fault: two more copies of attempt 2, one for each delivery process to take while
    // the first is in flight.
    publish_copy(&system, &event, &webhook, 2).await;
    publish_copy(&system, &event, &webhook, 2).await;
    let logged = system
        .wait_for_delivery(&customer, &webhook, |d| d["status"] == "succeeded")
        .await;
    // The copies were put off, not dropped: they come back every second until the attempt
    // is recorded. Give them the time to show a second send.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let seen = attempts_seen(&receiver);
    assert_eq!(
        seen,
        BTreeMap::from([(1, 1), (2, 1)]),
        "attempt 2 was sent by more than one copy"
    );
    assert_eq!(logged["attempt_count"], 2);
    let held = aioka_e2e::metric_sum(
        &aioka_e2e::metrics_text(&system.admins[2]).await,
        "aioka_delivery_claims_held_total",
    );
    assert!(
        held >= 1.0,
        "the fault did not land: no copy found the attempt held by another ({held})"
    );
}

#[tokio::test]
async fn a_retry_the_broker_never_hands_back_is_published_again_by_the_sweep_and_sent_once() {
    let system = System::start_with(aioka_e2e::Options {
        schedule: "3s",
        delivery_env: vec![
            // Past connect_timeout + timeout (2 s + 3 s), the least it may be.
            ("AIOKA__DELIVERY__RETRY_SWEEP_AFTER", "5s".into()),
            ("AIOKA__DELIVERY__RETRY_SWEEP_INTERVAL", "200ms".into()),
        ],
        ..Default::default()
    })
    .await;
    let (receiver, customer, producer, webhook, _) = system.subscriber(&["verdict.new"]).await;
    receiver.respond_with(500);
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    wait_for_attempt(&receiver, 1).await;

    // The fault: attempt 2 waits its 3 s in the tier's wait queue, and is dropped there, as a
    // dead-lettering cut off by a node fault drops it.
    let queue = system.broker.topology().retry_queue(
        aioka_core::retry::RetrySchedule::new(vec![std::time::Duration::from_secs(3)])
            .unwrap()
            .tiers()[0],
    );
    let connection = system.broker.connect().await;
    let channel = connection.create_channel().await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let purged = loop {
        let n = channel
            .queue_purge(queue.as_str().into(), Default::default())
            .await
            .unwrap();
        if n > 0 {
            break n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "attempt 2 never reached {queue}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(purged, 1, "the fault landed on one retry in {queue}");
    receiver.respond_with(200);

    // Due 3 s after attempt 1, overdue 5 s later: the sweep publishes it again.
    let logged = system
        .wait_for_delivery(&customer, &webhook, |d| d["status"] == "succeeded")
        .await;
    assert_eq!(logged["attempt_count"], 2);
    let seen = attempts_seen(&receiver);
    assert_eq!(seen, BTreeMap::from([(1, 1), (2, 1)]), "{seen:?}");
    let delivery_admin = system.admins.last().unwrap();
    let swept = aioka_e2e::metric_sum(
        &aioka_e2e::metrics_text(delivery_admin).await,
        "aioka_delivery_retries_swept_total",
    );
    assert_eq!(swept, 1.0);
}
