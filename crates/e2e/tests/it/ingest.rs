//! From a producer to the receivers: ingestion, fan-out, the exact bytes and headers.

use std::time::Duration;

use aioka_core::event::EventType;
use aioka_queue::lapin::BasicProperties;
use aioka_queue::lapin::options::{BasicGetOptions, BasicPublishOptions};
use serde_json::{Value, json};

use crate::{PATIENCE, System, sample, verdict};

#[tokio::test]
async fn every_event_type_reaches_its_subscriber_signed_both_ways() {
    let system = System::start().await;
    let receiver = system.receiver().await;
    let customer = system.customer().await;
    let producer = system.producer().await;
    let all: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    let (_, secret) = system.register(&customer, &receiver.url, &all).await;

    for t in EventType::ALL {
        system.publish(&producer, sample(t)).await;
    }
    let received = receiver.wait_for(5, PATIENCE).await;
    assert_eq!(received.len(), 5);
    let mut seen: Vec<String> = Vec::new();
    for r in &received {
        assert!(
            r.seed_signature_valid(&secret),
            "X-AIOKA-Signature must verify"
        );
        assert!(
            r.standard_signature_valid(&secret),
            "webhook-signature must verify"
        );
        let body = r.json();
        assert_eq!(r.header("x-aioka-event"), body["event"].as_str().unwrap());
        let t: EventType = body["event"].as_str().unwrap().parse().unwrap();
        assert_eq!(body["data"], t.sample_data());
        seen.push(t.as_str().to_owned());
    }
    seen.sort();
    let mut expected = all.clone();
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn an_event_fans_out_to_exactly_the_active_subscribers_of_its_type() {
    let system = System::start().await;
    let receiver = system.receiver().await;
    let producer = system.producer().await;
    // 3 keys x 5 webhooks; chunk size 7 makes the fan-out take several steps.
    let mut expected = Vec::new();
    let mut n = 0;
    for _ in 0..3 {
        let customer = system.customer().await;
        for i in 0..5 {
            n += 1;
            let url = format!("{}?w={n}", receiver.url);
            let events: &[&str] = if i % 2 == 0 {
                &["regime.change", "macro.alert"]
            } else {
                &["verdict.new"]
            };
            let (id, _) = system.register(&customer, &url, events).await;
            if i == 4 {
                // A disabled subscriber receives nothing.
                let r = system
                    .patch(
                        &format!("/v1/webhooks/{id}"),
                        &customer,
                        &json!({"is_active": false}),
                    )
                    .await;
                assert_eq!(r.status(), 200);
            } else if i % 2 == 0 {
                expected.push(format!("w={n}"));
            }
        }
    }
    // A revoked key's webhooks receive nothing either.
    let revoked = system.customer().await;
    system
        .register(
            &revoked,
            &format!("{}?w=revoked", receiver.url),
            &["regime.change"],
        )
        .await;
    let record = system
        .db
        .store
        .find_active_key(&aioka_core::ApiKey::from_header(&revoked))
        .await
        .unwrap()
        .unwrap();
    assert!(system.db.store.revoke_key(record.id).await.unwrap());
    let event_id = system
        .publish(&producer, sample(EventType::RegimeChange))
        .await;
    let received = receiver.wait_for(expected.len(), PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.query.clone())
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "{} requests", received.len());
    let progress = system
        .db
        .store
        .fanout_progress(event_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(progress, (expected.len() as i64, true));
}

#[tokio::test]
async fn the_body_is_the_seed_envelope_byte_for_byte_with_every_header() {
    let system = System::start().await;
    let (receiver, customer, producer, webhook, secret) = system.subscriber(&["verdict.new"]).await;
    system
        .publish(&producer, verdict(Some("2026-04-20T14:32:00Z")))
        .await;
    let r = receiver.wait_for(1, PATIENCE).await.remove(0);
    assert_eq!(
        std::str::from_utf8(&r.body).unwrap(),
        r#"{"event":"verdict.new","timestamp":"2026-04-20T14:32:00Z","data":{"ruling":"STRONG_BUY","composite_score":0.82,"confidence":0.79,"regime":"BULL_TRENDING"}}"#
    );
    assert_eq!(r.header("content-type"), "application/json");
    assert!(
        r.header("user-agent").starts_with("AIOKA-Webhooks/"),
        "{}",
        r.header("user-agent")
    );
    assert_eq!(r.header("x-aioka-event"), "verdict.new");
    assert_eq!(r.header("x-aioka-attempt"), "1");
    let delivery = r.header("x-aioka-delivery");
    assert!(
        delivery.parse::<aioka_core::DeliveryId>().is_ok(),
        "{delivery}"
    );
    assert_eq!(r.header("webhook-id"), delivery);
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 300);
    assert!(r.seed_signature_valid(&secret));
    assert!(r.standard_signature_valid(&secret));
    assert!(!r.seed_signature_valid("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="));

    let logged = system
        .wait_for_delivery(&customer, &webhook, |d| d["status"] == "succeeded")
        .await;
    assert_eq!(logged["id"], delivery);
    assert_eq!(logged["attempts"][0]["status_code"], 200);
}

