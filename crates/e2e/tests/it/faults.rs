//! Faults: the broker drops every connection of the system mid-flow. Nothing accepted is lost.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use aioka_core::event::EventType;
use serde_json::json;

use crate::{PATIENCE, System, sample};

/// Closes, from the broker's side, every connection whose name ends in `@<prefix>`: the
/// gateway's, fanout's and delivery's, and nobody else's. Returns how many were closed.
fn close_connections(prefix: &str) -> usize {
    let output = Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "client_properties", "pid"])
        .output()
        .expect("this test needs rabbitmqctl (the machine's RabbitMQ)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let marker = format!("@{prefix}\"}}");
    let mut closed = 0;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        if !line.contains(&marker) {
            continue;
        }
        let pid = line.rsplit('\t').next().unwrap().trim();
        let status = Command::new("rabbitmqctl")
            .args(["close_connection", pid, "fault test"])
            .status()
            .unwrap();
        assert!(status.success());
        closed += 1;
    }
    closed
}

#[tokio::test]
async fn dropped_broker_connections_lose_no_accepted_event() {
    let system = System::start().await;
    let receiver = system.receiver().await;
    let customer = system.customer().await;
    let producer = system.producer().await;
    system
        .register(&customer, &receiver.url, &["verdict.new"])
        .await;
    let mut accepted = BTreeSet::new();
    for i in 0..5 {
        let mut body = sample(EventType::VerdictNew);
        body["id"] = json!(format!("before-{i}"));
        accepted.insert(system.publish(&producer, body).await);
    }
    receiver.wait_for(5, PATIENCE).await;

    let closed = close_connections(&system.broker.prefix);
    assert!(closed >= 3, "closed {closed} connections");

    // A producer retries what was not accepted (503); what was accepted must arrive.
    for i in 0..5 {
        let mut body = sample(EventType::VerdictNew);
        body["id"] = json!(format!("after-{i}"));
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let response = system.post("/v1/events", &producer, &body).await;
            if response.status() == 202 {
                let id: serde_json::Value = response.json().await.unwrap();
                accepted.insert(id["id"].as_str().unwrap().to_owned());
                break;
            }
            assert_eq!(
                response.status(),
                503,
                "only unavailability may refuse a valid event"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway never recovered"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(accepted.len(), 10);

    // At-least-once: every accepted event arrives; an attempt cut off mid-flight may repeat,
    // with the same delivery id.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let deliveries: BTreeSet<String> = receiver
            .received()
            .iter()
            .map(|r| r.header("x-aioka-delivery").to_owned())
            .collect();
        if deliveries.len() == 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 10 accepted events delivered",
            deliveries.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The services report ready again, by themselves.
    system.wait_ready().await;
}
