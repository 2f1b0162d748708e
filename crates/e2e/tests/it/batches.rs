//! Batches of first attempts (message version 2, `proto/amqp.md`): fanout's healthy path
//! carries one event to many webhooks in one message, and each of its tasks lives on as a
//! task of its own. A redelivered batch sends only what is not recorded yet, and a task that
//! leaves the batch (put off past its webhook's share) leaves alone, as its own task.

use std::time::Duration;

use aioka_core::event::EventType;
use aioka_core::messages::{BatchTask, Task};
use aioka_core::{EncryptionKey, EventId, WebhookId};
use aioka_testkit::Receiver;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};

use crate::{Options, PATIENCE, System, sample};

/// The delivery service's mark on a task that was handed out before (`worker.rs`).
const REDELIVERED_HEADER: &str = "x-aioka-redelivered";

/// Publishes a batch of `event` to `webhooks`, tagged with the system's key as fanout tags
/// its batches, marked as handed out before when `redelivered`.
async fn publish_batch(
    system: &System,
    event: EventId,
    webhooks: Vec<WebhookId>,
    body: &str,
    redelivered: bool,
) {
    let key =
        EncryptionKey::from_base64(system.env.get("AIOKA__SECURITY__SECRET_KEY").unwrap()).unwrap();
    let (exchange, routing_key) = system.broker.topology().task_route(webhooks[0]);
    let batch = BatchTask {
        event_id: event,
        event_type: EventType::VerdictNew,
        body: body.to_owned(),
        webhooks,
        auth: None,
    }
    .authenticated(&key.task_key());
    let mut headers = FieldTable::default();
    if redelivered {
        headers.insert(REDELIVERED_HEADER.into(), AMQPValue::LongString("1".into()));
    }
    let connection = system.broker.connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            exchange.as_str().into(),
            routing_key.as_str().into(),
            BasicPublishOptions::default(),
            &Task::V2(batch).to_bytes(),
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Registers `n` webhooks for `verdict.new` under `customer`, each to a receiver of its own.
async fn webhooks(system: &System, customer: &str, n: usize) -> Vec<(Receiver, String, String)> {
    let mut hooks = Vec::new();
    for _ in 0..n {
        let receiver = system.receiver().await;
        let (id, secret) = system
            .register(customer, &receiver.url, &["verdict.new"])
            .await;
        hooks.push((receiver, id, secret));
    }
    hooks
}

#[tokio::test]
async fn a_redelivered_batch_sends_only_the_tasks_not_recorded_yet() {
    let system = System::start().await;
    let customer = system.customer().await;
    let producer = system.producer().await;
    let hooks = webhooks(&system, &customer, 3).await;
    let event = system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    for (receiver, id, _) in &hooks {
        receiver.wait_for(1, PATIENCE).await;
        system
            .wait_for_delivery(&customer, id, |d| d["status"] == "succeeded")
            .await;
    }
    // A fourth webhook, registered after the event was fanned out: in the batch below, its
    // task is the only one with no record.
    let late_receiver = system.receiver().await;
    let (late, late_secret) = system
        .register(&customer, &late_receiver.url, &["verdict.new"])
        .await;
    let mut ids: Vec<WebhookId> = hooks.iter().map(|(_, id, _)| id.parse().unwrap()).collect();
    ids.push(late.parse().unwrap());
    // The fault: the event's batch handed out again, as after a delivery process died
    // before acking it.
    let body = r#"{"event":"verdict.new","data":{"again":true}}"#;
    publish_batch(&system, event.parse().unwrap(), ids, body, true).await;

    let got = late_receiver.wait_for(1, PATIENCE).await;
    assert!(
        got[0].seed_signature_valid(&late_secret),
        "the late webhook's task is signed with its own secret"
    );
    assert!(!got[0].seed_signature_valid(&hooks[0].2));
    let logged = system
        .wait_for_delivery(&customer, &late, |d| d["status"] == "succeeded")
        .await;
    assert_eq!(logged["attempt_count"], 1);
    // The recorded ones would have arrived by now: the late one did, and they are first in
    // the batch.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (receiver, id, _) in &hooks {
        assert_eq!(
            receiver.received().len(),
            1,
            "{id}'s recorded attempt was sent again by the redelivered batch"
        );
    }
    assert_eq!(late_receiver.received().len(), 1);
}

#[tokio::test]
async fn a_batch_task_past_its_webhooks_share_leaves_alone_and_is_sent_once() {
    let system = System::start_with(Options {
        delivery_env: vec![("AIOKA__DELIVERY__MAX_IN_FLIGHT_PER_WEBHOOK", "1".into())],
        ..Options::default()
    })
    .await;
    let customer = system.customer().await;
    let producer = system.producer().await;
    let hooks = webhooks(&system, &customer, 2).await;
    // The first endpoint answers after 2.5 s (the timeout is 3 s): while it holds its one
    // slot, its task of the second event's batch waits a second and is put off.
    hooks[0].0.delay(Duration::from_millis(2500));
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    let slow = hooks[0].0.wait_for(2, PATIENCE).await;
    let quick = hooks[1].0.wait_for(2, PATIENCE).await;

    assert_eq!((slow.len(), quick.len()), (2, 2));
    for (_, id, _) in &hooks {
        system
            .wait_for_delivery(&customer, id, |d| {
                d["status"] == "succeeded" && d["event_id"] == second.as_str()
            })
            .await;
    }
    let deferred = aioka_e2e::metric_sum(
        &aioka_e2e::metrics_text(&system.admins[2]).await,
        "aioka_delivery_deferred_total",
    );
    assert!(
        deferred >= 1.0,
        "the fault did not land: no task of the second batch was put off ({deferred})"
    );
    // A put-off copy that carried the whole batch would send the quick webhook's task again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (receiver, id, secret) in &hooks {
        let got = receiver.received();
        let mut deliveries: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
        deliveries.sort_unstable();
        deliveries.dedup();
        assert_eq!(
            (got.len(), deliveries.len()),
            (2, 2),
            "{id}: one delivery per event, each sent once: {deliveries:?}"
        );
        assert!(got.iter().all(|r| r.seed_signature_valid(secret)));
    }
}
