//! Hostile receivers: endpoints that hang, dribble, flood, redirect, lie about who they are,
//! reset, do not exist, or ask us to back off. Each attempt fails (or succeeds) cleanly, with
//! its kind recorded, and one bad endpoint never holds back the good ones.

use std::time::Duration;

use aioka_core::event::EventType;
use aioka_testkit::{Receiver, TestCa};

use crate::{Options, PATIENCE, System, sample};

fn no_retries() -> Options {
    Options {
        schedule: "",
        env: vec![
            ("AIOKA__DELIVERY__TIMEOUT", "1s".into()),
            ("AIOKA__DELIVERY__CONNECT_TIMEOUT", "1s".into()),
        ],
        ..Options::default()
    }
}

/// Registers `url` for ghost.signal, publishes one event, and returns the delivery's log entry
/// once it has failed or succeeded.
async fn one_attempt(system: &System, url: &str) -> serde_json::Value {
    let customer = system.customer().await;
    let producer = system.producer().await;
    let (webhook, _) = system.register(&customer, url, &["ghost.signal"]).await;
    system
        .publish(&producer, sample(EventType::GhostSignal))
        .await;
    system
        .wait_for_delivery(&customer, &webhook, |d| {
            d["status"] == "failed" || d["status"] == "succeeded"
        })
        .await
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out() {
    let system = System::start_with(no_retries()).await;
    let receiver = system.receiver().await;
    receiver.delay(Duration::from_secs(60));
    let logged = one_attempt(&system, &receiver.url).await;
    assert_eq!(logged["status"], "failed");
    assert_eq!(logged["attempts"][0]["error"], "timeout", "{logged}");
}

#[tokio::test]
async fn a_slowly_dribbled_answer_is_judged_on_its_status_and_a_huge_one_is_read_capped() {
    let system = System::start_with(no_retries()).await;
    let slow = system.receiver().await;
    slow.body(400, true);
    let logged = one_attempt(&system, &slow.url).await;
    assert_eq!(logged["status"], "succeeded", "{logged}");

    // 256 MiB, far more than the client reads (64 KiB, `max_response_bytes`) and than it could
    // read before its 1 s timeout if it did not stop.
    let flood = system.receiver().await;
    flood.body(256 * 1024 * 1024, false);
    flood.respond_with(500);
    let logged = one_attempt(&system, &flood.url).await;
    assert_eq!(logged["attempts"][0]["status_code"], 500);
    let snippet = logged["attempts"][0]["response"].as_str().unwrap();
    assert_eq!(snippet.len(), 1024, "the log keeps the first 1 KiB only");
    // Measured on the receiver's side: it could hand over the cap plus what the buffers
    // between us hold (hyper's, rustls's, both sockets'), then the client hung up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = flood.body_bytes_sent();
    assert!(
        sent <= FLOOD_BOUND,
        "the receiver wrote {sent} bytes of its answer: the client read past its cap"
    );
}

/// What a receiver may manage to write when the client reads 64 KiB and hangs up: the cap
/// and the buffers on the way (loopback sockets grow to a few MiB).
const FLOOD_BOUND: usize = 16 * 1024 * 1024;

#[tokio::test]
async fn a_redirect_is_not_followed_to_its_location() {
    let system = System::start_with(no_retries()).await;
    // Where every redirect points: it records any request, whatever its method and path.
    let elsewhere = system.receiver().await;
    let customer = system.customer().await;
    let producer = system.producer().await;
    let mut moved = Vec::new();
    for status in [301, 302, 303, 307, 308] {
        let receiver = system.receiver().await;
        receiver.respond_with(status);
        receiver.location(&elsewhere.url);
        let (webhook, _) = system
            .register(&customer, &receiver.url, &["ghost.signal"])
            .await;
        moved.push((status, receiver, webhook));
    }
    system
        .publish(&producer, sample(EventType::GhostSignal))
        .await;
    for (status, receiver, webhook) in &moved {
        let logged = system
            .wait_for_delivery(&customer, webhook, |d| {
                d["status"] == "failed" || d["status"] == "succeeded"
            })
            .await;
        assert_eq!(logged["status"], "failed", "{status}: {logged}");
        let attempt = &logged["attempts"][0];
        assert_eq!(attempt["status_code"], *status, "{logged}");
        assert_eq!(attempt["error"], "http_status", "{logged}");
        assert_eq!(receiver.received().len(), 1, "{status}");
    }
    let followed = elsewhere.received();
    assert!(
        followed.is_empty(),
        "a redirect was followed to its Location: {:?}",
        followed
            .iter()
            .map(|r| r.header("x-aioka-delivery").to_owned())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_untrusted_or_expired_certificate_is_a_tls_failure() {
    let system = System::start_with(no_retries()).await;
    let stranger_ca = TestCa::new();
    let untrusted = Receiver::start(&stranger_ca).await;
    let logged = one_attempt(&system, &untrusted.url).await;
    assert_eq!(logged["attempts"][0]["error"], "tls", "{logged}");
    assert!(untrusted.received().is_empty());

    let expired = Receiver::start_expired(&system.ca).await;
    let logged = one_attempt(&system, &expired.url).await;
    assert_eq!(logged["attempts"][0]["error"], "tls", "{logged}");
    assert!(expired.received().is_empty());
}

#[tokio::test]
async fn a_reset_connection_or_an_unknown_host_is_a_clean_failure() {
    let system = System::start_with(no_retries()).await;
    let reset = aioka_testkit::resetting_endpoint().await;
    let logged = one_attempt(&system, &reset).await;
    let kind = logged["attempts"][0]["error"].as_str().unwrap();
    assert!(["connect", "tls", "request"].contains(&kind), "{logged}");

    let logged = one_attempt(&system, "https://no-such-host.invalid/hook").await;
    assert_eq!(logged["attempts"][0]["error"], "dns", "{logged}");
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_through_a_long_enough_tier() {
    let system = System::start_with(Options {
        schedule: "200ms,2s",
        ..Options::default()
    })
    .await;
    let (receiver, customer, producer, webhook, _) = system.subscriber(&["verdict.new"]).await;
    receiver.script(&[429]);
    receiver.retry_after("1");
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    let received = receiver.wait_for(2, PATIENCE).await;
    let gap = received[1].at - received[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "the retry came after {gap:?}, before Retry-After"
    );
    let logged = system
        .wait_for_delivery(&customer, &webhook, |d| d["status"] == "succeeded")
        .await;
    assert_eq!(logged["attempts"][0]["status_code"], 429);
    assert_eq!(logged["attempt_count"], 2, "Retry-After adds no attempt");
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_hold_back_healthy_ones() {
    // 8 slots in all, 2 per webhook: twelve tasks for a hanging endpoint would fill every slot
    // for the whole timeout without the per-webhook cap.
    let system = System::start_with(Options {
        schedule: "",
        env: vec![
            ("AIOKA__DELIVERY__TIMEOUT", "5s".into()),
            ("AIOKA__DELIVERY__MAX_IN_FLIGHT", "8".into()),
            ("AIOKA__DELIVERY__MAX_IN_FLIGHT_PER_WEBHOOK", "2".into()),
        ],
        ..Options::default()
    })
    .await;
    let hanging = system.receiver().await;
    hanging.delay(Duration::from_secs(60));
    let healthy = system.receiver().await;
    let customer = system.customer().await;
    let producer = system.producer().await;
    system
        .register(&customer, &hanging.url, &["macro.alert"])
        .await;
    system
        .register(&customer, &healthy.url, &["council.new"])
        .await;
    for _ in 0..12 {
        system
            .publish(&producer, sample(EventType::MacroAlert))
            .await;
    }
    // Let the hanging endpoint's tasks take their slots first.
    hanging.wait_for(2, PATIENCE).await;
    for _ in 0..12 {
        system
            .publish(&producer, sample(EventType::CouncilNew))
            .await;
    }
    let delivered = healthy.wait_for(12, PATIENCE).await;
    assert_eq!(delivered.len(), 12);
    // Every healthy delivery arrived while the hanging endpoint still held its first two
    // attempts: none of them waited for a timeout to free a slot.
    let at_most_two = hanging.received();
    assert_eq!(
        at_most_two.len(),
        2,
        "only two attempts at a time reach the hanging endpoint"
    );
    let first_timeout_ends = at_most_two[0].at + Duration::from_secs(5);
    assert!(delivered.iter().all(|r| r.at < first_timeout_ends));
}

#[tokio::test]
async fn attempts_that_hang_give_their_fast_lane_places_to_healthy_ones() {
    // Two places in the fast lane, both taken by attempts to an endpoint that hangs until
    // the 8 s timeout: past the 200 ms of slow_after they move to the slow lane, and the
    // healthy endpoint's deliveries go through while they still hang. With no slow lane
    // (watched: AIOKA__DELIVERY__SLOW_LANE_IN_FLIGHT=0) every healthy delivery waits for
    // the timeout.
    let system = System::start_with(Options {
        schedule: "",
        env: vec![
            ("AIOKA__DELIVERY__TIMEOUT", "8s".into()),
            ("AIOKA__DELIVERY__SHUTDOWN_GRACE", "8s".into()),
            ("AIOKA__DELIVERY__MAX_IN_FLIGHT", "2".into()),
            ("AIOKA__DELIVERY__MAX_IN_FLIGHT_PER_WEBHOOK", "2".into()),
            ("AIOKA__DELIVERY__SLOW_AFTER", "200ms".into()),
            ("AIOKA__DELIVERY__SLOW_LANE_IN_FLIGHT", "4".into()),
        ],
        ..Options::default()
    })
    .await;
    let hanging = system.receiver().await;
    hanging.delay(Duration::from_secs(60));
    let healthy = system.receiver().await;
    let customer = system.customer().await;
    let producer = system.producer().await;
    system
        .register(&customer, &hanging.url, &["macro.alert"])
        .await;
    system
        .register(&customer, &healthy.url, &["council.new"])
        .await;
    for _ in 0..2 {
        system
            .publish(&producer, sample(EventType::MacroAlert))
            .await;
    }
    // Both places are taken by the hanging attempts.
    let held = hanging.wait_for(2, PATIENCE).await;
    for _ in 0..6 {
        system
            .publish(&producer, sample(EventType::CouncilNew))
            .await;
    }
    let delivered = healthy.wait_for(6, PATIENCE).await;
    assert_eq!(delivered.len(), 6);
    let first_timeout_ends = held[0].at + Duration::from_secs(8);
    assert!(
        delivered.iter().all(|r| r.at < first_timeout_ends),
        "healthy deliveries waited for the hanging attempts' timeout"
    );
    assert_eq!(
        hanging.received().len(),
        2,
        "no hanging attempt ended or repeated"
    );
}
