//! The customer webhook API: registration rules, limits, listing, deletion, secrets.

use aioka_core::tier::Tier;
use aioka_core::{WebhookId, WebhookSecret};
use base64::Engine;
use serde_json::{Value, json};

use crate::{App, assert_error};

const URL: &str = "https://yourserver.com/aioka-webhook";

#[tokio::test]
async fn registering_returns_the_seed_pages_shape_with_a_secret() {
    let app = App::spawn().await;
    let key = app.customer(Tier::Basic).await;
    let response = app
        .post(
            "/v1/webhooks",
            &key,
            &json!({"url": URL, "events": ["verdict.new", "regime.change"]}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert!(id.parse::<WebhookId>().is_ok(), "{id}");
    assert_eq!(location, format!("/v1/webhooks/{id}"));
    assert_eq!(body["url"], URL);
    assert_eq!(body["events"], json!(["verdict.new", "regime.change"]));
    assert_eq!(body["is_active"], true);
    let secret = body["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&secret["whsec_".len()..])
        .unwrap();
    assert_eq!(raw.len(), 32);
    let created = body["created_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "{created}"
    );
    assert!(created.ends_with('Z'));
}

#[tokio::test]
async fn the_secret_is_shown_once_and_stored_encrypted() {
    let app = App::spawn().await;
    let key = app.customer(Tier::Pro).await;
    let created = app.register(&key, URL, &["council.new"]).await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id: WebhookId = created["id"].as_str().unwrap().parse().unwrap();

    let list = app.get("/v1/webhooks", &key).await.text().await.unwrap();
    let one = app
        .get(&format!("/v1/webhooks/{id}"), &key)
        .await
        .text()
        .await
        .unwrap();
    for text in [&list, &one] {
        assert!(!text.contains(&secret), "{text}");
        assert!(!text.contains("whsec_"), "{text}");
        assert!(!text.contains("\"secret\""), "{text}");
    }

    let sealed = app
        .db
        .store
        .webhook_secret_sealed(id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !sealed.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the stored secret must not be plaintext"
    );
    let encryption_key =
        aioka_core::EncryptionKey::from_base64(app.env.get("AIOKA__SECURITY__SECRET_KEY").unwrap())
            .unwrap();
    let opened = encryption_key
        .open_secret(&sealed, id.as_uuid().as_bytes())
        .unwrap();
    assert_eq!(opened, WebhookSecret::from_exposed(secret).unwrap());
}

#[tokio::test]
async fn the_url_must_be_a_valid_https_url() {
    let app = App::spawn().await;
    let key = app.customer(Tier::Basic).await;
    let cases = [
        (json!("http://yourserver.com/hook"), "https_required"),
        (json!("ftp://yourserver.com/hook"), "https_required"),
        (json!("not a url"), "invalid_url"),
        (json!("https://user:pw@yourserver.com/"), "invalid_url"),
        (
            json!(format!("https://x.com/{}", "a".repeat(2100))),
            "invalid_url",
        ),
        (json!(42), "invalid_field"),
        (json!(null), "invalid_field"),
    ];
    for (url, code) in cases {
        let response = app
            .post(
                "/v1/webhooks",
                &key,
                &json!({"url": url, "events": ["verdict.new"]}),
            )
            .await;
        assert_error(response, 422, code, Some("url")).await;
    }
    let response = app
        .post("/v1/webhooks", &key, &json!({"events": ["verdict.new"]}))
        .await;
    assert_error(response, 422, "missing_field", Some("url")).await;
}

#[tokio::test]
async fn events_must_be_a_non_empty_set_of_the_five_types() {
    let app = App::spawn().await;
    let key = app.customer(Tier::Basic).await;
    let cases = [
        (json!([]), "invalid_field", "events"),
        (json!("verdict.new"), "invalid_field", "events"),
        (
            json!(["verdict.new", "verdict.old"]),
            "unknown_event_type",
            "events[1]",
        ),
        (json!(["verdict.new", 7]), "invalid_field", "events[1]"),
    ];
    for (events, code, field) in cases {
        let response = app
            .post("/v1/webhooks", &key, &json!({"url": URL, "events": events}))
            .await;
        let body = assert_error(response, 422, code, Some(field)).await;
        if code == "unknown_event_type" {
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("macro.alert"), "{message}");
        }
    }
    let response = app.post("/v1/webhooks", &key, &json!({"url": URL})).await;
    assert_error(response, 422, "missing_field", Some("events")).await;

    let all = [
        "verdict.new",
        "council.new",
        "regime.change",
        "ghost.signal",
        "macro.alert",
        "verdict.new",
    ];
    let body = app.register(&key, URL, &all).await;
    assert_eq!(
        body["events"].as_array().unwrap().len(),
        5,
        "repeats are folded"
    );
    assert_eq!(
        app.db
            .store
            .list_webhooks(key_id(&app, &key).await)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn key_id(app: &App, key: &str) -> aioka_core::ApiKeyId {
    app.db
        .store
        .find_active_key(&aioka_core::ApiKey::from_header(key))
        .await
        .unwrap()
        .unwrap()
        .id
}

#[tokio::test]
async fn bad_bodies_get_clear_4xx_answers_and_write_nothing() {
    let app = App::spawn().await;
    let key = app.customer(Tier::Basic).await;
    let raw = |body: &'static str, content_type: &'static str| {
        app.client
            .post(app.url("/v1/webhooks"))
            .header("X-API-Key", &key)
            .header("Content-Type", content_type)
            .body(body)
    };
    let body = assert_error(
        raw("{\"url\": ", "application/json").send().await.unwrap(),
        400,
        "malformed_json",
        None,
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1"),
        "{body}"
    );
    assert_error(
        raw("", "application/json").send().await.unwrap(),
        400,
        "malformed_json",
        None,
    )
    .await;
    assert_error(
        raw("{}", "text/plain").send().await.unwrap(),
        415,
        "unsupported_media_type",
        None,
    )
    .await;
    assert_error(
        raw("[1,2]", "application/json").send().await.unwrap(),
        422,
        "invalid_body",
        None,
    )
    .await;

    let response = app
        .post(
            "/v1/webhooks",
            &key,
            &json!({"url": URL, "events": ["verdict.new"], "secret": "mine"}),
        )
        .await;
    assert_error(response, 422, "unknown_field", Some("secret")).await;

    let huge = json!({"url": URL, "events": ["verdict.new"], "pad": "x".repeat(70_000)});
    let response = app.post("/v1/webhooks", &key, &huge).await;
    assert_error(response, 413, "payload_too_large", None).await;

    assert!(
        app.db
            .store
            .list_webhooks(key_id(&app, &key).await)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_key_may_have_at_most_five_webhooks() {
    let app = App::spawn().await;
    let key = app.customer(Tier::Enterprise).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            app.register(&key, URL, &["verdict.new"]).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let response = app
        .post(
            "/v1/webhooks",
            &key,
            &json!({"url": URL, "events": ["verdict.new"]}),
        )
        .await;
    let body = assert_error(response, 409, "webhook_limit_reached", None).await;
    assert!(body["error"]["message"].as_str().unwrap().contains('5'));

    assert_eq!(
        app.delete(&format!("/v1/webhooks/{}", ids[0]), &key)
            .await
            .status(),
        204
    );
    app.register(&key, URL, &["verdict.new"]).await;
}

#[tokio::test]
async fn concurrent_registrations_cannot_overshoot_the_limit() {
    let app = App::spawn().await;
    let key = app.customer(Tier::Basic).await;
    let body = json!({"url": URL, "events": ["ghost.signal"]});
    let attempts = (0..12).map(|_| app.post("/v1/webhooks", &key, &body));
    let statuses: Vec<u16> = futures_util::future::join_all(attempts)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(
        app.db
            .store
            .list_webhooks(key_id(&app, &key).await)
            .await
            .unwrap()
            .len(),
        5
    );
}

#[tokio::test]
async fn the_free_tier_cannot_register_webhooks() {
    let app = App::spawn().await;
    let key = app.customer(Tier::Free).await;
    let response = app
        .post(
            "/v1/webhooks",
            &key,
            &json!({"url": URL, "events": ["verdict.new"]}),
        )
        .await;
    let body = assert_error(response, 403, "tier_required", None).await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("Basic"),
        "{body}"
    );
}

#[tokio::test]
async fn listing_reading_and_deleting_see_only_the_keys_own_webhooks() {
    let app = App::spawn().await;
    let alice = app.customer(Tier::Basic).await;
    let bob = app.customer(Tier::Basic).await;
    let a1 = app.register(&alice, URL, &["verdict.new"]).await;
    let a2 = app
        .register(&alice, "https://other.example.org/h", &["macro.alert"])
        .await;
    let b1 = app.register(&bob, URL, &["council.new"]).await;

    let list: Value = app.get("/v1/webhooks", &alice).await.json().await.unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [a1["id"].as_str().unwrap(), a2["id"].as_str().unwrap()]
    );
    assert_eq!(list["data"][1]["url"], "https://other.example.org/h");
    assert_eq!(list["data"][1]["events"], json!(["macro.alert"]));
    assert_eq!(list["data"][0]["consecutive_failures"], 0);

    let bobs = format!("/v1/webhooks/{}", b1["id"].as_str().unwrap());
    assert_error(app.get(&bobs, &alice).await, 404, "not_found", None).await;
    assert_error(app.delete(&bobs, &alice).await, 404, "not_found", None).await;
    let one: Value = app.get(&bobs, &bob).await.json().await.unwrap();
    assert_eq!(one["id"], b1["id"]);

    let path = format!("/v1/webhooks/{}", a1["id"].as_str().unwrap());
    assert_eq!(app.delete(&path, &alice).await.status(), 204);
    assert_error(app.get(&path, &alice).await, 404, "not_found", None).await;
    assert_error(app.delete(&path, &alice).await, 404, "not_found", None).await;
    let list: Value = app.get("/v1/webhooks", &alice).await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_malformed_or_unknown_id_is_answered_clearly() {
    let app = App::spawn().await;
    let key = app.customer(Tier::Basic).await;
    assert_error(
        app.get("/v1/webhooks/nope", &key).await,
        400,
        "invalid_id",
        Some("id"),
    )
    .await;
    let unknown = format!("/v1/webhooks/{}", WebhookId::new());
    assert_error(app.get(&unknown, &key).await, 404, "not_found", None).await;
    assert_error(app.delete(&unknown, &key).await, 404, "not_found", None).await;
}

/// A host name from /etc/hosts that resolves to a loopback or private address and is not
/// caught by name alone (not `localhost`), to exercise the DNS check.
fn private_hostname() -> String {
    let hosts = std::fs::read_to_string("/etc/hosts").expect("/etc/hosts");
    hosts
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let ip: std::net::IpAddr = parts.next()?.parse().ok()?;
            aioka_core::url_policy::blocked_reason(ip)?;
            parts.find(|name| !name.contains("localhost") && name.contains(|c: char| c.is_ascii_alphabetic()))
                .map(str::to_owned)
        })
        .next()
        .expect("this test needs a name in /etc/hosts mapped to a private address (Debian maps the host name)")
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    let app = App::spawn_with(|env| {
        env.set("AIOKA__SECURITY__ALLOW_PRIVATE_TARGETS", "false");
    })
    .await;
    let key = app.customer(Tier::Basic).await;
    let host = private_hostname();
    for url in [
        "https://127.0.0.1/hook".to_owned(),
        "https://10.1.2.3/hook".to_owned(),
        "https://[::1]:8443/hook".to_owned(),
        "https://[::ffff:192.168.1.1]/hook".to_owned(),
        // IPv4-translated, NAT64 local-use and ISATAP forms of private IPv4 addresses.
        "https://[::ffff:0:127.0.0.1]/hook".to_owned(),
        "https://[64:ff9b:1::10.0.0.1]/hook".to_owned(),
        "https://[2001:4860:0:1::5efe:192.168.0.1]/hook".to_owned(),
        "https://169.254.169.254/latest/meta-data/".to_owned(),
        "https://100.64.0.9/hook".to_owned(),
        "https://localhost/hook".to_owned(),
        format!("https://{host}/hook"),
    ] {
        let response = app
            .post(
                "/v1/webhooks",
                &key,
                &json!({"url": url, "events": ["verdict.new"]}),
            )
            .await;
        assert_error(response, 422, "private_target", Some("url")).await;
    }
    let response = app
        .post(
            "/v1/webhooks",
            &key,
            &json!({"url": "https://no-such-host.invalid/hook", "events": ["verdict.new"]}),
        )
        .await;
    assert_error(response, 422, "unresolvable_host", Some("url")).await;
    app.register(&key, "https://93.184.215.14/hook", &["verdict.new"])
        .await;

    let open = App::spawn().await;
    let key = open.customer(Tier::Basic).await;
    open.register(&key, "https://127.0.0.1:8443/hook", &["verdict.new"])
        .await;
    open.register(&key, &format!("https://{host}/hook"), &["verdict.new"])
        .await;
    // Allowing private targets never opens a cloud metadata service.
    for url in [
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:169.254.169.254]/latest/meta-data/",
        "https://[fd00:ec2::254]/latest/meta-data/",
        "https://100.100.100.200/latest/meta-data/",
        "https://metadata.google.internal/computeMetadata/v1/",
        "https://metadata/computeMetadata/v1/",
    ] {
        let response = open
            .post(
                "/v1/webhooks",
                &key,
                &json!({"url": url, "events": ["verdict.new"]}),
            )
            .await;
        let body = assert_error(response, 422, "private_target", Some("url")).await;
        assert!(body.to_string().contains("cloud metadata"), "{url}: {body}");
    }
}
