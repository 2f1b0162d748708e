//! `ApiError`: every failure the API can answer, as a status and a stable JSON body
//! `{"error": {"code", "message", "field"?}}`.
//!
//! 4xx messages say exactly what is wrong with the request. 5xx bodies say nothing internal;
//! the cause is logged once, here, where the response is built.

use aioka_core::FieldError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// For 5xx: what went wrong inside, for the log only.
    internal: Option<String>,
    /// Seconds for a `Retry-After` header (429).
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            internal: None,
            retry_after: None,
        }
    }

    /// 429: this key spent its request budget; `seconds` until the next request is allowed.
    pub fn rate_limited(seconds: u64) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests for this API key; retry after {seconds} s"),
            )
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn unprocessable(code: &'static str, field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).with_field(field)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// A failure of ours. `cause` goes to the log, never to the client.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self {
            internal: Some(cause.to_string()),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "an internal error occurred; it has been logged",
            )
        }
    }

    /// 503 `code` (`test_event_partly_sent`, `recovery_partly_queued`): a batch reached the
    /// broker in part. `message` says which part and what to do (nothing internal); `cause`
    /// is for the log.
    pub fn partly_sent(code: &'static str, message: String, cause: impl std::fmt::Display) -> Self {
        Self {
            internal: Some(cause.to_string()),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// A dependency (database, broker) is unavailable: the client may retry.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        Self {
            internal: Some(cause.to_string()),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "the service is temporarily unavailable; retry shortly",
            )
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        let status = match e.code {
            "malformed_json" => StatusCode::BAD_REQUEST,
            // An event over aioka_core::event::MAX_EVENT_BYTES once normalised: the same answer
            // as a body over the request limit.
            "payload_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let field = (!e.field.is_empty()).then_some(e.field);
        Self {
            field,
            ..Self::new(status, e.code, e.message)
        }
    }
}

impl From<aioka_store::StoreError> for ApiError {
    fn from(e: aioka_store::StoreError) -> Self {
        match e {
            aioka_store::StoreError::Pool(_) => Self::unavailable(e),
            other => Self::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(cause) = &self.internal {
            tracing::error!(code = self.code, status = self.status.as_u16(), %cause, "request failed");
        }
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
