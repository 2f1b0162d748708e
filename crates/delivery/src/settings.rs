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
    /// An attempt without an answer after this long leaves the fast lane for the slow one.
    #[serde(deserialize_with = "duration")]
    pub slow_after: Duration,
    /// Attempts in the slow lane at once, beyond `max_in_flight`.
    pub slow_lane_in_flight: u16,
    /// An ordered webhook's delivery waits this long after its event was stored, so that an
    /// event accepted before it, still on its way to fan-out, takes its place in line first.
    #[serde(deserialize_with = "duration")]
    pub fifo_settle: Duration,
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
    /// A pending delivery whose next attempt is overdue by this much is published again.
    #[serde(deserialize_with = "duration")]
    pub retry_sweep_after: Duration,
    /// How often each process looks for such deliveries.
    #[serde(deserialize_with = "duration")]
    pub retry_sweep_interval: Duration,
    /// The delivery shards this process consumes: `all`, or numbers and ranges (`0-3,6`).
    #[serde(default = "all_shards")]
    pub shards: String,
}

fn all_shards() -> String {
    "all".to_owned()
}

/// Which delivery shards a process consumes (`delivery.shards`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shards {
    /// Every shard of the topology, and any left by a larger shard count.
    All,
    /// These shards (those below the topology's count).
    Only(Vec<u16>),
}

impl DeliverySettings {
    /// How old a first attempt's task is when it claims before it is sent
    /// (`worker::Worker::late_first_after`). The reach check writes rows for events fanned
    /// out `retry_sweep_after` ago; a first attempt younger than this is sent unclaimed and
    /// ends (connect_timeout + timeout at most) before the check can look at its event.
    pub fn late_first_after(&self) -> Duration {
        let send = self.connect_timeout + self.timeout;
        (self.retry_sweep_after / 2).min(self.retry_sweep_after.saturating_sub(send))
    }
}

impl Shards {
    pub fn is_all(&self) -> bool {
        matches!(self, Shards::All)
    }

    /// The shards to consume when tasks are routed over `count`.
    pub fn of(&self, count: u16) -> Vec<u16> {
        match self {
            Shards::All => (0..count).collect(),
            Shards::Only(list) => list.iter().copied().filter(|s| *s < count).collect(),
        }
    }
}

impl std::str::FromStr for Shards {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("all") {
            return Ok(Shards::All);
        }
        let number = |n: &str| {
            n.trim()
                .parse::<u16>()
                .map_err(|_| format!("'{}' is not a shard number", n.trim()))
        };
        let mut list = Vec::new();
        for part in text.split(',') {
            match part.split_once('-') {
                Some((from, to)) => {
                    let (from, to) = (number(from)?, number(to)?);
                    if from > to {
                        return Err(format!("range '{}' runs backwards", part.trim()));
                    }
                    list.extend(from..=to);
                }
                None => list.push(number(part)?),
            }
        }
        list.sort_unstable();
        list.dedup();
        Ok(Shards::Only(list))
    }
}

impl Settings {
    /// The shards this process consumes.
    pub fn shards(&self) -> Result<Shards, SettingsError> {
        self.delivery
            .shards
            .parse()
            .map_err(|e: String| SettingsError::invalid("delivery", "shards", e))
    }

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
        if let Some((key, problem)) = self.amqp.problem() {
            return Err(SettingsError::invalid("amqp", key, problem));
        }
        let shards = self.shards()?;
        let count = self.amqp.delivery_shards;
        if let Shards::Only(list) = &shards
            && let Some(beyond) = list.iter().find(|s| **s >= count)
        {
            // Consuming the rest silently would leave the operator believing this process
            // covers a shard that does not exist (a typo, or a shard count lowered since).
            let exist = if count == 1 {
                "only shard 0 exists".to_owned()
            } else {
                format!("shards 0-{} exist", count - 1)
            };
            return invalid(
                "shards",
                &format!("names shard {beyond}, but amqp.delivery_shards is {count}: {exist}"),
            );
        }
        self.database
            .partition_policy()
            .map_err(|e| SettingsError::invalid("database", e.key, e.problem))?;
        if d.timeout.is_zero() {
            return invalid("timeout", "must be more than 0");
        }
        if d.retry_sweep_interval.is_zero() {
            return invalid("retry_sweep_interval", "must be more than 0");
        }
        if d.retry_sweep_after < d.connect_timeout + d.timeout {
            return invalid(
                "retry_sweep_after",
                "must be at least delivery.connect_timeout + delivery.timeout (an attempt still being sent is not overdue)",
            );
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
        if d.slow_after.is_zero() {
            return invalid("slow_after", "must be more than 0");
        }
        if u32::from(d.max_in_flight) + u32::from(d.slow_lane_in_flight) > u32::from(u16::MAX) {
            return invalid(
                "slow_lane_in_flight",
                "with delivery.max_in_flight must be at most 65535 (together they are the consumer prefetch)",
            );
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
            (
                "AIOKA__AMQP__URLS".to_owned(),
                "amqp://app:first@mq1:5672/%2f,amqp://app:second@mq2:5672/%2f".to_owned(),
            ),
        ])
        .unwrap();
        let printed = format!("{settings:?}");
        for secret in [key.as_str(), "hunter2", "s3cret", "first", "second"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(printed.contains("[redacted]") && printed.contains("REDACTED"));
    }

