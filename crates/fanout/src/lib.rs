//! The fanout service: consumes `aioka.fanout` (every event, from the gateway or published
//! directly by a producer), stores each event once, and publishes one delivery task per
//! active subscribed webhook, streaming the subscribers from PostgreSQL in chunks so an event
//! with 100 000 subscribers never sits in memory whole.
//!
//! **Invariant:** an event is acknowledged only after every task it produced is confirmed by
//! the broker (or it was found to be a duplicate, or it was parked).
//!
//! It also keeps the delivery log's partitions (`maintenance`): fanout is the one service
//! that always runs against the database and does little there itself.
#![forbid(unsafe_code)]

mod maintenance;
pub mod settings;
mod worker;

use aioka_runtime::Health;
use aioka_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use settings::Settings;

/// Runs until `shutdown`: health endpoints on `health_listener`, the consumer on the broker.
pub async fn run(
    settings: Settings,
    health_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    settings.validate()?;
    let store = Store::connect(&settings.database)?;
    let health = Health::new(&["database", "amqp"]);
    let topology = settings.amqp.topology(settings.retry_schedule()?.tiers());
    let server = health.serve(health_listener, shutdown.clone());
    health.watch("database", store.readiness_probe(), shutdown.clone());

    tokio::spawn(aioka_queue::sample_queue_depth(
        settings.amqp.nodes(),
        topology.connection_name("aioka-fanout-metrics"),
        vec![topology.fanout_queue()],
        std::time::Duration::from_secs(5),
        shutdown.clone(),
    ));
    let maintenance = tokio::spawn(maintenance::run(
        store.clone(),
        store.partition_policy().maintenance_period(),
        shutdown.clone(),
    ));
    let worker = worker::Worker {
        store,
        task_key: settings.security.encryption_key()?.task_key(),
        topology,
        settings: settings.clone(),
        health: health.clone(),
    };
    worker.run(shutdown.clone()).await;
    shutdown.cancel();
    maintenance.await?;
    server.await??;
    tracing::info!("fanout stopped");
    Ok(())
}
