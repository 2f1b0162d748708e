//! The reach check (`aioka_store::Store::check_reach`): a first attempt the broker lost
//! after confirming it is sent again, and a first attempt that was only late is still sent
//! once. Compared as sets of (delivery id) sent, each exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use aioka_core::{DeliveryId, EventId, WebhookId};
use aioka_queue::Topology;
use aioka_testkit::Receiver;

use crate::{Options, PATIENCE, System, verdict};

/// Overdue after this, the check looks at an event; a first attempt older than half of it
/// (5 s: connect 2 s + timeout 3 s leave 5 s) claims before it is sent.
const SWEEP_AFTER: &str = "10s";

fn delivery_settings(shards: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AIOKA__DELIVERY__RETRY_SWEEP_AFTER", SWEEP_AFTER.into()),
        ("AIOKA__DELIVERY__RETRY_SWEEP_INTERVAL", "200ms".into()),
        ("AIOKA__DELIVERY__SHARDS", shards.into()),
    ]
}

async fn sql(system: &System) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&system.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Waits until fan-out has stored and finished `event`.
async fn fanned_out(system: &System, event: EventId) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let done: Option<bool> = sql(system)
            .await
            .query_opt(
                "SELECT fanned_out_at IS NOT NULL FROM events WHERE id = $1",
                &[&event.as_uuid()],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        if done == Some(true) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{event} never fanned out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many times each delivery id reached `receivers`.
fn sent(receivers: &[Receiver]) -> BTreeMap<String, usize> {
    let mut sent = BTreeMap::new();
    for r in receivers.iter().flat_map(|r| r.received()) {
        *sent.entry(r.header("webhook-id").to_owned()).or_insert(0) += 1;
    }
    sent
}

async fn wait_until_sent(receivers: &[Receiver], expected: &BTreeMap<String, usize>) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let sent = sent(receivers);
        if expected.keys().all(|id| sent.contains_key(id)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never sent: {:?}",
            expected
                .keys()
                .filter(|id| !sent.contains_key(*id))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_first_attempt_lost_after_fan_out_is_sent_and_a_late_one_is_sent_once() {
    let shards = vec![("AIOKA__AMQP__DELIVERY_SHARDS", "2".to_owned())];
    let system = System::start_with(Options {
        delivery: false,
        env: shards,
        ..Options::default()
    })
    .await;
    let topology = Topology::new(
        &system.broker.prefix,
        Options::default()
            .schedule
            .parse::<aioka_core::retry::RetrySchedule>()
            .unwrap()
            .tiers(),
        20,
    )
    .with_shards(2);

    // The delivery service declares the shard queues; none runs yet.
    let connection = system.broker.connect().await;
    let channel = connection.create_channel().await.unwrap();
    topology.declare(&channel).await.unwrap();

    // Two webhooks on each shard, each with a receiver of its own.
    let (mut on_shard, mut receivers, mut webhooks) = ([0, 0], Vec::new(), Vec::new());
    let mut producer = String::new();
    while on_shard.iter().any(|&n| n < 2) {
        let (receiver, _, p, webhook, _) = system.subscriber(&["verdict.new"]).await;
        let webhook: WebhookId = webhook.parse().unwrap();
        on_shard[usize::from(topology.shard_of(webhook))] += 1;
        receivers.push(receiver);
        webhooks.push(webhook);
        producer = p;
        assert!(webhooks.len() < 40, "no webhook lands on one of the shards");
    }

    // The fault: `lost`'s first attempts, confirmed to fan-out, vanish from the shard queues
    // before any delivery process takes them, as a cluster node's death lost them.
    let lost: EventId = system
        .publish(&producer, verdict(None))
        .await
        .parse()
        .unwrap();
    fanned_out(&system, lost).await;
    let mut purged = 0;
    for shard in 0..2 {
        purged += channel
            .queue_purge(
                topology.shard_queue(shard).as_str().into(),
                Default::default(),
            )
            .await
            .unwrap();
    }
    assert!(
        purged >= 2,
        "the fault did not land: {purged} task messages purged from the two shard queues"
    );
    // `late`'s first attempts wait in the queues, past the age at which they claim.
    let late: EventId = system
        .publish(&producer, verdict(None))
        .await
        .parse()
        .unwrap();
    fanned_out(&system, late).await;
    tokio::time::sleep(Duration::from_millis(10_500)).await;

    let expected: BTreeMap<String, usize> = [lost, late]
        .iter()
        .flat_map(|e| {
            webhooks
                .iter()
                .map(|w| (DeliveryId::for_pair(*e, *w).to_string(), 1))
        })
        .collect();
    // First a process of shard 0 alone: its check writes rows for every webhook of `lost`
    // and for those of `late` on shard 1 (their tasks wait unconsumed), and publishes their
    // copies; shard 1's originals of `late` then meet copies of themselves.
    let first = system.spawn_delivery(&delivery_settings("0")).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let checked: bool = sql(&system)
            .await
            .query_one(
                "SELECT bool_and(reach_checked) FROM events WHERE id = ANY($1)",
                &[&vec![lost.as_uuid(), late.as_uuid()]],
            )
            .await
            .unwrap()
            .get(0);
        if checked {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the events were never checked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shard_1_rows: i64 = sql(&system)
        .await
        .query_one(
            "SELECT count(*) FROM deliveries WHERE event_id = $1 AND webhook_id = ANY($2)",
            &[
                &late.as_uuid(),
                &webhooks
                    .iter()
                    .filter(|w| topology.shard_of(**w) == 1)
                    .map(|w| w.as_uuid())
                    .collect::<Vec<_>>(),
            ],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        shard_1_rows,
        i64::from(on_shard[1]),
        "the check wrote the rows of the late first attempts still queued on shard 1"
    );
    first.shutdown.cancel();
    first.task.await.unwrap().unwrap();

    let _all = system.spawn_delivery(&delivery_settings("all")).await;
    wait_until_sent(&receivers, &expected).await;
    // Copies that lost their claim come back through the defer queue until the attempt is
    // recorded: give them the time to show a second send.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        sent(&receivers),
        expected,
        "each delivery sent exactly once"
    );
}
