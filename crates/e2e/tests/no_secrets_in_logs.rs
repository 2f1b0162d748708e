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
    ] {
        assert!(!logs.contains(value), "the {what} appears in the logs");
    }
}
