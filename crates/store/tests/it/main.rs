//! The store's queries against the machine's PostgreSQL, one fresh database per test.
#![allow(clippy::unwrap_used)]

mod fanout;
mod partitions;
mod reach;
mod recording;
mod recovery;

use aioka_core::event::EventType;
use aioka_core::{ApiKeyId, EncryptionKey, WebhookId, WebhookSecret};
use aioka_store::SeedWebhook;
use aioka_testkit::TestDb;

/// A connection of the test's own to its database, for what the store does not offer.
async fn sql(db: &TestDb) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// A seeded webhook for verdicts and its owner's key.
async fn webhook(db: &TestDb) -> (WebhookId, ApiKeyId) {
    let id = db
        .store
        .seed_webhooks(
            &[SeedWebhook {
                url: "https://example.test/hook".into(),
                secret: None,
            }],
            &[EventType::VerdictNew],
            &WebhookSecret::generate(),
            &EncryptionKey::generate(),
            1,
        )
        .await
        .unwrap()[0];
    let owner: uuid::Uuid = sql(db)
        .await
        .query_one(
            "SELECT api_key_id FROM webhooks WHERE id = $1",
            &[&id.as_uuid()],
        )
        .await
        .unwrap()
        .get(0);
    (id, ApiKeyId::from_uuid(owner))
}
