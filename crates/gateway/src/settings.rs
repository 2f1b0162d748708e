//! The gateway's settings: `[database]`, `[amqp]`, `[security]`, `[gateway]`, `[telemetry]`,
//! and the retry schedule of `[delivery]` (to declare the same topology as the other services).

use std::net::SocketAddr;
use std::time::Duration;

use aioka_queue::AmqpSettings;
use aioka_runtime::settings::{RetryScheduleOnly, duration};
use aioka_runtime::{SecuritySettings, SettingsError, TelemetrySettings};
use aioka_store::DatabaseSettings;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub security: SecuritySettings,
    pub gateway: GatewaySettings,
    pub telemetry: TelemetrySettings,
    pub delivery: RetryScheduleOnly,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    pub listen: String,
    pub admin_listen: String,
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    pub max_body_bytes: usize,
    pub max_webhooks_per_key: u32,
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub dns_timeout: Duration,
    pub rate_limit: u32,
}

impl Settings {
    /// Loads and validates; the error names the offending setting.
    pub fn load() -> Result<Self, SettingsError> {
        let settings: Self = aioka_runtime::load()?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        self.security.encryption_key()?;
        self.listen_addr()?;
        self.admin_addr()?;
        if let Some((key, problem)) = self.amqp.problem() {
            return Err(SettingsError::invalid("amqp", key, problem));
        }

        if self.gateway.max_body_bytes < 1024 {
            return Err(SettingsError::invalid(
                "gateway",
                "max_body_bytes",
                "must be at least 1024",
            ));
        }
        if self.gateway.max_webhooks_per_key == 0 {
            return Err(SettingsError::invalid(
                "gateway",
                "max_webhooks_per_key",
                "must be at least 1",
            ));
        }
        self.retry_schedule()?;
        self.database
            .partition_policy()
            .map_err(|e| SettingsError::invalid("database", e.key, e.problem))?;
        Ok(())
    }

    pub fn admin_addr(&self) -> Result<SocketAddr, SettingsError> {
        aioka_runtime::settings::socket_addr("gateway", "admin_listen", &self.gateway.admin_listen)
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, SettingsError> {
        aioka_runtime::settings::socket_addr("gateway", "listen", &self.gateway.listen)
    }

    pub fn retry_schedule(&self) -> Result<aioka_core::retry::RetrySchedule, SettingsError> {
        self.delivery.schedule()
    }
}
