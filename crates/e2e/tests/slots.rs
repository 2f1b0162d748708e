//! The per-webhook share of a delivery process's slots, in a test binary of its own: it
//! reads `aioka_delivery_deferred_total`, and the services of every system in one test
//! process share one metrics registry (tests/it runs dozens of systems at once, and its
//! hanging-endpoint test defers on purpose).

use std::time::Duration;

use aioka_core::event::EventType;
use aioka_e2e::{Options, PATIENCE, System, sample};

#[tokio::test]
async fn many_tasks_for_one_healthy_webhook_wait_for_its_slots_instead_of_going_round_the_defer_queue()
 {
    // 2 slots per webhook, 8 tasks at once for one endpoint that answers in 50 ms: the 6 past
    // its share wait in the process for a slot (one frees every 50 ms or so, so the last is
    // sent within the 1 s a task may wait even on a busy test machine; a quarter of the
    // 64-task prefetch may wait for one webhook), none is put off through aioka.defer. Before, every task past the share went round the 1 s defer
    // queue, again and again.
    let system = System::start_with(Options {
        schedule: "",
        env: vec![
            ("AIOKA__DELIVERY__MAX_IN_FLIGHT", "64".into()),
            ("AIOKA__DELIVERY__MAX_IN_FLIGHT_PER_WEBHOOK", "2".into()),
        ],
        ..Options::default()
    })
    .await;
    let receiver = system.receiver().await;
    receiver.delay(Duration::from_millis(50));
    let customer = system.customer().await;
    let producer = system.producer().await;
    system
        .register(&customer, &receiver.url, &["council.new"])
        .await;
    // Fan-out publishes the tasks while these events come in; the first ones are in flight
    // while the rest arrive.
    for _ in 0..8 {
        system
            .publish(&producer, sample(EventType::CouncilNew))
            .await;
    }
    let delivered = receiver.wait_for(8, PATIENCE).await;
    assert_eq!(delivered.len(), 8);
    let admin = system.admins.last().unwrap();
    let text = aioka_e2e::metrics_text(admin).await;
    assert_eq!(
        aioka_e2e::metric_sum(&text, "aioka_delivery_deferred_total"),
        0.0,
        "tasks were put off though a slot freed every 50 ms or so"
    );
    // The share held: never more than 2 at once at the endpoint.
    let mut spans: Vec<_> = delivered.iter().map(|r| r.at).collect();
    spans.sort();
    for window in spans.windows(3) {
        assert!(
            window[2] - window[0] >= Duration::from_millis(45),
            "three attempts within one 50 ms answer: the per-webhook share was exceeded"
        );
    }
}
