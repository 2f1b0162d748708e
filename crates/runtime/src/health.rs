//! Liveness, readiness and metrics endpoints, shared by every service.
//!
//! `/healthz` answers 200 while the process runs. `/readyz` answers 200 only when every
//! component the service registered (database, broker, consumer) says it is ready, and 503
//! with the list otherwise, so Kubernetes stops routing to a pod that lost its broker.
//! `/metrics` is the Prometheus text format.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// The readiness of a service's components.
#[derive(Debug, Clone, Default)]
pub struct Health {
    components: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

impl Health {
    /// A health registry where each of `components` starts not ready.
    pub fn new(components: &[&'static str]) -> Self {
        // Install the metrics recorder before anything records.
        prometheus();
        let health = Self::default();
        for c in components {
            health.set(c, false);
        }
        health
    }

    pub fn set(&self, component: &'static str, ready: bool) {
        if let Ok(mut map) = self.components.lock() {
            map.insert(component, ready);
        }
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, bool> {
        self.components
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    pub fn is_ready(&self) -> bool {
        self.snapshot().values().all(|ready| *ready)
    }

    /// Keeps `component` set to the result of `probe`, checked every second, until
    /// `shutdown`. A second is short enough to report a PostgreSQL restart (about 2 s here)
    /// and cheap: one `SELECT 1` or one broker status check.
    pub fn watch<F, Fut>(&self, component: &'static str, probe: F, shutdown: CancellationToken)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let health = self.clone();
        tokio::spawn(async move {
            loop {
                let ok = probe().await;
                health.set(component, ok);
                let pause = Duration::from_secs(1);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        });
    }

    /// Serves [`Health::router`] alone on `listener` until `shutdown` (fanout and delivery,
    /// which have no other HTTP surface).
    pub fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<std::io::Result<()>> {
        let server =
            axum::serve(listener, self.router()).with_graceful_shutdown(shutdown.cancelled_owned());
        tokio::spawn(async move { server.await })
    }

    /// `/healthz`, `/readyz` and `/metrics`, to merge into a service's router or serve alone.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }
}

async fn readyz(State(health): State<Health>) -> Response {
    let snapshot = health.snapshot();
    let status = if snapshot.values().all(|r| *r) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({ "ready": status == StatusCode::OK, "components": snapshot });
    (status, axum::Json(body)).into_response()
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}

/// The process's Prometheus recorder, installed on first use. One per process: the services
/// that tests run side by side in one process share it.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Latencies are histograms with buckets (not summaries), so they aggregate across pods.
        const BUCKETS: &[f64] = &[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS)
            // Only an empty bucket list is refused, and ours is not empty.
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (a test harness); then ours only renders.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
