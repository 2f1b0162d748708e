//! The delivery service's settings: `[database]`, `[amqp]`, `[security]`, `[delivery]`,
//! `[telemetry]`.

use std::net::SocketAddr;
use std::time::Duration;

use aioka_core::retry::RetrySchedule;
use aioka_queue::AmqpSettings;
use aioka_runtime::settings::duration;
use aioka_runtime::{SecuritySettings, SettingsError, TelemetrySettings};
use aioka_store::DatabaseSettings;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub security: SecuritySettings,
    pub delivery: DeliverySettings,
    pub telemetry: TelemetrySettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    pub health_listen: String,
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    pub retry_schedule: String,
    pub disable_after: u32,
    pub max_in_flight: u16,
    pub max_in_flight_per_webhook: u16,
    pub response_snippet_bytes: usize,
    pub max_response_bytes: usize,
    pub extra_root_certs: String,
    pub tls_ticket_bytes: usize,
    pub record_batch_size: usize,
    pub record_writers: usize,
    #[serde(deserialize_with = "duration")]
    pub record_flush_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub cache_ttl: Duration,
}

impl Settings {
    pub fn load() -> Result<Self, SettingsError> {
        let settings: Self = aioka_runtime::load()?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        let d = &self.delivery;
        let invalid =
            |key: &str, problem: &str| Err(SettingsError::invalid("delivery", key, problem));
        self.security.encryption_key()?;
        self.health_addr()?;
        self.retry_schedule()?;
        self.database
            .partition_policy()
            .map_err(|e| SettingsError::invalid("database", e.key, e.problem))?;
        if d.timeout.is_zero() {
            return invalid("timeout", "must be more than 0");
        }
        if d.connect_timeout.is_zero() || d.connect_timeout > d.timeout {
            return invalid(
                "connect_timeout",
                "must be more than 0 and at most delivery.timeout",
            );
        }
        if d.shutdown_grace < d.timeout {
            return invalid(
                "shutdown_grace",
                "must be at least delivery.timeout, or attempts are cut off",
            );
        }
        if d.disable_after == 0 {
            return invalid("disable_after", "must be at least 1");
        }
        if d.max_in_flight == 0 {
            return invalid("max_in_flight", "must be at least 1");
        }
        if d.max_in_flight_per_webhook == 0 {
            return invalid("max_in_flight_per_webhook", "must be at least 1");
        }
        if d.response_snippet_bytes > d.max_response_bytes {
            return invalid(
                "response_snippet_bytes",
                "must be at most delivery.max_response_bytes",
            );
        }
        if d.record_batch_size == 0 {
            return invalid("record_batch_size", "must be at least 1");
        }
        if d.record_writers == 0 || d.record_writers > 16 {
            return invalid(
                "record_writers",
                "must be 1 to 16 (each holds a database connection)",
            );
        }
        if !d.extra_root_certs.is_empty() && !std::path::Path::new(&d.extra_root_certs).is_file() {
            return invalid("extra_root_certs", "is not a readable file");
        }
        Ok(())
    }

    pub fn health_addr(&self) -> Result<SocketAddr, SettingsError> {
        aioka_runtime::settings::socket_addr(
            "delivery",
            "health_listen",
            &self.delivery.health_listen,
        )
    }

    pub fn retry_schedule(&self) -> Result<RetrySchedule, SettingsError> {
        aioka_runtime::settings::retry_schedule(&self.delivery.retry_schedule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_the_settings_prints_no_secret_and_no_password() {
        let key = aioka_core::EncryptionKey::generate().to_base64();
        let settings: Settings = aioka_runtime::settings::load_from([
            ("AIOKA__SECURITY__SECRET_KEY".to_owned(), key.clone()),
            (
                "AIOKA__DATABASE__URL".to_owned(),
                "postgres://app:hunter2@db:5432/aioka".to_owned(),
            ),
            (
                "AIOKA__AMQP__URL".to_owned(),
                "amqp://app:s3cret@mq:5672/%2f".to_owned(),
            ),
        ])
        .unwrap();
        let printed = format!("{settings:?}");
        for secret in [key.as_str(), "hunter2", "s3cret"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(printed.contains("[redacted]") && printed.contains("REDACTED"));
    }
}
