//! API keys: stored as SHA-256 hashes only.

use aioka_core::tier::Tier;
use aioka_core::{ApiKey, ApiKeyId, KeyKind};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;

use crate::{Store, StoreError};

/// A key to create. The plaintext is hashed here and dropped by the caller after printing.
#[derive(Debug)]
pub struct NewKey<'a> {
    pub name: &'a str,
    pub kind: KeyKind,
    /// `Some` for customer keys, `None` for producer keys.
    pub tier: Option<Tier>,
    pub key: &'a ApiKey,
}

/// A stored key, without any secret part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    pub id: ApiKeyId,
    pub name: String,
    #[serde(serialize_with = "kind_str")]
    pub kind: KeyKind,
    #[serde(serialize_with = "tier_str")]
    pub tier: Option<Tier>,
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

fn kind_str<S: serde::Serializer>(kind: &KeyKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.as_str())
}

fn tier_str<S: serde::Serializer>(tier: &Option<Tier>, s: S) -> Result<S::Ok, S::Error> {
    match tier {
        Some(t) => s.serialize_str(t.as_str()),
        None => s.serialize_none(),
    }
}

const COLUMNS: &str = "id, name, kind, tier, key_prefix, created_at, revoked_at";

fn from_row(row: &Row) -> Result<KeyRecord, StoreError> {
    let kind: String = row.try_get("kind")?;
    let tier: Option<String> = row.try_get("tier")?;
    Ok(KeyRecord {
        id: ApiKeyId::from_uuid(row.try_get("id")?),
        name: row.try_get("name")?,
        kind: KeyKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("key kind {kind}")))?,
        tier: tier
            .map(|t| t.parse::<Tier>())
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        key_prefix: row.try_get("key_prefix")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

impl Store {
    #[tracing::instrument(skip_all, fields(kind = new.kind.as_str()))]
    pub async fn insert_key(&self, new: &NewKey<'_>) -> Result<KeyRecord, StoreError> {
        let client = self.pool.get().await?;
        let id = ApiKeyId::new();
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO api_keys (id, name, kind, tier, key_hash, key_prefix)
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
                ),
                &[
                    &id.as_uuid(),
                    &new.name,
                    &new.kind.as_str(),
                    &new.tier.map(Tier::as_str),
                    &new.key.hash().as_slice(),
                    &new.key.display_prefix(),
                ],
            )
            .await?;
        from_row(&row)
    }

    #[tracing::instrument(skip_all)]
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(&format!("SELECT {COLUMNS} FROM api_keys ORDER BY id"), &[])
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Revokes a key; `false` if there is no such key or it was already revoked.
    #[tracing::instrument(skip_all, fields(key_id = %id))]
    pub async fn revoke_key(&self, id: ApiKeyId) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                &[&id.as_uuid()],
            )
            .await?;
        Ok(n == 1)
    }

    /// The key with this plaintext, if it exists and is not revoked.
    #[tracing::instrument(skip_all)]
    pub async fn find_active_key(&self, key: &ApiKey) -> Result<Option<KeyRecord>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL"
                ),
                &[&key.hash().as_slice()],
            )
            .await?;
        row.as_ref().map(from_row).transpose()
    }
}
