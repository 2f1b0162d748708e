//! Prefixed, typed identifiers (`wh_…`, `evt_…`, `dlv_…`, `key_…`).
//!
//! Every id is a UUID underneath (stored as `uuid` in PostgreSQL) and is shown to people as a
//! prefix plus 26 characters of lowercase Crockford base32. New ids are UUIDv7, so they sort by
//! creation time: cursor pagination and "newest first" need no extra column. Ids that must be
//! the same every time they are computed (an event id derived from a producer's own id, the
//! delivery id of an (event, webhook) pair) are UUIDv8 built from a SHA-256 digest.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const ENCODED_LEN: usize = 26;

/// Encodes 128 bits as 26 lowercase Crockford base32 characters (the first carries 3 bits).
pub fn encode_u128(mut value: u128) -> String {
    let mut out = [0u8; ENCODED_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value & 0x1f) as usize];
        value >>= 5;
    }
    out.iter().map(|&b| b as char).collect()
}

/// Decodes what [`encode_u128`] produced. Upper case is accepted; anything else is refused.
pub fn decode_u128(text: &str) -> Option<u128> {
    if text.len() != ENCODED_LEN {
        return None;
    }
    let mut value: u128 = 0;
    for (i, c) in text.bytes().enumerate() {
        let digit = ALPHABET.iter().position(|&a| a == c.to_ascii_lowercase())? as u128;
        // The first character holds the top 3 bits only: 26 * 5 = 130 > 128.
        if i == 0 && digit > 7 {
            return None;
        }
        value = (value << 5) | digit;
    }
    Some(value)
}

/// Why a text is not an id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected an id of the form {prefix}<26 base32 characters>")]
pub struct IdParseError {
    pub prefix: &'static str,
}

/// A UUIDv8 whose 122 free bits come from SHA-256 of `domain` and `parts`: the same inputs
/// always give the same id, and different domains never collide in practice.
pub fn derived_uuid(domain: &str, parts: &[&[u8]]) -> Uuid {
    let mut hasher = Sha256::new();
    hasher.update(domain.as_bytes());
    for part in parts {
        // Length-prefix each part so ("ab","c") and ("a","bc") differ.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(Self::PREFIX)?;
                f.write_str(&encode_u128(self.0.as_u128()))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.strip_prefix(Self::PREFIX)
                    .and_then(decode_u128)
                    .map(|v| Self(Uuid::from_u128(v)))
                    .ok_or(IdParseError { prefix: Self::PREFIX })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

prefixed_id!(
    /// A customer's webhook endpoint.
    WebhookId,
    "wh_"
);
prefixed_id!(
    /// One event, stored once however many webhooks receive it.
    EventId,
    "evt_"
);
prefixed_id!(
    /// One (event, webhook) pair: stable across every attempt, sent as `webhook-id`.
    DeliveryId,
    "dlv_"
);
prefixed_id!(
    /// An API key's public identifier (the key itself is a secret and is never an id).
    ApiKeyId,
    "key_"
);

/// The longest idempotency key a producer may send as an event's `id`.
pub const MAX_SOURCE_ID_LEN: usize = 200;

impl EventId {
    /// The event id for a producer-supplied `id`. An `evt_…` id is taken as it is; any other
    /// text (printable ASCII, 1 to 200 characters) is an idempotency key mapped to the same
    /// event id every time, so sending the same `id` twice delivers once.
    pub fn from_source_id(source: &str) -> Result<Self, SourceIdError> {
        if let Ok(id) = source.parse::<EventId>() {
            return Ok(id);
        }
        if source.is_empty() || source.len() > MAX_SOURCE_ID_LEN {
            return Err(SourceIdError::Length);
        }
        if !source.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SourceIdError::Characters);
        }
        Ok(Self(derived_uuid(
            "aioka:event-id:v1",
            &[source.as_bytes()],
        )))
    }

    /// The event id of an envelope published without a `message_id`: derived from its exact
    /// bytes, so a redelivered message is recognised as the same event.
    pub fn from_body(body: &[u8]) -> Self {
        Self(derived_uuid("aioka:event-body:v1", &[body]))
    }
}

