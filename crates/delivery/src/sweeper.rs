//! The retry sweeper: a retry the broker never hands back is published again.
//!
//! A retry waits in its tier's TTL queue and dead-letters back to its shard. RabbitMQ's
//! at-least-once dead-lettering can still strand or drop a message when the wait queue's
//! leader moves (the cluster chaos rows showed a delivery left pending after attempt 1 whose
//! attempt 2 never arrived). The database knows every delivery that waits for an attempt
//! (`status = 'pending'`, `next_attempt_at`), so every delivery process sweeps, now and then,
//! for deliveries whose next attempt is overdue by `delivery.retry_sweep_after`, and publishes
//! that attempt again to its shard. The copy is marked redelivered, so it is claimed before it
//! is sent like any retry (`Store::claim_attempt`): if the original turns up after all, only
//! one of the two is ever sent. Sweepers of several processes take disjoint rows.
//!
//! A first attempt has no row to be found by until it is recorded, so each sweep first runs
//! the reach check (`Store::check_reach`): an event fanned out `retry_sweep_after` ago whose
//! webhook has no delivery row gets a pending one, due since the fan-out, and this same
//! sweep publishes its first attempt again.

use std::time::Duration;

use aioka_core::TaskKey;
use aioka_core::messages::{DeliveryTask, Task};
use aioka_queue::lapin::types::{AMQPValue, FieldTable};
use aioka_queue::{SharedPublisher, inject_trace_context, persistent_json};
use aioka_store::Store;
use tokio_util::sync::CancellationToken;

use crate::worker::REDELIVERED_HEADER;

/// Deliveries taken per sweep at most: a broker that lost many retries is caught up over a
/// few sweeps, never with one burst of publishes.
const SWEEP_LIMIT: u32 = 500;
/// Pairs (event, webhook) the reach check looks at per sweep, about: an event is checked
/// whole once begun.
const REACH_BUDGET: u64 = 50_000;

pub(crate) struct Sweeper {
    pub store: Store,
    pub publisher: SharedPublisher,
    pub task_key: TaskKey,
    /// How overdue an attempt must be before it is published again.
    pub after: Duration,
    pub interval: Duration,
}

impl Sweeper {
    /// Sweeps every `interval` until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    count = n,
                    overdue_by_more_than = ?self.after,
                    "retries the broker did not hand back were published again"
                ),
                Err(e) => tracing::debug!(error = %e, "retry sweep failed; next one later"),
            }
        }
    }

    /// One sweep: how many attempts were published again.
    pub async fn sweep(&self) -> anyhow::Result<usize> {
        let reach = self.store.check_reach(self.after, REACH_BUDGET).await?;
        metrics::counter!("aioka_delivery_reach_checked_total").increment(reach.events);
        if !reach.missing.is_empty() {
            metrics::counter!("aioka_delivery_unreached_total")
                .increment(reach.missing.len() as u64);
            for (event, webhook) in &reach.missing {
                tracing::warn!(
                    event_id = %event,
                    webhook_id = %webhook,
                    "a webhook the event was fanned out to has no delivery; sending it again"
                );
            }
        }
        let overdue = self
            .store
            .take_overdue_retries(self.after, SWEEP_LIMIT)
            .await?;
        let mut published = 0;
        for retry in overdue {
            // A publish that fails leaves the row due again after `after`: the next sweep
            // past that takes it again.
            let (exchange, key, body, props) = self.message(retry.task.clone());
            match self.publisher.publish(&exchange, &key, &body, props).await {
                Ok(()) => {
                    tracing::info!(
                        delivery_id = %retry.task.delivery_id,
                        webhook_id = %retry.task.webhook_id,
                        attempt = retry.task.attempt,
                        due = %retry.due,
                        "overdue attempt published again"
                    );
                    metrics::counter!("aioka_delivery_retries_swept_total").increment(1);
                    published += 1;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "could not publish an overdue attempt");
                    break;
                }
            }
        }
        Ok(published)
    }

    fn message(
        &self,
        task: DeliveryTask,
    ) -> (String, String, Vec<u8>, aioka_queue::lapin::BasicProperties) {
        claimed_copy(self.publisher.topology(), &self.task_key, task)
    }
}

/// A task the delivery service publishes again from the database (a swept retry, the next
/// delivery of an ordered webhook): tagged, marked redelivered (so it is claimed before it is
/// sent, and of two copies only one ever is), with its shard's route.
pub(crate) fn claimed_copy(
    topology: &aioka_queue::Topology,
    task_key: &TaskKey,
    task: DeliveryTask,
) -> (String, String, Vec<u8>, aioka_queue::lapin::BasicProperties) {
    let task = task.authenticated(task_key);
    let mut headers: FieldTable = inject_trace_context();
    headers.insert(REDELIVERED_HEADER.into(), AMQPValue::LongString("1".into()));
    let props = persistent_json(Some(&task.delivery_id.to_string()), headers);
    let (exchange, key) = topology.task_route(task.webhook_id);
    (exchange, key, Task::V1(task).to_bytes(), props)
}
