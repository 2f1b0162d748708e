//! The customer portal at `/portal`: server-rendered pages (askama templates compiled into
//! the binary, one stylesheet and one small script served from it too) over the customer
//! API itself.
//!
//! Every page asks the API what to show and do, in process: each portal request becomes one
//! or more requests to the same router curl reaches, with the key as its `X-API-Key`. The
//! tier, the limits, the ownership checks and the errors are the API's own; the portal adds
//! no second authorization path, only its sign-in, which is an API call too.
//!
//! The key lives only in a session cookie (no expiry: the browser forgets it when it
//! closes; signing out forgets it at once): sealed with `security.secret_key` (AES-256-GCM,
//! bound to its purpose) with the time it was issued, refused after [`SESSION_HOURS`];
//! `HttpOnly`, `SameSite=Strict`, `Path=/portal`, `Secure` unless the page is served on a
//! loopback address. It is never in a URL (sign-in is a POST) and never logged. Every POST
//! also refuses an `Origin` other than the page's own.

mod pages;

use std::time::{SystemTime, UNIX_EPOCH};

use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::state::AppState;
use pages::{
    Confirm, DeliveryView, Detail, Failure, List, Secret, SignIn, WebhookView, event_types,
};

/// The session cookie's name.
pub const COOKIE: &str = "aioka_portal";
/// A session is refused this long after sign-in, whatever the browser keeps.
pub const SESSION_HOURS: u64 = 12;
/// What the sealed cookie is bound to: a sealed webhook secret never opens as a session.
const SEAL_CONTEXT: &[u8] = b"aioka:portal-session:v1";
/// The Content-Security-Policy of every portal answer: nothing from elsewhere, no inline
/// script or style, no framing, forms only to the portal itself.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLESHEET: &str = include_str!("../../assets/portal.css");
const SCRIPT: &str = include_str!("../../assets/portal.js");
const ICON: &str = include_str!("../../assets/icon.svg");

#[derive(Clone)]
struct Portal {
    state: AppState,
    /// The customer API, as curl reaches it.
    api: Router,
}

/// The portal's routes, answering through `api`.
pub fn router(state: AppState, api: Router) -> Router {
    Router::new()
        .route("/portal", get(home))
        .route("/portal/", get(home))
        .route("/portal/assets/portal.css", get(stylesheet))
        .route("/portal/assets/portal.js", get(script))
        .route("/portal/assets/icon.svg", get(icon))
        .route("/portal/sign-in", post(sign_in))
        .route("/portal/sign-out", post(sign_out))
        .route("/portal/webhooks", get(list).post(register))
        .route("/portal/webhooks/{id}", get(detail))
        .route("/portal/webhooks/{id}/active", post(set_active))
        .route("/portal/webhooks/{id}/test", post(send_test))
        .route("/portal/webhooks/{id}/rotate", post(rotate))
        .route("/portal/webhooks/{id}/recover", post(recover))
        .route(
            "/portal/webhooks/{id}/delete",
            get(confirm_delete).post(delete),
        )
        .route(
            "/portal/webhooks/{id}/deliveries/{delivery}/retry",
            post(retry),
        )
        .layer(middleware::from_fn(guard))
        .with_state(Portal { state, api })
}

/// Security headers on every answer; a POST from another origin is refused.
async fn guard(request: Request, next: Next) -> Response {
    if request.method() == Method::POST && !same_origin(request.headers()) {
        return page_error(
            StatusCode::FORBIDDEN,
            "This form was sent from another site, so it was refused. Open the portal and try again.",
        );
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(headers, header::CONTENT_SECURITY_POLICY, CSP);
    set(headers, header::REFERRER_POLICY, "same-origin");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::CACHE_CONTROL, "no-store");
    response
}

/// Whether a POST comes from the portal's own pages: a browser's `Sec-Fetch-Site` says so
/// when it sends one (`same-origin`, or `none` for one the user made); otherwise no
/// `Origin`, or one naming this page's host. (`Referrer-Policy: same-origin` keeps the
/// browser sending a real `Origin`: under `no-referrer` a form's is `null`.)
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|s| s.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
}

async fn icon() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "image/svg+xml")], ICON)
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

