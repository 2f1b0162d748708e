//! The router: every route the gateway serves, declared once in a table that the OpenAPI
//! agreement test reads, plus JSON answers for unknown routes, wrong methods, panics and
//! timeouts.

use std::time::{Duration, Instant};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::state::AppState;
use crate::{catalog, deliveries, events, recovery, webhooks};

/// One route the gateway serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
}

struct Routes {
    router: Router<AppState>,
    table: Vec<RouteSpec>,
}

impl Routes {
    /// Serves `handler` at `path`. `methods` must list the methods `handler` answers: the
    /// OpenAPI test probes each listed method and the unlisted ones, so a mismatch fails it.
    fn add(
        mut self,
        path: &'static str,
        methods: &[Method],
        handler: MethodRouter<AppState>,
    ) -> Self {
        for method in methods {
            self.table.push(RouteSpec {
                method: method.clone(),
                path,
            });
        }
        self.router = self.router.route(path, handler);
        self
    }
}

fn routes() -> Routes {
    let routes = Routes {
        router: Router::new(),
        table: Vec::new(),
    };
    routes
        .add(
            "/v1/webhooks",
            &[Method::POST, Method::GET],
            post(webhooks::register).get(webhooks::list),
        )
        .add(
            "/v1/webhooks/{id}",
            &[Method::GET, Method::PATCH, Method::DELETE],
            get(webhooks::get)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .add(
            "/v1/webhooks/{id}/secret/rotate",
            &[Method::POST],
            post(webhooks::rotate_secret),
        )
        .add(
            "/v1/webhooks/{id}/recover",
            &[Method::POST],
            post(recovery::recover),
        )
        .add(
            "/v1/webhooks/test",
            &[Method::POST],
            post(deliveries::send_test),
        )
        .add(
            "/v1/webhooks/{id}/deliveries",
            &[Method::GET],
            get(deliveries::list),
        )
        .add(
            "/v1/webhooks/{id}/deliveries/{delivery_id}",
            &[Method::GET],
            get(deliveries::get),
        )
        .add(
            "/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
            &[Method::POST],
            post(deliveries::retry),
        )
        .add("/v1/events", &[Method::POST], post(events::ingest))
        .add("/v1/event-types", &[Method::GET], get(catalog::list))
}

/// Every (method, path) the public API serves (the admin endpoints are on their own port).
pub fn route_table() -> Vec<RouteSpec> {
    routes().table
}

/// The whole application: the customer API, and the portal (`/portal`) over it.
pub fn router(state: AppState) -> Router {
    let timeout = state.settings.request_timeout;
    let api = api(state.clone());
    with_layers(crate::portal::router(state, api.clone()), timeout).merge(api)
}

/// The customer API alone, as curl reaches it (the portal's pages call it in process).
fn api(state: AppState) -> Router {
    let timeout = state.settings.request_timeout;
    let Routes { router, .. } = routes();
    let api = router
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    with_layers(api, timeout)
}

/// Panics, traces, metrics and the request timeout, for the API and the portal alike.
fn with_layers(router: Router, timeout: Duration) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(TraceLayer::new_for_http())
            .layer(middleware::from_fn(record_metrics))
            .layer(HandleErrorLayer::new(timeout_response))
            .layer(tower::timeout::TimeoutLayer::new(timeout)),
    )
}

async fn route_not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn timeout_response(_: tower::BoxError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
        "the request took too long; retry shortly",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal("a handler panicked").into_response()
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let elapsed: Duration = started.elapsed();
    metrics::counter!("aioka_gateway_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("aioka_gateway_request_seconds", "method" => method, "route" => route)
        .record(elapsed.as_secs_f64());
    response
}
