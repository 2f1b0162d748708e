//! Partition maintenance of the delivery log, run by every fanout process every
//! `partition_interval / 2` (at most a minute): partitions created ahead, expired ones
//! dropped, old events trimmed. Processes take turns through the store's advisory lock; one
//! that finds it held skips its turn. A failed run (a lock that could not be had within the
//! store's timeout, a database outage) is logged and counted, and the next run repeats it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aioka_store::{Maintained, Store};
use tokio_util::sync::CancellationToken;

/// How long a maintenance run in progress at shutdown may take to finish.
const FINISH_ON_SHUTDOWN: Duration = Duration::from_secs(10);

/// Runs maintenance at once and then every `period` until `shutdown`.
pub(crate) async fn run(store: Store, period: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A run in progress when shutdown comes is let finish (its drops and its trim belong
        // together: the log at rest holds no event whose deliveries are gone), within
        // FINISH_ON_SHUTDOWN. One cut off after that (or by kill -9) leaves at most a detach
        // pending and events untrimmed, which the next run anywhere finishes.
        let run = store.maintain_partitions();
        tokio::pin!(run);
        let result = tokio::select! {
            result = &mut run => result,
            _ = shutdown.cancelled() => {
                match tokio::time::timeout(FINISH_ON_SHUTDOWN, &mut run).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!("partition maintenance cut off by shutdown; the next run finishes it");
                        return;
                    }
                }
            }
        };
        match result {
            Ok(done) => report(&done),
            Err(e) => {
                metrics::counter!("aioka_partition_maintenance_failures_total").increment(1);
                tracing::warn!(error = %e, "partition maintenance failed; the next run repeats it");
            }
        }
    }
}

fn report(done: &Maintained) {
    if done.skipped {
        return;
    }
    metrics::counter!("aioka_partitions_created_total", "by" => "maintenance")
        .increment(done.created.len() as u64);
    metrics::counter!("aioka_partitions_dropped_total").increment(done.dropped.len() as u64);
    metrics::counter!("aioka_events_trimmed_total").increment(done.events_trimmed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!("aioka_partition_maintenance_last_run_timestamp_seconds")
        .set(now.as_secs_f64());
    if let Some(start) = done.log_starts_at {
        metrics::gauge!("aioka_delivery_log_starts_at_timestamp_seconds")
            .set(start.timestamp() as f64);
    }
    if !done.created.is_empty() || !done.dropped.is_empty() || done.events_trimmed > 0 {
        tracing::info!(
            created = ?done.created,
            dropped = ?done.dropped,
            events_trimmed = done.events_trimmed,
            log_starts_at = ?done.log_starts_at,
            "partitions maintained"
        );
    }
}
