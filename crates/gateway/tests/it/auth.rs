//! Authentication, key kinds, and the answers for routes and methods that do not exist.

use aioka_core::tier::Tier;
use aioka_core::{ApiKey, KeyKind};
use serde_json::json;

use crate::{App, assert_error};

#[tokio::test]
async fn a_missing_wrong_or_revoked_key_gets_401() {
    let app = App::spawn().await;
    let response = app
        .client
        .get(app.url("/v1/webhooks"))
        .send()
        .await
        .unwrap();
    let body = assert_error(response, 401, "unauthorized", None).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("X-API-Key")
    );

    let wrong = ApiKey::generate(KeyKind::Customer);
    assert_error(
        app.get("/v1/webhooks", wrong.expose()).await,
        401,
        "unauthorized",
        None,
    )
    .await;
    assert_error(app.get("/v1/webhooks", "").await, 401, "unauthorized", None).await;

    let (key, record) = app.key(KeyKind::Customer, Some(Tier::Basic)).await;
    assert_eq!(app.get("/v1/webhooks", &key).await.status(), 200);
    assert!(app.db.store.revoke_key(record.id).await.unwrap());
    assert_error(
        app.get("/v1/webhooks", &key).await,
        401,
        "unauthorized",
        None,
    )
    .await;
    let response = app
        .post(
            "/v1/webhooks",
            &key,
            &json!({"url": "https://a.example.com", "events": ["verdict.new"]}),
        )
        .await;
    assert_error(response, 401, "unauthorized", None).await;
}

#[tokio::test]
async fn an_error_never_echoes_the_key() {
    let app = App::spawn().await;
    let wrong = ApiKey::generate(KeyKind::Customer);
    let text = app
        .get("/v1/webhooks", wrong.expose())
        .await
        .text()
        .await
        .unwrap();
    assert!(!text.contains(wrong.expose()), "{text}");
}

#[tokio::test]
async fn a_producer_key_cannot_manage_webhooks() {
    let app = App::spawn().await;
    let producer = app.producer().await;
    assert_error(
        app.get("/v1/webhooks", &producer).await,
        403,
        "wrong_key_kind",
        None,
    )
    .await;
    let response = app
        .post(
            "/v1/webhooks",
            &producer,
            &json!({"url": "https://a.example.com", "events": ["verdict.new"]}),
        )
        .await;
    assert_error(response, 403, "wrong_key_kind", None).await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = App::spawn().await;
    let key = app.customer(Tier::Basic).await;
    assert_error(
        app.get("/v2/nothing", &key).await,
        404,
        "route_not_found",
        None,
    )
    .await;
    let response = app
        .client
        .put(app.url("/v1/webhooks"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_error(response, 405, "method_not_allowed", None).await;
}

#[tokio::test]
async fn admin_endpoints_answer_on_their_own_port_only() {
    let app = App::spawn().await;
    let admin = |path: &str| format!("{}{path}", app.admin_base);
    assert_eq!(
        app.client
            .get(admin("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The probes run at start; readiness follows within a moment.
    let mut ready = false;
    for _ in 0..100 {
        if app
            .client
            .get(admin("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "/readyz never became ready");
    let key = app.customer(Tier::Basic).await;
    app.get("/v1/webhooks", &key).await;
    let metrics = app
        .client
        .get(admin("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("aioka_gateway_requests_total"),
        "{metrics}"
    );
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path} must not be on the public API");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_key_over_its_request_budget_gets_429_with_retry_after() {
    let app = App::spawn_with(|env| {
        env.set("AIOKA__GATEWAY__RATE_LIMIT", "2");
    })
    .await;
    let greedy = app.customer(Tier::Basic).await;
    let other = app.customer(Tier::Basic).await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..8 {
        let response = app.get("/v1/webhooks", &greedy).await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 && limited.is_none() {
            limited = Some(response);
        }
    }
    assert_eq!(
        &statuses[..4],
        [200, 200, 200, 200],
        "a burst of twice the rate passes"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    let limited = limited.unwrap();
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_error(limited, 429, "rate_limited", None).await;
    assert_eq!(
        app.get("/v1/webhooks", &other).await.status(),
        200,
        "budgets are per key"
    );
}
