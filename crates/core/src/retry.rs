//! The retry schedule: how long to wait before each retry of a failed delivery.
//!
//! The seed page promises 3 retries after 5 s, 25 s and 125 s (4 attempts in all). The
//! schedule is configuration (`AIOKA__DELIVERY__RETRY_SCHEDULE`) so tests run the same
//! topology with millisecond delays. Each distinct delay is a *tier*: one RabbitMQ wait queue
//! whose messages all share that delay, so none waits behind another.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The longest delay one tier may have.
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 60 * 60);
/// The most retries a schedule may hold.
pub const MAX_RETRIES: usize = 20;

/// An ordered list of delays; entry `i` is the wait before retry `i + 1`.
#[derive(Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again after `delay`, through the wait queue named by `tier`.
    Retry { delay: Duration, tier: Tier },
    /// Retries are used up: the delivery has failed.
    GiveUp,
}

/// A delay tier, named after its delay (`300ms`, `5s`, `125s`) in queue names and routing keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tier(Duration);

impl Tier {
    pub fn delay(self) -> Duration {
        self.0
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// Why a schedule text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("'{0}' is not a duration (use forms like 300ms, 5s, 2m)")]
    Duration(String),
    #[error("each delay must be between 1ms and 24h, got '{0}'")]
    Range(String),
    #[error("at most {MAX_RETRIES} retries")]
    TooMany,
}

impl RetrySchedule {
    pub fn new(delays: Vec<Duration>) -> Result<Self, ScheduleError> {
        if delays.len() > MAX_RETRIES {
            return Err(ScheduleError::TooMany);
        }
        for d in &delays {
            if d.is_zero() || *d > MAX_DELAY || d.subsec_nanos() % 1_000_000 != 0 {
                return Err(ScheduleError::Range(
                    humantime::format_duration(*d).to_string(),
                ));
            }
        }
        Ok(Self(delays))
    }

    /// The seed page's schedule: 5 s, 25 s, 125 s.
    pub fn seed_default() -> Self {
        Self(vec![
            Duration::from_secs(5),
            Duration::from_secs(25),
            Duration::from_secs(125),
        ])
    }

    pub fn delays(&self) -> &[Duration] {
        &self.0
    }

    /// Attempts in all: the first one plus one per retry.
    pub fn max_attempts(&self) -> u32 {
        self.0.len() as u32 + 1
    }

    /// Every distinct tier, shortest first: the wait queues to declare.
    pub fn tiers(&self) -> Vec<Tier> {
        let mut tiers: Vec<Tier> = self.0.iter().copied().map(Tier).collect();
        tiers.sort();
        tiers.dedup();
        tiers
    }

    /// The decision after attempt number `attempt_in_series` (1-based, counted from the start
    /// of the current series: the first attempt, or a manual re-send) has failed.
    pub fn after_failure(&self, attempt_in_series: u32) -> AfterFailure {
        match self.0.get(attempt_in_series.saturating_sub(1) as usize) {
            Some(&delay) if attempt_in_series >= 1 => AfterFailure::Retry {
                delay,
                tier: Tier(delay),
            },
            _ => AfterFailure::GiveUp,
        }
    }

    /// As [`RetrySchedule::after_failure`], honouring a receiver's `Retry-After` within the
    /// tiers that exist: when the receiver asks for longer than the scheduled delay, the retry
    /// goes through the shortest tier at least that long (or the longest tier there is). It
    /// never retries sooner than scheduled, and never adds an attempt.
    pub fn after_failure_with_hint(
        &self,
        attempt_in_series: u32,
        retry_after: Option<Duration>,
    ) -> AfterFailure {
        let decision = self.after_failure(attempt_in_series);
        let (AfterFailure::Retry { delay, .. }, Some(wanted)) = (decision, retry_after) else {
            return decision;
        };
        if wanted <= delay {
            return decision;
        }
        // `delay` is itself a tier, so the longest tier is never shorter than it.
        let tiers = self.tiers();
        let tier = tiers
            .iter()
            .copied()
            .find(|t| t.delay() >= wanted)
            .or_else(|| tiers.last().copied())
            .unwrap_or(Tier(delay));
        AfterFailure::Retry {
            delay: tier.delay(),
            tier,
        }
    }
}

/// The delay a `Retry-After` header asks for: delay-seconds, or an HTTP date in the future.
/// <https://www.rfc-editor.org/rfc/rfc9110#field.retry-after>
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - now).to_std().ok()
}

impl FromStr for RetrySchedule {
    type Err = ScheduleError;

    /// Parses `5s,25s,125s`. An empty text means no retries.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let delays = text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                humantime::parse_duration(part).map_err(|_| ScheduleError::Duration(part.into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(delays)
    }
}

