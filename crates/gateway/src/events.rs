//! Producer ingestion: `POST /v1/events`.

use aioka_core::event::parse_ingest;
use aioka_queue::lapin::types::{AMQPValue, LongString, ShortString};
use aioka_queue::{inject_trace_context, persistent_json};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

use crate::error::ApiError;
use crate::extract::{JsonBody, Producer};
use crate::state::AppState;

/// The header that tells fanout an event came through the gateway.
const SOURCE_HEADER: &str = "x-aioka-source";

/// How long ingestion waits for the stored event of a reused id before accepting without
/// the check (the database is not on the path of an accepted event: the broker is).
const KNOWN_ID_CHECK: Duration = Duration::from_secs(1);

/// A producer `id` names one event: the same id with the same content is a duplicate (202,
/// delivered once), with other content a mistake that would silently lose the new content,
/// so it is refused (409 naming the id). Content is the event type and `data`, and the
/// `timestamp` when the request gives one (an omitted timestamp is ours, not the
/// producer's). An id whose event is not stored yet (fanout has not taken it), or a database
/// that does not answer within a second, is accepted unchecked: the first content stays.
async fn refuse_a_different_body_under_a_known_id(
    state: &AppState,
    request: &Value,
    event: &aioka_core::event::ValidEvent,
    source: &str,
) -> Result<(), ApiError> {
    let stored = match tokio::time::timeout(KNOWN_ID_CHECK, state.store.event_body(event.id)).await
    {
        Ok(Ok(Some(body))) => body,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "could not read the event of a reused id; accepting unchecked");
            return Ok(());
        }
        Err(_) => return Ok(()),
    };
    let Ok(stored) = serde_json::from_str::<Value>(&stored) else {
        return Ok(());
    };
    let ours = serde_json::from_slice::<Value>(&event.envelope.to_body()).unwrap_or_default();
    let same = stored.get("event") == ours.get("event")
        && stored.get("data") == ours.get("data")
        && (request.get("timestamp").is_none_or(Value::is_null)
            || stored.get("timestamp") == ours.get("timestamp"));
    if same {
        return Ok(());
    }
    metrics::counter!("aioka_gateway_id_conflicts_total").increment(1);
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "event_id_conflict",
        format!(
            "id \"{source}\" was already accepted as event {} with a different body; send a new id for a new event (the same id with the same body is accepted again and delivered once)",
            event.id
        ),
    )
    .with_field("id"))
}

/// `POST /v1/events`: validates the event against its schema and answers 202 only after
/// RabbitMQ has confirmed the persistent publish, so an accepted event is never lost.
#[tracing::instrument(skip_all, fields(key_id = %producer.0.id, event_id = tracing::field::Empty))]
pub async fn ingest(
    State(state): State<AppState>,
    producer: Producer,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let event = parse_ingest(&body)?;
    tracing::Span::current().record("event_id", tracing::field::display(event.id));
    if let Some(Value::String(source)) = body.get("id") {
        refuse_a_different_body_under_a_known_id(&state, &body, &event, source).await?;
    }
    let mut headers = inject_trace_context();
    headers.insert(
        ShortString::from(SOURCE_HEADER),
        AMQPValue::LongString(LongString::from("http")),
    );
    // The order of ordered delivery: when the event was accepted, not when fan-out (one of
    // several, each with several messages in hand) stores it.
    headers.insert(
        ShortString::from(aioka_queue::ACCEPTED_AT_HEADER),
        AMQPValue::LongString(LongString::from(
            chrono::Utc::now().timestamp_micros().to_string(),
        )),
    );
    let topology = state.publisher.topology();
    state
        .publisher
        .publish(
            &topology.events_exchange(),
            event.envelope.event.as_str(),
            &event.envelope.to_body(),
            persistent_json(Some(&event.id.to_string()), headers),
        )
        .await
        .map_err(ApiError::unavailable)?;
    metrics::counter!("aioka_gateway_events_total", "event" => event.envelope.event.as_str())
        .increment(1);
    tracing::info!(event = %event.envelope.event, "event accepted");
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": event.id }))))
}
