//! Settings: the commented defaults file `config/default.toml`, an optional file named by
//! `AIOKA_CONFIG`, then `AIOKA__SECTION__KEY` environment variables, in that order.

use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// The defaults every binary starts from, compiled in so a binary needs no file beside it.
pub const DEFAULTS: &str = include_str!("../../../config/default.toml");

/// Settings that could not be loaded or are not valid; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings: {0}")]
    Load(#[from] config::ConfigError),
    #[error("settings: {name} (env AIOKA__{env}): {problem}")]
    Invalid {
        name: String,
        env: String,
        problem: String,
    },
}

impl SettingsError {
    /// An invalid value of `section.key`, explained.
    pub fn invalid(section: &str, key: &str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            name: format!("{section}.{key}"),
            env: format!("{}__{}", section.to_uppercase(), key.to_uppercase()),
            problem: problem.into(),
        }
    }
}

/// Loads settings of type `T` from the defaults, `AIOKA_CONFIG` and the environment.
pub fn load<T: DeserializeOwned>() -> Result<T, SettingsError> {
    load_from(std::env::vars())
}

/// As [`load`], with the environment given explicitly (tests).
pub fn load_from<T: DeserializeOwned>(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, SettingsError> {
    let vars: Vec<(String, String)> = vars.into_iter().collect();
    let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
    if let Some((_, path)) = vars.iter().find(|(k, _)| k == "AIOKA_CONFIG") {
        builder = builder.add_source(File::with_name(path).format(FileFormat::Toml));
    }
    let env = Environment::with_prefix("AIOKA")
        .prefix_separator("__")
        .separator("__")
        .source(Some(vars.into_iter().collect()));
    Ok(builder.add_source(env).build()?.try_deserialize()?)
}

/// Deserializes a duration written as text: `300ms`, `5s`, `2m`.
pub fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime_duration(&text).map_err(serde::de::Error::custom)
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|_| format!("'{text}' is not a duration like 300ms, 5s, 2m"))
}

/// Parses an address setting such as `gateway.listen`.
pub fn socket_addr(
    section: &str,
    key: &str,
    text: &str,
) -> Result<std::net::SocketAddr, SettingsError> {
    text.parse()
        .map_err(|e| SettingsError::invalid(section, key, format!("'{text}': {e}")))
}

/// Parses `delivery.retry_schedule`, which every service needs: the schedule's tiers are queues
/// in the topology each of them declares.
pub fn retry_schedule(text: &str) -> Result<aioka_core::retry::RetrySchedule, SettingsError> {
    text.parse().map_err(|e: aioka_core::retry::ScheduleError| {
        SettingsError::invalid("delivery", "retry_schedule", e.to_string())
    })
}

/// The part of `[delivery]` the gateway and the fanout read: the retry schedule, whose tiers
/// are queues of the topology they declare. The rest of `[delivery]` is the delivery
/// service's.
#[derive(Debug, Clone, Deserialize)]
pub struct RetryScheduleOnly {
    pub retry_schedule: String,
}

impl RetryScheduleOnly {
    pub fn schedule(&self) -> Result<aioka_core::retry::RetrySchedule, SettingsError> {
        retry_schedule(&self.retry_schedule)
    }
}

/// `[security]`: shared by the gateway, the delivery service and the CLI.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    pub secret_key: String,
    pub allow_private_targets: bool,
}

impl std::fmt::Debug for SecuritySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecuritySettings")
            .field("secret_key", &"[redacted]")
            .field("allow_private_targets", &self.allow_private_targets)
            .finish()
    }
}

impl SecuritySettings {
    /// The key that encrypts webhook secrets, or a message saying how to set it.
    pub fn encryption_key(&self) -> Result<aioka_core::EncryptionKey, SettingsError> {
        if self.secret_key.trim().is_empty() {
            return Err(SettingsError::invalid(
                "security",
                "secret_key",
                "is not set; generate one with `openssl rand -base64 32`",
            ));
        }
        aioka_core::EncryptionKey::from_base64(&self.secret_key)
            .map_err(|e| SettingsError::invalid("security", "secret_key", e.to_string()))
    }
}

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_filter: String,
    pub otlp_endpoint: String,
    /// PEM file of extra root certificates for an HTTPS collector (a private CA); empty:
    /// the machine's roots only.
    pub otlp_extra_root_certs: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Probe {
        security: SecuritySettings,
        telemetry: TelemetrySettings,
        delivery: DeliveryProbe,
    }

    #[derive(Debug, Deserialize)]
    struct DeliveryProbe {
        #[serde(deserialize_with = "duration")]
        timeout: Duration,
        disable_after: u32,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_defaults_file_loads_on_its_own() {
        let probe: Probe = load_from(env(&[])).unwrap();
        assert_eq!(probe.delivery.timeout, Duration::from_secs(10));
        assert_eq!(probe.delivery.disable_after, 10);
        assert!(!probe.security.allow_private_targets);
        assert_eq!(probe.telemetry.log_format, LogFormat::Json);
    }

    #[test]
    fn environment_variables_override_the_defaults() {
        let probe: Probe = load_from(env(&[
            ("AIOKA__DELIVERY__TIMEOUT", "250ms"),
            ("AIOKA__DELIVERY__DISABLE_AFTER", "3"),
            ("AIOKA__SECURITY__ALLOW_PRIVATE_TARGETS", "true"),
            ("AIOKA__TELEMETRY__LOG_FORMAT", "text"),
        ]))
        .unwrap();
        assert_eq!(probe.delivery.timeout, Duration::from_millis(250));
        assert_eq!(probe.delivery.disable_after, 3);
        assert!(probe.security.allow_private_targets);
        assert_eq!(probe.telemetry.log_format, LogFormat::Text);
    }

    #[test]
    fn a_bad_value_is_refused_with_its_name() {
        let err = load_from::<Probe>(env(&[("AIOKA__DELIVERY__TIMEOUT", "soon")])).unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
        let err = load_from::<Probe>(env(&[("AIOKA__SECURITY__TYPO", "x")])).unwrap_err();
        assert!(err.to_string().contains("typo"), "{err}");
    }

    #[test]
    fn a_missing_or_short_secret_key_is_explained() {
        let probe: Probe = load_from(env(&[])).unwrap();
        let err = probe.security.encryption_key().unwrap_err().to_string();
        assert!(err.contains("AIOKA__SECURITY__SECRET_KEY"), "{err}");
        let probe: Probe = load_from(env(&[("AIOKA__SECURITY__SECRET_KEY", "c2hvcnQ=")])).unwrap();
        assert!(probe.security.encryption_key().is_err());
        assert!(!format!("{:?}", probe.security).contains("c2hvcnQ"));
    }

    #[test]
    fn durations_take_the_documented_units() {
        assert_eq!(humantime_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(humantime_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(humantime_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(humantime_duration("soon").is_err());
        assert!(humantime_duration("5 parsecs").is_err());
    }
}
