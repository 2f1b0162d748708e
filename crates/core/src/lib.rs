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
pub mod retry;
pub mod secret;
pub mod signing;
pub mod tier;
pub mod url_policy;

pub use event::{Envelope, EventType, FieldError};
pub use ids::{ApiKeyId, DeliveryId, EventId, WebhookId};
pub use secret::{ApiKey, EncryptionKey, KeyKind, WebhookSecret};

/// The product name and version, as sent in `User-Agent`.
pub const USER_AGENT: &str = concat!("AIOKA-Webhooks/", env!("CARGO_PKG_VERSION"));
