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