// --- the session --------------------------------------------------------------------------

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Portal {
    fn seal(&self, key: &str) -> String {
        let plain = format!("{}:{key}", now_secs());
        URL_SAFE_NO_PAD.encode(
            self.state
                .encryption_key
                .seal(plain.as_bytes(), SEAL_CONTEXT),
        )
    }

    /// The API key of the request's session, if it has a live one.
    fn key(&self, headers: &HeaderMap) -> Option<String> {
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(&format!("{COOKIE}=")))?
            .to_owned();
        let sealed = URL_SAFE_NO_PAD.decode(cookie).ok()?;
        let plain = self.state.encryption_key.open(&sealed, SEAL_CONTEXT).ok()?;
        let plain = String::from_utf8(plain).ok()?;
        let (issued, key) = plain.split_once(':')?;
        let issued: u64 = issued.parse().ok()?;
        (now_secs().saturating_sub(issued) < SESSION_HOURS * 3600).then(|| key.to_owned())
    }

    /// One request to the customer API with the session's key: its status and JSON body.
    async fn call(&self, key: &str, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("x-api-key", key);
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        let Ok(request) = request.body(body) else {
            return Answer::broken();
        };
        let Ok(response) = self.api.clone().oneshot(request).await;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 4 << 20)
            .await
            .unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }
}

/// Whether the page is served on a loopback address (then the cookie cannot be `Secure`:
/// the newcomer's `scripts/up` serves plain HTTP there).
fn on_loopback(headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let name = host
        .strip_prefix('[')
        .and_then(|h| h.split(']').next())
        .unwrap_or_else(|| host.split(':').next().unwrap_or(""));
    matches!(name, "localhost" | "127.0.0.1" | "::1")
}

fn cookie(value: &str, headers: &HeaderMap, clear: bool) -> HeaderValue {
    let secure = if on_loopback(headers) { "" } else { "; Secure" };
    let expiry = if clear { "; Max-Age=0" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/portal; HttpOnly; SameSite=Strict{secure}{expiry}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("aioka_portal=; Max-Age=0"))
}

/// The API's answer to one call.
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    fn broken() -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: Value::Null,
        }
    }

    fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The API's error in words, as the page shows it.
    fn message(&self) -> String {
        let error = &self.body["error"];
        match (error["message"].as_str(), error["field"].as_str()) {
            (Some(message), Some(field)) => format!("{message} (field: {field})"),
            (Some(message), None) => message.to_owned(),
            _ => format!(
                "The API answered {} with no explanation; try again shortly.",
                self.status
            ),
        }
    }

    /// The page of a failed call: the API's status and its words.
    fn failure(&self) -> Response {
        if self.status == StatusCode::UNAUTHORIZED {
            return Redirect::to("/portal?signed_out=1").into_response();
        }
        page_error(self.status, &self.message())
    }
}

fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a portal page did not render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be shown",
            )
                .into_response()
        }
    }
}

fn page_error(status: StatusCode, message: &str) -> Response {
    render(
        status,
        &Failure {
            status: status.as_u16(),
            message: message.to_owned(),
        },
    )
}

/// Runs `then` with the session's key, or sends the browser to sign in.
macro_rules! signed_in {
    ($portal:expr, $headers:expr) => {
        match $portal.key(&$headers) {
            Some(key) => key,
            None => return Redirect::to("/portal?signed_out=1").into_response(),
        }
    };
}

/// A path segment the portal puts into an API path: ids are letters, digits and `_`.
fn segment(text: &str) -> Option<&str> {
    (!text.is_empty()
        && text.len() <= 64
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    .then_some(text)
}

// --- pages --------------------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct HomeQuery {
    signed_out: Option<String>,
}

async fn home(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Query(q): Query<HomeQuery>,
) -> Response {
    if portal.key(&headers).is_some() {
        return Redirect::to("/portal/webhooks").into_response();
    }
    let notice = q
        .signed_out
        .map(|_| "You are signed out. Sign in with your API key to go on.".to_owned());
    render(
        StatusCode::OK,
        &SignIn {
            error: None,
            notice,
        },
    )
}

