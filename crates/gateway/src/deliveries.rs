//! Test events, the delivery log, and re-sending a failed delivery.

use std::collections::HashMap;

use aioka_core::event::{Envelope, EventType, now_timestamp};
use aioka_core::messages::{DeliveryTask, Task};
use aioka_core::{DeliveryId, EventId, FieldError, WebhookId};
use aioka_queue::{Published, inject_trace_context, persistent_json};
use aioka_store::{
    DeliveryFilter, DeliveryRecord, DeliveryStatus, EventSource, LogWindow, NewEvent, ResendError,
};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
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
        "test": d.test,
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

/// A page's cursor is the `seq` of its last delivery in decimal: exactly what the document's
/// pattern (`^[0-9]{1,18}$`) says, so every cursor a client may send is one the server takes
/// (a seq that names no delivery still pages: "older than this"). Eighteen digits always fit
/// an i64.
fn encode_cursor(seq: i64) -> String {
    seq.to_string()
}

fn decode_cursor(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// How long the log keeps deliveries, in the largest whole unit: "30 days", "90 seconds".
pub(crate) fn retention_text(retention: std::time::Duration) -> String {
    let secs = retention.as_secs();
    let (n, unit) = [(86_400, "day"), (3_600, "hour"), (60, "minute")]
        .into_iter()
        .find(|(size, _)| secs >= *size && secs.is_multiple_of(*size))
        .map_or((secs, "second"), |(size, unit)| (secs / size, unit));
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// 404 for a delivery id the log does not hold, saying how far back the log reaches.
pub(crate) fn delivery_not_in_log(delivery: DeliveryId, window: &LogWindow) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "delivery {delivery} not found: the delivery log of this webhook keeps {} \
             (deliveries of events received since {}); an older delivery has been removed",
            retention_text(window.retention),
            api_time(window.starts_at)
        ),
    )
}

/// A query parameter that is not valid: 400 `invalid_parameter` naming it.
fn invalid_parameter(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", message).with_field(field)
}

/// The log's filters from the query: `status`, `event`, and the window `since`..`until`
/// (RFC 3339, on when each delivery was created).
fn log_filter(query: &HashMap<String, String>) -> Result<DeliveryFilter, ApiError> {
    let status = match query.get("status") {
        None => None,
        Some(text) => Some(DeliveryStatus::from_name(text).ok_or_else(|| {
            let names: Vec<&str> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
            invalid_parameter(
                "status",
                format!("status must be one of {}", names.join(", ")),
            )
        })?),
    };
    let event_type = match query.get("event") {
        None => None,
        Some(text) => Some(text.parse::<EventType>().map_err(|_| {
            invalid_parameter(
                "event",
                format!("event must be one of {}", EventType::names()),
            )
        })?),
    };
    let instant = |field: &str| -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
        query
            .get(field)
            .map(|text| {
                aioka_core::event::normalize_timestamp(text)
                    .map(|(at, _)| at)
                    .ok_or_else(|| {
                        invalid_parameter(
                            field,
                            format!(
                                "{field} must be an RFC 3339 date-time, e.g. 2026-04-20T14:32:00Z"
                            ),
                        )
                    })
            })
            .transpose()
    };
    // A window whose `until` is not after its `since` is empty, not malformed: it matches
    // nothing (the document cannot state the order, and a valid request is not refused).
    Ok(DeliveryFilter {
        status,
        event_type,
        since: instant("since")?,
        until: instant("until")?,
        delivery: None,
    })
}

/// `GET /v1/webhooks/{id}/deliveries/{delivery_id}`: one delivery with every attempt.
#[tracing::instrument(skip_all, fields(key_id = %customer.0.id, webhook_id = %id, delivery_id = %delivery))]
pub async fn get(
    State(state): State<AppState>,
    customer: Customer,
    IdPath2(id, delivery): IdPath2<WebhookId, DeliveryId>,
) -> Result<Json<Value>, ApiError> {
    match state
        .store
        .get_delivery(customer.0.id, id, delivery)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?
    {
        Some(found) => Ok(Json(delivery_json(&found))),
        // As a re-send of it would: the log may have dropped it with its partition.
        None => Err(delivery_not_in_log(
            delivery,
            &state.store.log_window().await?,
        )),
    }
}