#[tokio::test]
async fn the_same_event_id_sent_twice_is_delivered_once() {
    let system = System::start().await;
    let receiver = system.receiver().await;
    let customer = system.customer().await;
    let producer = system.producer().await;
    system
        .register(&customer, &receiver.url, &["council.new"])
        .await;
    let mut body = sample(EventType::CouncilNew);
    body["id"] = json!("council-2026-04-20T14:00");
    let first = system.publish(&producer, body.clone()).await;
    receiver.wait_for(1, PATIENCE).await;
    let second = system.publish(&producer, body.clone()).await;
    assert_eq!(first, second);
    // The same id with other content would lose that content: refused, naming the id.
    let mut other = body.clone();
    other["data"]["confidence"] = json!(0.11);
    let r = system.post("/v1/events", &producer, &other).await;
    assert_eq!(r.status(), 409);
    let error: serde_json::Value = r.json().await.unwrap();
    assert_eq!(error["error"]["code"], "event_id_conflict", "{error}");
    assert_eq!(error["error"]["field"], "id", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"council-2026-04-20T14:00\""),
        "{error}"
    );
    // A later event proves the pipeline kept moving, and the duplicate did not come.
    system
        .publish(&producer, sample(EventType::CouncilNew))
        .await;
    let received = receiver.wait_for(2, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 2, "{received:?}");
}

