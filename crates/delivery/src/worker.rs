//! The consumer loop and one task's journey: look up the webhook, send, decide, record, ack.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use aioka_core::disable::Outcome;
use aioka_core::messages::{BatchTask, DeliveryTask, Task};
use aioka_core::retry::{AfterFailure, RetrySchedule, Tier};
use aioka_queue::lapin::BasicProperties;
use aioka_queue::lapin::message::Delivery;
use aioka_queue::lapin::types::{AMQPValue, ShortString};
use aioka_queue::{
    ConsumerSpec, Publisher, Topology, extract_trace_context, header_str, inject_trace_context,
    persistent_json, run_consumer,
};
use aioka_runtime::Health;
use aioka_store::{AttemptRecord, ChainState, ClaimOutcome, RecordKind, Store, Turn};
use chrono::Utc;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cache::{Cache, Target};
use crate::client::Sender;
use crate::lanes::Permit;
use crate::recorder::{Recorded, Recorder};
use crate::slots::Slot;

pub(crate) struct Worker {
    pub amqp_url: String,
    /// The shards this process consumes (`delivery.shards`).
    pub shards: crate::settings::Shards,
    pub topology: Topology,
    pub schedule: RetrySchedule,
    /// Messages in hand at most: both lanes' attempts.
    pub prefetch: u16,
    pub grace: Duration,
    /// Each webhook's share of this process's attempts in flight.
    pub slots: crate::slots::Slots,
    /// This process's attempts in flight: `max_in_flight` in the fast lane, and those that
    /// run past `slow_after` in the slow lane (`crate::lanes`). A message may carry a batch
    /// of tasks, so the prefetch (in messages) alone does not bound them. An item of a batch
    /// waits here as a webhook id; its task is built when it gets a permit.
    pub lanes: crate::lanes::Lanes,
    /// How long after its event was stored an ordered webhook's delivery may go.
    pub fifo_settle: Duration,
    /// A first attempt published longer ago than this claims before it is sent (creating
    /// its row), so the reach check cannot send a copy of it too (`Store::check_reach`).
    pub late_first_after: Duration,
    pub cache: Cache,
    pub sender: Sender,
    pub recorder: Recorder,
    /// Claims the attempts of retries and redelivered tasks, in batches (`crate::claims`);
    /// a claim holds longer than a send and its record take, so only a claimer that died
    /// loses it.
    pub claimer: crate::claims::Claimer,
    /// Checks that a task was tagged by fanout or the gateway.
    pub task_key: aioka_core::TaskKey,
    /// For the state of deliveries whose tasks may be repeats (redelivered, or retries).
    pub store: Store,
    pub health: Health,
    /// Cancelled on shutdown: work held for a dependency gives up and requeues.
    pub stopping: CancellationToken,
}

/// Marks a task put off through the defer queue after it had been redelivered (and any
/// message the consumer or the sweep published again).
pub(crate) use aioka_queue::REDELIVERED_HEADER;

/// How one task ended; for a message, how it is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    /// Done with: sent and recorded, skipped, put off or parked (a copy is confirmed in
    /// the defer or parking queue). The message is acknowledged.
    Ack,
    Requeue,
    /// Left unsettled: the publisher channel is dead, so the session is about to end and
    /// the broker hands the message back. Requeueing it here would spin it through the
    /// queue's delivery limit (20) within milliseconds and park a healthy task.
    Hold,
}

/// The start time of an attempt: the log orders and shows attempts by it, and the disable
/// rule orders outcomes by it. PostgreSQL keeps microseconds, so this does too (or an outcome
/// could compare differently in memory than in the log), and no two attempts of this process
/// get the same instant: a burst of redelivered tasks starts hundreds of attempts within a
/// microsecond or two, and a success and a failure of one webhook at the same instant have
/// no order.
fn attempt_time() -> chrono::DateTime<Utc> {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = Utc::now().timestamp_micros();
    let micros = match LAST.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
        Some(now.max(last + 1))
    }) {
        Ok(last) | Err(last) => now.max(last + 1),
    };
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or_else(Utc::now)
}