/// Why a producer-supplied event id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceIdError {
    #[error("must be 1 to 200 characters long")]
    Length,
    #[error("must be printable ASCII without spaces")]
    Characters,
}

impl DeliveryId {
    /// The one delivery id of an (event, webhook) pair. Fan-out that runs twice for the same
    /// event (after a crash) produces the same ids, so receivers and the delivery log see one
    /// delivery, not two.
    pub fn for_pair(event: EventId, webhook: WebhookId) -> Self {
        Self(derived_uuid(
            "aioka:delivery-id:v1",
            &[event.0.as_bytes(), webhook.0.as_bytes()],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_webhook_id_is_the_prefix_and_26_base32_characters() {
        let id = WebhookId::new().to_string();
        assert!(id.starts_with("wh_"), "{id}");
        assert_eq!(id.len(), 3 + 26);
        assert!(id[3..].bytes().all(|b| ALPHABET.contains(&b)), "{id}");
    }

    #[test]
    fn ids_display_and_parse_back() {
        let id = EventId::new();
        assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
        let id = DeliveryId::new();
        assert_eq!(id.to_string().parse::<DeliveryId>(), Ok(id));
    }

    #[test]
    fn the_zero_and_max_uuid_encode_to_fixed_text() {
        assert_eq!(encode_u128(0), "00000000000000000000000000");
        assert_eq!(encode_u128(u128::MAX), "7zzzzzzzzzzzzzzzzzzzzzzzzz");
        assert_eq!(decode_u128("7zzzzzzzzzzzzzzzzzzzzzzzzz"), Some(u128::MAX));
        assert_eq!(decode_u128("80000000000000000000000000"), None);
    }

    #[test]
    fn an_id_with_another_prefix_or_bad_characters_is_refused() {
        let wh = WebhookId::new().to_string();
        assert!(wh.parse::<EventId>().is_err());
        assert!("wh_".parse::<WebhookId>().is_err());
        assert!(
            "wh_0000000000000000000000000u"
                .parse::<WebhookId>()
                .is_err()
        );
        assert!(
            "wh_000000000000000000000000000"
                .parse::<WebhookId>()
                .is_err()
        );
    }

    #[test]
    fn ids_made_later_sort_after_earlier_ones() {
        let a = WebhookId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = WebhookId::new();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
    }

    #[test]
    fn the_same_source_id_maps_to_the_same_event_id() {
        let a = EventId::from_source_id("verdict-2026-04-20T14:32").unwrap();
        let b = EventId::from_source_id("verdict-2026-04-20T14:32").unwrap();
        let c = EventId::from_source_id("verdict-2026-04-20T14:37").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let own = EventId::new();
        assert_eq!(EventId::from_source_id(&own.to_string()), Ok(own));
    }

    #[test]
    fn a_source_id_that_is_empty_long_or_has_spaces_is_refused() {
        assert_eq!(EventId::from_source_id(""), Err(SourceIdError::Length));
        assert_eq!(
            EventId::from_source_id(&"x".repeat(201)),
            Err(SourceIdError::Length)
        );
        assert_eq!(
            EventId::from_source_id("a b"),
            Err(SourceIdError::Characters)
        );
    }

    #[test]
    fn a_delivery_id_depends_on_both_the_event_and_the_webhook() {
        let (e1, e2) = (EventId::new(), EventId::new());
        let (w1, w2) = (WebhookId::new(), WebhookId::new());
        assert_eq!(DeliveryId::for_pair(e1, w1), DeliveryId::for_pair(e1, w1));
        assert_ne!(DeliveryId::for_pair(e1, w1), DeliveryId::for_pair(e1, w2));
        assert_ne!(DeliveryId::for_pair(e1, w1), DeliveryId::for_pair(e2, w1));
    }

    #[test]
    fn ids_serialize_as_their_prefixed_text() {
        let id = WebhookId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<WebhookId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<WebhookId>("\"evt_x\"").is_err());
    }

    proptest! {
        #[test]
        fn every_u128_round_trips_through_base32(v in any::<u128>()) {
            prop_assert_eq!(decode_u128(&encode_u128(v)), Some(v));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in "\\PC*") {
            let _ = s.parse::<WebhookId>();
            let _ = EventId::from_source_id(&s);
        }
    }
}
