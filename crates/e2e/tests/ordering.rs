//! Ordered delivery across a `kill -9` of the real delivery binary: the line of each ordered
//! webhook holds (a delivery cut off mid-attempt is sent again, before anything after it), and
//! every event arrives.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aioka_core::event::EventType;
use aioka_e2e::ordered::{assert_in_event_order, wait_all_ended};
use aioka_e2e::real::Stack;
use aioka_e2e::{PATIENCE, sample};
use aioka_testkit::Receiver;
use serde_json::{Value, json};

const EVENTS: usize = 30;
const ANSWER: Duration = Duration::from_millis(30);

#[tokio::test(flavor = "multi_thread")]
async fn ordered_delivery_keeps_its_line_across_a_kill_9_of_delivery() {
    let mut stack = Stack::start(&[
        (
            "AIOKA__DELIVERY__RETRY_SCHEDULE",
            "100ms,200ms,300ms".to_owned(),
        ),
        ("AIOKA__DELIVERY__CONNECT_TIMEOUT", "1s".to_owned()),
        ("AIOKA__DELIVERY__TIMEOUT", "2s".to_owned()),
        // A turn handed on by the killed process is found by the sweep of the new one.
        ("AIOKA__DELIVERY__RETRY_SWEEP_AFTER", "3s".to_owned()),
        ("AIOKA__DELIVERY__RETRY_SWEEP_INTERVAL", "1s".to_owned()),
    ])
    .await;
    let mut ordered = Vec::new();
    for script in [&[500, 200, 500][..], &[200, 500, 500][..]] {
        let receiver = Receiver::start(&stack.ca).await;
        receiver.script(script);
        receiver.delay(ANSWER);
        let r = stack
            .api
            .post(
                "/v1/webhooks",
                &stack.customer,
                &json!({"url": receiver.url, "events": ["verdict.new"], "ordering": "fifo"}),
            )
            .await;
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.unwrap();
        ordered.push((receiver, body["id"].as_str().unwrap().to_owned()));
    }
    let mut events = Vec::new();
    for _ in 0..EVENTS {
        let r = stack
            .api
            .post(
                "/v1/events",
                &stack.producer,
                &sample(EventType::VerdictNew),
            )
            .await;
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        events.push(body["id"].as_str().unwrap().to_owned());
    }
    // The kill lands mid-line, with an attempt on the wire: a third of the way through the
    // first webhook's events, the moment its next request arrives (its answer takes ANSWER).
    let first = &ordered[0].0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while first.received().len() < EVENTS / 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries never started"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let k = first.received().len();
    while first.received().len() == k {
        assert!(tokio::time::Instant::now() < deadline, "deliveries stopped");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stack.kill9("aioka-delivery");
    let cut = first.received().last().cloned().unwrap();
    assert!(
        cut.at.elapsed() < ANSWER,
        "the kill did not land while an attempt was on the wire ({:?} after it arrived)",
        cut.at.elapsed()
    );
    let cut_attempt = (
        cut.header("x-aioka-delivery").to_owned(),
        cut.header("x-aioka-attempt").to_owned(),
    );
    stack.restart("aioka-delivery").await;

    for (receiver, webhook) in &ordered {
        let log = wait_all_ended(&stack.api, &stack.customer, webhook, EVENTS).await;
        assert!(log.iter().all(|d| d["status"] == "succeeded"), "{log:?}");
        let sequence = assert_in_event_order(&receiver.received(), &events, webhook, ANSWER);
        assert!(
            sequence.len() > EVENTS,
            "{webhook}: the failures' retries are missing"
        );
    }
    // The attempt cut off was sent again (it was never recorded), and, by the order checked
    // above, before anything after it.
    let again = first
        .received()
        .iter()
        .filter(|r| {
            (r.header("x-aioka-delivery"), r.header("x-aioka-attempt"))
                == (cut_attempt.0.as_str(), cut_attempt.1.as_str())
        })
        .count();
    assert_eq!(
        again, 2,
        "the attempt cut off by the kill, {cut_attempt:?}, came {again} time(s)"
    );
}
