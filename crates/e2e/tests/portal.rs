//! The portal (`/portal`) in a real browser: `portal/journey.py` walks a customer's journey
//! in headless Chromium against this test's gateway, PostgreSQL and RabbitMQ, and asks the
//! test to make its receiver fail and recover. Plus what a browser does not show: the
//! security headers, the cookie's attributes, a cross-site form refused, the key in no log.
//!
//! `scripts/test` installs chromium, chromium-driver and python3-selenium from the
//! distribution's packages; without them this test fails and says so.

use std::process::Stdio;
use std::time::Duration;

use aioka_e2e::System;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const PYTHON: &str = "/usr/bin/python3";

fn journey_script() -> String {
    format!("{}/portal/journey.py", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn a_customer_manages_a_webhook_end_to_end_in_a_browser() {
    for needed in ["/usr/bin/chromium", "/usr/bin/chromedriver", PYTHON] {
        assert!(
            std::path::Path::new(needed).exists(),
            "{needed} is missing: run scripts/test (it installs chromium, chromium-driver and python3-selenium)"
        );
    }
    let system = System::start().await;
    let receiver = system.receiver().await;
    let customer = system.customer().await;
    let producer = system.producer().await;

    let mut child = tokio::process::Command::new(PYTHON)
        .arg(journey_script())
        .env("PORTAL_BASE", &system.base)
        .env("PORTAL_KEY", &customer)
        .env("PORTAL_RECEIVER", &receiver.url)
        .envs(std::env::var("AIOKA_PORTAL_SCREENSHOTS").map(|d| ("PORTAL_SCREENSHOTS", d)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 starts");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    let journey = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            match line.as_str() {
                "STEP receiver-fail" => {
                    receiver.respond_with(500);
                    for _ in 0..4 {
                        system.publish(&producer, aioka_e2e::verdict(None)).await;
                    }
                }
                "STEP receiver-ok" => receiver.respond_with(200),
                _ => {
                    said.push(line);
                    continue;
                }
            }
            stdin.write_all(b"ok\n").await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(300), journey)
        .await
        .expect("the journey finished within 5 minutes");
    let output = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && said.last().map(String::as_str) == Some("journey complete"),
        "the journey failed after: {said:?}\n{stderr}"
    );
    // The receiver saw the journey's deliveries, signed.
    assert!(
        receiver.received().len() >= 2,
        "{} requests",
        receiver.received().len()
    );
}

#[tokio::test]
async fn portal_answers_carry_strict_security_headers_and_the_session_cookie_is_guarded() {
    let system = System::start().await;
    let customer = system.customer().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client
        .get(format!("{}/portal", system.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert_eq!(page.headers()["referrer-policy"], "same-origin");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "inline script or style: {html}"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "a third-party asset: {html}"
    );

    // Signing in sets a guarded session cookie that does not hold the key in clear.
    let signed_in = client
        .post(format!("{}/portal/sign-in", system.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("api_key={customer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    for part in [
        "aioka_portal=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/portal",
    ] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(
        !cookie.contains(&customer),
        "the key in clear in the cookie"
    );
    let session = cookie.split(';').next().unwrap().to_owned();

    // The cookie opens the pages; a form posted from another site is refused even with it.
    let list = client
        .get(format!("{}/portal/webhooks", system.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    let forged = client
        .post(format!("{}/portal/webhooks", system.base))
        .header("cookie", &session)
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("url=https%3A%2F%2Fevil.example%2Fhook&events=verdict.new")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let webhooks = system.get_json("/v1/webhooks", &customer).await;
    assert_eq!(
        webhooks["data"].as_array().unwrap().len(),
        0,
        "the cross-site form registered a webhook"
    );

    // A cookie sealed for something else, or tampered with, is no session.
    let tampered = session.replace("aioka_portal=", "aioka_portal=A");
    let refused = client
        .get(format!("{}/portal/webhooks", system.base))
        .header("cookie", tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 303);
    assert_eq!(refused.headers()["location"], "/portal?signed_out=1");
}
