//! Messages that cross RabbitMQ between our own services: versioned, tagged serde types.
//!
//! `proto/amqp.md` documents them for operators; a test there keeps the two in agreement.
//! A field is only ever added with a default, so a newer consumer reads an older message;
//! anything else is a new version tag.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::event::EventType;
use crate::ids::{DeliveryId, EventId, WebhookId};
use crate::secret::TaskKey;

/// One delivery of one event to one webhook, as published to `aioka.deliveries` and, after a
/// failed attempt, to a retry tier. The body travels in the task so every attempt sends and
/// signs exactly the same bytes without reading the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum Task {
    #[serde(rename = "1")]
    V1(DeliveryTask),
    /// First attempts of one event to several webhooks of one shard (fanout's healthy path):
    /// one broker message and one tag for up to `fanout.batch_size` deliveries. Each item
    /// becomes a [`DeliveryTask`] in the delivery service; a retry, a put-off item or a
    /// parked one leaves as a task of its own.
    #[serde(rename = "2")]
    V2(BatchTask),
}

/// See [`Task::V2`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchTask {
    pub event_id: EventId,
    pub event_type: EventType,
    /// The envelope bytes, as UTF-8 JSON text, sent to every webhook of the batch.
    pub body: String,
    /// The webhooks, each once; each item's delivery id is derived from the event and it.
    pub webhooks: Vec<WebhookId>,
    /// HMAC-SHA256 (base64url) with the [`TaskKey`] over the event id, type, body and every
    /// webhook id in order (see `proto/amqp.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
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
    /// HMAC-SHA256 (base64url) with the [`TaskKey`] over what the receiver gets and whom it
    /// is for: delivery, event and webhook ids, event type and body (not the attempt
    /// numbers, which the delivery service moves on retries). Set by fanout and the gateway;
    /// a task without a valid tag is parked, never sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// A test delivery (`POST /v1/webhooks/test`): sent with `X-AIOKA-Test: true` so a
    /// receiver can tell it from a real event. Covered by the tag when set, so nobody can
    /// mark a real delivery as a test; absent (false) on every other task, whose tags are
    /// unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
}

/// Why the delivery service refuses a task it cannot trace to our own services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TaskRefused {
    #[error("the task carries no authentication tag")]
    Untagged,
    #[error("the task's authentication tag does not match its content")]
    BadTag,
    #[error("the task's delivery id is not the one of its event and webhook")]
    ForeignDeliveryId,
    #[error("the batch names no webhook, or one webhook twice")]
    BadBatch,
}

const fn one() -> u32 {
    1
}

impl DeliveryTask {
    /// 1-based position of this attempt in its series, for the retry schedule.
    pub fn attempt_in_series(&self) -> u32 {
        self.attempt.saturating_sub(self.series_start) + 1
    }

    fn tag_mac(&self, key: &TaskKey) -> hmac::Hmac<Sha256> {
        let mut mac = <hmac::Hmac<Sha256>>::new_from_slice(&key.0).expect("any key length");
        mac.update(b"v1");
        mac.update(self.delivery_id.as_uuid().as_bytes());
        mac.update(self.event_id.as_uuid().as_bytes());
        mac.update(self.webhook_id.as_uuid().as_bytes());
        // Lengths first, so no two different tasks feed the same bytes.
        let event_type = self.event_type.as_str().as_bytes();
        mac.update(&(event_type.len() as u64).to_be_bytes());
        mac.update(event_type);
        mac.update(&(self.body.len() as u64).to_be_bytes());
        mac.update(self.body.as_bytes());
        if self.test {
            mac.update(b"test");
        }
        mac
    }

    /// The task with its tag set (see [`DeliveryTask::auth`]).
    pub fn authenticated(mut self, key: &TaskKey) -> Self {
        let tag = self.tag_mac(key).finalize().into_bytes();
        self.auth = Some(URL_SAFE_NO_PAD.encode(tag));
        self
    }

