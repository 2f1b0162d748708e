//! Nobody can forge a delivery: a task published straight to the deliveries exchange with a
//! broker credential, but without our services' tag, is parked with its reason and never
//! signed with the webhook's secret nor sent.

use std::time::Duration;

use aioka_core::event::EventType;
use aioka_core::messages::{BatchTask, DeliveryTask, Task};
use aioka_core::{DeliveryId, EncryptionKey, EventId, WebhookId};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;

use crate::{PATIENCE, System, sample};

#[tokio::test]
async fn a_task_without_our_tag_is_parked_and_never_sent() {
    let system = System::start().await;
    let (receiver, _customer, producer, webhook, _) = system.subscriber(&["verdict.new"]).await;
    let webhook_id: WebhookId = webhook.parse().unwrap();
    let event_id = EventId::new();
    let forged = |auth_key: Option<&EncryptionKey>| {
        let task = DeliveryTask {
            delivery_id: DeliveryId::for_pair(event_id, webhook_id),
            event_id,
            webhook_id,
            event_type: EventType::VerdictNew,
            body: r#"{"event":"verdict.new","data":{"forged":true}}"#.into(),
            attempt: 1,
            series_start: 1,
            auth: None,
            test: false,
        };
        let task = match auth_key {
            Some(key) => task.authenticated(&key.task_key()),
            None => task,
        };
        Task::V1(task).to_bytes()
    };
    // The broker lets the service credential publish here; only the tag can tell.
    let connection = system.broker.connect().await;
    let channel = connection.create_channel().await.unwrap();
    let topology = system.broker.topology();
    let other_key = EncryptionKey::generate();
    for body in [forged(None), forged(Some(&other_key))] {
        channel
            .basic_publish(
                topology.deliveries_exchange().as_str().into(),
                aioka_queue::DELIVERY_KEY.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A real event after the forged tasks is delivered: the consumer is unharmed.
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    receiver.wait_for(1, PATIENCE).await;

    let reasons: Vec<String> = aioka_e2e::parked(&channel, &topology, 2)
        .await
        .into_iter()
        .map(|(reason, _)| reason)
        .collect();
    assert_eq!(reasons.len(), 2, "both forged tasks parked: {reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("no authentication tag")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("does not match")),
        "{reasons:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.received();
    assert_eq!(got.len(), 1, "only the real event arrived");
    assert!(!String::from_utf8_lossy(&got[0].body).contains("forged"));
}

#[tokio::test]
async fn the_services_work_as_broker_users_of_least_privilege() {
    let system = System::start_with(crate::Options {
        broker_users: true,
        ..crate::Options::default()
    })
    .await;
    let (receiver, customer, producer, webhook, secret) = system.subscriber(&["verdict.new"]).await;
    // An event through fanout, a failure and its retry through the tiers, and a test event
    // straight from the gateway.
    receiver.script(&[500]);
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    let got = receiver.wait_for(2, PATIENCE).await;
    assert!(got.iter().all(|r| r.seed_signature_valid(&secret)));
    let response = system
        .post(
            "/v1/webhooks/test",
            &customer,
            &serde_json::json!({"webhook_id": webhook}),
        )
        .await;
    assert_eq!(response.status(), 202);
    receiver.wait_for(3, PATIENCE).await;
}

#[tokio::test]
async fn a_batch_changed_after_tagging_or_naming_a_webhook_twice_is_parked_and_never_sent() {
    let system = System::start().await;
    let (receiver, _customer, producer, webhook, _) = system.subscriber(&["verdict.new"]).await;
    let webhook_id: WebhookId = webhook.parse().unwrap();
    let key = EncryptionKey::from_base64(system.env.get("AIOKA__SECURITY__SECRET_KEY").unwrap())
        .unwrap()
        .task_key();
    let batch = |webhooks: Vec<WebhookId>| BatchTask {
        event_id: EventId::new(),
        event_type: EventType::VerdictNew,
        body: r#"{"event":"verdict.new","data":{"forged":true}}"#.into(),
        webhooks,
        auth: None,
    };
    // Tagged for another webhook, then given ours: the tag covers the list.
    let mut widened = batch(vec![WebhookId::new()]).authenticated(&key);
    widened.webhooks.push(webhook_id);
    // Our own tag, but our webhook twice: each task would be sent twice.
    let twice = batch(vec![webhook_id, webhook_id]).authenticated(&key);
    let connection = system.broker.connect().await;
    let channel = connection.create_channel().await.unwrap();
    let topology = system.broker.topology();
    for forged in [widened, twice] {
        channel
            .basic_publish(
                topology.deliveries_exchange().as_str().into(),
                aioka_queue::DELIVERY_KEY.into(),
                BasicPublishOptions::default(),
                &Task::V2(forged).to_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    receiver.wait_for(1, PATIENCE).await;
    let reasons: Vec<String> = aioka_e2e::parked(&channel, &topology, 2)
        .await
        .into_iter()
        .map(|(reason, _)| reason)
        .collect();
    assert_eq!(reasons.len(), 2, "both forged batches parked: {reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("does not match")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("twice")), "{reasons:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.received();
    assert_eq!(got.len(), 1, "only the real event arrived");
    assert!(!String::from_utf8_lossy(&got[0].body).contains("forged"));
}
