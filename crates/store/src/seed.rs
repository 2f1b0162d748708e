//! Bulk seeding for benchmarks and fault tests: many keys and webhooks in few statements.
//! It bypasses the customer API's rules (5 per key, URL policy) on purpose, and is never
//! called by a service.

use aioka_core::event::EventType;
use aioka_core::tier::Tier;
use aioka_core::{ApiKey, ApiKeyId, EncryptionKey, KeyKind, WebhookId, WebhookSecret};
use uuid::Uuid;

use crate::webhooks::events_to_db;
use crate::{Store, StoreError};

/// One webhook to seed; every one gets its own customer key when `per_key` is 1.
#[derive(Debug, Clone)]
pub struct SeedWebhook {
    pub url: String,
    /// Its own signing secret; `None`: the `secret` given to [`Store::seed_webhooks`].
    pub secret: Option<WebhookSecret>,
}

impl Store {
    /// Creates `webhooks.len()` webhooks subscribed to `events`, each signing with its own
    /// secret or else with `secret`, spread over Basic keys of `per_key` webhooks each, in batches of 5 000.
    /// Returns the webhook ids in the order given.
    #[tracing::instrument(skip_all, fields(count = webhooks.len()))]
    pub async fn seed_webhooks(
        &self,
        webhooks: &[SeedWebhook],
        events: &[EventType],
        secret: &WebhookSecret,
        key: &EncryptionKey,
        per_key: usize,
    ) -> Result<Vec<WebhookId>, StoreError> {
        let per_key = per_key.max(1);
        let events = events_to_db(events);
        let mut ids = Vec::with_capacity(webhooks.len());
        for batch in webhooks.chunks(5_000) {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let owners: Vec<ApiKeyId> = (0..batch.len().div_ceil(per_key))
                .map(|_| ApiKeyId::new())
                .collect();
            let hashes: Vec<Vec<u8>> = owners
                .iter()
                .map(|_| ApiKey::generate(KeyKind::Customer).hash().to_vec())
                .collect();
            let owner_ids: Vec<Uuid> = owners.iter().map(|k| k.as_uuid()).collect();
            tx.execute(
                "INSERT INTO api_keys (id, name, kind, tier, key_hash, key_prefix)
                 SELECT id, 'seeded', 'customer', $3, hash, 'seeded' FROM unnest($1::uuid[], $2::bytea[]) AS t(id, hash)",
                &[&owner_ids, &hashes, &Tier::Basic.as_str()],
            )
            .await?;
            let hook_ids: Vec<WebhookId> = batch.iter().map(|_| WebhookId::new()).collect();
            let uuids: Vec<Uuid> = hook_ids.iter().map(|w| w.as_uuid()).collect();
            let owners_of: Vec<Uuid> = (0..batch.len()).map(|i| owner_ids[i / per_key]).collect();
            let urls: Vec<&str> = batch.iter().map(|w| w.url.as_str()).collect();
            let sealed: Vec<Vec<u8>> = hook_ids
                .iter()
                .zip(batch)
                .map(|(w, seed)| {
                    key.seal_secret(
                        seed.secret.as_ref().unwrap_or(secret),
                        w.as_uuid().as_bytes(),
                    )
                })
                .collect();
            tx.execute(
                "INSERT INTO webhooks (id, api_key_id, url, events, secret_sealed)
                 SELECT id, owner, url, $4, sealed
                 FROM unnest($1::uuid[], $2::uuid[], $3::text[], $5::bytea[]) AS t(id, owner, url, sealed)",
                &[&uuids, &owners_of, &urls, &events, &sealed],
            )
            .await?;
            tx.commit().await?;
            ids.extend(hook_ids);
        }
        Ok(ids)
    }

    /// Of the deliveries of `events`: how many have an attempt recorded, how many succeeded,
    /// and how many are still pending (benchmarks check that records keep pace and that a
    /// healthy run leaves nothing pending). One query for all the events: with no index on
    /// the event (the services never need one) it reads their partitions once.
    pub async fn event_delivery_counts(
        &self,
        events: &[aioka_core::EventId],
    ) -> Result<(i64, i64, i64), StoreError> {
        let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.as_uuid()).collect();
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE attempts > 0), count(*) FILTER (WHERE status = 'succeeded'),
                        count(*) FILTER (WHERE status = 'pending')
                 FROM deliveries
                 WHERE event_id = ANY($1)
                   AND event_received_at = ANY(ARRAY(SELECT received_at FROM events WHERE id = ANY($1)))",
                &[&ids],
            )
            .await?;
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    }
}
