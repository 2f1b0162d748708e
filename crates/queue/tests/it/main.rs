//! The consumer loop against the machine's RabbitMQ.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aioka_queue::lapin::options::BasicGetOptions;
use aioka_queue::{ConsumerSpec, Publisher, Topology, persistent_json, run_consumer};
use aioka_testkit::TestBroker;
use tokio_util::sync::CancellationToken;

mod permissions;
mod shards;

#[tokio::test]
async fn a_message_whose_handler_panics_is_parked_after_the_delivery_limit_while_others_flow() {
    aioka_testkit::init_logs();
    let broker = TestBroker::new("1s");
    // A small delivery limit keeps the test short; the mechanism is the production one.
    let topology = Topology::new(&broker.prefix, broker.schedule.tiers(), 3);
    let connection = broker.connect().await;
    let publisher = Publisher::new(&connection).await.unwrap();
    topology.declare(publisher.channel()).await.unwrap();
    for body in [&b"poison"[..], b"fine-1", b"fine-2"] {
        publisher
            .publish(
                &topology.deliveries_exchange(),
                aioka_queue::DELIVERY_KEY,
                body,
                persistent_json(None, Default::default()),
            )
            .await
            .unwrap();
    }

    let handled = Arc::new(AtomicUsize::new(0));
    let poisoned = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let consumer = {
        let (handled, poisoned, shutdown) = (handled.clone(), poisoned.clone(), shutdown.clone());
        let url = broker.url.clone();
        let topology = topology.clone();
        tokio::spawn(async move {
            let spec = ConsumerSpec {
                part: aioka_queue::Part::All,
                url: &url,
                topology: &topology,
                service: "test",
                queues: vec![topology.delivery_queue()],
                drain_leftover_shards: false,
                prefetch: 4,
                grace: Duration::from_secs(1),
            };
            run_consumer(
                spec,
                &shutdown,
                |_| {},
                |_publisher, delivery| {
                    let (handled, poisoned) = (handled.clone(), poisoned.clone());
                    async move {
                        if delivery.data == b"poison" {
                            poisoned.fetch_add(1, Ordering::SeqCst);
                            panic!("a handler bug");
                        }
                        handled.fetch_add(1, Ordering::SeqCst);
                        aioka_queue::ack(&delivery).await;
                    }
                },
            )
            .await;
        })
    };

    let channel = connection.create_channel().await.unwrap();
    let mut parked = None;
    for _ in 0..200 {
        if let Some(message) = channel
            .basic_get(
                topology.parking_queue().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            parked = Some(message);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let parked = parked.expect("the poison message reaches the parking queue");
    assert_eq!(parked.delivery.data, b"poison");
    let reason = aioka_queue::header_str(
        parked.delivery.properties.headers().as_ref(),
        "x-first-death-reason",
    );
    assert_eq!(
        reason.as_deref(),
        Some("delivery_limit"),
        "the broker says why"
    );
    assert_eq!(
        handled.load(Ordering::SeqCst),
        2,
        "the other messages were handled"
    );
    assert!(
        poisoned.load(Ordering::SeqCst) >= 3,
        "tried up to the limit"
    );
    shutdown.cancel();
    consumer.await.unwrap();
}

#[tokio::test]
async fn a_large_prefetch_is_spread_over_channels_and_every_ack_lands_on_its_own() {
    aioka_testkit::init_logs();
    let broker = TestBroker::new("1s");
    let topology = broker.topology();
    let connection = broker.connect().await;
    let publisher = Publisher::new(&connection).await.unwrap();
    topology.declare(publisher.channel()).await.unwrap();
    let total = 600_usize;
    for i in 0..total {
        publisher
            .publish(
                &topology.deliveries_exchange(),
                aioka_queue::DELIVERY_KEY,
                i.to_string().as_bytes(),
                persistent_json(None, Default::default()),
            )
            .await
            .unwrap();
    }

    // Every tenth message is held until released, as an attempt to a hanging endpoint is,
    // while the others are acked at once; a prefetch of 300 takes three channels.
    let prefetch = 3 * aioka_queue::PER_CHANNEL;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let redelivered = Arc::new(AtomicUsize::new(0));
    let release = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let consumer = {
        let (seen, redelivered) = (seen.clone(), redelivered.clone());
        let (release, shutdown) = (release.clone(), shutdown.clone());
        let url = broker.url.clone();
        let topology = topology.clone();
        tokio::spawn(async move {
            let spec = ConsumerSpec {
                part: aioka_queue::Part::All,
                url: &url,
                topology: &topology,
                service: "test",
                queues: vec![topology.delivery_queue()],
                drain_leftover_shards: false,
                prefetch,
                grace: Duration::from_secs(5),
            };
            run_consumer(
                spec,
                &shutdown,
                |_| {},
                |_publisher, delivery| {
                    let (seen, redelivered, release) =
                        (seen.clone(), redelivered.clone(), release.clone());
                    async move {
                        if delivery.redelivered {
                            redelivered.fetch_add(1, Ordering::SeqCst);
                        }
                        let n: usize = std::str::from_utf8(&delivery.data)
                            .unwrap()
                            .parse()
                            .unwrap();
                        if n.is_multiple_of(10) {
                            release.cancelled().await;
                        }
                        seen.lock().unwrap().push(n);
                        aioka_queue::ack(&delivery).await;
                    }
                },
            )
            .await;
        })
    };

    let channel = connection.create_channel().await.unwrap();
    let passive = aioka_queue::lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let queue = topology.delivery_queue();
    let mut consumers = 0;
    for _ in 0..200 {
        let q = channel
            .queue_declare(queue.as_str().into(), passive, Default::default())
            .await
            .unwrap();
        consumers = q.consumer_count();
        if consumers == 3 && seen.lock().unwrap().len() == total - total / 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(consumers, 3, "one consumer per channel of PER_CHANNEL");
    assert_eq!(
        seen.lock().unwrap().len(),
        total - total / 10,
        "the held messages do not hold back the others"
    );
    release.cancel();
    for _ in 0..200 {
        if seen.lock().unwrap().len() >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    consumer.await.unwrap();

    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, (0..total).collect::<Vec<_>>(), "each message once");
    assert_eq!(redelivered.load(Ordering::SeqCst), 0, "no ack went astray");
    let q = channel
        .queue_declare(queue.as_str().into(), passive, Default::default())
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0, "nothing left behind");
}

/// A session that ends under messages in hand (here its publisher channel is closed by the
/// broker) has the next session publish again, marked redelivered, those the broker does not
/// hand back within `HANDED_BACK_WITHIN` (here the test purges them the moment they are
/// returned, as a quorum queue whose consumer's node died was seen to lose them).
#[tokio::test]
async fn messages_in_hand_the_broker_does_not_hand_back_are_published_again() {
    aioka_testkit::init_logs();
    let broker = TestBroker::new("1s");
    let topology = broker.topology();
    let connection = broker.connect().await;
    let publisher = Publisher::new(&connection).await.unwrap();
    topology.declare(publisher.channel()).await.unwrap();
    let held = 5_usize;
    for i in 0..=held {
        publisher
            .publish(
                &topology.deliveries_exchange(),
                aioka_queue::DELIVERY_KEY,
                i.to_string().as_bytes(),
                persistent_json(None, Default::default()),
            )
            .await
            .unwrap();
    }

    // The first session holds all six without settling them; message 0 has its publisher
    // publish to an exchange that does not exist: the broker closes that channel and the
    // session ends with six messages in hand. Afterwards every message is acked.
    let first_session = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let again = Arc::new(std::sync::Mutex::new(Vec::new()));
    let shutdown = CancellationToken::new();
    let consumer = {
        let (first_session, again, shutdown) =
            (first_session.clone(), again.clone(), shutdown.clone());
        let url = broker.url.clone();
        let topology = topology.clone();
        tokio::spawn(async move {
            let spec = ConsumerSpec {
                part: aioka_queue::Part::All,
                url: &url,
                topology: &topology,
                service: "test",
                queues: vec![topology.delivery_queue()],
                drain_leftover_shards: false,
                prefetch: 16,
                grace: Duration::from_secs(5),
            };
            run_consumer(
                spec,
                &shutdown,
                |_| {},
                |publisher, delivery| {
                    let (first_session, again) = (first_session.clone(), again.clone());
                    async move {
                        let n: usize = std::str::from_utf8(&delivery.data)
                            .unwrap()
                            .parse()
                            .unwrap();
                        if first_session.load(Ordering::SeqCst) {
                            if n == 0 {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                first_session.store(false, Ordering::SeqCst);
                                let _ = publisher
                                    .publish("no-such-exchange", "x", b"x", Default::default())
                                    .await;
                            }
                            std::future::pending::<()>().await;
                        }
                        let marked = aioka_queue::header_str(
                            delivery.properties.headers().as_ref(),
                            aioka_queue::REDELIVERED_HEADER,
                        )
                        .is_some();
                        again.lock().unwrap().push((n, marked));
                        aioka_queue::ack(&delivery).await;
                    }
                },
            )
            .await;
        })
    };

    // The broker "loses" what it hands back: the moment the session's consumers are gone,
    // the returned messages are purged, before the next session consumes.
    let channel = connection.create_channel().await.unwrap();
    let queue = topology.delivery_queue();
    let passive = aioka_queue::lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let consumers = |channel: &aioka_queue::lapin::Channel| {
        let (channel, queue) = (channel.clone(), queue.clone());
        async move {
            channel
                .queue_declare(queue.as_str().into(), passive, Default::default())
                .await
                .unwrap()
        }
    };
    let mut purged = 0;
    let mut was_consumed = false;
    for _ in 0..2_000 {
        let q = consumers(&channel).await;
        if q.consumer_count() > 0 {
            was_consumed = true;
        } else if was_consumed {
            purged = channel
                .queue_purge(queue.as_str().into(), Default::default())
                .await
                .unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        purged,
        u32::try_from(held + 1).unwrap(),
        "the fault did not land: the six messages in hand were not returned and purged"
    );

    let marked_set = || -> std::collections::BTreeSet<usize> {
        again
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, marked)| *marked)
            .map(|(n, _)| *n)
            .collect()
    };
    let deadline = tokio::time::Instant::now() + aioka_queue::HANDED_BACK_WITHIN * 3;
    while marked_set().len() <= held && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        marked_set(),
        (0..=held).collect(),
        "the messages in hand were not published again: {:?}",
        again.lock().unwrap()
    );
    shutdown.cancel();
    consumer.await.unwrap();
}
