//! The webhook cache: url, secret and state per webhook, so an attempt needs no database
//! round trip of its own.
//!
//! Misses are loaded in batches (every miss that arrives while a load runs joins the next
//! one, up to 500 ids per query), so a cold cache facing 100 000 distinct webhooks makes a few
//! hundred queries, not 100 000. Entries are dropped on a PostgreSQL change notice (delete,
//! disable, enable, URL change), all at once when the notice connection drops (we may have
//! missed some), and after `delivery.cache_ttl` in any case.

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
    },
    Disabled,
    /// Deleted, or never existed.
    Gone,
    /// The stored secret does not decrypt with this process's key: an operator must fix the
    /// key before this webhook can be served.
    Undecryptable,
}

type Reply = oneshot::Sender<Result<Arc<Target>, Arc<StoreError>>>;
/// Each entry remembers when it was loaded.
type Entries = HashMap<WebhookId, (Instant, Arc<Target>)>;

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
        let (at, target) = entries.get(&id)?;
        (at.elapsed() < self.ttl).then(|| target.clone())
    }

    pub fn invalidate(&self, id: WebhookId) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&id);
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
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sweep.tick() => {
                    self.evict_expired();
                    continue;
                }
                next = rx.recv() => match next { Some(f) => f, None => return },
            };
            let mut waiting: HashMap<WebhookId, Vec<Reply>> = HashMap::new();
            waiting.entry(first.0).or_default().push(first.1);
            while waiting.len() < LOAD_BATCH {
                match rx.try_recv() {
                    Ok((id, reply)) => waiting.entry(id).or_default().push(reply),
                    Err(_) => break,
                }
            }
            let ids: Vec<WebhookId> = waiting.keys().copied().collect();
            match store.delivery_targets(&ids).await {
                Ok(rows) => {
                    let mut found: HashMap<WebhookId, Arc<Target>> = rows
                        .into_iter()
                        .map(|row| {
                            let target = if row.deleted {
                                Target::Gone
                            } else if !row.is_active {
                                Target::Disabled
                            } else {
                                match key
                                    .open_secret(&row.secret_sealed, row.id.as_uuid().as_bytes())
                                {
                                    Ok(secret) => Target::Active {
                                        url: row.url,
                                        secret,
                                    },
                                    Err(_) => Target::Undecryptable,
                                }
                            };
                            (row.id, Arc::new(target))
                        })
                        .collect();
                    let now = Instant::now();
                    let mut entries = self.entries.lock().ok();
                    for (id, replies) in waiting {
                        let target = found.remove(&id).unwrap_or_else(|| Arc::new(Target::Gone));
                        if let Some(entries) = entries.as_mut() {
                            entries.insert(id, (now, target.clone()));
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
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
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
