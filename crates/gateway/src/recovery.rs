//! `POST /v1/webhooks/{id}/recover`: after an outage, re-send what a webhook did not get in a
//! window, once each, in event order, through the normal pipeline (see
//! `aioka_store::Store::claim_recovery` for what counts).

use aioka_core::{FieldError, WebhookId};
use aioka_queue::Published;
use aioka_store::{DeliveryStatus, RecoveredTask, RecoveryLimits, ResendError};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::deliveries::task_message;
use crate::error::ApiError;
use crate::extract::{Customer, IdPath, OptionalJsonBody};
use crate::state::AppState;
use crate::webhooks::{api_time, body_object, reject_unknown_fields};

/// What one call may queue, and how many events it may look at to find them; past either,
/// the answer's `next_since` says where the next call goes on.
const LIMITS: RecoveryLimits = RecoveryLimits {
    deliveries: 10_000,
    events: 100_000,
};

/// An RFC 3339 field of the body, if present.
fn instant(object: &Map<String, Value>, field: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_str()
            .and_then(aioka_core::event::normalize_timestamp)
            .map(|(at, _)| Some(at))
            .ok_or_else(|| {
                FieldError::invalid(
                    field,
                    format!("{field} must be an RFC 3339 date-time, e.g. 2026-04-20T14:32:00Z"),
                )
                .into()
            }),
    }
}

/// `{"since": RFC 3339, "until"?: RFC 3339}`: 202 with how many deliveries were queued.
#[tracing::instrument(skip_all, fields(key_id = %customer.0.id, webhook_id = %id))]
pub async fn recover(
    State(state): State<AppState>,
    customer: Customer,
    IdPath(id): IdPath<WebhookId>,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    customer.require_webhooks()?;
    let object = body_object(&body)?;
    reject_unknown_fields(object, &["since", "until"])?;
    let now = Utc::now();
    let since = instant(object, "since")?.ok_or_else(|| {
        ApiError::from(FieldError::new(
            "missing_field",
            "since",
            "since is required: the RFC 3339 date-time the outage began",
        ))
    })?;
    // A window reaching into the future ends now: nothing later has been accepted. One that
    // ends before it starts (or starts in the future) is empty, not malformed, as the log's
    // filters take it: the answer echoes it with nothing queued.
    let until = instant(object, "until")?.map_or(now, |until| until.min(now));
    // What the log no longer holds cannot be re-sent: the window starts at most there, and
    // the answer says where it started.
    let window = state.store.log_window().await?;
    let since = since.max(window.starts_at);

    let recovered = match state
        .store
        .claim_recovery(customer.0.id, id, since, until, LIMITS)
        .await
    {
        Ok(recovered) => recovered,
        Err(ResendError::WebhookNotFound) => return Err(ApiError::not_found("webhook")),
        Err(ResendError::WebhookInactive) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "webhook_disabled",
                "the webhook is disabled; enable it with PATCH is_active: true first, then recover",
            ));
        }
        Err(ResendError::Store(e)) => return Err(e.into()),
        Err(e @ (ResendError::NotFound | ResendError::NotFailed(_))) => {
            return Err(ApiError::internal(e));
        }
    };
    let queued = publish(&state, &recovered.tasks).await?;
    let count = |was| recovered.count(was);
    tracing::info!(
        queued,
        next_since = ?recovered.next_since,
        "recovery queued"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "queued": queued,
            "failed": count(Some(DeliveryStatus::Failed)),
            "skipped": count(Some(DeliveryStatus::Skipped)),
            "never_sent": count(None),
            "since": api_time(since),
            "until": api_time(until),
            "next_since": recovered.next_since.map(api_time),
        })),
    ))
}

/// Publishes the claimed tasks in order; any not confirmed has its claim undone (so a later
/// recovery of the same window takes it again) and the answer is a 503 saying how many went.
async fn publish(state: &AppState, tasks: &[RecoveredTask]) -> Result<usize, ApiError> {
    if tasks.is_empty() {
        return Ok(0);
    }
    let exchange = state.publisher.topology().deliveries_exchange();
    let task_key = state.encryption_key.task_key();
    let messages = tasks
        .iter()
        .map(|t| {
            let (key, bytes, props) = task_message(
                state.publisher.topology(),
                t.task.clone().authenticated(&task_key),
            );
            (exchange.clone(), key, bytes, props)
        })
        .collect();
    let outcomes = match state.publisher.publish_each(messages).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            undo(state, tasks.iter().collect()).await;
            return Err(ApiError::unavailable(e));
        }
    };
    let mut unsent = Vec::new();
    let mut cause = None;
    for (task, outcome) in tasks.iter().zip(outcomes) {
        // A task whose confirm was lost with the channel may be in the broker: its claim
        // stays (pending, due now), and the retry sweep sends it if the broker does not.
        let stored = outcome.may_be_stored();
        match outcome {
            Published::Confirmed => {}
            Published::NotConfirmed(e) => {
                cause.get_or_insert_with(|| e.to_string());
                if !stored {
                    unsent.push(task);
                }
            }
            Published::NotStarted => unsent.push(task),
        }
    }
    if unsent.is_empty() {
        return Ok(tasks.len());
    }
    let sent = tasks.len() - unsent.len();
    undo(state, unsent).await;
    let cause = cause.unwrap_or_else(|| "the broker connection failed".to_owned());
    if sent == 0 {
        return Err(ApiError::unavailable(cause));
    }
    Err(ApiError::partly_sent(
        "recovery_partly_queued",
        format!(
            "{sent} of {} deliveries were queued and will be sent; the broker took no more: \
             recover the same window again to queue the rest (what was queued is not sent twice)",
            tasks.len()
        ),
        cause,
    ))
}

async fn undo(state: &AppState, tasks: Vec<&RecoveredTask>) {
    let owned: Vec<RecoveredTask> = tasks.into_iter().cloned().collect();
    if let Err(e) = state.store.unclaim_recovery(&owned).await {
        tracing::error!(error = %e, "could not undo the claims of unpublished recovery tasks");
    }
}
