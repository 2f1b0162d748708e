//! The consumer loop against the machine's RabbitMQ.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aioka_queue::lapin::options::BasicGetOptions;
use aioka_queue::{ConsumerSpec, Publisher, Topology, persistent_json, run_consumer};
use aioka_testkit::TestBroker;
use tokio_util::sync::CancellationToken;

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
                url: &url,
                topology: &topology,
                service: "test",
                queue: topology.delivery_queue(),
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
