//! The webhook cache: url, secret and state per webhook, so an attempt needs no database
//! round trip of its own.
//!
//! Misses are loaded in batches (every miss that arrives while a load runs joins the next
//! one, up to 500 ids per query), so a cold cache facing 100 000 distinct webhooks makes a few
//! hundred queries, not 100 000. Entries are dropped on a PostgreSQL change notice (delete,
//! disable, enable, URL change, and any change of the owner's key: revoked, tier), all at
//! once when the notice connection drops (we may have missed some), and after
//! `delivery.cache_ttl` in any case.
//!
//! A load that was running when a notice came may have read the row from before the change:
//! its result is not cached and its waiters are answered by a fresh load ([`Entries`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aioka_core::{EncryptionKey, WebhookId, WebhookSecret};
use aioka_store::{DatabaseSettings, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Where a task's webhook stands.
#[derive(Debug)]
pub enum Target {
    Active {
        url: String,
        secret: WebhookSecret,
        /// The secret a rotation replaced, and when it stops being used (the attempt's time
        /// decides, not the cache's age).
        previous: Option<(WebhookSecret, chrono::DateTime<chrono::Utc>)>,
        /// Ordered delivery: one at a time, in event order (`aioka_store::Turn`).
        fifo: bool,
    },
    /// Not to be sent, for `reason`: the webhook is disabled or deleted (or never existed), or
    /// its owner's key no longer receives deliveries (revoked, or on the Free tier). `fifo`:
    /// it is ordered, so a skip hands the turn on to the next in its line.
    Skip { reason: &'static str, fifo: bool },
    /// The stored secret does not decrypt with this process's key: an operator must fix the
    /// key before this webhook can be served.
    Undecryptable,
}

type Reply = oneshot::Sender<Result<Arc<Target>, Arc<StoreError>>>;

/// The cached targets (each remembers when it was loaded), and what was invalidated while
/// the one loader's current load ran.
#[derive(Debug, Default)]
struct Entries {
    targets: HashMap<WebhookId, (Instant, Arc<Target>)>,
    /// Ids invalidated since the current load began.
    invalidated: std::collections::HashSet<WebhookId>,
    /// Everything was invalidated since the current load began.
    cleared: bool,
}

impl Entries {
    /// A load is about to read the database: changes from now on make its result suspect.
    fn begin_load(&mut self) {
        self.invalidated.clear();
        self.cleared = false;
    }

    fn invalidate(&mut self, id: WebhookId) {
        self.targets.remove(&id);
        self.invalidated.insert(id);
    }

    fn clear(&mut self) {
        self.targets.clear();
        self.cleared = true;
    }

    /// Whether `id` changed while the current load ran, so its loaded row may be stale.
    fn changed_during_load(&self, id: WebhookId) -> bool {
        self.cleared || self.invalidated.contains(&id)
    }

    /// Caches a loaded target unless it changed during the load; returns whether it did.
    fn finish_load(&mut self, id: WebhookId, at: Instant, target: &Arc<Target>) -> bool {
        if self.changed_during_load(id) {
            return false;
        }
        self.targets.insert(id, (at, target.clone()));
        true
    }
}

#[derive(Debug, Clone)]
pub struct Cache {
    entries: Arc<Mutex<Entries>>,
    ttl: Duration,
    loads: mpsc::Sender<(WebhookId, Reply)>,
}

const LOAD_BATCH: usize = 500;

impl Cache {
    pub fn start(
        store: Store,
        key: Arc<EncryptionKey>,
        ttl: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let (loads, rx) = mpsc::channel(4096);
        let cache = Self {
            entries: Arc::default(),
            ttl,
            loads,
        };
        tokio::spawn(cache.clone().loader(store, key, rx, shutdown));
        cache
    }

    /// The target of `id`, from memory if fresh, else loaded.
    pub async fn get(&self, id: WebhookId) -> Result<Arc<Target>, Arc<StoreError>> {
        if let Some(target) = self.fresh(id) {
            metrics::counter!("aioka_delivery_cache_total", "result" => "hit").increment(1);
            return Ok(target);
        }
        metrics::counter!("aioka_delivery_cache_total", "result" => "miss").increment(1);
        let (tx, rx) = oneshot::channel();
        let closed = || Arc::new(StoreError::Config("the cache loader stopped".into()));
        self.loads.send((id, tx)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    fn fresh(&self, id: WebhookId) -> Option<Arc<Target>> {
        let entries = self.entries.lock().ok()?;
        let (at, target) = entries.targets.get(&id)?;
        (at.elapsed() < self.ttl).then(|| target.clone())
    }

    pub fn invalidate(&self, id: WebhookId) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.invalidate(id);
        }
    }

    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }

    async fn loader(
        self,
        store: Store,
        key: Arc<EncryptionKey>,
        mut rx: mpsc::Receiver<(WebhookId, Reply)>,
        shutdown: CancellationToken,
    ) {
        let mut sweep = tokio::time::interval(self.ttl.max(Duration::from_secs(1)));
        // Waiters whose webhook changed while their load ran: loaded again first.
        let mut again: HashMap<WebhookId, Vec<Reply>> = HashMap::new();
        loop {
            let mut waiting: HashMap<WebhookId, Vec<Reply>> = std::mem::take(&mut again);
            if waiting.is_empty() {
                let first = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = sweep.tick() => {
                        self.evict_expired();
                        continue;
                    }
                    next = rx.recv() => match next { Some(f) => f, None => return },
                };
                waiting.entry(first.0).or_default().push(first.1);
            }
            while waiting.len() < LOAD_BATCH {
                match rx.try_recv() {
                    Ok((id, reply)) => waiting.entry(id).or_default().push(reply),
                    Err(_) => break,
                }
            }
            let ids: Vec<WebhookId> = waiting.keys().copied().collect();
            if let Ok(mut entries) = self.entries.lock() {
                entries.begin_load();
            }
            match store.delivery_targets(&ids).await {
                Ok(rows) => {
                    let mut found: HashMap<WebhookId, Arc<Target>> = rows
                        .into_iter()
                        .map(|row| {
                            let skip = |reason| Target::Skip {
                                reason,
                                fifo: row.fifo,
                            };
                            let target = if row.deleted {
                                skip("webhook deleted")
                            } else if row.key_revoked {
                                skip("api key revoked")
                            } else if row.key_free_tier {
                                skip("api key on the free tier")
                            } else if !row.is_active {
                                skip("webhook disabled")
                            } else {
                                let uuid = row.id.as_uuid();
                                let context = uuid.as_bytes();
                                let previous = row
                                    .previous_secret
                                    .as_ref()
                                    .map(|(sealed, until)| {
                                        key.open_secret(sealed, context).map(|s| (s, *until))
                                    })
                                    .transpose();
                                match (key.open_secret(&row.secret_sealed, context), previous) {
                                    (Ok(secret), Ok(previous)) => Target::Active {
                                        url: row.url,
                                        secret,
                                        previous,
                                        fifo: row.fifo,
                                    },
                                    _ => Target::Undecryptable,
                                }
                            };
                            (row.id, Arc::new(target))
                        })
                        .collect();
                    let now = Instant::now();
                    let mut entries = self.entries.lock().ok();
                    for (id, replies) in waiting {
                        let target = found.remove(&id).unwrap_or_else(|| {
                            Arc::new(Target::Skip {
                                reason: "webhook deleted",
                                fifo: false,
                            })
                        });
                        let fresh = entries
                            .as_mut()
                            .is_none_or(|e| e.finish_load(id, now, &target));
                        if !fresh {
                            // Read before a change we were told of: ask again.
                            again.insert(id, replies);
                            continue;
                        }
                        for reply in replies {
                            let _ = reply.send(Ok(target.clone()));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, webhooks = waiting.len(), "loading webhooks failed; tasks wait and retry");
                    let e = Arc::new(e);
                    for reply in waiting.into_values().flatten() {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    fn evict_expired(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            let ttl = self.ttl;
            entries.targets.retain(|_, (at, _)| at.elapsed() < ttl);
        }
    }

    /// Follows change notices until `shutdown`, reconnecting when the listener drops.
    pub async fn follow_changes(self, settings: DatabaseSettings, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            match aioka_store::listen_webhook_changes(&settings).await {
                Ok(mut notices) => {
                    // Anything cached before listening may have changed unseen.
                    self.clear();
                    backoff = Duration::from_millis(200);
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            notice = notices.recv() => match notice {
                                Some(id) => self.invalidate(id),
                                None => break,
                            },
                        }
                    }
                    self.clear();
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen for webhook changes; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active() -> Arc<Target> {
        Arc::new(Target::Active {
            url: "https://example.test/".into(),
            secret: WebhookSecret::generate(),
            previous: None,
            fifo: false,
        })
    }

    #[test]
    fn a_load_that_began_before_an_invalidation_is_not_cached() {
        let mut entries = Entries::default();
        let (changed, untouched) = (WebhookId::new(), WebhookId::new());
        entries.begin_load();
        // The change notice arrives while the query is running.
        entries.invalidate(changed);
        assert!(!entries.finish_load(changed, Instant::now(), &active()));
        assert!(entries.finish_load(untouched, Instant::now(), &active()));
        assert!(!entries.targets.contains_key(&changed));
        assert!(entries.targets.contains_key(&untouched));
    }

    #[test]
    fn a_load_that_began_before_the_notices_were_lost_is_not_cached() {
        let mut entries = Entries::default();
        entries.begin_load();
        entries.clear();
        assert!(!entries.finish_load(WebhookId::new(), Instant::now(), &active()));
    }

    #[test]
    fn an_invalidation_before_the_load_began_does_not_block_it() {
        let mut entries = Entries::default();
        let id = WebhookId::new();
        entries.invalidate(id);
        entries.begin_load();
        assert!(entries.finish_load(id, Instant::now(), &active()));
    }
}