    /// Checks the tag (in constant time) and that the delivery id is the one derived from
    /// the event and the webhook.
    pub fn verify(&self, key: &TaskKey) -> Result<(), TaskRefused> {
        let tag = self.auth.as_deref().ok_or(TaskRefused::Untagged)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TaskRefused::BadTag)?;
        self.tag_mac(key)
            .verify_slice(&tag)
            .map_err(|_| TaskRefused::BadTag)?;
        if self.delivery_id != DeliveryId::for_pair(self.event_id, self.webhook_id) {
            return Err(TaskRefused::ForeignDeliveryId);
        }
        Ok(())
    }

    /// The task for the next attempt of the same series.
    pub fn next_attempt(&self) -> Self {
        Self {
            attempt: self.attempt + 1,
            ..self.clone()
        }
    }
}

impl BatchTask {
    fn tag_mac(&self, key: &TaskKey) -> hmac::Hmac<Sha256> {
        let mut mac = <hmac::Hmac<Sha256>>::new_from_slice(&key.0).expect("any key length");
        mac.update(b"v2");
        mac.update(self.event_id.as_uuid().as_bytes());
        let event_type = self.event_type.as_str().as_bytes();
        mac.update(&(event_type.len() as u64).to_be_bytes());
        mac.update(event_type);
        mac.update(&(self.body.len() as u64).to_be_bytes());
        mac.update(self.body.as_bytes());
        mac.update(&(self.webhooks.len() as u64).to_be_bytes());
        for webhook in &self.webhooks {
            mac.update(webhook.as_uuid().as_bytes());
        }
        mac
    }

    /// The batch with its tag set.
    pub fn authenticated(mut self, key: &TaskKey) -> Self {
        let tag = self.tag_mac(key).finalize().into_bytes();
        self.auth = Some(URL_SAFE_NO_PAD.encode(tag));
        self
    }

