//! `proto/openapi.yaml` and the router agree: every route served is documented, every
//! documented route is served, and the route table matches what the router really answers.

use std::collections::BTreeSet;

use aioka_core::tier::Tier;
use reqwest::Method;
use serde_json::Value;

use crate::App;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn documented() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../proto/openapi.yaml"
    ))
    .expect("proto/openapi.yaml");
    let doc: Value = serde_yaml_ng::from_str(&text).expect("openapi.yaml is YAML");
    assert_eq!(
        doc["openapi"].as_str().map(|v| &v[..2]),
        Some("3."),
        "an OpenAPI 3 document"
    );
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

fn served() -> BTreeSet<(String, String)> {
    aioka_gateway::route_table()
        .into_iter()
        .map(|r| (r.method.to_string(), r.path.to_owned()))
        .collect()
}

#[test]
fn every_served_route_is_documented_and_every_documented_route_is_served() {
    let documented = documented();
    let served = served();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in proto/openapi.yaml: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "in proto/openapi.yaml but not served: {unserved:?}"
    );
}

fn concrete(path: &str) -> String {
    path.replace("{id}", &aioka_core::WebhookId::new().to_string())
        .replace("{delivery_id}", &aioka_core::DeliveryId::new().to_string())
}

#[tokio::test]
async fn the_route_table_is_what_the_router_answers() {
    let app = App::spawn().await;
    let key = app.customer(Tier::Basic).await;
    let served = served();
    let paths: BTreeSet<&String> = served.iter().map(|(_, p)| p).collect();
    for path in paths {
        for method in METHODS {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = app
                .client
                .request(method.clone(), app.url(&concrete(path)))
                .header("X-API-Key", &key)
                .header("Content-Type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            let listed = served.contains(&(method.to_string(), path.clone()));
            assert!(!text.contains("route_not_found"), "{method} {path}: {text}");
            if listed {
                assert_ne!(
                    status, 405,
                    "{method} {path} is in the table but not served: {text}"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path} is served but not in the table: {text}"
                );
            }
        }
    }
}

/// The id patterns of the document are the parsers': every string the pattern of a path
/// parameter or of the test event's `webhook_id` matches is an id the server takes, and every
/// other string is refused (schemathesis found ids the old pattern allowed that no 128-bit
/// value has, first character above 7). Candidates are near misses: the right length give or
/// take one, the alphabet in both cases plus the letters Crockford leaves out.
#[test]
fn every_id_the_document_allows_the_parser_takes_and_no_other() {
    use aioka_core::{DeliveryId, WebhookId};
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../proto/openapi.yaml"
    ))
    .unwrap();
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    let pattern = |pointer: &str| {
        let text = doc
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no pattern at {pointer}"));
        regex::Regex::new(text).unwrap()
    };
    let webhook = pattern("/components/parameters/WebhookId/schema/pattern");
    let test_event = pattern("/components/schemas/TestEventRequest/properties/webhook_id/pattern");
    let delivery = pattern("/components/parameters/DeliveryId/schema/pattern");
    let alphabet: Vec<char> = "0123456789abcdefghjkmnpqrstvwxyzABCDEFGHJKMNPQRSTVWXYZilouILOU_-"
        .chars()
        .collect();
    // xorshift: the same candidates every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut taken, mut refused) = (0, 0);
    for i in 0..20_000 {
        let len = 25 + (next() % 3) as usize;
        let mut body: String = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        if i % 2 == 0 {
            // Half the candidates are well formed but for (maybe) their first character.
            body = (0..26).map(|_| alphabet[(next() % 32) as usize]).collect();
        }
        for (prefix, doc_says) in [("wh_", &webhook), ("wh_", &test_event)] {
            let text = format!("{prefix}{body}");
            let parsed = text.parse::<WebhookId>().is_ok();
            assert_eq!(doc_says.is_match(&text), parsed, "{text}: parser {parsed}");
            if parsed { taken += 1 } else { refused += 1 }
        }
        let text = format!("dlv_{body}");
        let parsed = text.parse::<DeliveryId>().is_ok();
        assert_eq!(delivery.is_match(&text), parsed, "{text}: parser {parsed}");
    }
    assert!(
        taken > 1_000 && refused > 1_000,
        "taken {taken}, refused {refused}"
    );
}
