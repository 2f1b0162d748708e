//! The batch writer: attempt records are written in batches (up to `record_batch_size`, or
//! whatever arrived within `record_flush_interval`), one transaction each, so the database is
//! off the per-attempt path. A message is acknowledged only after its record is committed.
//! Each record is answered with whether it was new ([`Recorded::Fresh`]) or its attempt was
//! already stored ([`Recorded::Duplicate`]: a redelivered task sent again), so the caller
//! starts a retry only for an attempt it recorded first.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use aioka_core::WebhookId;
use aioka_core::disable::DisableRule;
use aioka_store::{AttemptRecord, Store};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;

/// The record could not be written before shutdown; the caller requeues its message.
#[derive(Debug, thiserror::Error)]
#[error("the attempt record was not written")]
pub struct NotRecorded;

/// What became of a committed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The attempt was new: its outcome counted, its retry (if any) is the caller's to start.
    Fresh,
    /// The attempt was recorded before, or its event is gone (past the retention); this
    /// record changed nothing.
    Duplicate,
}

type Reply = oneshot::Sender<Result<Recorded, NotRecorded>>;

#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::Sender<(AttemptRecord, Reply)>,
    /// Ends the batch being gathered at once (`record_now`).
    flush: Arc<Notify>,
}

impl Recorder {
    pub fn start(
        store: Store,
        cache: Cache,
        rule: DisableRule,
        batch_size: usize,
        flush_interval: Duration,
        writers: usize,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(batch_size.max(1) * 4);
        let flush = Arc::new(Notify::new());
        let writer = tokio::spawn(write_loop(
            store,
            cache,
            rule,
            batch_size.max(1),
            (flush_interval, flush.clone()),
            writers,
            rx,
            shutdown,
        ));
        (Self { tx, flush }, writer)
    }

    /// Queues `record` and waits until it is committed. The writer ends, after writing
    /// everything queued, when the last `Recorder` is dropped.
    pub async fn record(&self, record: AttemptRecord) -> Result<Recorded, NotRecorded> {
        self.record_with(record, false).await
    }

    /// As [`Recorder::record`], and the batch it joins is written at once, not at the end of
    /// `record_flush_interval`: for a record something waits on (an ordered webhook's next
    /// delivery waits for this one's end).
    pub async fn record_now(&self, record: AttemptRecord) -> Result<Recorded, NotRecorded> {
        self.record_with(record, true).await
    }

    async fn record_with(&self, record: AttemptRecord, now: bool) -> Result<Recorded, NotRecorded> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((record, done))
            .await
            .map_err(|_| NotRecorded)?;
        if now {
            self.flush.notify_one();
        }
        wait.await.map_err(|_| NotRecorded)?
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    store: Store,
    cache: Cache,
    rule: DisableRule,
    batch_size: usize,
    (flush_interval, flush): (Duration, Arc<Notify>),
    writers: usize,
    mut rx: mpsc::Receiver<(AttemptRecord, Reply)>,
    shutdown: CancellationToken,
) {
    // Several batches may be in their transactions at once: one writer at a time capped the
    // whole process at one batch per commit latency (measured: about 5 000 records/s with
    // PostgreSQL busy). Concurrent batches lock webhooks in id order, so they cannot deadlock.
    //
    // A batch that shares a webhook with one still being written waits for that one first.
    // The row lock orders their commits anyway, but which of two concurrent batches takes it
    // first was a race, so a later batch could insert its deliveries (and take their log
    // order, seq) before an earlier one: the log showed them out of order (seen in
    // `manage::the_delivery_log_pages_newest_first` on a loaded machine). Waiting costs no
    // throughput: the second batch would have waited on the row lock.
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(writers.max(1)));
    let mut running = tokio::task::JoinSet::new();
    // The webhooks of each batch being written, and a receiver that ends when it is done.
    let mut in_flight: Vec<(HashSet<WebhookId>, watch::Receiver<()>)> = Vec::new();
    while let Some(first) = rx.recv().await {
        let batch = gather(&mut rx, first, batch_size, flush_interval, &flush).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        in_flight.retain(|(_, done)| done.has_changed().is_ok());
        let hooks: HashSet<WebhookId> = batch.iter().map(|(r, _)| r.webhook_id).collect();
        let mut before: Vec<watch::Receiver<()>> = in_flight
            .iter()
            .filter(|(other, _)| !other.is_disjoint(&hooks))
            .map(|(_, done)| done.clone())
            .collect();
        let (finished, done) = watch::channel(());
        in_flight.push((hooks, done));
        let (store, cache, shutdown) = (store.clone(), cache.clone(), shutdown.clone());
        running.spawn(async move {
            for earlier in &mut before {
                // Ends (with an error) when the earlier batch's writer drops its sender.
                let _ = earlier.changed().await;
            }
            write_batch(&store, &cache, rule, batch, &shutdown).await;
            drop(finished);
            drop(permit);
        });
        // Reap finished writers so the set does not grow.
        while running.try_join_next().is_some() {}
    }
    // The channel closed (shutdown): let the batches in their transactions finish.
    while running.join_next().await.is_some() {}
}

