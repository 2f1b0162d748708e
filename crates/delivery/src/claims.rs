//! The batch claimer: retries and redelivered tasks claim their attempts before sending
//! (`Store::claim_attempts`), and the claims of the tasks that ask within
//! `record_flush_interval` (up to `record_batch_size`) go to the database as one statement,
//! as records do. One statement per claim cost PostgreSQL about 175 µs each when a tenth of
//! the endpoints failed (docs/bench-findings.md); a batch costs a fraction of that per claim.
//! A batch that fails answers each of its asks with the error, and each asks again.

use std::sync::Arc;
use std::time::Duration;

use aioka_store::{AttemptClaim, ClaimAsk, Store};
use tokio::sync::{Notify, mpsc, oneshot};

/// The claim could not be asked: the database failed the batch, or the claimer has stopped.
#[derive(Debug, thiserror::Error)]
#[error("claiming the attempt failed: {0}")]
pub struct NotClaimed(String);

type Reply = oneshot::Sender<Result<AttemptClaim, NotClaimed>>;

#[derive(Debug, Clone)]
pub struct Claimer {
    tx: mpsc::Sender<(ClaimAsk, Reply)>,
    /// Ends the batch being gathered at once (`claim_now`).
    flush: Arc<Notify>,
}

impl Claimer {
    /// Starts the batching loop; it ends when the last `Claimer` is dropped, after answering
    /// every ask it holds.
    pub fn start(
        store: Store,
        lease: Duration,
        batch_size: usize,
        flush_interval: Duration,
        writers: usize,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(batch_size.max(1) * 4);
        let flush = Arc::new(Notify::new());
        let run = tokio::spawn(claim_loop(
            store,
            lease,
            batch_size.max(1),
            (flush_interval, flush.clone()),
            writers,
            rx,
        ));
        (Self { tx, flush }, run)
    }

    /// Claims `ask` with the next batch and waits for its answer; with `now`, that batch goes
    /// at once (an ordered webhook's line waits on this claim).
    pub async fn claim(&self, ask: ClaimAsk, now: bool) -> Result<AttemptClaim, NotClaimed> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((ask, done))
            .await
            .map_err(|_| NotClaimed("the claimer has stopped".into()))?;
        if now {
            self.flush.notify_one();
        }
        wait.await
            .map_err(|_| NotClaimed("the claimer has stopped".into()))?
    }
}

async fn claim_loop(
    store: Store,
    lease: Duration,
    batch_size: usize,
    (flush_interval, flush): (Duration, Arc<Notify>),
    writers: usize,
    mut rx: mpsc::Receiver<(ClaimAsk, Reply)>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(writers.max(1)));
    let mut running = tokio::task::JoinSet::new();
    while let Some(first) = rx.recv().await {
        let batch =
            crate::recorder::gather(&mut rx, first, batch_size, flush_interval, &flush).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let store = store.clone();
        running.spawn(async move {
            claim_batch(&store, lease, batch).await;
            drop(permit);
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

async fn claim_batch(store: &Store, lease: Duration, batch: Vec<(ClaimAsk, Reply)>) {
    let (asks, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    metrics::histogram!("aioka_delivery_claim_batch_size").record(asks.len() as f64);
    match store.claim_attempts(&asks, lease).await {
        Ok(claims) => {
            for (reply, claim) in replies.into_iter().zip(claims) {
                let _ = reply.send(Ok(claim));
            }
        }
        Err(e) => {
            let error = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(NotClaimed(error.clone())));
            }
        }
    }
}