async fn sign_in(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let key = field(&form, "api_key").trim().to_owned();
    if key.is_empty() {
        return render(
            StatusCode::UNPROCESSABLE_ENTITY,
            &SignIn {
                error: Some("Enter your API key (it starts with aioka_live_).".into()),
                notice: None,
            },
        );
    }
    let answer = portal.call(&key, Method::GET, "/v1/webhooks", None).await;
    if !answer.ok() {
        return render(
            answer.status,
            &SignIn {
                error: Some(answer.message()),
                notice: None,
            },
        );
    }
    let mut response = Redirect::to("/portal/webhooks").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&portal.seal(&key), &headers, false),
    );
    response
}

async fn sign_out(headers: HeaderMap) -> Response {
    let mut response = Redirect::to("/portal?signed_out=1").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie("", &headers, true));
    response
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> &'a str {
    form.iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

#[derive(serde::Deserialize)]
struct Notice {
    notice: Option<String>,
}

/// The fixed words of a notice a redirect names (never text from the URL itself).
fn notice_text(code: Option<&str>) -> Option<String> {
    Some(
        match code? {
            "test_sent" => "A test event is on its way; it appears in the log below in a moment.",
            "enabled" => "The webhook is enabled: new events are delivered to it again.",
            "disabled" => {
                "The webhook is disabled: nothing is delivered to it until you enable it."
            }
            "resent" => "The delivery is queued to be sent again.",
            "deleted" => "The webhook is deleted.",
            _ => return None,
        }
        .to_owned(),
    )
}

async fn list(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Query(q): Query<Notice>,
) -> Response {
    let key = signed_in!(portal, headers);
    list_page(
        &portal,
        &key,
        StatusCode::OK,
        None,
        notice_text(q.notice.as_deref()),
    )
    .await
}

async fn list_page(
    portal: &Portal,
    key: &str,
    status: StatusCode,
    error: Option<String>,
    notice: Option<String>,
) -> Response {
    let answer = portal.call(key, Method::GET, "/v1/webhooks", None).await;
    if !answer.ok() {
        return answer.failure();
    }
    let mut webhooks: Vec<WebhookView> = answer.body["data"]
        .as_array()
        .map(|a| a.iter().map(WebhookView::from_json).collect())
        .unwrap_or_default();
    // Each one's newest delivery, as its log shows it (one call each: a key's webhooks are
    // a handful, its tier's limit at most).
    for webhook in &mut webhooks {
        let last = portal
            .call(
                key,
                Method::GET,
                &format!("/v1/webhooks/{}/deliveries?limit=1", webhook.id),
                None,
            )
            .await;
        if let Some(d) = last.body["data"].get(0) {
            webhook.last_delivery = format!(
                "{} · {}",
                d["status"].as_str().unwrap_or(""),
                d["updated_at"].as_str().unwrap_or("")
            );
        }
    }
    render(
        status,
        &List {
            webhooks,
            event_types: event_types(),
            error,
            notice,
        },
    )
}

async fn register(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let key = signed_in!(portal, headers);
    let events: Vec<&str> = form
        .iter()
        .filter(|(k, _)| k == "events")
        .map(|(_, v)| v.as_str())
        .collect();
    let mut body = json!({ "url": field(&form, "url").trim(), "events": events });
    if field(&form, "ordering") == "fifo" {
        body["ordering"] = json!("fifo");
    }
    let answer = portal
        .call(&key, Method::POST, "/v1/webhooks", Some(body))
        .await;
    if !answer.ok() {
        if answer.status == StatusCode::UNAUTHORIZED {
            return answer.failure();
        }
        return list_page(&portal, &key, answer.status, Some(answer.message()), None).await;
    }
    render(
        StatusCode::CREATED,
        &Secret {
            webhook: WebhookView::from_json(&answer.body),
            secret: answer.body["secret"].as_str().unwrap_or("").to_owned(),
            rotated: false,
            previous_expires_at: None,
        },
    )
}

#[derive(serde::Deserialize)]
struct LogQuery {
    notice: Option<String>,
    status: Option<String>,
    event: Option<String>,
}

