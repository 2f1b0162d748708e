//! Failure handling: retries through the delay tiers, the failure count, auto-disable,
//! deletion, and the outbound safety rules (timeouts, private addresses; redirects are in
//! `hostile.rs`).

use std::time::Duration;

use aioka_core::event::EventType;
use serde_json::json;

use crate::{Options, PATIENCE, System, sample};

#[tokio::test]
async fn a_failing_receiver_gets_every_attempt_after_each_delay_with_the_same_delivery_id() {
    let system = System::start_with(Options {
        schedule: "300ms,600ms,900ms",
        ..Options::default()
    })
    .await;
    let (receiver, customer, producer, webhook, secret) = system.subscriber(&["verdict.new"]).await;
    receiver.respond_with(500);
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;

    let attempts = receiver.wait_for(4, PATIENCE).await;
    assert_eq!(attempts.len(), 4);
    let delivery = attempts[0].header("x-aioka-delivery").to_owned();
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a.header("x-aioka-attempt"), (i + 1).to_string());
        assert_eq!(a.header("x-aioka-delivery"), delivery);
        assert_eq!(a.header("webhook-id"), delivery);
        assert_eq!(
            a.body, attempts[0].body,
            "every attempt sends the same bytes"
        );
        assert!(a.seed_signature_valid(&secret) && a.standard_signature_valid(&secret));
    }
    for (pair, delay_ms) in attempts.windows(2).zip([300u64, 600, 900]) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(delay_ms),
            "retry came after {gap:?}, before its {delay_ms} ms delay"
        );
    }

    let logged = system
        .wait_for_delivery(&customer, &webhook, |d| d["status"] == "failed")
        .await;
    assert_eq!(logged["id"], delivery);
    assert_eq!(logged["attempt_count"], 4);
    let log = logged["attempts"].as_array().unwrap();
    assert_eq!(log.len(), 4);
    for (i, a) in log.iter().enumerate() {
        assert_eq!(a["attempt"], i + 1);
        assert_eq!(a["status_code"], 500);
        assert_eq!(a["error"], "http_status");
        assert!(a["latency_ms"].is_u64());
        assert_eq!(a["next_retry_at"].is_string(), i < 3, "{a}");
    }
    // Five more seconds and no fifth attempt: the schedule is used up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 4);
    let hook = system.webhook(&customer, &webhook).await;
    assert_eq!(hook["consecutive_failures"], 4);
    assert_eq!(hook["is_active"], true);
}

