//! Test events, the delivery log, and re-sending a failed delivery.

use std::collections::HashMap;

use aioka_core::event::{Envelope, EventType, now_timestamp};
use aioka_core::messages::{DeliveryTask, Task};
use aioka_core::{DeliveryId, EventId, FieldError, WebhookId};
use aioka_queue::{DELIVERY_KEY, inject_trace_context, persistent_json};
use aioka_store::{DeliveryRecord, EventSource, NewEvent, ResendError};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::{Customer, IdPath, IdPath2, OptionalJsonBody};
use crate::state::AppState;
use crate::webhooks::{api_time, body_object, reject_unknown_fields};

const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;

fn delivery_json(d: &DeliveryRecord) -> Value {
    json!({
        "id": d.id,
        "event_id": d.event_id,
        "event": d.event_type,
        "status": d.status.as_str(),
        "attempt_count": d.attempts,
        "next_attempt_at": d.next_attempt_at.map(api_time),
        "skip_reason": d.skip_reason,
        "created_at": api_time(d.created_at),
        "updated_at": api_time(d.updated_at),
        "attempts": d.attempt_log.iter().map(|a| json!({
            "attempt": a.attempt,
            "attempted_at": api_time(a.attempted_at),
            "status_code": a.status_code,
            "error": a.error_kind,
            "latency_ms": a.latency_ms,
            "response": a.response_snippet,
            "next_retry_at": a.next_retry_at.map(api_time),
        })).collect::<Vec<_>>(),
    })
}

fn encode_cursor(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("s{seq}"))
}

fn decode_cursor(text: &str) -> Option<i64> {
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix('s')?
        .parse()
        .ok()
}

/// `GET /v1/webhooks/{id}/deliveries?limit=&cursor=`: newest first.
#[tracing::instrument(skip_all, fields(key_id = %customer.0.id, webhook_id = %id))]
pub async fn list(
    State(state): State<AppState>,
    customer: Customer,
    IdPath(id): IdPath<WebhookId>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let limit = match query.get("limit") {
        None => DEFAULT_PAGE,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    format!("limit must be a whole number from 1 to {MAX_PAGE}"),
                )
                .with_field("limit")
            })?,
    };
    let before = match query.get("cursor") {
        None => None,
        Some(text) => Some(decode_cursor(text).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                "cursor is not one this API returned",
            )
            .with_field("cursor")
        })?),
    };
    let mut page = state
        .store
        .list_deliveries(customer.0.id, id, before, limit + 1)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    let more = page.len() as i64 > limit;
    page.truncate(limit as usize);
    let next_cursor = if more {
        page.last().map(|d| encode_cursor(d.seq))
    } else {
        None
    };
    Ok(Json(json!({
        "data": page.iter().map(delivery_json).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    })))
}

fn task_message(task: DeliveryTask) -> (String, Vec<u8>, aioka_queue::lapin::BasicProperties) {
    let props = persistent_json(Some(&task.delivery_id.to_string()), inject_trace_context());
    (DELIVERY_KEY.to_owned(), Task::V1(task).to_bytes(), props)
}

