//! The delivery service: stateless competing consumers of `aioka.delivery`. For each task it
//! looks the webhook up in a cache, signs the body (both schemes), POSTs it, and records the
//! attempt in a batch. A failure with retries left is published to its delay tier's wait
//! queue, which dead-letters it back after the delay; a webhook that keeps failing is disabled.
//!
//! **Invariant:** a task is acknowledged only after its attempt record is committed and then
//! its retry (if any) is confirmed by the broker; only the first record of an attempt starts
//! its retry, so a redelivered task never forks its chain.
//! **Invariant:** in-flight attempts are bounded by `delivery.max_in_flight` (the fast lane)
//! plus `delivery.slow_lane_in_flight` (attempts past `delivery.slow_after`), so memory and
//! connections stay flat under any backlog, and endpoints that hang cost healthy ones nothing.
#![forbid(unsafe_code)]

mod cache;
mod claims;
pub mod client;
mod lanes;
mod recorder;
pub mod settings;
mod slots;
mod sweeper;
mod tls_sessions;
mod worker;

use std::sync::Arc;

use aioka_core::disable::DisableRule;
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
    let key = Arc::new(settings.security.encryption_key()?);
    let task_key = key.task_key();
    let schedule = settings.retry_schedule()?;
    let store = Store::connect(&settings.database)?;
    let health = Health::new(&["database", "amqp"]);
    let server = health.serve(health_listener, shutdown.clone());
    health.watch("database", store.readiness_probe(), shutdown.clone());

    // Background parts outlive the consumer so in-flight work can finish recording.
    let background = CancellationToken::new();
    let d = settings.delivery.clone();
    let cache = cache::Cache::start(store.clone(), key, d.cache_ttl, background.clone());
    tokio::spawn(
        cache
            .clone()
            .follow_changes(settings.database.clone(), background.clone()),
    );
    let (recorder, writer) = recorder::Recorder::start(
        store.clone(),
        cache.clone(),
        DisableRule {
            threshold: d.disable_after,
        },
        d.record_batch_size,
        d.record_flush_interval,
        d.record_writers,
        background.clone(),
    );
    let topology = settings.amqp.topology(schedule.tiers());
    let mut sampled = vec![topology.parking_queue()];
    for shard in 0..topology.shards() {
        sampled.extend(topology.shard_queues(shard));
    }
    tokio::spawn(aioka_queue::sample_queue_depth(
        settings.amqp.nodes(),
        topology.connection_name("aioka-delivery-metrics"),
        sampled,
        std::time::Duration::from_secs(5),
        background.clone(),
    ));
    tokio::spawn(
        sweeper::Sweeper {
            store: store.clone(),
            publisher: aioka_queue::SharedPublisher::new(
                &settings.amqp.nodes(),
                &topology.connection_name("aioka-delivery-sweeper"),
                topology.clone(),
            ),
            task_key: task_key.clone(),
            after: d.retry_sweep_after,
            interval: d.retry_sweep_interval,
        }
        .run(background.clone()),
    );
    // A send takes at most connect_timeout + timeout; its record is written within the
    // recorder's flush interval unless the database is out.
    let claim_lease = d.connect_timeout + d.timeout + std::time::Duration::from_secs(20);
    let (claimer, _claims) = claims::Claimer::start(
        store.clone(),
        claim_lease,
        d.record_batch_size,
        d.record_flush_interval,
        d.record_writers,
    );
    let worker = Arc::new(worker::Worker {
        amqp_url: settings.amqp.nodes(),
        shards: settings.shards()?,
        topology,
        schedule,
        // Slow attempts leave their fast permits to healthy ones, so the prefetch covers
        // both lanes: retries of hanging endpoints never hold every message in hand.
        prefetch: d.max_in_flight + d.slow_lane_in_flight,
        grace: d.shutdown_grace,
        slots: slots::Slots::new(
            d.max_in_flight,
            d.max_in_flight_per_webhook,
            metrics::gauge!("aioka_delivery_in_flight"),
        ),
        lanes: lanes::Lanes::new(
            usize::from(d.max_in_flight),
            usize::from(d.slow_lane_in_flight),
            d.slow_after,
        ),
        fifo_settle: d.fifo_settle,
        late_first_after: d.late_first_after(),
        cache,
        sender: client::Sender::new(&d, settings.security.allow_private_targets)?,
        recorder,
        claimer,
        task_key,
        store,
        health,
        stopping: shutdown.clone(),
    });
    worker.run(shutdown.clone()).await;
    // The worker was the last holder of the recorder: the writer now flushes what is queued
    // and ends. Database trouble gets the grace period, then we give up (the tasks were not
    // acked, so they are redelivered).
    if tokio::time::timeout(d.shutdown_grace, writer)
        .await
        .is_err()
    {
        tracing::warn!("attempt records still unwritten after the grace period");
    }
    background.cancel();
    shutdown.cancel();
    server.await??;
    tracing::info!("delivery stopped");
    Ok(())
}