/// `GET /v1/webhooks/{id}/deliveries?limit=&cursor=&status=&event=&since=&until=`: newest
/// first, and how far back the log reaches (`log_starts_at`).
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
                invalid_parameter(
                    "limit",
                    format!("limit must be a whole number from 1 to {MAX_PAGE}"),
                )
            })?,
    };
    let before = match query.get("cursor") {
        None => None,
        Some(text) => Some(decode_cursor(text).ok_or_else(|| {
            invalid_parameter(
                "cursor",
                "cursor is not one this API returned (a next_cursor is 1 to 18 digits)",
            )
        })?),
    };
    let filter = log_filter(&query)?;
    let mut page = state
        .store
        .find_deliveries(customer.0.id, id, &filter, before, limit + 1)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    let more = page.len() as i64 > limit;
    page.truncate(limit as usize);
    let next_cursor = if more {
        page.last().map(|d| encode_cursor(d.seq))
    } else {
        None
    };
    let window = state.store.log_window().await?;
    Ok(Json(json!({
        "data": page.iter().map(delivery_json).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
        "log_starts_at": api_time(window.starts_at),
    })))
}

/// A task's routing key (its webhook's shard), bytes and properties.
pub(crate) fn task_message(
    topology: &aioka_queue::Topology,
    task: DeliveryTask,
) -> (String, Vec<u8>, aioka_queue::lapin::BasicProperties) {
    let props = persistent_json(Some(&task.delivery_id.to_string()), inject_trace_context());
    let (_, key) = topology.task_route(task.webhook_id);
    (key, Task::V1(task).to_bytes(), props)
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
            accepted_at: None,
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
                state.publisher.topology(),
                DeliveryTask {
                    delivery_id: DeliveryId::for_pair(event_id, *webhook),
                    event_id,
                    webhook_id: *webhook,
                    event_type,
                    body: body.clone(),
                    attempt: 1,
                    series_start: 1,
                    auth: None,
                    test: true,
                }
                .authenticated(&task_key),
            );
            (exchange.clone(), key, bytes, props)
        })
        .collect();
    let outcomes = match state.publisher.publish_each(messages).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            // Nothing reached the broker: without its tasks the test event never happened.
            discard_test_event(&state, event_id).await;
            return Err(ApiError::unavailable(e));
        }
    };
    if let Some(error) = settle_test_publish(&state, event_id, &targets, outcomes).await {
        return Err(error);
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

async fn discard_test_event(state: &AppState, event_id: EventId) {
    if let Err(cleanup) = state.store.discard_event(event_id).await {
        tracing::error!(error = %cleanup, %event_id, "could not discard an unpublished test event");
    }
}

/// What a test event's publish left in the broker, per target webhook.
#[derive(Debug, Default, PartialEq, Eq)]
struct Split {
    /// Confirmed: the broker holds the task, it will be delivered.
    sent: Vec<WebhookId>,
    /// Not confirmed (refused, or its confirm lost with the channel) or never handed over.
    unsent: Vec<WebhookId>,
    /// Whether the broker may hold any task: then the event must stay, or the recorder could
    /// not record its deliveries.
    may_be_stored: bool,
    /// The first failure, for the log.
    cause: Option<String>,
}

fn split(targets: &[WebhookId], outcomes: Vec<Published>) -> Split {
    let mut split = Split::default();
    for (webhook, outcome) in targets.iter().zip(outcomes) {
        split.may_be_stored |= outcome.may_be_stored();
        match outcome {
            Published::Confirmed => split.sent.push(*webhook),
            Published::NotConfirmed(e) => {
                split.cause.get_or_insert_with(|| e.to_string());
                split.unsent.push(*webhook);
            }
            Published::NotStarted => split.unsent.push(*webhook),
        }
    }
    split
}

/// After a test event's tasks were published: `None` if every one was confirmed, else the
/// answer, having made the records match what the broker holds. A confirmed task will be
/// delivered, so its delivery (and the event) stays, listable in the log; an unconfirmed one
/// loses its pending delivery; the event goes only if the broker may hold none of its tasks.
async fn settle_test_publish(
    state: &AppState,
    event_id: EventId,
    targets: &[WebhookId],
    outcomes: Vec<Published>,
) -> Option<ApiError> {
    let split = split(targets, outcomes);
    if split.unsent.is_empty() {
        return None;
    }
    let cause = split
        .cause
        .unwrap_or_else(|| "the broker connection failed".to_owned());
    if !split.may_be_stored {
        discard_test_event(state, event_id).await;
        return Some(ApiError::unavailable(cause));
    }
    if let Err(e) = state
        .store
        .discard_pending_deliveries(event_id, &split.unsent)
        .await
    {
        tracing::error!(error = %e, %event_id, "could not remove the deliveries of unsent test tasks");
    }
    if split.sent.is_empty() {
        return Some(ApiError::unavailable(cause));
    }
    Some(ApiError::partly_sent(
        "test_event_partly_sent",
        partly_sent_message(event_id, &split.sent, &split.unsent),
        cause,
    ))
}

fn partly_sent_message(event_id: EventId, sent: &[WebhookId], unsent: &[WebhookId]) -> String {
    let list = |ids: &[WebhookId]| {
        ids.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "the test event {event_id} was sent to {} and will be delivered there (see their \
         delivery logs); it could not be sent to {}: send a test event to those again",
        list(sent),
        list(unsent)
    )
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
    let resend = match state
        .store
        .claim_resend(customer.0.id, webhook, delivery)
        .await
    {
        Ok(resend) => resend,
        Err(ResendError::WebhookNotFound) => return Err(ApiError::not_found("webhook")),
        Err(ResendError::NotFound) => {
            let window = state.store.log_window().await?;
            return Err(delivery_not_in_log(delivery, &window));
        }
        Err(e @ ResendError::NotFailed(_)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "delivery_not_failed",
                e.to_string(),
            ));
        }
        Err(e @ ResendError::WebhookInactive) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "webhook_disabled",
                e.to_string(),
            ));
        }
        Err(ResendError::Store(e)) => return Err(e.into()),
    };
    let (key, bytes, props) = task_message(
        state.publisher.topology(),
        DeliveryTask {
            delivery_id: delivery,
            event_id: resend.event_id,
            webhook_id: webhook,
            event_type: resend.event_type,
            body: resend.body,
            attempt: resend.attempt,
            series_start: resend.attempt,
            auth: None,
            test: resend.test,
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

    fn ids(n: usize) -> Vec<WebhookId> {
        (0..n).map(|_| WebhookId::new()).collect()
    }

    #[test]
    fn a_publish_confirmed_for_some_targets_keeps_the_event_and_names_both_parts() {
        let targets = ids(3);
        let got = split(
            &targets,
            vec![
                Published::Confirmed,
                Published::NotConfirmed(aioka_queue::QueueError::Nacked),
                Published::NotStarted,
            ],
        );
        assert_eq!(got.sent, vec![targets[0]]);
        assert_eq!(got.unsent, vec![targets[1], targets[2]]);
        assert!(got.may_be_stored, "the confirmed task will be delivered");
        let message = partly_sent_message(EventId::new(), &got.sent, &got.unsent);
        let at = |w: WebhookId| message.find(&w.to_string()).unwrap();
        assert!(at(targets[0]) < at(targets[1]) && at(targets[1]) < at(targets[2]));
    }

    #[test]
    fn a_publish_refused_for_every_target_leaves_nothing() {
        let targets = ids(2);
        let got = split(
            &targets,
            vec![
                Published::NotConfirmed(aioka_queue::QueueError::Nacked),
                Published::NotConfirmed(aioka_queue::QueueError::Unroutable {
                    exchange: "x".into(),
                    routing_key: "delivery".into(),
                }),
            ],
        );
        assert!(got.sent.is_empty() && !got.may_be_stored);
    }

    #[test]
    fn a_task_whose_confirm_was_lost_with_the_channel_keeps_the_event() {
        let targets = ids(1);
        let lost =
            aioka_queue::lapin::Error::from(aioka_queue::lapin::ErrorKind::ChannelsLimitReached);
        let got = split(
            &targets,
            vec![Published::NotConfirmed(aioka_queue::QueueError::Amqp(lost))],
        );
        assert_eq!(got.unsent, targets);
        assert!(
            got.may_be_stored,
            "the broker may hold it: the recorder needs the event"
        );
    }

    #[test]
    fn the_retention_is_told_in_its_largest_whole_unit() {
        let text = |secs| retention_text(std::time::Duration::from_secs(secs));
        assert_eq!(text(30 * 86_400), "30 days");
        assert_eq!(text(86_400), "1 day");
        assert_eq!(text(36 * 3_600), "36 hours");
        assert_eq!(text(90), "90 seconds");
        assert_eq!(text(120), "2 minutes");
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert_eq!(decode_cursor("nope"), None);
        assert_eq!(decode_cursor(""), None);
        // What the pattern ^[0-9]{1,18}$ refuses, the parser refuses: a sign, a 19th digit.
        assert_eq!(decode_cursor("+5"), None);
        assert_eq!(decode_cursor("1234567890123456789"), None);
        assert_eq!(
            decode_cursor("999999999999999999"),
            Some(999_999_999_999_999_999)
        );
        assert_eq!(decode_cursor("007"), Some(7));
    }
}