/// A batch: `first` and whatever else arrives within `wait` of it, up to `max` items (or
/// until the channel closes), or until `flush` is notified: then what is queued joins it
/// (an item is queued before its sender notifies) and it goes at once.
pub(crate) async fn gather<T>(
    rx: &mut mpsc::Receiver<T>,
    first: T,
    max: usize,
    wait: Duration,
    flush: &Notify,
) -> Vec<T> {
    let mut batch = vec![first];
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    while batch.len() < max {
        tokio::select! {
            _ = &mut deadline => break,
            () = flush.notified() => {
                while batch.len() < max {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                break;
            }
            next = rx.recv() => match next {
                Some(item) => batch.push(item),
                None => break,
            },
        }
    }
    batch
}

async fn write_batch(
    store: &Store,
    cache: &Cache,
    rule: DisableRule,
    batch: Vec<(AttemptRecord, Reply)>,
    shutdown: &CancellationToken,
) {
    let (records, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    match write_with_retry(store, &records, rule, shutdown).await {
        Some(written) => {
            if !written.partitions_created.is_empty() {
                metrics::counter!("aioka_partitions_created_total", "by" => "recorder")
                    .increment(written.partitions_created.len() as u64);
            }
            let disabled = written.disabled;
            metrics::counter!("aioka_delivery_records_total").increment(records.len() as u64);
            metrics::histogram!("aioka_delivery_record_batch_size").record(records.len() as f64);
            for d in disabled {
                cache.invalidate(d.webhook_id);
                let reason = if d.reason.contains("410") {
                    "gone"
                } else {
                    "consecutive_failures"
                };
                metrics::counter!("aioka_webhooks_disabled_total", "reason" => reason).increment(1);
                tracing::warn!(webhook_id = %d.webhook_id, reason = %d.reason, "webhook disabled");
            }
            let duplicates = written.fresh.iter().filter(|f| !**f).count();
            if duplicates > 0 {
                metrics::counter!("aioka_delivery_duplicate_records_total")
                    .increment(duplicates as u64);
            }
            for (reply, fresh) in replies.into_iter().zip(written.fresh) {
                let _ = reply.send(Ok(if fresh {
                    Recorded::Fresh
                } else {
                    Recorded::Duplicate
                }));
            }
        }
        None => {
            for reply in replies {
                let _ = reply.send(Err(NotRecorded));
            }
        }
    }
}

/// Writes a batch, retrying database failures with backoff; gives up only on shutdown.
async fn write_with_retry(
    store: &Store,
    records: &[AttemptRecord],
    rule: DisableRule,
    shutdown: &CancellationToken,
) -> Option<aioka_store::BatchWritten> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match store.record_batch(records, rule).await {
            Ok(written) => return Some(written),
            Err(e) => {
                tracing::warn!(error = %e, records = records.len(), retry_in = ?backoff, "writing attempt records failed");
                if shutdown.is_cancelled() {
                    return None;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
