//! Messages that cross RabbitMQ between our own services: versioned, tagged serde types.
//!
//! `proto/amqp.md` documents them for operators; a test there keeps the two in agreement.
//! A field is only ever added with a default, so a newer consumer reads an older message;
//! anything else is a new version tag.

use serde::{Deserialize, Serialize};

use crate::event::EventType;
use crate::ids::{DeliveryId, EventId, WebhookId};

/// One delivery of one event to one webhook, as published to `aioka.deliveries` and, after a
/// failed attempt, to a retry tier. The body travels in the task so every attempt sends and
/// signs exactly the same bytes without reading the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum Task {
    #[serde(rename = "1")]
    V1(DeliveryTask),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryTask {
    pub delivery_id: DeliveryId,
    pub event_id: EventId,
    pub webhook_id: WebhookId,
    pub event_type: EventType,
    /// The envelope bytes, as UTF-8 JSON text.
    pub body: String,
    /// The number of the attempt this task asks for, counted over the delivery's life.
    pub attempt: u32,
    /// The attempt number that began the current series (1, or the first attempt of a manual
    /// re-send): retries are counted from here against the schedule.
    #[serde(default = "one")]
    pub series_start: u32,
}

const fn one() -> u32 {
    1
}

impl DeliveryTask {
    /// 1-based position of this attempt in its series, for the retry schedule.
    pub fn attempt_in_series(&self) -> u32 {
        self.attempt.saturating_sub(self.series_start) + 1
    }

    /// The task for the next attempt of the same series.
    pub fn next_attempt(&self) -> Self {
        Self {
            attempt: self.attempt + 1,
            ..self.clone()
        }
    }
}

impl Task {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> DeliveryTask {
        let event_id = EventId::new();
        let webhook_id = WebhookId::new();
        DeliveryTask {
            delivery_id: DeliveryId::for_pair(event_id, webhook_id),
            event_id,
            webhook_id,
            event_type: EventType::VerdictNew,
            body: "{}".into(),
            attempt: 1,
            series_start: 1,
        }
    }

    #[test]
    fn a_task_round_trips_with_its_version_tag() {
        let t = Task::V1(task());
        let bytes = t.to_bytes();
        assert!(String::from_utf8_lossy(&bytes).starts_with(r#"{"v":"1","#));
        assert_eq!(Task::from_bytes(&bytes).unwrap(), t);
    }

    #[test]
    fn an_unknown_version_is_an_error_not_a_guess() {
        assert!(Task::from_bytes(br#"{"v":"9","delivery_id":"x"}"#).is_err());
        assert!(Task::from_bytes(b"garbage").is_err());
    }

    #[test]
    fn the_next_attempt_keeps_the_delivery_and_counts_up() {
        let first = task();
        let second = first.next_attempt();
        assert_eq!(second.delivery_id, first.delivery_id);
        assert_eq!(second.body, first.body);
        assert_eq!((second.attempt, second.attempt_in_series()), (2, 2));
        let resend = DeliveryTask {
            attempt: 5,
            series_start: 5,
            ..first
        };
        assert_eq!(resend.attempt_in_series(), 1);
    }
}
