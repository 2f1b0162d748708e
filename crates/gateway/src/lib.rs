//! The AIOKA Webhooks gateway: the customer API (webhooks) and producer ingestion (events).
//!
//! `main` loads settings and telemetry and calls [`run`]; integration tests call the same
//! `run` on port 0 with their own settings and shutdown token, so what is tested is what ships.
#![forbid(unsafe_code)]

mod app;
mod error;
mod extract;
pub mod settings;
mod state;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use aioka_runtime::Health;
use aioka_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use app::{RouteSpec, route_table};
pub use settings::Settings;

use crate::state::AppState;

/// Serves the API on `listener` until `shutdown` is cancelled, then drains open requests.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    settings.validate()?;
    let encryption_key = Arc::new(settings.security.encryption_key()?);
    let store = Store::connect(&settings.database)?;
    let health = Health::new(&["database"]);
    tokio::spawn(probe_database(
        store.clone(),
        health.clone(),
        shutdown.clone(),
    ));

    let state = AppState {
        store,
        encryption_key,
        settings: Arc::new(settings.gateway.clone()),
        allow_private_targets: settings.security.allow_private_targets,
        health,
    };
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    axum::serve(listener, app::router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Keeps the `database` component of `/readyz` true while PostgreSQL answers.
async fn probe_database(store: Store, health: Health, shutdown: CancellationToken) {
    loop {
        let ok = store.ping().await.is_ok();
        health.set("database", ok);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(if ok { 5 } else { 1 })) => {}
        }
    }
}
