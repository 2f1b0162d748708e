//! `GET /v1/event-types`: the catalog every valid key may read, whose schemas are the files
//! of `proto/events/` and whose examples ingestion accepts.

use aioka_core::tier::Tier;
use serde_json::Value;

use crate::{App, assert_error};

/// The schema files as they are on disk, read here rather than through core.
const SCHEMA_FILES: [(&str, &str); 5] = [
    (
        "verdict.new",
        include_str!("../../../../proto/events/verdict.new.schema.json"),
    ),
    (
        "council.new",
        include_str!("../../../../proto/events/council.new.schema.json"),
    ),
    (
        "regime.change",
        include_str!("../../../../proto/events/regime.change.schema.json"),
    ),
    (
        "ghost.signal",
        include_str!("../../../../proto/events/ghost.signal.schema.json"),
    ),
    (
        "macro.alert",
        include_str!("../../../../proto/events/macro.alert.schema.json"),
    ),
];

#[tokio::test]
async fn every_valid_key_reads_the_catalog_and_its_examples_are_accepted_as_published() {
    let app = App::spawn().await;
    let free = app.customer(Tier::Free).await;
    let basic = app.customer(Tier::Basic).await;
    let producer = app.producer().await;

    let catalog = app.get_json("/v1/event-types", &free).await;
    assert_eq!(app.get_json("/v1/event-types", &basic).await, catalog);
    assert_eq!(app.get_json("/v1/event-types", &producer).await, catalog);

    let entries = catalog["data"].as_array().unwrap();
    let types: Vec<&str> = entries
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        SCHEMA_FILES.iter().map(|(t, _)| *t).collect::<Vec<_>>()
    );
    for (entry, (event_type, file)) in entries.iter().zip(SCHEMA_FILES) {
        let schema: Value = serde_json::from_str(file).unwrap();
        assert_eq!(entry["data_schema"], schema, "{event_type}");
        assert_eq!(entry["description"], schema["description"], "{event_type}");
        assert!(
            !entry["description"].as_str().unwrap().is_empty(),
            "{event_type}"
        );
        let example = &entry["example"];
        assert_eq!(example["event"], event_type);
        // The example is what a producer may publish: ingestion validates it against the
        // same schema and accepts it.
        let response = app.post("/v1/events", &producer, example).await;
        assert_eq!(
            response.status(),
            202,
            "{event_type}: {}",
            response.text().await.unwrap()
        );
    }
}

#[tokio::test]
async fn the_catalog_needs_a_valid_key() {
    let app = App::spawn().await;
    let response = app
        .client
        .get(app.url("/v1/event-types"))
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "unauthorized", None).await;
    let wrong = aioka_core::ApiKey::generate(aioka_core::KeyKind::Customer);
    assert_error(
        app.get("/v1/event-types", wrong.expose()).await,
        401,
        "unauthorized",
        None,
    )
    .await;
}