/// Acts on how a message ended.
async fn settle(delivery: &Delivery, done: Done) {
    match done {
        Done::Ack => aioka_queue::ack(delivery).await,
        Done::Requeue => aioka_queue::requeue(delivery).await,
        Done::Hold => {}
    }
}

/// How a batch's message is settled once each of its tasks ended: held if any is held (the
/// session is ending), requeued if any must be tried again (a redelivered batch finds the
/// attempts of the others recorded and does not send them again), acknowledged otherwise.
fn settle_batch(done: impl IntoIterator<Item = Done>) -> Done {
    done.into_iter()
        .fold(Done::Ack, |all, one| match (all, one) {
            (Done::Hold, _) | (_, Done::Hold) => Done::Hold,
            (Done::Requeue, _) | (_, Done::Requeue) => Done::Requeue,
            _ => Done::Ack,
        })
}

/// The message a task came in. A task of a batch that leaves on its own (put off, parked)
/// goes as a version 1 task in a message made from the batch's.
#[derive(Clone, Copy)]
enum Carrier<'a> {
    Own(&'a Delivery),
    Batch(&'a Delivery),
}

impl Carrier<'_> {
    fn delivery(&self) -> &Delivery {
        match self {
            Carrier::Own(d) | Carrier::Batch(d) => d,
        }
    }

    /// The bytes and properties of a message holding `task` alone.
    fn message(&self, task: &DeliveryTask) -> (std::borrow::Cow<'_, [u8]>, BasicProperties) {
        match self {
            Carrier::Own(d) => (
                std::borrow::Cow::Borrowed(&d.data[..]),
                d.properties.clone(),
            ),
            Carrier::Batch(d) => (
                std::borrow::Cow::Owned(Task::V1(task.clone()).to_bytes()),
                d.properties
                    .clone()
                    .with_message_id(ShortString::from(task.delivery_id.to_string())),
            ),
        }
    }
}

/// After a failed publish: requeue, unless the channel itself is gone.
fn requeue_unless_closed(publisher: &Publisher) -> Done {
    if publisher.channel().status().connected() {
        Done::Requeue
    } else {
        Done::Hold
    }
}

