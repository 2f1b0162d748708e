//! Test events the broker refuses, provoked for real with a queue length policy.
//!
//! A publish that succeeds in part (the rule is unit-tested in `deliveries.rs`) cannot be
//! provoked on purpose: every task goes to the same exchange with the same routing key, and a
//! quorum queue over its length tells a publisher to expect nacks only after the message that
//! crossed the cap, so a burst lands whole or is refused whole.

use std::process::Command;
use std::time::Duration;

use aioka_core::tier::Tier;
use aioka_queue::lapin::options::QueueDeclareOptions;
use serde_json::{Value, json};

use crate::App;

/// A RabbitMQ policy of this test, cleared when dropped (the broker outlives the test).
struct Policy(String);

impl Policy {
    /// Caps `queue` at one message: with the queue's `x-overflow=reject-publish` the broker
    /// nacks every publish beyond it.
    fn one_message(name: String, queue: &str) -> Self {
        let pattern = format!("^{}$", queue.replace('.', "\\."));
        let status = Command::new("rabbitmqctl")
            .args([
                "set_policy",
                "--apply-to",
                "queues",
                "--priority",
                "100",
                &name,
                &pattern,
                r#"{"max-length":1}"#,
            ])
            .status()
            .expect("this test needs rabbitmqctl (the machine's RabbitMQ)");
        assert!(status.success());
        Self(name)
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["clear_policy", &self.0])
            .status();
    }
}

#[tokio::test]
async fn a_test_event_the_broker_refuses_entirely_leaves_nothing_behind() {
    let app = App::spawn().await;
    let customer = app.customer(Tier::Basic).await;
    let mut webhooks = Vec::new();
    for path in ["a", "b"] {
        let body = app
            .register(
                &customer,
                &format!("https://yourserver.com/{path}"),
                &["verdict.new"],
            )
            .await;
        webhooks.push(body["id"].as_str().unwrap().to_owned());
    }
    // The delivery queue is capped at one message; with its `x-overflow=reject-publish` the
    // broker nacks a publisher's messages once the queue is full and it has told that
    // publisher so. No delivery service consumes here.
    let topology = app.broker.topology();
    let queue = topology.delivery_queue();
    let _policy = Policy::one_message(format!("{}-one-task", app.broker.prefix), &queue);
    // A policy reaches the queue a moment after it is set.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Two test events to the first webhook take it over the cap: a quorum queue accepts the
    // message that crosses it, then tells the publisher to expect nacks.
    for _ in 0..2 {
        let response = app
            .post(
                "/v1/webhooks/test",
                &customer,
                &json!({"webhook_id": webhooks[0]}),
            )
            .await;
        assert_eq!(response.status(), 202);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connection = app.broker.connect().await;
    let channel = connection.create_channel().await.unwrap();

    let response = app.post("/v1/webhooks/test", &customer, &json!({})).await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "service_unavailable", "{body}");
    let q = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        q.message_count(),
        2,
        "the broker took no task of the last event"
    );
    // Only the first events' deliveries are listed: none of the refused one.
    for (webhook, count) in webhooks.iter().zip([2, 0]) {
        let log = app
            .get_json(&format!("/v1/webhooks/{webhook}/deliveries"), &customer)
            .await;
        assert_eq!(
            log["data"].as_array().unwrap().len(),
            count,
            "no delivery of a test event never sent: {log}"
        );
    }
    let (db, connection) = tokio_postgres::connect(&app.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let events: i64 = db
        .query_one("SELECT count(*) FROM events WHERE source = 'test'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 2, "the refused test event is not kept");
}
