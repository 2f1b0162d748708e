//! Secrets and API keys never reach a log line. Every service's logs are captured at DEBUG,
//! with every library's, through a full run (registration, ingestion, failed and retried
//! deliveries, a test event, edits, refusals), then searched. Its own test binary: it installs
//! the process's global subscriber.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use aioka_core::event::EventType;
use aioka_e2e::{Options, PATIENCE, System, sample};
use serde_json::json;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_or_key_appears_in_any_log_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .init();

    let system = System::start_with(Options {
        schedule: "100ms",
        ..Options::default()
    })
    .await;
    let (receiver, customer, producer, webhook, secret) =
        system.subscriber(&["verdict.new", "macro.alert"]).await;
    receiver.script(&[500, 503]);
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    system
        .publish(&producer, sample(EventType::MacroAlert))
        .await;
    let r = system
        .post(
            "/v1/webhooks/test",
            &customer,
            &json!({"webhook_id": webhook}),
        )
        .await;
    assert_eq!(r.status(), 202);
    receiver.wait_for(4, PATIENCE).await;
    let r = system
        .patch(
            &format!("/v1/webhooks/{webhook}"),
            &customer,
            &json!({"is_active": false}),
        )
        .await;
    assert_eq!(r.status(), 200);
    // Refusals log too: a wrong key, a producer key on the customer API, a bad body.
    system.post("/v1/webhooks", &producer, &json!({})).await;
    system
        .post("/v1/webhooks", "aioka_ck_not-a-real-key", &json!({}))
        .await;
    system
        .post("/v1/events", &producer, &json!({"event": "nope"}))
        .await;
    // The portal: a sign-in (the key in a form body), a page with its session cookie, and
    // a registration whose secret the page shows.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = client
        .post(format!("{}/portal/sign-in", system.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("api_key={customer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let session = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let registered = client
        .post(format!("{}/portal/webhooks", system.base))
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("url=https%3A%2F%2F127.0.0.1%3A9%2Fportal&events=council.new")
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    let page = registered.text().await.unwrap();
    let portal_secret = page
        .split("<code id=\"secret\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap()
        .to_owned();
    assert!(portal_secret.starts_with("whsec_"), "{page}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let encryption_key = system
        .env
        .get("AIOKA__SECURITY__SECRET_KEY")
        .unwrap()
        .to_owned();
    system.stop().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.lines().count() > 50,
        "the capture caught the run's logs"
    );
    assert!(
        logs.contains(&webhook),
        "ids are logged, so the capture is real"
    );
    for (what, value) in [
        ("webhook secret", secret.as_str()),
        ("webhook secret's key part", &secret["whsec_".len()..]),
        ("customer key", customer.as_str()),
        ("producer key", producer.as_str()),
        ("unknown key", "aioka_ck_not-a-real-key"),
        ("encryption key", encryption_key.as_str()),
        ("secret a portal page showed", portal_secret.as_str()),
        ("portal session cookie", session.as_str()),
    ] {
        assert!(!logs.contains(value), "the {what} appears in the logs");
    }
}
