//! The AIOKA Webhooks gateway: the customer API (webhooks, test events, the delivery log) and
//! producer ingestion (events).
//!
//! `main` loads settings and telemetry and calls [`run`]; integration tests call the same
//! `run` on port 0 with their own settings and shutdown token, so what is tested is what ships.
#![forbid(unsafe_code)]

mod app;
mod catalog;
mod deliveries;
mod error;
mod events;
mod extract;
mod portal;
mod recovery;
pub mod settings;
mod state;
mod webhooks;

use std::future::IntoFuture;
use std::sync::Arc;

use aioka_queue::SharedPublisher;
use aioka_runtime::Health;
use aioka_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use app::{RouteSpec, route_table};
pub use settings::Settings;

/// The gateway's two listeners: the public API and the admin endpoints.
#[derive(Debug)]
pub struct Listeners {
    pub api: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses in `settings`.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            api: TcpListener::bind(settings.listen_addr()?).await?,
            admin: TcpListener::bind(settings.admin_addr()?).await?,
        })
    }
}

use crate::state::AppState;

/// Serves the API and the admin endpoints until `shutdown` is cancelled, then lets open
/// requests finish within `gateway.shutdown_grace`.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    settings.validate()?;
    let encryption_key = Arc::new(settings.security.encryption_key()?);
    let store = Store::connect(&settings.database)?;
    let topology = settings.amqp.topology(settings.retry_schedule()?.tiers());
    let publisher = Arc::new(SharedPublisher::new(
        &settings.amqp.nodes(),
        &topology.connection_name("aioka-gateway"),
        topology,
    ));
    let health = Health::new(&["database", "amqp"]);
    health.watch("database", store.readiness_probe(), shutdown.clone());
    let probe = publisher.clone();
    health.watch(
        "amqp",
        move || {
            let publisher = probe.clone();
            async move { publisher.is_connected().await }
        },
        shutdown.clone(),
    );

    let rate_limiter = std::num::NonZeroU32::new(settings.gateway.rate_limit).map(|per_second| {
        let burst = per_second.saturating_add(per_second.get());
        Arc::new(governor::RateLimiter::keyed(
            governor::Quota::per_second(per_second).allow_burst(burst),
        ))
    });
    let state = AppState {
        rate_limiter,
        store,
        publisher,
        encryption_key,
        settings: Arc::new(settings.gateway.clone()),
        allow_private_targets: settings.security.allow_private_targets,
        health,
    };
    tracing::info!(
        addr = %listeners.api.local_addr()?,
        admin = %listeners.admin.local_addr()?,
        "gateway listening"
    );
    let admin = state.health.serve(listeners.admin, shutdown.clone());
    let grace = settings.gateway.shutdown_grace;
    let api = axum::serve(listeners.api, app::router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    tokio::pin!(api);
    tokio::select! {
        result = &mut api => result?,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "requests still open after the grace period; exiting");
        }
    }
    admin.await??;
    tracing::info!("gateway stopped");
    Ok(())
}