    fn with(pairs: &[(&str, &str)]) -> Result<(), SettingsError> {
        let key = aioka_core::EncryptionKey::generate().to_base64();
        let mut env = vec![("AIOKA__SECURITY__SECRET_KEY".to_owned(), key)];
        env.extend(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let settings: Settings = aioka_runtime::settings::load_from(env).unwrap();
        settings.validate()
    }

    #[test]
    fn the_slow_lane_is_checked_naming_the_setting() {
        assert!(with(&[("AIOKA__DELIVERY__SLOW_LANE_IN_FLIGHT", "0")]).is_ok());
        for (pairs, named) in [
            (
                &[("AIOKA__DELIVERY__SLOW_AFTER", "0s")][..],
                "DELIVERY__SLOW_AFTER",
            ),
            // Together they are the prefetch, a 16-bit count.
            (
                &[
                    ("AIOKA__DELIVERY__MAX_IN_FLIGHT", "40000"),
                    ("AIOKA__DELIVERY__SLOW_LANE_IN_FLIGHT", "30000"),
                ][..],
                "DELIVERY__SLOW_LANE_IN_FLIGHT",
            ),
        ] {
            let e = with(pairs).expect_err(&format!("{pairs:?} is refused"));
            assert!(e.to_string().contains(named), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn shards_and_node_lists_are_checked_naming_the_setting() {
        assert!(
            with(&[
                ("AIOKA__AMQP__DELIVERY_SHARDS", "4"),
                ("AIOKA__DELIVERY__SHARDS", "0-1,3")
            ])
            .is_ok()
        );
        for (pairs, named) in [
            (
                &[("AIOKA__AMQP__DELIVERY_SHARDS", "0")][..],
                "AMQP__DELIVERY_SHARDS",
            ),
            (
                &[("AIOKA__AMQP__DELIVERY_SHARDS", "257")][..],
                "AMQP__DELIVERY_SHARDS",
            ),
            (
                &[("AIOKA__DELIVERY__SHARDS", "3-1")][..],
                "DELIVERY__SHARDS",
            ),
            (
                &[("AIOKA__DELIVERY__SHARDS", "one")][..],
                "DELIVERY__SHARDS",
            ),
            // Shard 5 does not exist with 2 shards: this process would consume nothing.
            (
                &[
                    ("AIOKA__AMQP__DELIVERY_SHARDS", "2"),
                    ("AIOKA__DELIVERY__SHARDS", "5"),
                ][..],
                "DELIVERY__SHARDS",
            ),
            // Shards 2-7 do not exist with 2 shards: refused, not consumed as 0-1 silently.
            (
                &[
                    ("AIOKA__AMQP__DELIVERY_SHARDS", "2"),
                    ("AIOKA__DELIVERY__SHARDS", "0-7"),
                ][..],
                "names shard 2, but amqp.delivery_shards is 2: shards 0-1 exist",
            ),
            (
                &[("AIOKA__AMQP__URL", "amqp://a@h:1/%2f,http://h")][..],
                "AMQP__URL",
            ),
            (&[("AIOKA__AMQP__URLS", " , ")][..], "AMQP__URL"),
        ] {
            let e = with(pairs).expect_err(&format!("{pairs:?} is refused"));
            assert!(e.to_string().contains(named), "{pairs:?}: {e}");
        }
        assert_eq!(
            "0-2,5,1".parse::<Shards>(),
            Ok(Shards::Only(vec![0, 1, 2, 5]))
        );
        assert_eq!(" ALL ".parse::<Shards>(), Ok(Shards::All));
    }
}
