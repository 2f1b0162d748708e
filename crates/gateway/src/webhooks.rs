//! The customer webhook API: register, list, read, change, delete, rotate the secret.

use std::net::IpAddr;

use aioka_core::event::EventType;
use aioka_core::url_policy::{HostToResolve, WebhookUrl, check_resolved};
use aioka_core::{DeliveryOrder, FieldError, WebhookId, WebhookSecret};
use aioka_store::{NewWebhook, WebhookPatch, WebhookRecord, WebhookWriteError};
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::extract::{Customer, IdPath, JsonBody, OptionalJsonBody};
use crate::state::AppState;

pub(crate) fn api_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A webhook as the API shows it. The secret is added by registration only.
pub(crate) fn webhook_json(w: &WebhookRecord) -> Value {
    json!({
        "id": w.id,
        "url": w.url,
        "events": w.events,
        "ordering": w.ordering,
        "is_active": w.is_active,
        "consecutive_failures": w.consecutive_failures,
        "disabled_reason": w.disabled_reason,
        "disabled_at": w.disabled_at.map(api_time),
        "created_at": api_time(w.created_at),
        "updated_at": api_time(w.updated_at),
    })
}

pub(crate) fn reject_unknown_fields(
    object: &Map<String, Value>,
    known: &[&str],
) -> Result<(), ApiError> {
    if let Some(key) = object.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::unprocessable(
            "unknown_field",
            key,
            format!("unknown field '{key}'; expected {}", known.join(", ")),
        ));
    }
    Ok(())
}

pub(crate) fn body_object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "the body must be a JSON object",
        )
    })
}

/// `events`: a non-empty list of known event types; repeats are folded, order is kept.
pub(crate) fn parse_events(value: Option<&Value>) -> Result<Vec<EventType>, ApiError> {
    let items = value
        .ok_or_else(|| FieldError::missing("events"))?
        .as_array()
        .ok_or_else(|| FieldError::invalid("events", "events must be an array of event types"))?;
    if items.is_empty() {
        return Err(FieldError::invalid(
            "events",
            format!("events must list at least one of {}", EventType::names()),
        )
        .into());
    }
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = format!("events[{i}]");
        let text = item
            .as_str()
            .ok_or_else(|| FieldError::invalid(&field, "each event type must be a string"))?;
        let event: EventType = text.parse().map_err(|_| {
            FieldError::new(
                "unknown_event_type",
                &field,
                format!(
                    "unknown event type '{text}'; expected one of {}",
                    EventType::names()
                ),
            )
        })?;
        if !events.contains(&event) {
            events.push(event);
        }
    }
    Ok(events)
}

/// `url`: https, well-formed, and (unless private targets are allowed) not pointing at a
/// private address, directly or through DNS. A cloud metadata service is refused whatever
/// the setting (by address or well-known name here; a name that resolves to one is refused
/// by the delivery service's resolver at connect time).
pub(crate) async fn parse_url(state: &AppState, value: Option<&Value>) -> Result<String, ApiError> {
    let text = value
        .ok_or_else(|| FieldError::missing("url"))?
        .as_str()
        .ok_or_else(|| FieldError::invalid("url", "url must be a string"))?;
    let url = WebhookUrl::parse(text, state.allow_private_targets)
        .map_err(|e| ApiError::unprocessable(e.code(), "url", e.to_string()))?;
    if !state.allow_private_targets
        && let HostToResolve::Name(name) = url.host()
    {
        let addrs = resolve(state, &name, url.port()).await?;
        check_resolved(&addrs)
            .map_err(|e| ApiError::unprocessable(e.code(), "url", e.to_string()))?;
    }
    Ok(url.into_string())
}

async fn resolve(state: &AppState, host: &str, port: u16) -> Result<Vec<IpAddr>, ApiError> {
    let unresolvable = || {
        ApiError::unprocessable(
            "unresolvable_host",
            "url",
            format!("url's host '{host}' does not resolve to any address"),
        )
    };
    let lookup = tokio::net::lookup_host((host, port));
    let addrs = tokio::time::timeout(state.settings.dns_timeout, lookup)
        .await
        .map_err(|_| unresolvable())?
        .map_err(|_| unresolvable())?
        .map(|a| a.ip())
        .collect::<Vec<_>>();
    if addrs.is_empty() {
        return Err(unresolvable());
    }
    Ok(addrs)
}

