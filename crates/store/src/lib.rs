//! PostgreSQL for AIOKA Webhooks: the pool, the migrations, and typed queries.
//!
//! Services never write SQL of their own: every statement is here, behind a function whose
//! types say what it reads and writes. Rows become `aioka_core` types at this boundary.
#![forbid(unsafe_code)]

mod error;
mod keys;
mod pool;
mod webhooks;

pub use error::StoreError;
pub use keys::{KeyRecord, NewKey};
pub use pool::{DatabaseSettings, Store};
pub use webhooks::{NewWebhook, WebhookRecord, WebhookWriteError};
