//! Test support: a fresh PostgreSQL database and a fresh RabbitMQ name prefix per test, so
//! tests run in parallel against the machine's real services and clean up after themselves,
//! and settings built through the same loader the binaries use.
//!
//! Nothing here fakes PostgreSQL or RabbitMQ.
#![forbid(unsafe_code)]

pub mod api;
mod broker;
mod db;
pub mod receiver;

pub use api::Api;
pub use broker::TestBroker;
pub use db::TestDb;
pub use receiver::{Received, Receiver, TestCa, resetting_endpoint};

use aioka_core::EncryptionKey;

/// Environment-style settings for a service under test: the real loader reads them exactly as
/// it reads `AIOKA__…` variables in production.
#[derive(Debug, Clone)]
pub struct TestEnv {
    vars: Vec<(String, String)>,
}

impl TestEnv {
    /// Settings pointing at `db` (and `broker`), with a fresh encryption key, private targets
    /// allowed (receivers run on 127.0.0.1) and quiet logs.
    pub fn new(db: &TestDb, broker: Option<&TestBroker>) -> Self {
        let mut env = Self { vars: Vec::new() };
        env.set("AIOKA__DATABASE__URL", &db.url);
        env.set("AIOKA__DATABASE__POOL_SIZE", "8");
        env.set(
            "AIOKA__SECURITY__SECRET_KEY",
            &EncryptionKey::generate().to_base64(),
        );
        env.set("AIOKA__SECURITY__ALLOW_PRIVATE_TARGETS", "true");
        env.set("AIOKA__GATEWAY__LISTEN", "127.0.0.1:0");
        env.set("AIOKA__GATEWAY__ADMIN_LISTEN", "127.0.0.1:0");
        // Tests hammer one key; the test of the limit itself sets a small one.
        env.set("AIOKA__GATEWAY__RATE_LIMIT", "1000");
        env.set("AIOKA__FANOUT__HEALTH_LISTEN", "127.0.0.1:0");
        env.set("AIOKA__DELIVERY__HEALTH_LISTEN", "127.0.0.1:0");
        if let Some(broker) = broker {
            env.set("AIOKA__AMQP__URL", &broker.url);
            env.set("AIOKA__AMQP__PREFIX", &broker.prefix);
            env.set(
                "AIOKA__DELIVERY__RETRY_SCHEDULE",
                &broker.schedule.to_string(),
            );
        }
        env
    }

    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.vars.retain(|(k, _)| k != key);
        self.vars.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Loads a service's settings type from these variables.
    pub fn load<T: serde::de::DeserializeOwned>(&self) -> T {
        aioka_runtime::settings::load_from(self.vars.clone()).expect("test settings load")
    }

    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }
}

/// The `[database]` partition policy that the settings `vars` (`AIOKA__…` variables) give,
/// read by the services' own loader.
pub fn partition_policy(
    vars: impl IntoIterator<Item = (String, String)>,
) -> aioka_store::PartitionPolicy {
    #[derive(serde::Deserialize)]
    struct Database {
        database: aioka_store::DatabaseSettings,
    }
    let settings: Database =
        aioka_runtime::settings::load_from(vars).expect("test database settings load");
    settings
        .database
        .partition_policy()
        .expect("test partition settings are valid")
}

/// Logs of the code under test, shown for failing tests (`RUST_LOG` picks the level).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .try_init();
}

/// Installs rustls's ring provider for the process (reqwest is built without a default one).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client for talking to services under test.
pub fn http_client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("test http client")
}

/// A random lowercase name part, unique enough for parallel tests.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &id[..12])
}