async fn detail(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let key = signed_in!(portal, headers);
    let Some(id) = segment(&id) else {
        return page_error(StatusCode::NOT_FOUND, "There is no such webhook.");
    };
    let notice = notice_text(q.notice.as_deref());
    detail_page(&portal, &key, id, &q, StatusCode::OK, None, notice).await
}

async fn detail_page(
    portal: &Portal,
    key: &str,
    id: &str,
    q: &LogQuery,
    status: StatusCode,
    error: Option<String>,
    notice: Option<String>,
) -> Response {
    let webhook = portal
        .call(key, Method::GET, &format!("/v1/webhooks/{id}"), None)
        .await;
    if !webhook.ok() {
        return webhook.failure();
    }
    // The filters go to the API as they are: its 400 names a bad one.
    let mut query = Vec::new();
    for (name, value) in [("status", &q.status), ("event", &q.event)] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            query.push(format!("{name}={}", url_escape(value)));
        }
    }
    let path = if query.is_empty() {
        format!("/v1/webhooks/{id}/deliveries")
    } else {
        format!("/v1/webhooks/{id}/deliveries?{}", query.join("&"))
    };
    let log = portal.call(key, Method::GET, &path, None).await;
    let (deliveries, log_error) = if log.ok() {
        let rows = log.body["data"]
            .as_array()
            .map(|a| a.iter().map(DeliveryView::from_json).collect())
            .unwrap_or_default();
        (rows, None)
    } else {
        (Vec::new(), Some(log.message()))
    };
    render(
        status,
        &Detail {
            webhook: WebhookView::from_json(&webhook.body),
            deliveries,
            error: error.or(log_error),
            notice,
            status_filter: q.status.clone().unwrap_or_default(),
            event_filter: q.event.clone().unwrap_or_default(),
            statuses: pages::choices(&pages::STATUSES, q.status.as_deref().unwrap_or("")),
            events: pages::choices(&event_types(), q.event.as_deref().unwrap_or("")),
        },
    )
}

/// Percent-encodes a query value (the filters' values are short words).
fn url_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// After an action on webhook `id`: back to its page with `notice`, or its page with the
/// API's error.
async fn after(portal: &Portal, key: &str, id: &str, answer: Answer, notice: &str) -> Response {
    if answer.ok() {
        return Redirect::to(&format!("/portal/webhooks/{id}?notice={notice}")).into_response();
    }
    if answer.status == StatusCode::UNAUTHORIZED {
        return answer.failure();
    }
    let q = LogQuery {
        notice: None,
        status: None,
        event: None,
    };
    detail_page(
        portal,
        key,
        id,
        &q,
        answer.status,
        Some(answer.message()),
        None,
    )
    .await
}

async fn set_active(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let key = signed_in!(portal, headers);
    let Some(id) = segment(&id) else {
        return page_error(StatusCode::NOT_FOUND, "There is no such webhook.");
    };
    let active = field(&form, "is_active") == "true";
    let answer = portal
        .call(
            &key,
            Method::PATCH,
            &format!("/v1/webhooks/{id}"),
            Some(json!({ "is_active": active })),
        )
        .await;
    let notice = if active { "enabled" } else { "disabled" };
    after(&portal, &key, id, answer, notice).await
}

async fn send_test(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let key = signed_in!(portal, headers);
    let Some(id) = segment(&id) else {
        return page_error(StatusCode::NOT_FOUND, "There is no such webhook.");
    };
    let answer = portal
        .call(
            &key,
            Method::POST,
            "/v1/webhooks/test",
            Some(json!({ "webhook_id": id })),
        )
        .await;
    after(&portal, &key, id, answer, "test_sent").await
}

async fn retry(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Path((id, delivery)): Path<(String, String)>,
) -> Response {
    let key = signed_in!(portal, headers);
    let (Some(id), Some(delivery)) = (segment(&id), segment(&delivery)) else {
        return page_error(StatusCode::NOT_FOUND, "There is no such delivery.");
    };
    let answer = portal
        .call(
            &key,
            Method::POST,
            &format!("/v1/webhooks/{id}/deliveries/{delivery}/retry"),
            None,
        )
        .await;
    after(&portal, &key, id, answer, "resent").await
}

