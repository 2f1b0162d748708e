//! Ordered delivery (`"ordering": "fifo"`): one delivery at a time, in the order the events
//! were accepted; a failing delivery holds those behind it until it succeeds or exhausts its
//! retries. Unordered webhooks beside them are unaffected.

use std::collections::BTreeSet;
use std::time::Duration;

use aioka_core::event::EventType;
use aioka_e2e::ordered::{assert_in_event_order, wait_all_ended};
use serde_json::{Value, json};

use crate::{System, sample};

/// How long each receiver takes to answer: requests of one ordered webhook must be at least
/// this far apart.
const ANSWER: Duration = Duration::from_millis(20);
const EVENTS: usize = 12;

#[tokio::test]
async fn ordered_webhooks_get_one_delivery_at_a_time_in_event_order_through_failures() {
    // Four attempts a delivery (200, 400, 600 ms apart).
    let system = System::start().await;
    let customer = system.customer().await;
    let producer = system.producer().await;
    // Three ordered webhooks in parallel, each failing its own way (the requests of one come
    // one at a time, so its script is in event order).
    let scripts: [&[u16]; 3] = [
        // Event 0 fails once, event 2 twice.
        &[500, 200, 200, 500, 500, 200],
        // Event 0 fails all four attempts: it ends failed, then event 1 goes.
        &[500, 500, 500, 500],
        &[],
    ];
    let mut ordered = Vec::new();
    for script in scripts {
        let receiver = system.receiver().await;
        receiver.script(script);
        receiver.delay(ANSWER);
        let r = system
            .post(
                "/v1/webhooks",
                &customer,
                &json!({"url": receiver.url, "events": ["verdict.new"], "ordering": "fifo"}),
            )
            .await;
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["ordering"], "fifo");
        ordered.push((receiver, body["id"].as_str().unwrap().to_owned()));
    }
    let free = system.receiver().await;
    let (unordered, _) = system
        .register(&customer, &free.url, &["verdict.new"])
        .await;
    assert_eq!(
        system.webhook(&customer, &unordered).await["ordering"],
        "unordered"
    );

    let mut events = Vec::new();
    for _ in 0..EVENTS {
        events.push(
            system
                .publish(&producer, sample(EventType::VerdictNew))
                .await,
        );
    }
    for (_, webhook) in &ordered {
        wait_all_ended(&system, &customer, webhook, EVENTS).await;
    }
    wait_all_ended(&system, &customer, &unordered, EVENTS).await;

    let sequences: Vec<Vec<usize>> = ordered
        .iter()
        .map(|(receiver, webhook)| {
            assert_in_event_order(&receiver.received(), &events, webhook, ANSWER)
        })
        .collect();
    // The failures held the line where they happened.
    assert_eq!(&sequences[0][..6], [0, 0, 1, 2, 2, 2], "{:?}", sequences[0]);
    assert_eq!(&sequences[1][..5], [0, 0, 0, 0, 1], "{:?}", sequences[1]);
    assert_eq!(sequences[2], (0..EVENTS).collect::<Vec<_>>());
    let log = system.deliveries(&customer, &ordered[1].1).await;
    let first = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event_id"] == events[0].as_str())
        .unwrap();
    assert_eq!(
        (&first["status"], &first["attempt_count"]),
        (&json!("failed"), &json!(4))
    );
    // The unordered webhook got every event too.
    let id: aioka_core::WebhookId = unordered.parse().unwrap();
    let expected: BTreeSet<String> = events
        .iter()
        .map(|e| aioka_core::DeliveryId::for_pair(e.parse().unwrap(), id).to_string())
        .collect();
    let got: BTreeSet<String> = free
        .received()
        .iter()
        .map(|r| r.header("x-aioka-delivery").to_owned())
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn the_order_is_set_at_registration_and_by_patch_and_named_when_wrong() {
    let system = System::start().await;
    let (receiver, customer, _producer, webhook, _) = system.subscriber(&["verdict.new"]).await;
    let path = format!("/v1/webhooks/{webhook}");
    let r = system
        .patch(&path, &customer, &json!({"ordering": "fifo"}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        system.webhook(&customer, &webhook).await["ordering"],
        "fifo"
    );
    let r = system
        .patch(&path, &customer, &json!({"ordering": "unordered"}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        system.webhook(&customer, &webhook).await["ordering"],
        "unordered"
    );
    for body in [
        json!({"ordering": "FIFO"}),
        json!({"ordering": null}),
        json!({"ordering": 1}),
    ] {
        let r = system.patch(&path, &customer, &body).await;
        assert_eq!(r.status(), 422, "{body}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["error"]["field"], "ordering", "{body}");
    }
    let r = system
        .post(
            "/v1/webhooks",
            &customer,
            &json!({"url": receiver.url, "events": ["verdict.new"], "ordering": "lifo"}),
        )
        .await;
    assert_eq!(r.status(), 422);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["error"]["field"], "ordering");
}
