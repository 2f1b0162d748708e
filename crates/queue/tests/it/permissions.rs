//! The broker enforces each role's permissions (`aioka_queue::permissions`), as `scripts/up`
//! sets them: a producer may publish events and nothing else.

use aioka_queue::lapin::options::{BasicGetOptions, QueueDeclareOptions};
use aioka_queue::lapin::types::FieldTable;
use aioka_queue::permissions::Role;
use aioka_queue::{Publisher, QueueError, persistent_json};
use aioka_testkit::TestBroker;

/// Whether `result` is the broker's 403 ACCESS_REFUSED.
fn refused<T: std::fmt::Debug>(result: Result<T, impl std::fmt::Display>) -> bool {
    match result {
        Ok(v) => panic!("the broker allowed it: {v:?}"),
        Err(e) => e.to_string().contains("ACCESS_REFUSED"),
    }
}

#[tokio::test]
async fn a_producer_may_publish_events_and_is_refused_everything_else() {
    let broker = TestBroker::new("1s");
    let topology = broker.topology();
    let admin = broker.connect().await;
    let admin_publisher = Publisher::new(&admin).await.unwrap();
    topology.declare(admin_publisher.channel()).await.unwrap();

    let producer = aioka_queue::connect(&broker.user(Role::Producer), "aioka-test-producer")
        .await
        .unwrap();
    let event = br#"{"event":"macro.alert","timestamp":"2026-04-20T14:32:00Z","data":{}}"#;
    let publisher = Publisher::new(&producer).await.unwrap();
    publisher
        .publish(
            &topology.events_exchange(),
            "macro.alert",
            event,
            persistent_json(None, FieldTable::default()),
        )
        .await
        .expect("a producer may publish to the events exchange");

    // A delivery task straight to the deliveries exchange (each refusal closes its channel).
    let publisher = Publisher::new(&producer).await.unwrap();
    let task: Result<(), QueueError> = publisher
        .publish(
            &topology.deliveries_exchange(),
            aioka_queue::DELIVERY_KEY,
            b"{}",
            persistent_json(None, FieldTable::default()),
        )
        .await;
    assert!(refused(task), "publishing a task");
    // Declaring anything.
    let channel = producer.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            format!("{}.mine", broker.prefix).as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(refused(declared), "declaring a queue");
    // Reading any queue: the events it may write, or the tasks.
    for queue in [
        topology.fanout_queue(),
        topology.delivery_queue(),
        topology.parking_queue(),
    ] {
        let channel = producer.create_channel().await.unwrap();
        let got = channel
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await;
        assert!(refused(got), "reading {queue}");
    }
    // The one event it published is there, untouched by the refusals.
    let check = admin.create_channel().await.unwrap();
    let message = check
        .basic_get(
            topology.fanout_queue().as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the producer's event is in the fanout queue");
    assert_eq!(message.delivery.data, event);
}

#[tokio::test]
async fn the_gateway_may_publish_events_and_tasks_but_read_nothing() {
    let broker = TestBroker::new("1s");
    let topology = broker.topology();
    let admin = broker.connect().await;
    topology
        .declare(Publisher::new(&admin).await.unwrap().channel())
        .await
        .unwrap();
    let gateway = aioka_queue::connect(&broker.user(Role::Gateway), "aioka-test-gateway")
        .await
        .unwrap();
    let publisher = Publisher::new(&gateway).await.unwrap();
    topology
        .declare_exchanges(publisher.channel())
        .await
        .expect("the gateway declares the exchanges");
    publisher
        .publish(
            &topology.deliveries_exchange(),
            aioka_queue::DELIVERY_KEY,
            b"{}",
            persistent_json(None, FieldTable::default()),
        )
        .await
        .expect("the gateway publishes test events and re-sends as tasks");
    let channel = gateway.create_channel().await.unwrap();
    let got = channel
        .basic_get(
            topology.delivery_queue().as_str().into(),
            BasicGetOptions::default(),
        )
        .await;
    assert!(refused(got), "reading the delivery queue");
}

#[tokio::test]
async fn fanout_and_delivery_each_declare_and_read_only_their_own_queues() {
    let broker = TestBroker::new("1s");
    // Sharded, while the users' permissions are made from the unsharded topology: the shard
    // count must not need new permissions.
    let topology = broker.topology().with_shards(3);
    for (role, part, own, other) in [
        (
            Role::Fanout,
            aioka_queue::Part::Fanout,
            topology.fanout_queue(),
            topology.delivery_queue(),
        ),
        (
            Role::Delivery,
            aioka_queue::Part::Delivery,
            topology.shard_queue(2),
            topology.fanout_queue(),
        ),
    ] {
        let connection = aioka_queue::connect(&broker.user(role), "aioka-test-service")
            .await
            .unwrap();
        let publisher = Publisher::new(&connection).await.unwrap();
        topology
            .declare_part(publisher.channel(), part)
            .await
            .unwrap_or_else(|e| panic!("{} declares its part: {e}", role.as_str()));
        let channel = connection.create_channel().await.unwrap();
        channel
            .basic_get(own.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{} reads {own}: {e}", role.as_str()));
        if role == Role::Delivery {
            // The other part exists once the first role declared it.
            let channel = connection.create_channel().await.unwrap();
            let got = channel
                .basic_get(other.as_str().into(), BasicGetOptions::default())
                .await;
            assert!(refused(got), "delivery reading {other}");
        }
    }
    // Fanout, now that delivery's queue exists, cannot read it either.
    let fanout = aioka_queue::connect(
        &broker.user_named(Role::Fanout, "again"),
        "aioka-test-fanout",
    )
    .await
    .unwrap();
    let channel = fanout.create_channel().await.unwrap();
    let got = channel
        .basic_get(
            topology.shard_queue(2).as_str().into(),
            BasicGetOptions::default(),
        )
        .await;
    assert!(refused(got), "fanout reading a delivery shard");
}