    /// Checks the tag (in constant time), and that the batch names each webhook once.
    pub fn verify(&self, key: &TaskKey) -> Result<(), TaskRefused> {
        let tag = self.auth.as_deref().ok_or(TaskRefused::Untagged)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TaskRefused::BadTag)?;
        self.tag_mac(key)
            .verify_slice(&tag)
            .map_err(|_| TaskRefused::BadTag)?;
        let mut seen = std::collections::HashSet::with_capacity(self.webhooks.len());
        if self.webhooks.is_empty() || !self.webhooks.iter().all(|w| seen.insert(*w)) {
            return Err(TaskRefused::BadBatch);
        }
        Ok(())
    }

    /// The first-attempt task of the `i`-th webhook, tagged as a task of its own (so its
    /// retry, or a put-off or parked copy, travels and verifies as any other task). Call
    /// after [`BatchTask::verify`].
    pub fn item(&self, i: usize, key: &TaskKey) -> DeliveryTask {
        let webhook = self.webhooks[i];
        DeliveryTask {
            delivery_id: DeliveryId::for_pair(self.event_id, webhook),
            event_id: self.event_id,
            webhook_id: webhook,
            event_type: self.event_type,
            body: self.body.clone(),
            attempt: 1,
            series_start: 1,
            auth: None,
            test: false,
        }
        .authenticated(key)
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
            auth: None,
            test: false,
        }
    }

    fn key() -> TaskKey {
        crate::EncryptionKey::generate().task_key()
    }

    #[test]
    fn an_authenticated_task_verifies_and_survives_its_retries() {
        let key = key();
        let t = task().authenticated(&key);
        assert_eq!(t.verify(&key), Ok(()));
        let again = Task::from_bytes(&Task::V1(t.next_attempt()).to_bytes()).unwrap();
        let Task::V1(again) = again else {
            panic!("a task comes back as a task")
        };
        assert_eq!(again.verify(&key), Ok(()));
    }

    #[test]
    fn a_task_changed_after_tagging_or_tagged_with_another_key_is_refused() {
        let key = key();
        let t = task().authenticated(&key);
        assert_eq!(task().verify(&key), Err(TaskRefused::Untagged));
        assert_eq!(t.verify(&self::key()), Err(TaskRefused::BadTag));
        let forged_body = DeliveryTask {
            body: "{\"forged\":true}".into(),
            ..t.clone()
        };
        assert_eq!(forged_body.verify(&key), Err(TaskRefused::BadTag));
        let other_webhook = DeliveryTask {
            webhook_id: WebhookId::new(),
            ..t.clone()
        };
        assert_eq!(other_webhook.verify(&key), Err(TaskRefused::BadTag));
        let garbage = DeliveryTask {
            auth: Some("not base64!".into()),
            ..t.clone()
        };
        assert_eq!(garbage.verify(&key), Err(TaskRefused::BadTag));
        // Marking a real delivery as a test (so a receiver would ignore it) breaks the tag,
        // and a test task's tag holds only with its mark.
        let marked = DeliveryTask {
            test: true,
            ..t.clone()
        };
        assert_eq!(marked.verify(&key), Err(TaskRefused::BadTag));
        let test = DeliveryTask {
            test: true,
            auth: None,
            ..t
        }
        .authenticated(&key);
        assert_eq!(test.verify(&key), Ok(()));
        let unmarked = DeliveryTask {
            test: false,
            ..test
        };
        assert_eq!(unmarked.verify(&key), Err(TaskRefused::BadTag));
    }

    #[test]
    fn a_tagged_task_whose_delivery_id_is_not_derived_from_its_pair_is_refused() {
        let key = key();
        let t = DeliveryTask {
            delivery_id: DeliveryId::new(),
            ..task()
        }
        .authenticated(&key);
        assert_eq!(t.verify(&key), Err(TaskRefused::ForeignDeliveryId));
    }

    fn batch(n: usize) -> BatchTask {
        BatchTask {
            event_id: EventId::new(),
            event_type: EventType::VerdictNew,
            body: "{\"a\":1}".into(),
            webhooks: (0..n).map(|_| WebhookId::new()).collect(),
            auth: None,
        }
    }

    #[test]
    fn a_batch_verifies_and_its_items_are_first_attempts_that_verify_as_tasks() {
        let key = key();
        let b = batch(3).authenticated(&key);
        assert_eq!(b.verify(&key), Ok(()));
        let bytes = Task::V2(b.clone()).to_bytes();
        assert!(String::from_utf8_lossy(&bytes).starts_with(r#"{"v":"2","#));
        assert_eq!(Task::from_bytes(&bytes).unwrap(), Task::V2(b.clone()));
        let items: Vec<_> = (0..b.webhooks.len()).map(|i| b.item(i, &key)).collect();
        for (item, webhook) in items.iter().zip(&b.webhooks) {
            assert_eq!(item.webhook_id, *webhook);
            assert_eq!(item.delivery_id, DeliveryId::for_pair(b.event_id, *webhook));
            assert_eq!((item.attempt, item.series_start, item.test), (1, 1, false));
            assert_eq!(item.body, b.body);
            assert_eq!(item.verify(&key), Ok(()));
        }
    }

    #[test]
    fn a_batch_changed_after_tagging_or_naming_a_webhook_twice_is_refused() {
        let key = key();
        let b = batch(3).authenticated(&key);
        assert_eq!(batch(3).verify(&key), Err(TaskRefused::Untagged));
        assert_eq!(b.verify(&self::key()), Err(TaskRefused::BadTag));
        let mut added = b.clone();
        added.webhooks.push(WebhookId::new());
        assert_eq!(added.verify(&key), Err(TaskRefused::BadTag));
        let mut dropped = b.clone();
        dropped.webhooks.pop();
        assert_eq!(dropped.verify(&key), Err(TaskRefused::BadTag));
        let mut swapped = b.clone();
        swapped.webhooks.swap(0, 1);
        assert_eq!(swapped.verify(&key), Err(TaskRefused::BadTag));
        let body = BatchTask {
            body: "{\"forged\":true}".into(),
            ..b.clone()
        };
        assert_eq!(body.verify(&key), Err(TaskRefused::BadTag));
        let twice = BatchTask {
            webhooks: vec![b.webhooks[0], b.webhooks[0]],
            auth: None,
            ..b.clone()
        }
        .authenticated(&key);
        assert_eq!(twice.verify(&key), Err(TaskRefused::BadBatch));
        let empty = BatchTask {
            webhooks: Vec::new(),
            auth: None,
            ..b
        }
        .authenticated(&key);
        assert_eq!(empty.verify(&key), Err(TaskRefused::BadBatch));
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