/// `POST /v1/webhooks/test` `{"webhook_id"?, "event"?}`: a signed sample event through the
/// real pipeline to one webhook, or to every active one of the key.
#[tracing::instrument(skip_all, fields(key_id = %customer.0.id))]
pub async fn send_test(
    State(state): State<AppState>,
    customer: Customer,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    customer.require_webhooks()?;
    let object = body_object(&body)?;
    reject_unknown_fields(object, &["webhook_id", "event"])?;
    let event_type = match object.get("event") {
        None | Some(Value::Null) => EventType::VerdictNew,
        Some(Value::String(text)) => text.parse().map_err(|_| {
            FieldError::new(
                "unknown_event_type",
                "event",
                format!(
                    "unknown event type '{text}'; expected one of {}",
                    EventType::names()
                ),
            )
        })?,
        Some(_) => return Err(FieldError::invalid("event", "event must be a string").into()),
    };
    let targets: Vec<WebhookId> = match object.get("webhook_id") {
        None | Some(Value::Null) => {
            let active = state.store.active_webhooks(customer.0.id).await?;
            if active.is_empty() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "no_active_webhooks",
                    "this key has no active webhook to send a test event to",
                ));
            }
            active.iter().map(|w| w.id).collect()
        }
        Some(Value::String(text)) => {
            let id: WebhookId = text.parse().map_err(|e: aioka_core::ids::IdParseError| {
                FieldError::invalid("webhook_id", format!("webhook_id: {e}"))
            })?;
            let webhook = state
                .store
                .get_webhook(customer.0.id, id)
                .await?
                .ok_or_else(|| ApiError::not_found("webhook"))?;
            if !webhook.is_active {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "webhook_disabled",
                    "the webhook is disabled; enable it with PATCH is_active: true first",
                ));
            }
            vec![id]
        }
        Some(_) => {
            return Err(FieldError::invalid("webhook_id", "webhook_id must be a string").into());
        }
    };

    let (occurred_at, timestamp) = now_timestamp();
    let envelope = Envelope {
        event: event_type,
        timestamp,
        data: event_type.sample_data(),
    };
    let body = String::from_utf8_lossy(&envelope.to_body()).into_owned();
    let event_id = EventId::new();
    state
        .store
        .insert_direct_event(&NewEvent {
            id: event_id,
            event_type,
            occurred_at,
            body: &body,
            source: EventSource::Test,
        })
        .await?;
    state
        .store
        .insert_pending_deliveries(event_id, &targets)
        .await?;
    let exchange = state.publisher.topology().deliveries_exchange();
    let task_key = state.encryption_key.task_key();
    let messages = targets
        .iter()
        .map(|webhook| {
            let (key, bytes, props) = task_message(
                DeliveryTask {
                    delivery_id: DeliveryId::for_pair(event_id, *webhook),
                    event_id,
                    webhook_id: *webhook,
                    event_type,
                    body: body.clone(),
                    attempt: 1,
                    series_start: 1,
                    auth: None,
                }
                .authenticated(&task_key),
            );
            (exchange.clone(), key, bytes, props)
        })
        .collect();
    if let Err(e) = state.publisher.publish_all(messages).await {
        // Leave nothing half-written: without its tasks the test event never happened.
        if let Err(cleanup) = state.store.discard_event(event_id).await {
            tracing::error!(error = %cleanup, %event_id, "could not discard an unpublished test event");
        }
        return Err(ApiError::unavailable(e));
    }
    tracing::info!(%event_id, webhooks = targets.len(), "test event sent");
    let deliveries: Vec<Value> = targets
        .iter()
        .map(|w| json!({ "id": DeliveryId::for_pair(event_id, *w), "webhook_id": w }))
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "event_id": event_id, "event": event_type, "deliveries": deliveries })),
    ))
}

/// `POST /v1/webhooks/{id}/deliveries/{delivery_id}/retry`: one more series of attempts for a
/// failed (or skipped) delivery, under the same delivery id.
#[tracing::instrument(skip_all, fields(key_id = %customer.0.id, webhook_id = %webhook, delivery_id = %delivery))]
pub async fn retry(
    State(state): State<AppState>,
    customer: Customer,
    IdPath2(webhook, delivery): IdPath2<WebhookId, DeliveryId>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    customer.require_webhooks()?;
    let resend = state
        .store
        .claim_resend(customer.0.id, webhook, delivery)
        .await
        .map_err(|e| match e {
            ResendError::NotFound => ApiError::not_found("delivery"),
            ResendError::NotFailed(_) => {
                ApiError::new(StatusCode::CONFLICT, "delivery_not_failed", e.to_string())
            }
            ResendError::WebhookInactive => {
                ApiError::new(StatusCode::CONFLICT, "webhook_disabled", e.to_string())
            }
            ResendError::Store(e) => e.into(),
        })?;
    let (key, bytes, props) = task_message(
        DeliveryTask {
            delivery_id: delivery,
            event_id: resend.event_id,
            webhook_id: webhook,
            event_type: resend.event_type,
            body: resend.body,
            attempt: resend.attempt,
            series_start: resend.attempt,
            auth: None,
        }
        .authenticated(&state.encryption_key.task_key()),
    );
    let exchange = state.publisher.topology().deliveries_exchange();
    if let Err(e) = state
        .publisher
        .publish(&exchange, &key, &bytes, props)
        .await
    {
        if let Err(undo) = state.store.unclaim_resend(delivery, resend.previous).await {
            tracing::error!(error = %undo, "could not restore a delivery after a failed re-send");
        }
        return Err(ApiError::unavailable(e));
    }
    tracing::info!(attempt = resend.attempt, "delivery re-sent");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": delivery, "attempt": resend.attempt })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert_eq!(decode_cursor("nope"), None);
        assert_eq!(decode_cursor(""), None);
    }
}
