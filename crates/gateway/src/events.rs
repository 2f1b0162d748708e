//! Producer ingestion: `POST /v1/events`.

use aioka_core::event::parse_ingest;
use aioka_queue::lapin::types::{AMQPValue, LongString, ShortString};
use aioka_queue::{inject_trace_context, persistent_json};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::{JsonBody, Producer};
use crate::state::AppState;

/// The header that tells fanout an event came through the gateway.
const SOURCE_HEADER: &str = "x-aioka-source";

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
    let mut headers = inject_trace_context();
    headers.insert(
        ShortString::from(SOURCE_HEADER),
        AMQPValue::LongString(LongString::from("http")),
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
