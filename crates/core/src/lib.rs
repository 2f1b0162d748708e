//! The rules of AIOKA Webhooks, as pure functions every service agrees on.
//!
//! Nothing here does I/O: no sockets, no database, no broker, no clock-dependent sleeps.
//! The services compose these rules with the `store` (PostgreSQL) and `queue` (RabbitMQ)
//! crates; unit tests here pin the rules down exactly.
#![forbid(unsafe_code)]

pub mod disable;
pub mod event;
pub mod ids;
pub mod messages;
pub mod ordering;
pub mod retry;
pub mod secret;
pub mod shard;
pub mod signing;
pub mod tier;
pub mod url_policy;

pub use event::{Envelope, EventType, FieldError};
pub use ids::{ApiKeyId, DeliveryId, EventId, WebhookId};
pub use ordering::DeliveryOrder;
pub use secret::{ApiKey, EncryptionKey, KeyKind, TaskKey, WebhookSecret};

/// The product name and version, as sent in `User-Agent`.
pub const USER_AGENT: &str = concat!("AIOKA-Webhooks/", env!("CARGO_PKG_VERSION"));

/// Every parser of outside input, fed arbitrary input: none may panic, and each either
/// accepts or explains.
#[cfg(test)]
mod parsers_never_panic {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use crate::event::{DirectPublish, parse_direct, parse_ingest, validate_data};
    use crate::url_policy::WebhookUrl;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>().prop_map(|f| json!(f)),
            any::<i64>().prop_map(|i| json!(i)),
            "\\PC{0,20}".prop_map(Value::String),
            prop_oneof![
                Just("verdict.new"),
                Just("macro.alert"),
                Just("2026-04-20T14:32:00Z"),
                Just("STRONG_BUY")
            ]
            .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("event".to_owned()),
                        Just("data".to_owned()),
                        Just("timestamp".to_owned()),
                        Just("id".to_owned()),
                        "[a-z_]{1,8}"
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn ingest_bodies(body in json_value()) {
            if let Ok(event) = parse_ingest(&body) {
                prop_assert!(validate_data(event.envelope.event, &event.envelope.data).is_ok());
            }
        }

        #[test]
        fn direct_publishes(body in prop::collection::vec(any::<u8>(), 0..200), key in "\\PC{0,20}", id in proptest::option::of("\\PC{0,30}")) {
            let _ = parse_direct(DirectPublish { body: &body, routing_key: &key, message_id: id.as_deref() });
        }

        #[test]
        fn direct_publishes_of_json(body in json_value(), key in prop_oneof![Just("verdict.new".to_owned()), "\\PC{0,12}"]) {
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            let _ = parse_direct(DirectPublish { body: &bytes, routing_key: &key, message_id: None });
        }

        #[test]
        fn webhook_urls(text in "\\PC{0,80}", allow in any::<bool>()) {
            let _ = WebhookUrl::parse(&text, allow);
            let _ = WebhookUrl::parse(&format!("https://{text}"), allow);
        }

        #[test]
        fn retry_schedules_and_retry_after(text in "\\PC{0,40}") {
            let _ = text.parse::<crate::retry::RetrySchedule>();
            let _ = crate::retry::parse_retry_after(&text, chrono::Utc::now());
        }
    }
}
