//! `GET /v1/event-types`: the event catalog. Each type with its description, the JSON Schema
//! of its `data` (the files of `proto/events/`, compiled into core, the same ones ingestion
//! validates with), and an example of the envelope a receiver gets. Any valid key may read
//! it: producers publish to these schemas and customers receive them.

use aioka_core::event::EventType;
use axum::Json;
use serde_json::{Value, json};

use crate::extract::AnyKey;

/// The timestamp of every example envelope: a fixed instant, so the catalog is the same on
/// every call.
const EXAMPLE_TIMESTAMP: &str = "2026-04-20T14:32:00Z";

/// The catalog's entry for one type.
pub fn entry(event_type: EventType) -> Value {
    let schema = event_type.schema();
    json!({
        "type": event_type.as_str(),
        "description": schema["description"],
        "data_schema": schema,
        "example": {
            "event": event_type.as_str(),
            "timestamp": EXAMPLE_TIMESTAMP,
            "data": event_type.sample_data(),
        },
    })
}

/// `GET /v1/event-types`
#[tracing::instrument(skip_all, fields(key_id = %key.0.id))]
pub async fn list(key: AnyKey) -> Json<Value> {
    Json(json!({ "data": EventType::ALL.iter().map(|t| entry(*t)).collect::<Vec<_>>() }))
}