/// `POST /v1/webhooks`
#[tracing::instrument(skip_all, fields(key_id = %customer.0.id))]
pub async fn register(
    State(state): State<AppState>,
    customer: Customer,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    customer.require_webhooks()?;
    let object = body_object(&body)?;
    reject_unknown_fields(object, &["url", "events", "ordering"])?;
    let url = parse_url(&state, object.get("url")).await?;
    let events = parse_events(object.get("events"))?;
    let ordering = parse_ordering(object.get("ordering"))?.unwrap_or_default();
    let secret = WebhookSecret::generate();
    let new = NewWebhook {
        id: WebhookId::new(),
        owner: customer.0.id,
        url: &url,
        events: &events,
        secret: &secret,
        ordering,
    };
    let record = state
        .store
        .insert_webhook(
            &new,
            &state.encryption_key,
            state.settings.max_webhooks_per_key,
        )
        .await
        .map_err(|e| match e {
            WebhookWriteError::LimitReached(max) => ApiError::new(
                StatusCode::CONFLICT,
                "webhook_limit_reached",
                format!("an API key may have at most {max} webhooks; delete one first"),
            ),
            WebhookWriteError::Store(e) => e.into(),
        })?;
    tracing::info!(webhook_id = %record.id, "webhook registered");
    let mut body = webhook_json(&record);
    // The one and only time the secret leaves the service.
    body["secret"] = json!(secret.expose());
    let location = format!("/v1/webhooks/{}", record.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

/// `GET /v1/webhooks`
#[tracing::instrument(skip_all, fields(key_id = %customer.0.id))]
pub async fn list(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<Value>, ApiError> {
    let webhooks = state.store.list_webhooks(customer.0.id).await?;
    Ok(Json(
        json!({ "data": webhooks.iter().map(webhook_json).collect::<Vec<_>>() }),
    ))
}

/// `GET /v1/webhooks/{id}`
#[tracing::instrument(skip_all, fields(key_id = %customer.0.id, webhook_id = %id))]
pub async fn get(
    State(state): State<AppState>,
    customer: Customer,
    IdPath(id): IdPath<WebhookId>,
) -> Result<Json<Value>, ApiError> {
    let webhook = state
        .store
        .get_webhook(customer.0.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    Ok(Json(webhook_json(&webhook)))
}

/// `DELETE /v1/webhooks/{id}`
#[tracing::instrument(skip_all, fields(key_id = %customer.0.id, webhook_id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    customer: Customer,
    IdPath(id): IdPath<WebhookId>,
) -> Result<StatusCode, ApiError> {
    if state.store.delete_webhook(customer.0.id, id).await? {
        tracing::info!("webhook deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("webhook"))
    }
}

/// `ordering`, if given: `unordered` or `fifo`.
fn parse_ordering(value: Option<&Value>) -> Result<Option<DeliveryOrder>, ApiError> {
    value
        .map(|v| {
            v.as_str()
                .and_then(DeliveryOrder::from_name)
                .ok_or_else(|| {
                    FieldError::invalid("ordering", "ordering must be \"unordered\" or \"fifo\"")
                        .into()
                })
        })
        .transpose()
}

/// `PATCH /v1/webhooks/{id}` `{"url"?, "events"?, "is_active"?, "ordering"?}`: re-enabling
/// resets the failure count and clears the disable reason.
#[tracing::instrument(skip_all, fields(key_id = %customer.0.id, webhook_id = %id))]
pub async fn update(
    State(state): State<AppState>,
    customer: Customer,
    IdPath(id): IdPath<WebhookId>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    customer.require_webhooks()?;
    let object = body_object(&body)?;
    reject_unknown_fields(object, &["url", "events", "is_active", "ordering"])?;
    if object.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_patch",
            "send at least one of url, events, is_active, ordering",
        ));
    }
    let ordering = parse_ordering(object.get("ordering"))?;
    let url = match object.get("url") {
        Some(_) => Some(parse_url(&state, object.get("url")).await?),
        None => None,
    };
    let events = match object.get("events") {
        Some(_) => Some(parse_events(object.get("events"))?),
        None => None,
    };
    let is_active = match object.get("is_active") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(FieldError::invalid("is_active", "is_active must be true or false").into());
        }
    };
    let patch = WebhookPatch {
        url: url.as_deref(),
        events: events.as_deref(),
        is_active,
        ordering,
    };
    let webhook = state
        .store
        .update_webhook(customer.0.id, id, &patch)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    tracing::info!(?is_active, url_changed = url.is_some(), "webhook updated");
    Ok(Json(webhook_json(&webhook)))
}

/// How long a rotated-out secret is still used by default, and at most (seconds).
const DEFAULT_OVERLAP_SECS: u64 = 24 * 60 * 60;
const MAX_OVERLAP_SECS: u64 = 7 * 24 * 60 * 60;

/// `POST /v1/webhooks/{id}/secret/rotate` `{"expire_old_in"?: seconds}`: a new secret, shown
/// in this response only; the old one signs too until `previous_secret_expires_at`.
#[tracing::instrument(skip_all, fields(key_id = %customer.0.id, webhook_id = %id))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    customer: Customer,
    IdPath(id): IdPath<WebhookId>,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<Response, ApiError> {
    customer.require_webhooks()?;
    let object = body_object(&body)?;
    reject_unknown_fields(object, &["expire_old_in"])?;
    let overlap = match object.get("expire_old_in") {
        None | Some(Value::Null) => DEFAULT_OVERLAP_SECS,
        // A whole number written as 5.0 is an integer to JSON Schema, so it is taken too.
        Some(value) => value
            .as_u64()
            .or_else(|| {
                value
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && (0.0..=MAX_OVERLAP_SECS as f64).contains(f))
                    .map(|f| f as u64)
            })
            .filter(|n| *n <= MAX_OVERLAP_SECS)
            .ok_or_else(|| {
                FieldError::invalid(
                    "expire_old_in",
                    format!(
                        "expire_old_in must be a whole number of seconds from 0 to {MAX_OVERLAP_SECS} (7 days)"
                    ),
                )
            })?,
    };
    let secret = WebhookSecret::generate();
    let expires = state
        .store
        .rotate_secret(
            customer.0.id,
            id,
            &secret,
            &state.encryption_key,
            std::time::Duration::from_secs(overlap),
        )
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    tracing::info!(overlap_seconds = overlap, "webhook secret rotated");
    // The second and last place a secret leaves the service: the one it just made.
    let body = json!({
        "secret": secret.expose(),
        "previous_secret_expires_at": expires.map(api_time),
    });
    Ok((
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response())
}
