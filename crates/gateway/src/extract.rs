//! Request extractors that answer bad input with our JSON errors instead of axum's plain text:
//! a JSON body (size limit 413, wrong media type 415, malformed JSON 400), a prefixed id in
//! the path (400 naming the expected form), and the API key (401/403).

use std::str::FromStr;

use aioka_core::ApiKey;
use aioka_core::ids::IdParseError;
use aioka_core::tier::Tier;
use aioka_store::KeyRecord;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON request body, parsed to a value; handlers validate its fields themselves so every
/// error can name the field.
#[derive(Debug)]
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        read_json(req, state, false).await.map(JsonBody)
    }
}

/// Like [`JsonBody`], but an empty body (with or without a Content-Type) reads as `{}`.
#[derive(Debug)]
pub struct OptionalJsonBody(pub Value);

impl FromRequest<AppState> for OptionalJsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        read_json(req, state, true).await.map(OptionalJsonBody)
    }
}

async fn read_json(
    req: Request,
    state: &AppState,
    empty_is_object: bool,
) -> Result<Value, ApiError> {
    let empty = || Value::Object(serde_json::Map::new());
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let is_json = essence.eq_ignore_ascii_case("application/json")
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    let declared_empty = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0");
    if empty_is_object && declared_empty {
        return Ok(empty());
    }
    // A body-less request with no Content-Type is fine where the body is optional.
    let untyped_allowed = empty_is_object && content_type.is_empty();
    if !(is_json || untyped_allowed) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON sent with Content-Type: application/json",
        ));
    }
    let limit = state.settings.max_body_bytes;
    let body = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the body must be at most {limit} bytes"),
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    "the request body could not be read",
                )
            }
        })?
        .to_bytes();
    if body.is_empty() {
        if empty_is_object {
            return Ok(empty());
        }
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// A prefixed id from the path (`/v1/webhooks/{id}`), refused with 400 if malformed.
#[derive(Debug)]
pub struct IdPath<T>(pub T);

impl<T> FromRequestParts<AppState> for IdPath<T>
where
    T: FromStr<Err = IdParseError> + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", e.to_string()))?;
        text.parse().map(IdPath).map_err(|e: IdParseError| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", format!("id: {e}"))
                .with_field("id")
        })
    }
}

const API_KEY_HEADER: &str = "x-api-key";

async fn authenticate(parts: &Parts, state: &AppState) -> Result<KeyRecord, ApiError> {
    let unauthorized =
        |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    let header = parts
        .headers
        .get(API_KEY_HEADER)
        .ok_or_else(|| unauthorized("the X-API-Key header is required"))?;
    let text = header
        .to_str()
        .ok()
        .filter(|t| !t.trim().is_empty() && t.len() <= 256)
        .ok_or_else(|| unauthorized("the API key is invalid or revoked"))?;
    let key = state
        .store
        .find_active_key(&ApiKey::from_header(text))
        .await?
        .ok_or_else(|| unauthorized("the API key is invalid or revoked"))?;
    if let Some(limiter) = &state.rate_limiter
        && let Err(not_until) = limiter.check_key(&key.id)
    {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        metrics::counter!("aioka_gateway_rate_limited_total").increment(1);
        return Err(ApiError::rate_limited(wait.as_secs().max(1)));
    }
    Ok(key)
}

/// A request authenticated with a customer key.
#[derive(Debug)]
pub struct Customer(pub KeyRecord);

impl Customer {
    pub fn tier(&self) -> Tier {
        self.0.tier.unwrap_or(Tier::Free)
    }

    /// Webhooks are "available to Basic tier and above".
    pub fn require_webhooks(&self) -> Result<(), ApiError> {
        if self.tier().allows_webhooks() {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "tier_required",
                "webhooks are available to Basic tier and above; this key is on the Free tier",
            ))
        }
    }
}

impl FromRequestParts<AppState> for Customer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate_as(
            parts,
            state,
            aioka_core::KeyKind::Customer,
            "producer keys publish events; manage webhooks with a customer key",
        )
        .await
        .map(Customer)
    }
}

/// A request authenticated with any valid key: customer (any tier) or producer.
#[derive(Debug)]
pub struct AnyKey(pub KeyRecord);

impl FromRequestParts<AppState> for AnyKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, state).await.map(AnyKey)
    }
}

/// Two ids from the path, e.g. `/v1/webhooks/{id}/deliveries/{delivery_id}`.
#[derive(Debug)]
pub struct IdPath2<A, B>(pub A, pub B);

impl<A, B> FromRequestParts<AppState> for IdPath2<A, B>
where
    A: FromStr<Err = IdParseError> + Send,
    B: FromStr<Err = IdParseError> + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Path((a, b)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", e.to_string()))?;
        let parse_error = |field: &str, e: IdParseError| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_id",
                format!("{field}: {e}"),
            )
            .with_field(field)
        };
        Ok(IdPath2(
            a.parse().map_err(|e| parse_error("id", e))?,
            b.parse().map_err(|e| parse_error("delivery_id", e))?,
        ))
    }
}

/// A request authenticated with a producer key.
#[derive(Debug)]
pub struct Producer(pub KeyRecord);

impl FromRequestParts<AppState> for Producer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate_as(
            parts,
            state,
            aioka_core::KeyKind::Producer,
            "only producer keys may publish events",
        )
        .await
        .map(Producer)
    }
}

/// [`authenticate`], then 403 `wrong_key_kind` with `refusal` unless the key is of `kind`.
async fn authenticate_as(
    parts: &mut Parts,
    state: &AppState,
    kind: aioka_core::KeyKind,
    refusal: &'static str,
) -> Result<KeyRecord, ApiError> {
    let key = authenticate(parts, state).await?;
    if key.kind != kind {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_key_kind",
            refusal,
        ));
    }
    Ok(key)
}