impl fmt::Display for RetrySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|d| Tier(*d).to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

impl fmt::Debug for RetrySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RetrySchedule({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_default_schedule_is_the_seed_pages() {
        let s: RetrySchedule = "5s,25s,125s".parse().unwrap();
        assert_eq!(s, RetrySchedule::seed_default());
        assert_eq!(s.max_attempts(), 4);
        assert_eq!(s.to_string(), "5s,25s,125s");
    }

    #[test]
    fn the_first_three_failures_retry_after_5_25_and_125_seconds() {
        let s = RetrySchedule::seed_default();
        for (attempt, delay) in [(1, 5), (2, 25), (3, 125)] {
            match s.after_failure(attempt) {
                AfterFailure::Retry { delay: d, tier } => {
                    assert_eq!(d, secs(delay));
                    assert_eq!(tier.to_string(), format!("{delay}s"));
                }
                AfterFailure::GiveUp => panic!("attempt {attempt} should retry"),
            }
        }
    }

    #[test]
    fn a_fourth_failure_schedules_no_retry() {
        let s = RetrySchedule::seed_default();
        assert_eq!(s.after_failure(4), AfterFailure::GiveUp);
        assert_eq!(s.after_failure(40), AfterFailure::GiveUp);
    }

    #[test]
    fn millisecond_and_minute_delays_parse_and_name_their_tiers() {
        let s: RetrySchedule = "300ms, 1500ms ,2m".parse().unwrap();
        assert_eq!(
            s.delays(),
            &[
                Duration::from_millis(300),
                Duration::from_millis(1500),
                secs(120)
            ]
        );
        let names: Vec<String> = s.tiers().iter().map(ToString::to_string).collect();
        assert_eq!(names, ["300ms", "1500ms", "120s"]);
    }

    #[test]
    fn repeated_delays_share_one_tier() {
        let s: RetrySchedule = "5s,5s,1s".parse().unwrap();
        assert_eq!(s.tiers().len(), 2);
        assert_eq!(s.max_attempts(), 4);
    }

    #[test]
    fn retry_after_picks_a_longer_existing_tier_but_never_a_shorter_one() {
        let s = RetrySchedule::seed_default();
        let tier = |d: AfterFailure| match d {
            AfterFailure::Retry { delay, tier } => (delay, tier.to_string()),
            AfterFailure::GiveUp => panic!("should retry"),
        };
        assert_eq!(
            tier(s.after_failure_with_hint(1, None)),
            (secs(5), "5s".into())
        );
        assert_eq!(
            tier(s.after_failure_with_hint(1, Some(secs(2)))),
            (secs(5), "5s".into())
        );
        assert_eq!(
            tier(s.after_failure_with_hint(1, Some(secs(20)))),
            (secs(25), "25s".into())
        );
        assert_eq!(
            tier(s.after_failure_with_hint(1, Some(secs(3600)))),
            (secs(125), "125s".into())
        );
        assert_eq!(
            tier(s.after_failure_with_hint(3, Some(secs(1)))),
            (secs(125), "125s".into())
        );
        assert_eq!(
            s.after_failure_with_hint(4, Some(secs(1))),
            AfterFailure::GiveUp
        );
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_an_http_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-04-20T14:32:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(parse_retry_after("120", now), Some(secs(120)));
        assert_eq!(
            parse_retry_after("Mon, 20 Apr 2026 14:33:00 GMT", now),
            Some(secs(60))
        );
        assert_eq!(
            parse_retry_after("Mon, 20 Apr 2026 14:31:00 GMT", now),
            None
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn an_empty_schedule_means_one_attempt_only() {
        let s: RetrySchedule = "".parse().unwrap();
        assert_eq!(s.max_attempts(), 1);
        assert_eq!(s.after_failure(1), AfterFailure::GiveUp);
    }

    #[test]
    fn bad_schedules_are_refused_with_the_offending_part() {
        assert_eq!(
            "5s,soon".parse::<RetrySchedule>(),
            Err(ScheduleError::Duration("soon".into()))
        );
        assert!(matches!(
            "0s".parse::<RetrySchedule>(),
            Err(ScheduleError::Range(_))
        ));
        assert!(matches!(
            "2d".parse::<RetrySchedule>(),
            Err(ScheduleError::Range(_))
        ));
        assert!(matches!(
            "1us".parse::<RetrySchedule>(),
            Err(ScheduleError::Range(_))
        ));
        let many = vec!["1s"; 21].join(",");
        assert_eq!(many.parse::<RetrySchedule>(), Err(ScheduleError::TooMany));
    }
}
