//! The customer's side of the pipeline: test events, the delivery log, re-sending, editing.

use aioka_core::event::EventType;
use serde_json::{Value, json};

use crate::{Options, PATIENCE, System, sample};

#[tokio::test]
async fn a_test_event_goes_through_the_real_pipeline_signed() {
    let system = System::start().await;
    let receiver = system.receiver().await;
    let customer = system.customer().await;
    let (one, secret) = system
        .register(
            &customer,
            &format!("{}?w=1", receiver.url),
            &["macro.alert"],
        )
        .await;
    let (_two, _) = system
        .register(
            &customer,
            &format!("{}?w=2", receiver.url),
            &["verdict.new"],
        )
        .await;

    // To one webhook, with a chosen event type (it need not be subscribed to it).
    let response = system
        .post(
            "/v1/webhooks/test",
            &customer,
            &json!({"webhook_id": one, "event": "ghost.signal"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["event"], "ghost.signal");
    let deliveries = body["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1);
    let r = receiver.wait_for(1, PATIENCE).await.remove(0);
    assert_eq!(r.query, "w=1");
    assert_eq!(
        r.header("x-aioka-delivery"),
        deliveries[0]["id"].as_str().unwrap()
    );
    assert_eq!(r.json()["data"], EventType::GhostSignal.sample_data());
    assert!(r.seed_signature_valid(&secret) && r.standard_signature_valid(&secret));
    // Marked as a test, so a receiver acting on events can ignore it.
    assert_eq!(r.header("x-aioka-test"), "true");

    // With no body: verdict.new to every active webhook of the key.
    let response = system
        .client
        .post(system.url("/v1/webhooks/test"))
        .header("X-API-Key", &customer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["event"], "verdict.new");
    assert_eq!(body["deliveries"].as_array().unwrap().len(), 2);
    let all = receiver.wait_for(3, PATIENCE).await;
    let mut queries: Vec<&str> = all[1..].iter().map(|r| r.query.as_str()).collect();
    queries.sort();
    assert_eq!(queries, ["w=1", "w=2"]);
    let logged = system
        .wait_for_delivery(&customer, &one, |d| d["status"] == "succeeded")
        .await;
    assert_eq!(logged["event"], "verdict.new");
    assert_eq!(
        logged["test"], true,
        "the log marks a test delivery: {logged}"
    );
    assert!(all[1..].iter().all(|r| r.header("x-aioka-test") == "true"));

    // A real event is not marked, on the wire or in the log.
    let producer = system.producer().await;
    system
        .publish(&producer, sample(EventType::MacroAlert))
        .await;
    let real = receiver.wait_for(4, PATIENCE).await.remove(3);
    assert_eq!(real.header("x-aioka-event"), "macro.alert");
    assert!(
        real.headers.get("x-aioka-test").is_none(),
        "{:?}",
        real.headers
    );
    let logged = system
        .wait_for_delivery(&customer, &one, |d| d["event"] == "macro.alert")
        .await;
    assert_eq!(logged["test"], false, "{logged}");
}

#[tokio::test]
async fn a_test_event_names_what_is_wrong() {
    let system = System::start().await;
    let customer = system.customer().await;
    let r = system
        .post("/v1/webhooks/test", &customer, &json!({}))
        .await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_active_webhooks");

    let receiver = system.receiver().await;
    let (id, _) = system
        .register(&customer, &receiver.url, &["verdict.new"])
        .await;
    let cases = [
        (json!({"event": "nope"}), 422, "unknown_event_type"),
        (json!({"webhook_id": "wh_bad"}), 422, "invalid_field"),
        (
            json!({"webhook_id": aioka_core::WebhookId::new().to_string()}),
            404,
            "not_found",
        ),
        (
            json!({"webhook_id": id, "extra": true}),
            422,
            "unknown_field",
        ),
    ];
    for (body, status, code) in cases {
        let r = system.post("/v1/webhooks/test", &customer, &body).await;
        assert_eq!(r.status(), status, "{body}");
        let error: Value = r.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{error}");
    }
    let other = system.customer().await;
    let r = system
        .post("/v1/webhooks/test", &other, &json!({"webhook_id": id}))
        .await;
    assert_eq!(r.status(), 404, "another key's webhook is not found");
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn the_delivery_log_pages_newest_first() {
    let system = System::start().await;
    let (receiver, customer, producer, webhook, _) = system.subscriber(&["regime.change"]).await;
    let mut events = Vec::new();
    for _ in 0..5 {
        events.push(
            system
                .publish(&producer, sample(EventType::RegimeChange))
                .await,
        );
        receiver.wait_for(events.len(), PATIENCE).await;
    }
    // A delivery's row is written with its first attempt, in a batch: wait for the last.
    system
        .wait_for_delivery(&customer, &webhook, |d| {
            d["event_id"] == events[4].as_str() && d["status"] == "succeeded"
        })
        .await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/webhooks/{webhook}/deliveries?limit=2&cursor={c}"),
            None => format!("/v1/webhooks/{webhook}/deliveries?limit=2"),
        };
        let page = system.get_json(&path, &customer).await;
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(
            data.iter()
                .map(|d| d["event_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    events.reverse();
    assert_eq!(seen, events, "newest first, each once");

    for bad in ["limit=0", "limit=101", "limit=x", "cursor=%21%21"] {
        let r = system
            .client
            .get(system.url(&format!("/v1/webhooks/{webhook}/deliveries?{bad}")))
            .header("X-API-Key", &customer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let other = system.customer().await;
    let r = system
        .client
        .get(system.url(&format!("/v1/webhooks/{webhook}/deliveries")))
        .header("X-API-Key", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_failed_delivery_can_be_re_sent_under_the_same_id() {
    let system = System::start_with(Options {
        schedule: "",
        ..Options::default()
    })
    .await;
    let (receiver, customer, producer, webhook, secret) = system.subscriber(&["council.new"]).await;
    receiver.respond_with(500);
    system
        .publish(&producer, sample(EventType::CouncilNew))
        .await;
    let failed = system
        .wait_for_delivery(&customer, &webhook, |d| d["status"] == "failed")
        .await;
    let delivery = failed["id"].as_str().unwrap().to_owned();
    let retry_path = format!("/v1/webhooks/{webhook}/deliveries/{delivery}/retry");

    receiver.respond_with(200);
    let r = system.post(&retry_path, &customer, &json!(null)).await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["attempt"], 2);
    let received = receiver.wait_for(2, PATIENCE).await;
    assert_eq!(received[1].header("x-aioka-delivery"), delivery);
    assert_eq!(received[1].header("x-aioka-attempt"), "2");
    assert_eq!(received[1].body, received[0].body);
    assert!(received[1].seed_signature_valid(&secret));
    let done = system
        .wait_for_delivery(&customer, &webhook, |d| d["status"] == "succeeded")
        .await;
    assert_eq!(done["attempt_count"], 2);

    let r = system.post(&retry_path, &customer, &json!(null)).await;
    assert_eq!(r.status(), 409, "a succeeded delivery is not re-sent");
    let other = system.customer().await;
    let r = system.post(&retry_path, &other, &json!(null)).await;
    assert_eq!(r.status(), 404);
    let r = system
        .post(
            &format!("/v1/webhooks/{webhook}/deliveries/dlv_x/retry"),
            &customer,
            &json!(null),
        )
        .await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn patch_changes_the_url_and_the_events() {
    let system = System::start().await;
    let first = system.receiver().await;
    let second = system.receiver().await;
    let customer = system.customer().await;
    let producer = system.producer().await;
    let (webhook, _) = system
        .register(&customer, &first.url, &["verdict.new"])
        .await;
    let r = system
        .patch(
            &format!("/v1/webhooks/{webhook}"),
            &customer,
            &json!({"url": second.url, "events": ["council.new"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["url"], second.url.as_str());
    assert_eq!(body["events"], json!(["council.new"]));
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    system
        .publish(&producer, sample(EventType::CouncilNew))
        .await;
    let got = second.wait_for(1, PATIENCE).await;
    assert_eq!(got[0].json()["event"], "council.new");
    assert!(first.received().is_empty());

    for (body, code) in [
        (json!({}), "empty_patch"),
        (json!({"is_active": "yes"}), "invalid_field"),
        (json!({"url": "http://x.example.com"}), "https_required"),
        (json!({"events": []}), "invalid_field"),
        (json!({"secret": "x"}), "unknown_field"),
    ] {
        let r = system
            .patch(&format!("/v1/webhooks/{webhook}"), &customer, &body)
            .await;
        assert_eq!(r.status(), 422, "{body}");
        let error: Value = r.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{error}");
    }
}

#[tokio::test]
async fn the_log_filters_by_status_event_and_window_and_one_delivery_reads_with_its_attempts() {
    let system = System::start().await;
    let (receiver, customer, producer, webhook, _) =
        system.subscriber(&["regime.change", "verdict.new"]).await;
    let log = |query: String| {
        let (system, customer, webhook) = (&system, &customer, &webhook);
        async move {
            let page = system
                .get_json(
                    &format!("/v1/webhooks/{webhook}/deliveries?{query}"),
                    customer,
                )
                .await;
            let ids: Vec<String> = page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["event_id"].as_str().unwrap().to_owned())
                .collect();
            (ids, page["next_cursor"].as_str().map(str::to_owned))
        }
    };
    let succeeded = |event: String| {
        move |d: &Value| d["event_id"] == event.as_str() && d["status"] == "succeeded"
    };

    // The first regime change fails once and succeeds on its retry.
    receiver.script(&[500]);
    let r1 = system
        .publish(&producer, sample(EventType::RegimeChange))
        .await;
    system
        .wait_for_delivery(&customer, &webhook, succeeded(r1.clone()))
        .await;
    let v1 = system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    system
        .wait_for_delivery(&customer, &webhook, succeeded(v1.clone()))
        .await;
    let middle = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let r2 = system
        .publish(&producer, sample(EventType::RegimeChange))
        .await;
    system
        .wait_for_delivery(&customer, &webhook, succeeded(r2.clone()))
        .await;

    // One delivery alone, with both attempts, as the log shows it.
    let all = system.deliveries(&customer, &webhook).await;
    let first = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event_id"] == r1.as_str())
        .unwrap()
        .clone();
    let path = format!(
        "/v1/webhooks/{webhook}/deliveries/{}",
        first["id"].as_str().unwrap()
    );
    let alone = system.get_json(&path, &customer).await;
    assert_eq!(alone, first);
    let codes: Vec<(u64, u64)> = alone["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["status_code"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(codes, [(1, 500), (2, 200)], "{alone}");

    // Filters, each alone and with pages.
    assert_eq!(
        log("event=regime.change".into()).await.0,
        [r2.as_str(), r1.as_str()]
    );
    assert_eq!(log("event=verdict.new".into()).await.0, [v1.as_str()]);
    assert_eq!(
        log("status=succeeded".into()).await.0,
        [r2.as_str(), v1.as_str(), r1.as_str()]
    );
    assert!(log("status=failed".into()).await.0.is_empty());
    let since = aioka_core::event::format_timestamp(middle);
    assert_eq!(log(format!("since={since}")).await.0, [r2.as_str()]);
    assert_eq!(
        log(format!("until={since}")).await.0,
        [v1.as_str(), r1.as_str()]
    );
    assert!(
        log(format!("since={since}&until={since}"))
            .await
            .0
            .is_empty()
    );
    let (page, cursor) = log("event=regime.change&limit=1".into()).await;
    assert_eq!(page, [r2.as_str()]);
    let cursor = cursor.unwrap();
    let (page, cursor) = log(format!("event=regime.change&limit=1&cursor={cursor}")).await;
    assert_eq!((page, cursor), (vec![r1.clone()], None));

    // Bad filters name themselves.
    for (query, field) in [
        ("status=done", "status"),
        ("event=verdict.old", "event"),
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
    ] {
        let response = system
            .get(
                &format!("/v1/webhooks/{webhook}/deliveries?{query}"),
                &customer,
            )
            .await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_parameter", "{query}");
        assert_eq!(body["error"]["field"], field, "{query}");
    }
    // A delivery the webhook does not have, and another key's webhook.
    let unknown =
        aioka_core::DeliveryId::for_pair(aioka_core::EventId::new(), webhook.parse().unwrap());
    let response = system
        .get(
            &format!("/v1/webhooks/{webhook}/deliveries/{unknown}"),
            &customer,
        )
        .await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let message = body["error"]["message"].as_str().unwrap();
    // As a re-send's 404 says it: the id, and how far back the log reaches.
    for part in [unknown.to_string().as_str(), "not found", "keeps"] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    let other = system.customer().await;
    let response = system.get(&path, &other).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "webhook not found");
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one_until_the_overlap_ends_then_alone() {
    let system = System::start().await;
    let (receiver, customer, producer, webhook, old) = system.subscriber(&["verdict.new"]).await;
    // A delivery whose first attempt, before the rotation, fails: its retry comes after it.
    receiver.script(&[500]);
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    let before = receiver.wait_for(1, PATIENCE).await.remove(0);
    assert!(before.standard_signature_valid(&old) && before.seed_signature_valid(&old));
    assert_eq!(before.header("webhook-signature").split(' ').count(), 1);
    let rotate = |body: Value| {
        let (system, customer, webhook) = (&system, &customer, &webhook);
        async move {
            system
                .post(
                    &format!("/v1/webhooks/{webhook}/secret/rotate"),
                    customer,
                    &body,
                )
                .await
        }
    };

    let response = rotate(json!({"expire_old_in": 3})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let rotated: Value = response.json().await.unwrap();
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old, "{rotated}");
    let until: chrono::DateTime<chrono::Utc> = rotated["previous_secret_expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let left = until - chrono::Utc::now();
    assert!(
        left > chrono::Duration::seconds(1) && left <= chrono::Duration::seconds(3),
        "{rotated}"
    );
    // The secret is shown by this answer only.
    let shown = system.webhook(&customer, &webhook).await.to_string();
    assert!(
        !shown.contains(&new) && !shown.contains("secret"),
        "{shown}"
    );

    // During the overlap: a receiver holding either secret verifies the Standard Webhooks
    // signature, and X-AIOKA-Signature (one digest) stays on the old secret; the retry of
    // the delivery made before the rotation is signed the same way as a new one.
    let retry = receiver.wait_for(2, PATIENCE).await.remove(1);
    assert_eq!(retry.header("x-aioka-attempt"), "2");
    assert_eq!(retry.header("webhook-id"), before.header("webhook-id"));
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    let first = receiver.wait_for(3, PATIENCE).await.remove(2);
    assert_eq!(first.header("x-aioka-attempt"), "1");
    for during in [&retry, &first] {
        assert!(during.standard_signature_valid(&old) && during.standard_signature_valid(&new));
        assert_eq!(during.header("webhook-signature").split(' ').count(), 2);
        assert!(during.seed_signature_valid(&old) && !during.seed_signature_valid(&new));
    }

    // After it: the new secret alone.
    tokio::time::sleep((until - chrono::Utc::now()).to_std().unwrap_or_default()).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    let second = receiver.wait_for(4, PATIENCE).await.remove(3);
    assert!(second.standard_signature_valid(&new) && !second.standard_signature_valid(&old));
    assert_eq!(second.header("webhook-signature").split(' ').count(), 1);
    assert!(second.seed_signature_valid(&new) && !second.seed_signature_valid(&old));

    // No overlap: the old secret stops at once.
    let rotated: Value = rotate(json!({"expire_old_in": 0}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rotated["previous_secret_expires_at"], Value::Null);
    let newest = rotated["secret"].as_str().unwrap().to_owned();
    // The change notice reaches the delivery service's cache within milliseconds.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    let third = receiver.wait_for(5, PATIENCE).await.remove(4);
    assert!(third.standard_signature_valid(&newest) && !third.standard_signature_valid(&new));
    assert!(third.seed_signature_valid(&newest) && !third.seed_signature_valid(&new));

    // Bad requests name the field; another key's webhook is not found.
    for bad in [
        json!({"expire_old_in": -1}),
        json!({"expire_old_in": 604_801}),
        json!({"expire_old_in": "1h"}),
        json!({"expire_old_in": 1.5}),
    ] {
        let response = rotate(bad.clone()).await;
        assert_eq!(response.status(), 422, "{bad}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["field"], "expire_old_in", "{bad}");
    }
    let other = system.customer().await;
    let response = system
        .post(
            &format!("/v1/webhooks/{webhook}/secret/rotate"),
            &other,
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn recovery_re_sends_once_each_what_a_disabled_webhook_missed_and_nothing_it_got() {
    use std::collections::BTreeMap;

    use aioka_core::{DeliveryId, EventId, WebhookId};

    // One attempt per delivery, disabled after two failures in a row.
    let system = System::start_with(Options {
        schedule: "",
        delivery_env: vec![("AIOKA__DELIVERY__DISABLE_AFTER", "2".to_owned())],
        ..Options::default()
    })
    .await;
    let (receiver, customer, producer, webhook, secret) =
        system.subscriber(&["verdict.new", "regime.change"]).await;
    let webhook_id: WebhookId = webhook.parse().unwrap();
    let delivery_of = |event: &str| {
        DeliveryId::for_pair(event.parse::<EventId>().unwrap(), webhook_id).to_string()
    };
    let since = aioka_core::event::format_timestamp(chrono::Utc::now());
    let recover = |body: Value| {
        let (system, customer, webhook) = (&system, &customer, &webhook);
        async move {
            system
                .post(&format!("/v1/webhooks/{webhook}/recover"), customer, &body)
                .await
        }
    };

    // The receiver is down: two deliveries fail and the webhook is disabled.
    receiver.respond_with(500);
    let mut failed = Vec::new();
    for _ in 0..2 {
        let event = system
            .publish(&producer, sample(EventType::VerdictNew))
            .await;
        system
            .wait_for_delivery(&customer, &webhook, |d| {
                d["event_id"] == event.as_str() && d["status"] == "failed"
            })
            .await;
        failed.push(event);
    }
    system
        .wait_for_webhook(&customer, &webhook, |w| w["is_active"] == false)
        .await;

    // While it is disabled: two events of its types and one of another type, fanned out to
    // nobody.
    let mut missed = Vec::new();
    let mut others = Vec::new();
    for (event_type, subscribed) in [
        (EventType::RegimeChange, true),
        (EventType::MacroAlert, false),
        (EventType::VerdictNew, true),
    ] {
        let event = system.publish(&producer, sample(event_type)).await;
        let id: EventId = event.parse().unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while system.db.store.fanout_progress(id).await.unwrap() != Some((0, true)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{event} never fanned out"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if subscribed { &mut missed } else { &mut others }.push(event);
    }
    let r = recover(json!({ "since": since })).await;
    assert_eq!(r.status(), 409, "a disabled webhook is enabled first");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "webhook_disabled");

    // Fixed and enabled again. An event accepted now goes out at once; while its attempt is
    // still on the wire (no row in the log yet), recovery must not send it a second time.
    receiver.respond_with(200);
    let r = system
        .patch(
            &format!("/v1/webhooks/{webhook}"),
            &customer,
            &json!({ "is_active": true }),
        )
        .await;
    assert_eq!(r.status(), 200);
    receiver.delay(std::time::Duration::from_secs(2));
    let live = system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    let before = receiver.received().len();
    let arrived = receiver.wait_for(before + 1, PATIENCE).await;
    assert_eq!(
        arrived[before].header("x-aioka-delivery"),
        delivery_of(&live)
    );
    receiver.delay(std::time::Duration::ZERO);

    let r = recover(json!({ "since": since })).await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (
            &body["queued"],
            &body["failed"],
            &body["skipped"],
            &body["never_sent"]
        ),
        (&json!(4), &json!(2), &json!(0), &json!(2)),
        "{body}"
    );
    assert_eq!(body["next_since"], Value::Null);

    // Every recovered delivery ends succeeded in the log (the never-sent ones are in it now).
    for event in failed.iter().chain(&missed) {
        let path = format!("/v1/webhooks/{webhook}/deliveries/{}", delivery_of(event));
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let log = system.get_json(&path, &customer).await;
            if log["status"] == "succeeded" {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{log}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    // A second recovery of the same window finds nothing left to send.
    let r = recover(json!({ "since": since })).await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["queued"], 0, "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for request in receiver.received() {
        assert!(request.seed_signature_valid(&secret));
        seen.entry(request.header("x-aioka-delivery").to_owned())
            .or_default()
            .push(request.header("x-aioka-attempt").to_owned());
    }
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for event in &failed {
        expected.insert(delivery_of(event), vec!["1".into(), "2".into()]);
    }
    for event in missed.iter().chain([&live]) {
        expected.insert(delivery_of(event), vec!["1".into()]);
    }
    // The receiver got exactly what it missed, each once more, and nothing it had.
    assert_eq!(seen, expected);
    for event in &others {
        assert!(
            !seen.contains_key(&delivery_of(event)),
            "unsubscribed type sent"
        );
    }

    // Bad requests name what is wrong; another key's webhook is not found.
    for (body, code, field) in [
        (json!({}), "missing_field", "since"),
        (json!({ "since": "yesterday" }), "invalid_field", "since"),
        (
            json!({ "since": since, "until": 5 }),
            "invalid_field",
            "until",
        ),
        (
            json!({ "since": since, "from": since }),
            "unknown_field",
            "from",
        ),
    ] {
        let r = recover(body.clone()).await;
        assert_eq!(r.status(), 422, "{body}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["error"]["code"], code, "{body}");
        assert_eq!(answer["error"]["field"], field, "{body}");
    }
    let other = system.customer().await;
    let r = system
        .post(
            &format!("/v1/webhooks/{webhook}/recover"),
            &other,
            &json!({ "since": since }),
        )
        .await;
    assert_eq!(r.status(), 404);
}
