//! How far back the delivery log reaches, as the API tells it: `log_starts_at` on every page,
//! and a 404 that says so for a delivery the log does not hold.

use aioka_core::tier::Tier;
use aioka_core::{DeliveryId, EventId, WebhookId};
use chrono::Utc;
use serde_json::Value;

use crate::{App, assert_error};

#[tokio::test]
async fn the_log_says_how_far_back_it_reaches_and_a_delivery_it_does_not_hold_is_a_clear_404() {
    let app = App::spawn_with(|env| {
        env.set("AIOKA__DATABASE__RETENTION", "7d");
    })
    .await;
    let customer = app.customer(Tier::Basic).await;
    let webhook = app
        .register(&customer, "https://yourserver.com/hook", &["verdict.new"])
        .await;
    let webhook: WebhookId = webhook["id"].as_str().unwrap().parse().unwrap();

    // The test database has day partitions from today (UTC) on: the log starts at midnight.
    let page: Value = app
        .get_json(&format!("/v1/webhooks/{webhook}/deliveries"), &customer)
        .await;
    let midnight = format!("{}T00:00:00.000Z", Utc::now().format("%Y-%m-%d"));
    assert_eq!(page["log_starts_at"], midnight.as_str(), "{page}");

    // A delivery id the log does not hold (never made, or dropped with its day).
    let missing = DeliveryId::for_pair(EventId::new(), webhook);
    let body = assert_error(
        app.post(
            &format!("/v1/webhooks/{webhook}/deliveries/{missing}/retry"),
            &customer,
            &Value::Null,
        )
        .await,
        404,
        "not_found",
        None,
    )
    .await;
    let message = body["error"]["message"].as_str().unwrap();
    for part in [missing.to_string(), "keeps 7 days".into(), midnight] {
        assert!(message.contains(&part), "{part:?} not in {message:?}");
    }

    // Another key's webhook is not found at all: nothing is said about its log.
    let other = app.customer(Tier::Basic).await;
    let body = assert_error(
        app.post(
            &format!("/v1/webhooks/{webhook}/deliveries/{missing}/retry"),
            &other,
            &Value::Null,
        )
        .await,
        404,
        "not_found",
        None,
    )
    .await;
    assert_eq!(body["error"]["message"], "webhook not found");
}
