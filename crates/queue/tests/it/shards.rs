//! Sharded delivery queues and lists of broker nodes, against the machine's RabbitMQ.

use std::collections::BTreeMap;
use std::time::Duration;

use aioka_core::WebhookId;
use aioka_queue::lapin::options::BasicGetOptions;
use aioka_queue::{Publisher, Topology, persistent_json};
use aioka_testkit::TestBroker;

/// Takes every message now in `queue`, as the webhook ids their bodies name.
async fn drain(channel: &aioka_queue::lapin::Channel, queue: &str) -> Vec<WebhookId> {
    let mut got = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let text = String::from_utf8(message.delivery.data.clone()).unwrap();
        got.push(text.parse().unwrap());
    }
    got
}

/// Where each webhook's messages were found, shard by shard.
async fn found(channel: &aioka_queue::lapin::Channel, t: &Topology) -> BTreeMap<WebhookId, u16> {
    let mut at = BTreeMap::new();
    for shard in 0..t.shards() {
        for webhook in drain(channel, &t.shard_queue(shard)).await {
            assert!(at.insert(webhook, shard).is_none(), "{webhook} found twice");
        }
    }
    at
}

/// Every kind of publish of a webhook's task (first attempt, retry through a wait queue,
/// put off) ends in the queue of that webhook's shard: retries come back to their shard.
#[tokio::test]
async fn tasks_retries_and_put_off_tasks_land_in_their_webhooks_shard() {
    aioka_testkit::init_logs();
    let broker = TestBroker::new("300ms");
    let t = Topology::new(&broker.prefix, broker.schedule.tiers(), 20).with_shards(3);
    let connection = broker.connect().await;
    let publisher = Publisher::new(&connection).await.unwrap();
    t.declare(publisher.channel()).await.unwrap();
    let webhooks: Vec<WebhookId> = (0..30).map(|_| WebhookId::new()).collect();
    let expected: BTreeMap<WebhookId, u16> =
        webhooks.iter().map(|w| (*w, t.shard_of(*w))).collect();
    assert_eq!(
        expected
            .values()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3,
        "30 webhooks cover all three shards"
    );
    let tier = broker.schedule.tiers()[0];
    let channel = connection.create_channel().await.unwrap();
    type Route = Box<dyn Fn(WebhookId) -> (String, String)>;
    let routes: [(&str, Route, Duration); 3] = [
        (
            "first attempts",
            Box::new({
                let t = t.clone();
                move |w| t.task_route(w)
            }),
            Duration::ZERO,
        ),
        (
            "retries",
            Box::new({
                let t = t.clone();
                move |w| t.retry_route(w, tier)
            }),
            Duration::from_millis(900),
        ),
        (
            "put-off tasks",
            Box::new({
                let t = t.clone();
                move |w| t.defer_route(w)
            }),
            Duration::from_millis(1600),
        ),
    ];
    for (what, route, wait) in routes {
        for webhook in &webhooks {
            let (exchange, key) = route(*webhook);
            publisher
                .publish(
                    &exchange,
                    &key,
                    webhook.to_string().as_bytes(),
                    persistent_json(None, Default::default()),
                )
                .await
                .unwrap();
        }
        tokio::time::sleep(wait).await;
        let mut at = found(&channel, &t).await;
        for _ in 0..20 {
            if at.len() == webhooks.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            at.extend(found(&channel, &t).await);
        }
        assert_eq!(
            at, expected,
            "{what}: each webhook's message in its own shard"
        );
    }
}

/// A list of nodes is tried in turn: a node that refuses is skipped, whichever place it has.
#[tokio::test]
async fn a_list_of_nodes_skips_the_ones_that_refuse() {
    let broker = TestBroker::new("1s");
    // Nothing listens on port 1 (connections are refused at once).
    let dead = "amqp://guest:guest@127.0.0.1:1/%2f";
    let list = format!("{dead}, {}", broker.url);
    for _ in 0..4 {
        // Successive calls start at successive nodes, so the dead one comes first in some.
        let connection = aioka_queue::connect(&list, "aioka-test-nodes")
            .await
            .unwrap();
        assert!(connection.status().connected());
        connection.close(200, "done".into()).await.unwrap();
    }
    let all_dead = format!("{dead},amqp://guest:guest@127.0.0.1:2/%2f");
    assert!(
        aioka_queue::connect(&all_dead, "aioka-test-nodes")
            .await
            .is_err()
    );
}