impl Worker {
    /// Consumes until `shutdown`, reconnecting when the broker goes away.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let spec = ConsumerSpec {
            part: aioka_queue::Part::Delivery,
            url: &self.amqp_url,
            topology: &self.topology,
            service: "aioka-delivery",
            queues: self
                .shards
                .of(self.topology.shards())
                .into_iter()
                .map(|s| self.topology.shard_queue(s))
                .collect(),
            drain_leftover_shards: self.shards.is_all(),
            prefetch: self.prefetch,
            grace: self.grace,
        };
        run_consumer(
            spec,
            &shutdown,
            |up| self.health.set("amqp", up),
            |publisher, delivery| {
                let worker = self.clone();
                async move { worker.process(&publisher, delivery).await }
            },
        )
        .await;
    }

    async fn process(&self, publisher: &Publisher, delivery: Delivery) {
        // A task the broker hands out again may have been attempted already; so may one that
        // was put off after such a redelivery (the defer queue's copy is a new message).
        let redelivered = delivery.redelivered
            || header_str(delivery.properties.headers().as_ref(), REDELIVERED_HEADER).is_some();
        let done = match Task::from_bytes(&delivery.data) {
            Ok(Task::V1(task)) => {
                self.count_tasks(&delivery, 1);
                match task.verify(&self.task_key) {
                    Ok(()) => {
                        self.run_task(publisher, Carrier::Own(&delivery), task, redelivered)
                            .await
                    }
                    Err(e) => {
                        // Whoever published this holds a broker credential but not our key:
                        // it is never signed with a webhook's secret, never sent.
                        tracing::warn!(delivery_id = %task.delivery_id, webhook_id = %task.webhook_id, error = %e, "task refused");
                        Box::pin(self.refuse(publisher, &delivery, e)).await
                    }
                }
            }
            Ok(Task::V2(batch)) => {
                self.count_tasks(&delivery, batch.webhooks.len());
                match batch.verify(&self.task_key) {
                    Ok(()) => {
                        self.run_batch(publisher, &delivery, &batch, redelivered)
                            .await
                    }
                    Err(e) => {
                        tracing::warn!(event_id = %batch.event_id, tasks = batch.webhooks.len(), error = %e, "batch refused");
                        Box::pin(self.refuse(publisher, &delivery, e)).await
                    }
                }
            }
            Err(e) => {
                self.count_tasks(&delivery, 1);
                let reason = format!("not a delivery task: {e}");
                Box::pin(self.park(publisher, Carrier::Own(&delivery), None, &reason)).await
            }
        };
        settle(&delivery, done).await;
    }

    /// Per shard: first attempts come with the shard's key, retries and put-off tasks with
    /// it too (their wait queues dead-letter with it). A batch counts its tasks.
    fn count_tasks(&self, delivery: &Delivery, tasks: usize) {
        metrics::counter!("aioka_delivery_tasks_total", "routing_key" => delivery.routing_key.to_string())
            .increment(tasks as u64);
    }

    /// Parks a message whose tag does not hold.
    async fn refuse(
        &self,
        publisher: &Publisher,
        delivery: &Delivery,
        e: aioka_core::messages::TaskRefused,
    ) -> Done {
        metrics::counter!("aioka_delivery_tasks_refused_total").increment(1);
        let reason = format!("task refused: {e}");
        self.park(publisher, Carrier::Own(delivery), None, &reason)
            .await
    }

    /// Runs the tasks of a batch, each as a task of its own, as permits come free. A task
    /// exists (its future, its copy of the body) only once it holds a permit, so the batches
    /// in hand cost one pending permit each, not one waiting attempt per webhook.
    async fn run_batch(
        &self,
        publisher: &Publisher,
        delivery: &Delivery,
        batch: &BatchTask,
        redelivered: bool,
    ) -> Done {
        let mut running = futures_util::stream::FuturesUnordered::new();
        let mut ended = Vec::with_capacity(batch.webhooks.len());
        for i in 0..batch.webhooks.len() {
            let permit = loop {
                tokio::select! {
                    permit = self.lanes.acquire() => break permit,
                    Some(done) = running.next(), if !running.is_empty() => ended.push(done),
                }
            };
            let Ok(permit) = permit else {
                ended.push(Done::Requeue);
                break;
            };
            running.push(async move {
                let task = batch.item(i, &self.task_key);
                self.start_task(
                    publisher,
                    Carrier::Batch(delivery),
                    task,
                    redelivered,
                    permit,
                )
                .await
            });
        }
        while let Some(done) = running.next().await {
            ended.push(done);
        }
        settle_batch(ended)
    }

    /// One task, once the process has room for its attempt.
    async fn run_task(
        &self,
        publisher: &Publisher,
        carrier: Carrier<'_>,
        task: DeliveryTask,
        redelivered: bool,
    ) -> Done {
        let Ok(permit) = self.lanes.acquire().await else {
            return Done::Requeue;
        };
        // Boxed: a message waiting for a permit holds only this function's small state, not
        // the attempt's (which the prefetch multiplies).
        Box::pin(self.start_task(publisher, carrier, task, redelivered, permit)).await
    }

    /// One task holding `permit` (given back when it ends).
    async fn start_task(
        &self,
        publisher: &Publisher,
        carrier: Carrier<'_>,
        task: DeliveryTask,
        redelivered: bool,
        permit: Permit<'_>,
    ) -> Done {
        let span = tracing::info_span!(
            "deliver",
            delivery_id = %task.delivery_id,
            webhook_id = %task.webhook_id,
            attempt = task.attempt,
        );
        extract_trace_context(carrier.delivery().properties.headers().as_ref(), &span);
        let Some(slot) = self.slots.take(task.webhook_id).await else {
            // This webhook has had its share of our slots for a second, or too many tasks wait
            // for them already: put the task off, unattempted.
            return self.put_off(publisher, carrier, &task, redelivered).await;
        };
        self.deliver(publisher, carrier, task, redelivered, permit, slot)
            .instrument(span)
            .await
    }

    /// Sends the task round the defer queue (a second, `DEFER_DELAY_MS`), confirmed; a
    /// redelivered task keeps that mark on its way.
    async fn put_off(
        &self,
        publisher: &Publisher,
        carrier: Carrier<'_>,
        task: &DeliveryTask,
        redelivered: bool,
    ) -> Done {
        let (data, mut props) = carrier.message(task);
        if redelivered {
            let mut headers = props.headers().clone().unwrap_or_default();
            headers.insert(REDELIVERED_HEADER.into(), AMQPValue::LongString("1".into()));
            props = props.with_headers(headers);
        }
        let (exchange, key) = self.topology.defer_route(task.webhook_id);
        match publisher.publish(&exchange, &key, &data, props).await {
            Ok(()) => {
                metrics::counter!("aioka_delivery_deferred_total").increment(1);
                Done::Ack
            }
            Err(_) => requeue_unless_closed(publisher),
        }
    }

    /// Moves the message (or, for a task of a batch, a message of its own) to the parking
    /// queue with `reason`.
    async fn park(
        &self,
        publisher: &Publisher,
        carrier: Carrier<'_>,
        task: Option<&DeliveryTask>,
        reason: &str,
    ) -> Done {
        let delivery = carrier.delivery();
        let (data, props) = match task {
            Some(task) => carrier.message(task),
            None => (
                std::borrow::Cow::Borrowed(&delivery.data[..]),
                delivery.properties.clone(),
            ),
        };
        match aioka_queue::park_copy(
            publisher,
            &self.topology,
            (&data, &props),
            delivery.routing_key.as_str(),
            "delivery",
            reason,
        )
        .await
        {
            Ok(()) => Done::Ack,
            Err(_) => requeue_unless_closed(publisher),
        }
    }

    /// Waits out a database outage around `query` (its requeue would count against the
    /// queue's delivery limit and park healthy tasks); `None` on shutdown. Every task in
    /// flight waits here during an outage, so failures are logged at debug level: the cache
    /// loader and the pool log them once per attempt at the database.
    async fn through_outage<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
        &self,
        what: &str,
        query: impl Fn() -> F,
    ) -> Option<T> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match query().await {
                Ok(value) => return Some(value),
                Err(e) => {
                    tracing::debug!(error = %e, retry_in = ?backoff, "{what} failed");
                    tokio::select! {
                        _ = self.stopping.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn deliver(
        &self,
        publisher: &Publisher,
        carrier: Carrier<'_>,
        task: DeliveryTask,
        redelivered: bool,
        mut permit: Permit<'_>,
        slot: Slot<'_>,
    ) -> Done {
        let Some(target) = self
            .through_outage("webhook lookup", || self.cache.get(task.webhook_id))
            .await
        else {
            return Done::Requeue;
        };
        // An ordered webhook's delivery goes when it heads the line (`aioka_store::Turn`).
        // This comes before the claim: a copy that is not at the head claims nothing, so the
        // copy handed the turn later is not held off by a claim of its own.
        let ordered = matches!(target.as_ref(), Target::Active { fifo: true, .. }) && !task.test;
        if ordered {
            let Some(turn) = self
                .through_outage("checking the delivery's turn", || {
                    self.store
                        .fifo_turn(task.webhook_id, task.event_id, self.fifo_settle)
                })
                .await
            else {
                return Done::Requeue;
            };
            match turn {
                Turn::Mine => {}
                Turn::AfterDelivery => {
                    // The one ahead hands the turn on when it ends (`hand_on`); the sweep
                    // republishes a head whose hand-over was lost.
                    metrics::counter!("aioka_delivery_fifo_waits_total", "behind" => "delivery")
                        .increment(1);
                    tracing::debug!("an earlier delivery of this ordered webhook is pending");
                    return Done::Ack;
                }
                Turn::AfterFanout => {
                    metrics::counter!("aioka_delivery_fifo_waits_total", "behind" => "fanout")
                        .increment(1);
                    tracing::debug!("an earlier event is still being fanned out; putting off");
                    return self.put_off(publisher, carrier, &task, redelivered).await;
                }
            }
        }
        // A redelivered task may have been sent and recorded by a process that died before
        // acking it, and a retry may be a copy of one already made or being made: before
        // sending, claim the attempt (in a batch of claims; of two copies asking at once one wins).
        // The copy `resume_chain` publishes after a lost ack, or a chunk fanout republished
        // after a broker outage, then never sends an attempt a second time while the process
        // holding it lives. First attempts that come for the first time (nearly all of the
        // traffic) skip this write, unless ordered (a head can be handed its turn while its
        // own first task is on its way) or late: one older than `late_first_after` may have
        // been given a row and a copy by the reach check, and claims creating its row.
        let late = task.attempt == 1 && !ordered && self.is_late(carrier.delivery());
        if redelivered || task.attempt_in_series() > 1 || ordered || late {
            let Some(claim) = self
                .through_outage("claiming the attempt", || {
                    self.claimer.claim(
                        aioka_store::ClaimAsk {
                            event: task.event_id,
                            delivery: task.delivery_id,
                            attempt: task.attempt,
                            create_for: late.then_some(task.webhook_id),
                        },
                        ordered,
                    )
                })
                .await
            else {
                return Done::Requeue;
            };
            match claim.outcome {
                ClaimOutcome::Claimed | ClaimOutcome::NoRow => {}
                ClaimOutcome::Made if claim.state.recorded.is_none() => {
                    // A later attempt is recorded, or the delivery ended (a skip records no
                    // attempt): this copy has nothing left to do.
                    metrics::counter!("aioka_delivery_repeats_avoided_total").increment(1);
                    tracing::info!("the delivery has moved on; not sending this copy");
                    return Done::Ack;
                }
                ClaimOutcome::Made => {
                    metrics::counter!("aioka_delivery_repeats_avoided_total").increment(1);
                    return self
                        .resume_chain(publisher, redelivered, &task, &claim.state)
                        .await;
                }
                ClaimOutcome::HeldByOther => {
                    // Another copy is being sent now. Come back when it is recorded (then
                    // this copy ends) or its holder died (then the claim lapses).
                    metrics::counter!("aioka_delivery_claims_held_total").increment(1);
                    tracing::info!("attempt held by another copy; putting this one off");
                    return self.put_off(publisher, carrier, &task, redelivered).await;
                }
            }
        }
        let (url, signing) = match target.as_ref() {
            Target::Active {
                url,
                secret,
                previous,
                ..
            } => (
                url,
                crate::client::Signing {
                    current: secret,
                    // The overlap's end is read at the attempt, whatever the cache's age.
                    previous: previous
                        .as_ref()
                        .filter(|(_, until)| Utc::now() < *until)
                        .map(|(old, _)| old),
                },
            ),
            Target::Skip { reason, fifo } => {
                return self
                    .skip(publisher, &task, reason, *fifo && !task.test)
                    .await;
            }
            Target::Undecryptable => {
                let reason =
                    "the webhook's secret does not decrypt with this service's security.secret_key";
                tracing::error!(reason);
                return self.park(publisher, carrier, Some(&task), reason).await;
            }
        };

        let at = attempt_time();
        let result = self
            .lanes
            .run(&mut permit, self.sender.send(url, &task, signing))
            .await;
        // The endpoint has answered (or the attempt ended): the webhook's share counts
        // requests at its server, so the next task for it may go while this one is recorded.
        // The permit is held until the record is written, which bounds the work in hand.
        drop(slot);
        metrics::counter!(
            "aioka_delivery_attempts_total",
            "result" => if result.outcome == Outcome::Success { "success" } else { result.error_kind.unwrap_or("failure") },
        )
        .increment(1);
        metrics::histogram!("aioka_delivery_attempt_seconds").record(result.latency.as_secs_f64());

        let mut retry = None;
        let mut outcome = match result.outcome {
            Outcome::Success => "succeeded",
            Outcome::Gone => "gone",
            Outcome::Failure => "exhausted",
        };
        if result.outcome == Outcome::Failure
            && let AfterFailure::Retry { delay, tier } = self
                .schedule
                .after_failure_with_hint(task.attempt_in_series(), result.retry_after)
        {
            outcome = "retry_scheduled";
            retry = Some((
                tier,
                Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
            ));
        }
        tracing::info!(
            outcome = ?result.outcome,
            status = result.status_code,
            error = result.error_kind,
            latency_ms = result.latency.as_millis() as u64,
            retry = retry.is_some(),
            "attempt made"
        );
        let record = AttemptRecord {
            delivery_id: task.delivery_id,
            event_id: task.event_id,
            webhook_id: task.webhook_id,
            attempt: task.attempt,
            at,
            kind: RecordKind::Attempt {
                outcome: result.outcome,
                status_code: result.status_code,
                error_kind: result.error_kind,
                latency_ms: u32::try_from(result.latency.as_millis()).unwrap_or(u32::MAX),
                snippet: result.snippet,
                next_retry_at: retry.map(|(_, due)| due),
            },
        };
        // The record comes first and the retry after it, so that only the one process that
        // recorded this attempt first continues its chain: a task redelivered after a crash
        // is sent again, but its record is a duplicate and starts no second series.
        // An ordered webhook's line waits on this record: it goes at once, not with a batch.
        let recorded = if ordered {
            self.recorder.record_now(record).await
        } else {
            self.recorder.record(record).await
        };
        match recorded {
            Ok(Recorded::Fresh) => {
                if let Some((tier, _)) = retry
                    && !self.publish_retry(publisher, &task, tier).await
                {
                    // Recorded but not scheduled: the redelivered task finds its attempt
                    // recorded and schedules the retry (see `resume_chain`).
                    return requeue_unless_closed(publisher);
                }
                if ordered && retry.is_none() {
                    self.hand_on(publisher, task.webhook_id).await;
                }
                metrics::counter!("aioka_deliveries_total", "outcome" => outcome).increment(1);
                Done::Ack
            }
            Ok(Recorded::Duplicate) => {
                metrics::counter!("aioka_delivery_repeated_attempts_total").increment(1);
                // A copy that was not redelivered belongs to a chain someone else holds.
                if !redelivered {
                    return Done::Ack;
                }
                match self.chain_state(&task).await {
                    Some(state) => {
                        self.resume_chain(publisher, redelivered, &task, &state)
                            .await
                    }
                    None => Done::Requeue,
                }
            }
            Err(_) => Done::Requeue,
        }
    }

    /// Whether the message was published (by fan-out; a put-off copy keeps the time) longer
    /// than `late_first_after` ago. One without a time is not late.
    fn is_late(&self, delivery: &Delivery) -> bool {
        let Some(published) = delivery.properties.timestamp() else {
            return false;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        now.saturating_sub(*published) > self.late_first_after.as_secs()
    }

    /// Where this task's delivery stands in the database, holding the task through a
    /// database outage; `None` on shutdown.
    async fn chain_state(&self, task: &DeliveryTask) -> Option<ChainState> {
        self.through_outage("reading the delivery's state", || {
            self.store
                .chain_state(task.event_id, task.delivery_id, task.attempt)
        })
        .await
    }

    /// For a task whose attempt is already recorded: nothing is sent again. If the message
    /// was redelivered, the process that recorded the attempt may have died before it
    /// scheduled the retry; schedule it unless the chain has moved on (a later attempt is
    /// recorded). A copy that was not redelivered belongs to a chain someone else holds.
    async fn resume_chain(
        &self,
        publisher: &Publisher,
        redelivered: bool,
        task: &DeliveryTask,
        state: &ChainState,
    ) -> Done {
        let Some(recorded) = &state.recorded else {
            // A record that took no effect and is not there: its event is gone (past the
            // retention, or a test event that was never sent), and the record was dropped
            // with it. The chain ends here; a requeue would send the attempt again and again.
            tracing::info!("the delivery's event is gone; its chain ends");
            return Done::Ack;
        };
        let chain_is_here = state.attempts_made == task.attempt;
        if redelivered && recorded.next_retry_at.is_some() && chain_is_here {
            // Retry-After is not kept: the retry goes through the schedule's own tier.
            if let AfterFailure::Retry { tier, .. } =
                self.schedule.after_failure(task.attempt_in_series())
            {
                tracing::info!("attempt already recorded; scheduling its retry");
                if !self.publish_retry(publisher, task, tier).await {
                    return requeue_unless_closed(publisher);
                }
            }
        } else {
            tracing::info!(
                redelivered,
                "attempt already recorded; not sending it again"
            );
        }
        Done::Ack
    }

    /// Publishes the task's next attempt to the retry tier, confirmed.
    async fn publish_retry(&self, publisher: &Publisher, task: &DeliveryTask, tier: Tier) -> bool {
        metrics::counter!("aioka_delivery_retries_total", "tier" => tier.to_string()).increment(1);
        let next = Task::V1(task.next_attempt());
        let props = persistent_json(Some(&task.delivery_id.to_string()), inject_trace_context());
        let (exchange, key) = self.topology.retry_route(task.webhook_id, tier);
        match publisher
            .publish(&exchange, &key, &next.to_bytes(), props)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not schedule the retry; requeueing the attempt");
                false
            }
        }
    }

    /// After a delivery of an ordered webhook ended: publishes the next one in its line, if it
    /// waits for its turn (`aioka_store::Store::next_in_line`; for an unordered webhook there
    /// is none). A failure here costs time, not the delivery: the retry sweep publishes a head
    /// whose due time has passed by `delivery.retry_sweep_after`.
    async fn hand_on(&self, publisher: &Publisher, webhook: aioka_core::WebhookId) {
        let next = match self.store.next_in_line(webhook).await {
            Ok(Some(next)) => next,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "could not find the next delivery of an ordered webhook; the retry sweep will");
                return;
            }
        };
        let delivery = next.delivery_id;
        let (exchange, key, body, props) =
            crate::sweeper::claimed_copy(&self.topology, &self.task_key, next);
        match publisher.publish(&exchange, &key, &body, props).await {
            Ok(()) => {
                metrics::counter!("aioka_delivery_fifo_handovers_total").increment(1);
                tracing::debug!(next = %delivery, "turn handed on");
            }
            Err(e) => {
                tracing::warn!(error = %e, next = %delivery, "could not hand the turn on; the retry sweep will");
            }
        }
    }

    /// Drops a task without sending and records why; an ordered webhook's next delivery then
    /// takes its turn (and is skipped in its turn too, if the webhook is still disabled).
    async fn skip(
        &self,
        publisher: &Publisher,
        task: &DeliveryTask,
        reason: &'static str,
        ordered: bool,
    ) -> Done {
        tracing::info!(reason, "task skipped");
        metrics::counter!("aioka_deliveries_total", "outcome" => "skipped").increment(1);
        let record = AttemptRecord {
            delivery_id: task.delivery_id,
            event_id: task.event_id,
            webhook_id: task.webhook_id,
            attempt: task.attempt,
            at: Utc::now(),
            kind: RecordKind::Skipped { reason },
        };
        match self.recorder.record(record).await {
            Ok(recorded) => {
                if recorded == Recorded::Fresh && ordered {
                    self.hand_on(publisher, task.webhook_id).await;
                }
                Done::Ack
            }
            Err(_) => Done::Requeue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::attempt_time;

    #[test]
    fn attempt_times_are_whole_microseconds_and_never_repeat() {
        let times: Vec<_> = (0..10_000).map(|_| attempt_time()).collect();
        for pair in times.windows(2) {
            assert!(pair[1] > pair[0], "{} then {}", pair[0], pair[1]);
        }
        assert!(
            times
                .iter()
                .all(|t| t.timestamp_subsec_nanos() % 1_000 == 0)
        );
    }
}