#[tokio::test]
async fn a_producer_may_publish_straight_to_the_exchange() {
    let system = System::start().await;
    let receiver = system.receiver().await;
    let customer = system.customer().await;
    let (_, secret) = system
        .register(&customer, &receiver.url, &["ghost.signal"])
        .await;
    let connection = system.broker.connect().await;
    let channel = connection.create_channel().await.unwrap();
    let body = json!({
        "event": "ghost.signal",
        "timestamp": "2026-04-20T16:32:00+02:00",
        "data": EventType::GhostSignal.sample_data(),
    });
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id("ghost-1".into());
    for _ in 0..2 {
        channel
            .basic_publish(
                system.broker.topology().events_exchange().as_str().into(),
                "ghost.signal".into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                props.clone(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let r = receiver.wait_for(1, PATIENCE).await.remove(0);
    assert!(r.seed_signature_valid(&secret));
    let got = r.json();
    assert_eq!(
        got["timestamp"], "2026-04-20T14:32:00Z",
        "normalised to UTC"
    );
    assert_eq!(got["data"], EventType::GhostSignal.sample_data());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "the same message_id is delivered once"
    );
}

#[tokio::test]
async fn a_malformed_direct_publish_is_parked_with_its_reason() {
    let system = System::start().await;
    let receiver = system.receiver().await;
    let customer = system.customer().await;
    let producer = system.producer().await;
    system
        .register(&customer, &receiver.url, &["macro.alert"])
        .await;
    let connection = system.broker.connect().await;
    let channel = connection.create_channel().await.unwrap();
    let topology = system.broker.topology();
    let bad: [(&str, &[u8]); 3] = [
        ("macro.alert", b"{not json"),
        ("macro.alert", br#"{"event":"macro.alert","timestamp":"2026-04-20T14:32:00Z","data":{"alert_type":"RISK_OFF"}}"#),
        ("verdict.new", br#"{"event":"macro.alert","timestamp":"2026-04-20T14:32:00Z","data":{}}"#),
    ];
    for (key, body) in bad {
        channel
            .basic_publish(
                topology.events_exchange().as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // The consumer survives: a valid event published after the bad ones is delivered.
    system
        .publish(&producer, sample(EventType::MacroAlert))
        .await;
    receiver.wait_for(1, PATIENCE).await;

    let parked = aioka_e2e::parked(&channel, &topology, 3).await;
    assert!(
        parked.iter().all(|(_, source)| source == "fanout"),
        "{parked:?}"
    );
    let reasons: Vec<String> = parked.into_iter().map(|(reason, _)| reason).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("not JSON")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("data")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("routing key")),
        "{reasons:?}"
    );
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn a_direct_publish_over_the_event_cap_is_parked_and_never_delivered() {
    let system = System::start().await;
    let (receiver, _, producer, _, _) = system.subscriber(&["verdict.new"]).await;
    let connection = system.broker.connect().await;
    let channel = connection.create_channel().await.unwrap();
    let topology = system.broker.topology();
    // A valid verdict (its schema allows more properties) one byte over the cap HTTP applies.
    let cap = aioka_core::event::MAX_EVENT_BYTES;
    let mut big = sample(EventType::VerdictNew);
    big["timestamp"] = json!("2026-04-20T14:32:00Z");
    big["data"]["pad"] = json!("");
    let padding = cap + 1 - big.to_string().len();
    big["data"]["pad"] = json!("x".repeat(padding));
    let body = big.to_string();
    assert_eq!(body.len(), cap + 1);
    channel
        .basic_publish(
            topology.events_exchange().as_str().into(),
            "verdict.new".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id("too-big".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    // Published after the big one: once it arrives, fanout has dealt with the big one.
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    receiver.wait_for(1, PATIENCE).await;

    let deadline = tokio::time::Instant::now() + PATIENCE;
    let parked = loop {
        if let Some(message) = channel
            .basic_get(
                topology.parking_queue().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            break message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the oversized event was never parked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let headers = parked.delivery.properties.headers().clone();
    let reason =
        aioka_queue::header_str(headers.as_ref(), aioka_queue::PARK_REASON_HEADER).unwrap();
    assert!(
        reason.contains(&format!("{} bytes", cap + 1)) && reason.contains(&format!("{cap}")),
        "{reason}"
    );
    assert_eq!(parked.delivery.data.len(), cap + 1, "parked unchanged");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = receiver.received();
    assert_eq!(received.len(), 1, "only the small event is delivered");
    assert!(received[0].body.len() < 1024);
}

#[tokio::test]
async fn an_event_whose_envelope_outgrows_the_cap_gets_413_not_202() {
    let system = System::start().await;
    let producer = system.producer().await;
    // Within the request limit, but the timestamp the gateway adds takes the envelope over
    // the cap: accepting it would have fanout park an event that got 202.
    let cap = aioka_core::event::MAX_EVENT_BYTES;
    let mut body = sample(EventType::VerdictNew);
    body["data"]["pad"] = json!("");
    let padding = cap - body.to_string().len();
    body["data"]["pad"] = json!("x".repeat(padding));
    assert_eq!(body.to_string().len(), cap);
    let response = system.post("/v1/events", &producer, &body).await;
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "payload_too_large", "{error}");
}

#[tokio::test]
async fn ingestion_checks_the_key_kind_and_the_schema() {
    let system = System::start().await;
    let customer = system.customer().await;
    let producer = system.producer().await;
    let response = system.post("/v1/events", &customer, &verdict(None)).await;
    assert_eq!(response.status(), 403);
    let cases: [(Value, &str, &str); 4] = [
        (
            json!({"event":"verdict.new","data":{"ruling":"STRONG_BUY","composite_score":0.82,"confidence":7,"regime":"BULL_TRENDING"}}),
            "invalid_field",
            "data.confidence",
        ),
        (
            json!({"event":"verdict.newer","data":{}}),
            "unknown_event_type",
            "event",
        ),
        (json!({"event":"verdict.new"}), "missing_field", "data"),
        (
            json!({"event":"verdict.new","data":{},"priority":1}),
            "unknown_field",
            "priority",
        ),
    ];
    for (body, code, field) in cases {
        let response = system.post("/v1/events", &producer, &body).await;
        assert_eq!(response.status(), 422);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{error}");
        assert_eq!(error["error"]["field"], field, "{error}");
    }
    let response = system
        .client
        .post(system.url("/v1/events"))
        .header("X-API-Key", &producer)
        .header("Content-Type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

/// The value of an unlabelled sample in Prometheus text, if present.
fn sample_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn every_service_serves_the_pipeline_metrics_and_in_flight_returns_to_zero() {
    let system = System::start().await;
    let (receiver, customer, producer, webhook, _) = system.subscriber(&["verdict.new"]).await;
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    receiver.wait_for(1, PATIENCE).await;
    system
        .wait_for_delivery(&customer, &webhook, |d| d["status"] == "succeeded")
        .await;

    // The three services of a test share one process, and so one registry: each admin port
    // must serve it, with what gateway, fanout and delivery each counted.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for admin in &system.admins {
        loop {
            let text = aioka_e2e::metrics_text(admin).await;
            for name in [
                "aioka_gateway_events_total",
                "aioka_fanout_tasks_total",
                "aioka_delivery_attempts_total",
                "aioka_delivery_attempt_seconds_bucket",
            ] {
                assert!(text.contains(name), "{admin}/metrics lacks {name}:\n{text}");
            }
            // Every attempt's slot is given back once its task is acked.
            let in_flight = sample_value(&text, "aioka_delivery_in_flight");
            if in_flight == Some(0.0) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "aioka_delivery_in_flight stayed at {in_flight:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    system.stop().await;
}
