//! The portal's pages: askama templates (`templates/portal/`, compiled into the binary and
//! escaped as HTML) and the views they show, read from the API's JSON.

use askama::Template;
use serde_json::Value;

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("").to_owned()
}

/// A webhook as the pages show it.
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub events: String,
    pub ordering: String,
    pub active: bool,
    pub disabled_reason: String,
    pub consecutive_failures: i64,
    pub created_at: String,
    /// The newest delivery's status and time, when the list has looked it up.
    pub last_delivery: String,
}

impl WebhookView {
    pub fn from_json(w: &Value) -> Self {
        Self {
            id: text(&w["id"]),
            url: text(&w["url"]),
            events: w["events"]
                .as_array()
                .map(|e| e.iter().map(text).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            ordering: text(&w["ordering"]),
            active: w["is_active"].as_bool().unwrap_or(false),
            disabled_reason: text(&w["disabled_reason"]),
            consecutive_failures: w["consecutive_failures"].as_i64().unwrap_or(0),
            created_at: text(&w["created_at"]),
            last_delivery: String::new(),
        }
    }
}

/// One attempt of a delivery.
pub struct AttemptView {
    pub attempt: i64,
    pub at: String,
    /// The HTTP status, or the error's kind when there was no answer.
    pub outcome: String,
    pub latency_ms: String,
    pub response: String,
    pub next_retry_at: String,
}

/// A delivery of the log with its attempts.
pub struct DeliveryView {
    pub id: String,
    pub event: String,
    pub event_id: String,
    pub test: bool,
    pub status: String,
    pub attempt_count: i64,
    pub next_attempt_at: String,
    pub skip_reason: String,
    pub created_at: String,
    pub attempts: Vec<AttemptView>,
}

impl DeliveryView {
    pub fn from_json(d: &Value) -> Self {
        let attempts = d["attempts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|a| AttemptView {
                        attempt: a["attempt"].as_i64().unwrap_or(0),
                        at: text(&a["attempted_at"]),
                        outcome: match (a["status_code"].as_i64(), a["error"].as_str()) {
                            (Some(code), _) => format!("HTTP {code}"),
                            (None, Some(kind)) => kind.to_owned(),
                            (None, None) => "no answer".to_owned(),
                        },
                        latency_ms: a["latency_ms"]
                            .as_i64()
                            .map(|ms| format!("{ms} ms"))
                            .unwrap_or_default(),
                        response: text(&a["response"]),
                        next_retry_at: text(&a["next_retry_at"]),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            id: text(&d["id"]),
            event: text(&d["event"]),
            event_id: text(&d["event_id"]),
            test: d["test"].as_bool().unwrap_or(false),
            status: text(&d["status"]),
            attempt_count: d["attempt_count"].as_i64().unwrap_or(0),
            next_attempt_at: text(&d["next_attempt_at"]),
            skip_reason: text(&d["skip_reason"]),
            created_at: text(&d["created_at"]),
            attempts,
        }
    }
}

/// The event types a webhook may subscribe to, in the catalog's order.
pub fn event_types() -> Vec<&'static str> {
    aioka_core::event::EventType::ALL
        .iter()
        .map(|e| e.as_str())
        .collect()
}

/// A `datetime-local` field's value (`2026-12-03T14:05`, the browser's local time given as
/// UTC by the page's label) as RFC 3339; anything else goes to the API as typed, and its 422
/// names the field.
pub fn to_rfc3339(value: &str) -> String {
    let value = value.trim();
    let minutes = value.len() == 16 && value.as_bytes().get(10) == Some(&b'T');
    let seconds = value.len() == 19 && value.as_bytes().get(10) == Some(&b'T');
    if minutes {
        format!("{value}:00Z")
    } else if seconds {
        format!("{value}Z")
    } else {
        value.to_owned()
    }
}

#[derive(Template)]
#[template(path = "portal/sign_in.html")]
pub struct SignIn {
    pub error: Option<String>,
    pub notice: Option<String>,
}

#[derive(Template)]
#[template(path = "portal/list.html")]
pub struct List {
    pub webhooks: Vec<WebhookView>,
    pub event_types: Vec<&'static str>,
    pub error: Option<String>,
    pub notice: Option<String>,
}

#[derive(Template)]
#[template(path = "portal/secret.html")]
pub struct Secret {
    pub webhook: WebhookView,
    pub secret: String,
    pub rotated: bool,
    pub previous_expires_at: Option<String>,
}

#[derive(Template)]
#[template(path = "portal/detail.html")]
pub struct Detail {
    pub webhook: WebhookView,
    pub deliveries: Vec<DeliveryView>,
    pub error: Option<String>,
    pub notice: Option<String>,
    pub status_filter: String,
    pub event_filter: String,
    /// Each status and event type the log filters on, and whether it is the one chosen.
    pub statuses: Vec<(&'static str, bool)>,
    pub events: Vec<(&'static str, bool)>,
}

/// The delivery statuses the log filters on.
pub const STATUSES: [&str; 4] = ["pending", "succeeded", "failed", "skipped"];

/// `options` with the one equal to `chosen` marked.
pub fn choices(options: &[&'static str], chosen: &str) -> Vec<(&'static str, bool)> {
    options.iter().map(|o| (*o, *o == chosen)).collect()
}

#[derive(Template)]
#[template(path = "portal/confirm.html")]
pub struct Confirm {
    pub webhook: WebhookView,
}

#[derive(Template)]
#[template(path = "portal/failure.html")]
pub struct Failure {
    pub status: u16,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_date_time_field_becomes_rfc_3339_and_anything_else_is_left_for_the_api() {
        assert_eq!(to_rfc3339("2026-12-03T14:05"), "2026-12-03T14:05:00Z");
        assert_eq!(to_rfc3339("2026-12-03T14:05:09"), "2026-12-03T14:05:09Z");
        assert_eq!(to_rfc3339("yesterday"), "yesterday");
    }

    #[test]
    fn what_a_page_shows_is_escaped() {
        let page = Failure {
            status: 422,
            message: "<script>alert(1)</script>".into(),
        };
        let html = page.render().unwrap();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(
            html.contains("&lt;script&gt;") || html.contains("&#60;script&#62;"),
            "{html}"
        );
    }
}