#[tokio::test]
async fn a_success_on_a_retry_resets_the_failure_count() {
    let system = System::start().await;
    let (receiver, customer, producer, webhook, _) = system.subscriber(&["council.new"]).await;
    receiver.script(&[503, 502]);
    system
        .publish(&producer, sample(EventType::CouncilNew))
        .await;
    receiver.wait_for(3, PATIENCE).await;
    let logged = system
        .wait_for_delivery(&customer, &webhook, |d| d["status"] == "succeeded")
        .await;
    let codes: Vec<_> = logged["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(codes, [json!(503), json!(502), json!(200)]);
    let hook = system
        .wait_for_webhook(&customer, &webhook, |w| w["consecutive_failures"] == 0)
        .await;
    assert_eq!(hook["is_active"], true);
}

#[tokio::test]
async fn ten_consecutive_failures_disable_the_webhook() {
    let system = System::start_with(Options {
        schedule: "100ms",
        ..Options::default()
    })
    .await;
    let (receiver, customer, producer, webhook, _) = system.subscriber(&["regime.change"]).await;
    receiver.respond_with(500);
    // Two attempts per event: five events make the ten failures.
    for _ in 0..5 {
        system
            .publish(&producer, sample(EventType::RegimeChange))
            .await;
    }
    let hook = system
        .wait_for_webhook(&customer, &webhook, |w| w["is_active"] == false)
        .await;
    assert_eq!(hook["consecutive_failures"], 10);
    let reason = hook["disabled_reason"].as_str().unwrap();
    assert!(reason.contains("10 consecutive"), "{reason}");
    assert!(hook["disabled_at"].is_string());
    let before = receiver.received().len();
    assert_eq!(before, 10);

    // Disabled webhooks receive nothing until re-enabled.
    system
        .publish(&producer, sample(EventType::RegimeChange))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received().len(), before);

    receiver.respond_with(200);
    let r = system
        .patch(
            &format!("/v1/webhooks/{webhook}"),
            &customer,
            &json!({"is_active": true}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let hook: serde_json::Value = r.json().await.unwrap();
    assert_eq!(hook["consecutive_failures"], 0);
    assert_eq!(hook["disabled_reason"], serde_json::Value::Null);
    system
        .publish(&producer, sample(EventType::RegimeChange))
        .await;
    receiver.wait_for(before + 1, PATIENCE).await;
}

#[tokio::test]
async fn a_410_gone_disables_at_once_and_queued_retries_are_skipped() {
    let system = System::start_with(Options {
        schedule: "1s",
        ..Options::default()
    })
    .await;
    let (receiver, customer, producer, webhook, _) = system.subscriber(&["ghost.signal"]).await;
    receiver.respond_with(410);
    system
        .publish(&producer, sample(EventType::GhostSignal))
        .await;
    let hook = system
        .wait_for_webhook(&customer, &webhook, |w| w["is_active"] == false)
        .await;
    assert!(
        hook["disabled_reason"].as_str().unwrap().contains("410"),
        "{hook}"
    );
    let logged = system
        .wait_for_delivery(&customer, &webhook, |d| d["status"] == "failed")
        .await;
    assert_eq!(logged["attempt_count"], 1, "410 is not retried: {logged}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn a_task_for_a_webhook_disabled_while_it_waited_is_skipped_not_sent() {
    let system = System::start_with(Options {
        schedule: "1500ms",
        ..Options::default()
    })
    .await;
    let (receiver, customer, producer, webhook, _) = system.subscriber(&["verdict.new"]).await;
    receiver.respond_with(500);
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    receiver.wait_for(1, PATIENCE).await;
    let r = system
        .patch(
            &format!("/v1/webhooks/{webhook}"),
            &customer,
            &json!({"is_active": false}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let logged = system
        .wait_for_delivery(&customer, &webhook, |d| d["status"] == "skipped")
        .await;
    assert_eq!(logged["skip_reason"], "webhook disabled");
    assert_eq!(logged["attempt_count"], 1);
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn deleting_a_webhook_stops_its_deliveries() {
    let system = System::start_with(Options {
        schedule: "1500ms",
        ..Options::default()
    })
    .await;
    let (receiver, customer, producer, webhook, _) = system.subscriber(&["macro.alert"]).await;
    receiver.respond_with(500);
    let event_id = system
        .publish(&producer, sample(EventType::MacroAlert))
        .await;
    receiver.wait_for(1, PATIENCE).await;
    let r = system
        .client
        .delete(system.url(&format!("/v1/webhooks/{webhook}")))
        .header("X-API-Key", &customer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    system
        .publish(&producer, sample(EventType::MacroAlert))
        .await;
    // The retry of the first event comes back after 1.5 s and is dropped.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.received().len(), 1);
    let delivery =
        aioka_core::DeliveryId::for_pair(event_id.parse().unwrap(), webhook.parse().unwrap());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let rows = system
            .db
            .store
            .delivery_targets(&[webhook.parse().unwrap()])
            .await
            .unwrap();
        assert!(rows[0].deleted);
        let status = system.db.store.delivery_status(delivery).await.unwrap();
        if status == Some(aioka_store::DeliveryStatus::Skipped) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status stayed {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_slow_receiver_times_out() {
    let system = System::start_with(Options {
        schedule: "",
        env: vec![
            ("AIOKA__DELIVERY__TIMEOUT", "500ms".into()),
            ("AIOKA__DELIVERY__CONNECT_TIMEOUT", "500ms".into()),
        ],
        ..Options::default()
    })
    .await;
    let slow = system.receiver().await;
    slow.delay(Duration::from_secs(3));
    let customer = system.customer().await;
    let producer = system.producer().await;
    let (slow_hook, _) = system
        .register(&customer, &slow.url, &["verdict.new"])
        .await;
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    let logged = system
        .wait_for_delivery(&customer, &slow_hook, |d| d["status"] == "failed")
        .await;
    assert_eq!(logged["attempts"][0]["error"], "timeout", "{logged}");
}

#[tokio::test]
async fn private_addresses_are_refused_at_connect_time_unless_allowed() {
    // The gateway lets the URL in (as it would if DNS changed after registration); the
    // delivery service, with private targets not allowed, refuses to connect.
    let system = System::start_with(Options {
        schedule: "",
        delivery_env: vec![("AIOKA__SECURITY__ALLOW_PRIVATE_TARGETS", "false".into())],
        ..Options::default()
    })
    .await;
    let receiver = system.receiver().await;
    let customer = system.customer().await;
    let producer = system.producer().await;
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let (literal, _) = system
        .register(&customer, &receiver.url, &["council.new"])
        .await;
    let (named, _) = system.register(&customer, &by_name, &["council.new"]).await;
    // 127.0.0.1 written as NAT64 (local-use prefix) and IPv4-translated IPv6 addresses:
    // refused before any connection is tried, not a connect error.
    let nat64 = receiver.url.replace("127.0.0.1", "[64:ff9b:1::7f00:1]");
    let (nat64, _) = system.register(&customer, &nat64, &["council.new"]).await;
    let translated = receiver.url.replace("127.0.0.1", "[::ffff:0:7f00:1]");
    let (translated, _) = system
        .register(&customer, &translated, &["council.new"])
        .await;
    system
        .publish(&producer, sample(EventType::CouncilNew))
        .await;
    for webhook in [literal, named, nat64, translated] {
        let logged = system
            .wait_for_delivery(&customer, &webhook, |d| d["status"] == "failed")
            .await;
        assert_eq!(
            logged["attempts"][0]["error"], "blocked_address",
            "{logged}"
        );
    }
    assert!(receiver.received().is_empty());
}
