//! What the ordered-delivery tests check a receiver got, the same with the in-process system
//! and with the real binaries.

use std::collections::BTreeSet;
use std::time::Duration;

use aioka_core::{DeliveryId, EventId, WebhookId};
use aioka_testkit::{Api, Received};
use serde_json::Value;

use crate::PATIENCE;

/// Checks the requests an ordered webhook's receiver got for `events` (ids in the order they
/// were accepted): each request is for the same event as the one before or a later one (a
/// delivery's attempts come together, and none of a later event before an earlier one's last
/// attempt); every event came; and one at a time: each request came at least `answer` (how
/// long the receiver takes to answer) after the one before, so none overlapped. Returns the
/// event index of each request, in arrival order.
pub fn assert_in_event_order(
    received: &[Received],
    events: &[String],
    webhook: &str,
    answer: Duration,
) -> Vec<usize> {
    let webhook: WebhookId = webhook.parse().unwrap();
    let index_of = |delivery: &str| {
        events
            .iter()
            .position(|e| {
                DeliveryId::for_pair(e.parse::<EventId>().unwrap(), webhook).to_string() == delivery
            })
            .unwrap_or_else(|| panic!("a delivery of no published event: {delivery}"))
    };
    let sequence: Vec<usize> = received
        .iter()
        .map(|r| index_of(r.header("x-aioka-delivery")))
        .collect();
    assert!(
        sequence.windows(2).all(|w| w[0] <= w[1]),
        "out of event order: {sequence:?}"
    );
    let seen: BTreeSet<usize> = sequence.iter().copied().collect();
    let all: BTreeSet<usize> = (0..events.len()).collect();
    assert_eq!(seen, all, "not every event came: {sequence:?}");
    for pair in received.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= answer,
            "two requests {gap:?} apart, less than the {answer:?} an answer takes: they overlapped ({sequence:?})"
        );
    }
    sequence
}

/// Polls a webhook's log until it holds `count` deliveries and none is pending; returns them.
pub async fn wait_all_ended(api: &Api, key: &str, webhook: &str, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    loop {
        let log = api
            .get_json(&format!("/v1/webhooks/{webhook}/deliveries?limit=100"), key)
            .await;
        let data = log["data"].as_array().cloned().unwrap_or_default();
        if data.len() == count && data.iter().all(|d| d["status"] != "pending") {
            return data;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log of {webhook} never ended all {count} deliveries: {log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
