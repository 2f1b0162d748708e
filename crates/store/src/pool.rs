//! The connection pool and migrations.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use serde::Deserialize;
use tokio_postgres::NoTls;

use crate::StoreError;
use crate::partitions::{InvalidSetting, PartitionPolicy};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// `[database]` settings. `Debug` hides the URL's password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub pool_size: usize,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// See [`PartitionPolicy`].
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    #[serde(deserialize_with = "duration")]
    pub partition_interval: Duration,
    pub partitions_ahead: u32,
}

impl DatabaseSettings {
    /// Settings for `url` with the default partition policy (tests and tools that build
    /// their settings rather than load them).
    pub fn new(url: impl Into<String>, pool_size: usize, connect_timeout: Duration) -> Self {
        let policy = PartitionPolicy::default();
        Self {
            url: url.into(),
            pool_size,
            connect_timeout,
            retention: policy.retention,
            partition_interval: policy.interval,
            partitions_ahead: policy.ahead,
        }
    }

    /// The partition policy, validated; the error names the setting.
    pub fn partition_policy(&self) -> Result<PartitionPolicy, InvalidSetting> {
        let policy = PartitionPolicy {
            retention: self.retention,
            interval: self.partition_interval,
            ahead: self.partitions_ahead,
        };
        policy.validate()?;
        Ok(policy)
    }
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &aioka_core::secret::redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("retention", &self.retention)
            .field("partition_interval", &self.partition_interval)
            .field("partitions_ahead", &self.partitions_ahead)
            .finish()
    }
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    /// How the delivery log is partitioned and kept: maintenance, repairs and the API's
    /// answers about how far back the log reaches follow it.
    pub(crate) policy: PartitionPolicy,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("status", &self.pool.status())
            .field("policy", &self.policy)
            .finish()
    }
}

/// A key for `pg_advisory_lock` so two processes never migrate at once.
const MIGRATION_LOCK: i64 = 0x4149_4f4b_415f_4d49; // "AIOKA_MI"

impl Store {
    /// Builds the pool. Connections are opened lazily; call [`Store::ping`] to check.
    pub fn connect(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let policy = settings
            .partition_policy()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        let config: tokio_postgres::Config = settings
            .url
            .parse()
            .map_err(|e| StoreError::Config(format!("database.url is not valid: {e}")))?;
        let mut config = config;
        config.connect_timeout(settings.connect_timeout);
        config.application_name("aioka");
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(settings.connect_timeout),
                create: Some(settings.connect_timeout),
                recycle: Some(settings.connect_timeout),
            })
            .build()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        Ok(Self { pool, policy })
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// A readiness probe (for `Health::watch`): does the database answer?
    pub fn readiness_probe(
        &self,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = bool> + Send>> + Send + 'static {
        let store = self.clone();
        move || {
            let store = store.clone();
            Box::pin(async move { store.ping().await.is_ok() })
        }
    }

    /// Applies every migration not yet applied, holding an advisory lock so concurrent
    /// callers (several pods starting together) take turns.
    #[tracing::instrument(skip_all)]
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        self.migrate_until(refinery::Target::Latest).await
    }

    /// Applies the migrations up to and including `version` only: tests of a migration start
    /// from the schema before it.
    pub async fn migrate_to(&self, version: u32) -> Result<usize, StoreError> {
        let version = refinery::SchemaVersion::try_from(version)
            .map_err(|_| StoreError::Migration(format!("no migration {version}")))?;
        self.migrate_until(refinery::Target::Version(version)).await
    }

    async fn migrate_until(&self, target: refinery::Target) -> Result<usize, StoreError> {
        let mut client = self.pool.get().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let client_ref: &mut tokio_postgres::Client = &mut client;
        let result = embedded::migrations::runner()
            .set_target(target)
            .run_async(client_ref)
            .await
            .map(|report| report.applied_migrations().len())
            .map_err(|e| StoreError::Migration(e.to_string()));
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await?;
        result
    }
}
