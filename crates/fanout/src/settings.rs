//! The fanout's settings: `[database]`, `[amqp]`, `[fanout]`, `[telemetry]`, `[security]`
//! (its key authenticates the tasks fanout publishes), and the retry schedule of
//! `[delivery]` (to declare the same topology as the other services).

use std::net::SocketAddr;
use std::time::Duration;

use aioka_core::retry::RetrySchedule;
use aioka_queue::AmqpSettings;
use aioka_runtime::settings::{RetryScheduleOnly, duration};
use aioka_runtime::{SecuritySettings, SettingsError, TelemetrySettings};
use aioka_store::DatabaseSettings;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub fanout: FanoutSettings,
    pub telemetry: TelemetrySettings,
    pub security: SecuritySettings,
    pub delivery: RetryScheduleOnly,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FanoutSettings {
    pub health_listen: String,
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    pub prefetch: u16,
    pub chunk_size: u32,
    pub batch_size: u32,
    #[serde(deserialize_with = "duration")]
    pub claim_lease: Duration,
}

impl Settings {
    pub fn load() -> Result<Self, SettingsError> {
        let settings: Self = aioka_runtime::load()?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        self.health_addr()?;
        self.retry_schedule()?;
        self.security.encryption_key()?;
        if let Some((key, problem)) = self.amqp.problem() {
            return Err(SettingsError::invalid("amqp", key, problem));
        }
        self.database
            .partition_policy()
            .map_err(|e| SettingsError::invalid("database", e.key, e.problem))?;
        if self.fanout.chunk_size == 0 || self.fanout.chunk_size > 10_000 {
            return Err(SettingsError::invalid(
                "fanout",
                "chunk_size",
                "must be 1 to 10000",
            ));
        }
        if self.fanout.batch_size == 0 || self.fanout.batch_size > 1_000 {
            return Err(SettingsError::invalid(
                "fanout",
                "batch_size",
                "must be 1 to 1000",
            ));
        }
        if self.fanout.prefetch == 0 {
            return Err(SettingsError::invalid(
                "fanout",
                "prefetch",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    pub fn health_addr(&self) -> Result<SocketAddr, SettingsError> {
        aioka_runtime::settings::socket_addr("fanout", "health_listen", &self.fanout.health_listen)
    }

    pub fn retry_schedule(&self) -> Result<RetrySchedule, SettingsError> {
        self.delivery.schedule()
    }
}