async fn rotate(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let key = signed_in!(portal, headers);
    let Some(id) = segment(&id) else {
        return page_error(StatusCode::NOT_FOUND, "There is no such webhook.");
    };
    let answer = portal
        .call(
            &key,
            Method::POST,
            &format!("/v1/webhooks/{id}/secret/rotate"),
            None,
        )
        .await;
    if !answer.ok() {
        return after(&portal, &key, id, answer, "").await;
    }
    let webhook = portal
        .call(&key, Method::GET, &format!("/v1/webhooks/{id}"), None)
        .await;
    render(
        StatusCode::OK,
        &Secret {
            webhook: WebhookView::from_json(&webhook.body),
            secret: answer.body["secret"].as_str().unwrap_or("").to_owned(),
            rotated: true,
            previous_expires_at: answer.body["previous_secret_expires_at"]
                .as_str()
                .map(str::to_owned),
        },
    )
}

async fn recover(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let key = signed_in!(portal, headers);
    let Some(id) = segment(&id) else {
        return page_error(StatusCode::NOT_FOUND, "There is no such webhook.");
    };
    let mut body = json!({ "since": pages::to_rfc3339(field(&form, "since")) });
    let until = field(&form, "until");
    if !until.is_empty() {
        body["until"] = json!(pages::to_rfc3339(until));
    }
    let answer = portal
        .call(
            &key,
            Method::POST,
            &format!("/v1/webhooks/{id}/recover"),
            Some(body),
        )
        .await;
    if !answer.ok() {
        return after(&portal, &key, id, answer, "").await;
    }
    let b = &answer.body;
    let words = format!(
        "Recovery queued {} deliveries again ({} failed, {} skipped, {} never sent).{}",
        b["queued"],
        b["failed"],
        b["skipped"],
        b["never_sent"],
        match b["next_since"].as_str() {
            Some(next) => format!(" More remain: recover again from {next}."),
            None => String::new(),
        }
    );
    let q = LogQuery {
        notice: None,
        status: None,
        event: None,
    };
    detail_page(&portal, &key, id, &q, StatusCode::OK, None, Some(words)).await
}

async fn confirm_delete(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let key = signed_in!(portal, headers);
    let Some(id) = segment(&id) else {
        return page_error(StatusCode::NOT_FOUND, "There is no such webhook.");
    };
    let webhook = portal
        .call(&key, Method::GET, &format!("/v1/webhooks/{id}"), None)
        .await;
    if !webhook.ok() {
        return webhook.failure();
    }
    render(
        StatusCode::OK,
        &Confirm {
            webhook: WebhookView::from_json(&webhook.body),
        },
    )
}

async fn delete(
    State(portal): State<Portal>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let key = signed_in!(portal, headers);
    let Some(id) = segment(&id) else {
        return page_error(StatusCode::NOT_FOUND, "There is no such webhook.");
    };
    let answer = portal
        .call(&key, Method::DELETE, &format!("/v1/webhooks/{id}"), None)
        .await;
    if !answer.ok() {
        return answer.failure();
    }
    Redirect::to("/portal/webhooks?notice=deleted").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_post_from_another_origin_is_refused_and_one_from_the_page_is_not() {
        assert!(same_origin(&headers(&[("host", "portal.test")])));
        assert!(same_origin(&headers(&[
            ("host", "portal.test"),
            ("origin", "https://portal.test")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "portal.test"),
            ("origin", "https://evil.test")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "portal.test"),
            ("origin", "null")
        ])));
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[
            ("host", "portal.test"),
            ("origin", "https://portal.test"),
            ("sec-fetch-site", "cross-site")
        ])));
    }

    #[test]
    fn the_cookie_is_secure_except_on_a_loopback_address() {
        for host in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080"] {
            let h = {
                let mut h = HeaderMap::new();
                h.insert("host", HeaderValue::from_str(host).unwrap());
                h
            };
            assert!(!cookie("v", &h, false).to_str().unwrap().contains("Secure"));
        }
        let c = cookie("v", &headers(&[("host", "hooks.example.com")]), false);
        let c = c.to_str().unwrap();
        assert!(c.contains("; Secure") && c.contains("HttpOnly") && c.contains("SameSite=Strict"));
    }
}
