//! Changing the delivery shard count on a running system (`proto/amqp.md`, "Shards"): up
//! from 1 to 3 with deliveries flowing, then down to 2 while retries wait in the shard that
//! goes away. Every attempt of every delivery is made, compared as sets.

use std::collections::BTreeSet;
use std::time::Duration;

use aioka_core::{DeliveryId, EventId, WebhookId};
use aioka_queue::Topology;
use aioka_testkit::Receiver;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use crate::{Options, PATIENCE, System, verdict};

/// Messages now in `queue` (ready ones; the wait queues have no consumer).
async fn depth(system: &System, queue: &str) -> u32 {
    let connection = system.broker.connect().await;
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let q = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap();
    q.message_count()
}

/// Every (delivery id, attempt) the receivers were sent.
fn seen(receivers: &[Receiver]) -> BTreeSet<(String, u32)> {
    receivers
        .iter()
        .flat_map(|r| r.received())
        .map(|r| {
            (
                r.header("webhook-id").to_owned(),
                r.header("x-aioka-attempt").parse().unwrap(),
            )
        })
        .collect()
}

async fn stop(service: aioka_e2e::Fanout) {
    service.shutdown.cancel();
    service.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn changing_the_shard_count_while_deliveries_and_retries_flow_loses_nothing() {
    let schedule = "1500ms,1500ms";
    let system = System::start_with(Options {
        schedule,
        fanout: false,
        ..Options::default()
    })
    .await;
    let shards = |n: u16| vec![("AIOKA__AMQP__DELIVERY_SHARDS", n.to_string())];
    let fanout_1 = system.spawn_fanout().await;

    // Fifteen webhooks; every other one always fails, so each of its deliveries is a chain
    // of three attempts through the retry wait queues.
    let (mut receivers, mut webhooks, mut failing) = (Vec::new(), Vec::new(), BTreeSet::new());
    let mut producer = String::new();
    for i in 0..15 {
        let (receiver, _, p, webhook, _) = system.subscriber(&["verdict.new"]).await;
        let webhook: WebhookId = webhook.parse().unwrap();
        if i % 2 == 1 {
            receiver.respond_with(500);
            failing.insert(webhook);
        }
        receivers.push(receiver);
        webhooks.push(webhook);
        producer = p;
    }
    let topology = Topology::new(
        &system.broker.prefix,
        schedule
            .parse::<aioka_core::retry::RetrySchedule>()
            .unwrap()
            .tiers(),
        20,
    )
    .with_shards(3);
    let in_shard_2: Vec<&WebhookId> = failing
        .iter()
        .filter(|w| topology.shard_of(**w) == 2)
        .collect();
    assert!(
        !in_shard_2.is_empty(),
        "a failing webhook in shard 2 of 3 (re-run: ids are random)"
    );

    let mut events = Vec::new();
    events.push(system.publish(&producer, verdict(None)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Up to three shards: delivery first, then fanout.
    let delivery_3 = system.spawn_delivery(&shards(3)).await;
    let fanout_3 = system.spawn_fanout_with(&shards(3)).await;
    stop(fanout_1).await;
    let second = system.publish(&producer, verdict(None)).await;
    events.push(second.clone());
    // Wait for the second event's first attempts: the failing ones' retries now wait in
    // their shards' wait queues.
    let second_id: EventId = second.parse().unwrap();
    let firsts: BTreeSet<(String, u32)> = webhooks
        .iter()
        .map(|w| (DeliveryId::for_pair(second_id, *w).to_string(), 1))
        .collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !seen(&receivers).is_superset(&firsts) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second event's first attempts never all came"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Down to two shards while shard 2 holds retries. The fault landed only if it does.
    let tier = topology.shard_retry_queue(
        schedule
            .parse::<aioka_core::retry::RetrySchedule>()
            .unwrap()
            .tiers()[0],
        2,
    );
    let stranded = depth(&system, &tier).await + depth(&system, &topology.shard_queue(2)).await;
    stop(delivery_3).await;
    assert!(
        stranded > 0,
        "no retry waited in shard 2 when its last consumer stopped"
    );
    let delivery_2 = system.spawn_delivery(&shards(2)).await;
    let fanout_2 = system.spawn_fanout_with(&shards(2)).await;
    stop(fanout_3).await;
    events.push(system.publish(&producer, verdict(None)).await);

    let mut expected = BTreeSet::new();
    for event in &events {
        let event: EventId = event.parse().unwrap();
        for webhook in &webhooks {
            let id = DeliveryId::for_pair(event, *webhook).to_string();
            let attempts = if failing.contains(webhook) {
                1..=3
            } else {
                1..=1
            };
            expected.extend(attempts.map(|a| (id.clone(), a)));
        }
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got = seen(&receivers);
        let lost: Vec<_> = expected.difference(&got).collect();
        let unexpected: Vec<_> = got.difference(&expected).collect();
        assert!(
            unexpected.is_empty(),
            "attempts nobody asked for: {unexpected:?}"
        );
        if lost.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} attempts never came ({stranded} messages were in shard 2 when its consumer stopped): {lost:?}",
            lost.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(fanout_2).await;
    stop(delivery_2).await;
    system.stop().await;
}
