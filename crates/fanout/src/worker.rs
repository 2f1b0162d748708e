//! The consumer loop and the fan-out of one event.

use std::collections::BTreeMap;
use std::time::Duration;

use aioka_core::event::{DirectPublish, ValidEvent, parse_direct};
use aioka_core::messages::{BatchTask, DeliveryTask, Task};
use aioka_core::{DeliveryId, WebhookId};
use aioka_queue::lapin::message::Delivery;
use aioka_queue::{
    ConsumerSpec, Pending, Publisher, QueueError, Topology, extract_trace_context, header_str,
    inject_trace_context, persistent_json, run_consumer,
};
use aioka_runtime::Health;
use aioka_store::{Claim, EventSource, NewEvent, Progress, Store, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::Settings;

/// How often a worker waiting on another's claim looks again.
const CLAIM_POLL: Duration = Duration::from_millis(500);
/// The header the gateway sets on the events it publishes (direct publishes lack it).
pub const SOURCE_HEADER: &str = "x-aioka-source";

pub(crate) struct Worker {
    pub store: Store,
    /// Tags every task, so delivery can tell ours from a forged one.
    pub task_key: aioka_core::TaskKey,
    pub topology: Topology,
    pub settings: Settings,
    pub health: Health,
}

/// Why a fan-out stopped short: a failure worth trying again (the database or the broker),
/// or a claim that another worker took over.
#[derive(Debug, thiserror::Error)]
enum Transient {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// This worker's lease lapsed and another took the event over: it wrote nothing and
    /// publishes no more. Its message is held (not acked) until the event is done, as any
    /// copy of an event claimed by another is, so the new holder's failure cannot lose it.
    #[error("another worker took over the fan-out claim")]
    ClaimLost,
}

/// A progress write's outcome as a step that may stop the fan-out.
fn still_held(progress: Progress) -> Result<(), Transient> {
    match progress {
        Progress::Recorded => Ok(()),
        Progress::ClaimLost => Err(Transient::ClaimLost),
    }
}

impl Worker {
    /// Consumes until `shutdown`, reconnecting when the broker goes away.
    pub async fn run(&self, shutdown: CancellationToken) {
        let nodes = self.settings.amqp.nodes();
        let spec = ConsumerSpec {
            part: aioka_queue::Part::Fanout,
            url: &nodes,
            topology: &self.topology,
            service: "aioka-fanout",
            queues: vec![self.topology.fanout_queue()],
            drain_leftover_shards: false,
            prefetch: self.settings.fanout.prefetch,
            grace: self.settings.fanout.shutdown_grace,
        };
        run_consumer(
            spec,
            &shutdown,
            |up| self.health.set("amqp", up),
            |publisher, delivery| {
                let shutdown = &shutdown;
                async move { self.process(&publisher, delivery, shutdown).await }
            },
        )
        .await;
    }

    /// Handles one message to the end: fanned out, recognised as a duplicate, or parked.
    /// Database and broker failures are retried here, holding the message, so a long outage
    /// does not burn through the queue's delivery limit; on shutdown the message is requeued.
    async fn process(
        &self,
        publisher: &Publisher,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) {
        let span = tracing::info_span!(
            "fanout",
            event_id = tracing::field::Empty,
            tasks = tracing::field::Empty
        );
        extract_trace_context(delivery.properties.headers().as_ref(), &span);
        async {
            let event = match parse_direct(DirectPublish {
                body: &delivery.data,
                routing_key: delivery.routing_key.as_str(),
                message_id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.as_str()),
            }) {
                Ok(event) => event,
                Err(problem) => {
                    let reason = format!("breaks the event contract: {problem}");
                    if let Err(e) =
                        aioka_queue::park(publisher, &self.topology, &delivery, "fanout", &reason)
                            .await
                    {
                        tracing::warn!(error = %e, "could not park; requeueing");
                        aioka_queue::requeue(&delivery).await;
                    }
                    return;
                }
            };
            tracing::Span::current().record("event_id", tracing::field::display(event.id));
            let source = match header_str(delivery.properties.headers().as_ref(), SOURCE_HEADER)
                .as_deref()
            {
                Some("http") => EventSource::Http,
                _ => EventSource::Amqp,
            };
            let accepted_at = header_str(
                delivery.properties.headers().as_ref(),
                aioka_queue::ACCEPTED_AT_HEADER,
            )
            .and_then(|micros| micros.parse::<i64>().ok())
            .and_then(chrono::DateTime::from_timestamp_micros);
            // This message's claim token: its own retries re-take the claim at once; another
            // copy of the event (or this message redelivered after a crash) waits it out.
            let holder = uuid::Uuid::new_v4();
            // However this handler stops short of finishing (an error, or its future dropped
            // when the broker session ends under it), its claim is released.
            let claim = self.store.claim_guard(event.id, holder);
            let mut backoff = Duration::from_millis(100);
            loop {
                match self
                    .fan_out(publisher, &event, (source, accepted_at), holder)
                    .await
                {
                    Ok(tasks) => {
                        claim.disarm();
                        tracing::Span::current().record("tasks", tasks);
                        aioka_queue::ack(&delivery).await;
                        return;
                    }
                    Err(Transient::ClaimLost) => {
                        // Back to the claim: it waits until the new holder is done (then this
                        // message is a duplicate) or its claim lapses in turn (then resume).
                        tracing::info!("fan-out claim taken over by another worker; waiting");
                        metrics::counter!("aioka_fanout_claims_lost_total").increment(1);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "fan-out failed; retrying");
                        // Meanwhile another copy of the event may take over.
                        let _ = self.store.release_fanout(event.id, holder).await;
                        if let Transient::Queue(QueueError::Amqp(_)) = e {
                            // The channel is gone; the message comes back on a new session.
                            return;
                        }
                        tokio::select! {
                            _ = shutdown.cancelled() => {
                                aioka_queue::requeue(&delivery).await;
                                return;
                            }
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
        .instrument(span)
        .await;
    }

    /// Stores the event and publishes its tasks; returns how many this call published.
    async fn fan_out(
        &self,
        publisher: &Publisher,
        event: &ValidEvent,
        (source, accepted_at): (EventSource, Option<chrono::DateTime<chrono::Utc>>),
        holder: uuid::Uuid,
    ) -> Result<u64, Transient> {
        let body = String::from_utf8_lossy(&event.envelope.to_body()).into_owned();
        let new = NewEvent {
            id: event.id,
            event_type: event.envelope.event,
            occurred_at: event.occurred_at,
            body: &body,
            source,
            accepted_at,
        };
        // Another claim on the event means a worker is fanning it out now, or was when it
        // died: this message may be that very message, redelivered. Hold it until the event
        // is done (then it is a duplicate) or the claim lapses (then resume where the dead
        // worker stopped). Acking it earlier could lose the rest of the event.
        let mut cursor = loop {
            match self
                .store
                .claim_fanout(&new, self.settings.fanout.claim_lease, holder)
                .await?
            {
                Claim::Claimed { cursor } => {
                    // Which worker holds which event, and whether it picked up a fan-out
                    // another one left part-way (an operator's, and the chaos harness's,
                    // evidence of a resumed fan-out).
                    tracing::info!(
                        event_id = %event.id,
                        %holder,
                        resumed = cursor.is_some(),
                        "fan-out claimed"
                    );
                    break cursor;
                }
                Claim::Done => {
                    tracing::info!("duplicate event: already fanned out");
                    metrics::counter!("aioka_fanout_duplicates_total").increment(1);
                    return Ok(0);
                }
                Claim::HeldByOther => {
                    tracing::debug!("event claimed by another worker; waiting");
                    tokio::time::sleep(CLAIM_POLL).await;
                }
            }
        };
        let chunk = i64::from(self.settings.fanout.chunk_size);
        let mut published = 0u64;
        // Pipelined: chunk N+1 is read, inserted and handed to the broker while chunk N's
        // confirms are outstanding. The cursor still moves only past confirmed chunks, so a
        // crash republishes at most the two chunks in the air (same delivery ids).
        let mut in_air: Option<(Vec<Pending>, WebhookId, usize)> = None;
        loop {
            let page = self
                .store
                .subscribers_page(event.envelope.event, cursor, chunk)
                .await?;
            let Some(last) = page.last().map(|s| s.id) else {
                break;
            };
            // No delivery rows here for unordered webhooks: the delivery service's batched
            // recorder creates each row with its first attempt. Writing them here too cost a
            // third of PostgreSQL's work per delivery (measured with scripts/bench); the event
            // row and its fan-out progress are what recovery needs. An ordered (fifo)
            // webhook's row is written first, so that a later delivery finds it and waits.
            let fifo: Vec<WebhookId> = page.iter().filter(|s| s.fifo).map(|s| s.id).collect();
            if !fifo.is_empty() {
                self.store.insert_in_line(event.id, &fifo).await?;
            }
            let ids: Vec<WebhookId> = page.iter().map(|s| s.id).collect();
            let sent = self.publish_tasks(publisher, event, &body, &ids).await?;
            if let Some(previous) = in_air.replace((sent, last, page.len())) {
                published += self.settle(event, holder, previous).await?;
            }
            cursor = Some(last);
        }
        if let Some(previous) = in_air.take() {
            published += self.settle(event, holder, previous).await?;
        }
        still_held(self.store.finish_fanout(event.id, holder).await?)?;
        metrics::counter!("aioka_fanout_events_total", "event" => event.envelope.event.as_str())
            .increment(1);
        tracing::info!(tasks = published, "event fanned out");
        Ok(published)
    }

    /// Waits for a chunk's confirms, then records that the fan-out got past it, if `holder`
    /// still holds the claim; if not, the fan-out stops here (no further chunk is published).
    async fn settle(
        &self,
        event: &ValidEvent,
        holder: uuid::Uuid,
        (sent, last, count): (Vec<Pending>, WebhookId, usize),
    ) -> Result<u64, Transient> {
        Publisher::confirm_all(sent).await?;
        still_held(
            self.store
                .advance_fanout(
                    event.id,
                    holder,
                    last,
                    count as i64,
                    self.settings.fanout.claim_lease,
                )
                .await?,
        )?;
        metrics::counter!("aioka_fanout_tasks_total").increment(count as u64);
        Ok(count as u64)
    }

    /// Hands the chunk's first attempts to the broker: batches of at most
    /// `fanout.batch_size` webhooks of one shard (one task each when it is 1); returns the
    /// confirms to wait for.
    async fn publish_tasks(
        &self,
        publisher: &Publisher,
        event: &ValidEvent,
        body: &str,
        webhooks: &[WebhookId],
    ) -> Result<Vec<Pending>, QueueError> {
        let headers = inject_trace_context();
        let batch_size = self.settings.fanout.batch_size as usize;
        let mut pending = Vec::new();
        if batch_size <= 1 {
            for webhook in webhooks {
                let delivery_id = DeliveryId::for_pair(event.id, *webhook);
                let (exchange, key) = self.topology.task_route(*webhook);
                let task = Task::V1(
                    DeliveryTask {
                        delivery_id,
                        event_id: event.id,
                        webhook_id: *webhook,
                        event_type: event.envelope.event,
                        body: body.to_owned(),
                        attempt: 1,
                        series_start: 1,
                        auth: None,
                        test: false,
                    }
                    .authenticated(&self.task_key),
                );
                let props = persistent_json(Some(&delivery_id.to_string()), headers.clone());
                pending.push(
                    publisher
                        .start(&exchange, &key, &task.to_bytes(), props)
                        .await?,
                );
            }
            return Ok(pending);
        }
        // Per shard, in the chunk's order; a batch goes out when it is full, the rest at the
        // end of the chunk.
        let mut open: BTreeMap<u16, Vec<WebhookId>> = BTreeMap::new();
        let mut full = Vec::new();
        for webhook in webhooks {
            let batch = open.entry(self.topology.shard_of(*webhook)).or_default();
            batch.push(*webhook);
            if batch.len() >= batch_size {
                full.push(std::mem::take(batch));
            }
        }
        full.extend(open.into_values().filter(|b| !b.is_empty()));
        for batch in full {
            let (exchange, key) = self.topology.task_route(batch[0]);
            // The message id names the event and the batch's first delivery: unique per
            // batch, stable when a chunk is published again.
            let message_id = DeliveryId::for_pair(event.id, batch[0]);
            let task = Task::V2(
                BatchTask {
                    event_id: event.id,
                    event_type: event.envelope.event,
                    body: body.to_owned(),
                    webhooks: batch,
                    auth: None,
                }
                .authenticated(&self.task_key),
            );
            let props = persistent_json(Some(&message_id.to_string()), headers.clone());
            pending.push(
                publisher
                    .start(&exchange, &key, &task.to_bytes(), props)
                    .await?,
            );
        }
        Ok(pending)
    }
}
