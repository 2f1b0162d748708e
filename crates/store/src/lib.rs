//! PostgreSQL for AIOKA Webhooks: the pool, the migrations, and typed queries.
//!
//! Services never write SQL of their own: every statement is here, behind a function whose
//! types say what it reads and writes. Rows become `aioka_core` types at this boundary.
#![forbid(unsafe_code)]

mod audit;
mod deliveries;
mod error;
mod events;
mod keys;
mod listen;
mod ordering;
mod partitions;
mod pool;
mod reach;
mod recovery;
mod seed;
mod webhooks;

pub use audit::{AttemptAudit, DeliveryAudit, EventAudit, WebhookAudit};
pub use deliveries::{
    AttemptClaim, AttemptRecord, AttemptRow, BatchWritten, ChainState, ClaimAsk, ClaimOutcome,
    DeliveryFilter, DeliveryRecord, DeliveryStatus, DeliveryTarget, Disabled, OverdueRetry,
    RecordKind, RecordedAttempt, Resend, ResendError,
};
pub use error::StoreError;
pub use events::{
    Claim, ClaimGuard, EventSource, NewEvent, Progress, Subscriber, subscribers_query,
};
pub use keys::{KeyRecord, NewKey};
pub use listen::{WEBHOOK_CHANGED, listen_webhook_changes};
pub use ordering::Turn;
pub use partitions::{
    InvalidSetting, LogWindow, MAINTENANCE_LOCK, MAX_RETAINED_PARTITIONS, Maintained, Partition,
    PartitionPolicy,
};
pub use pool::{DatabaseSettings, Store};
pub use reach::Reach;
pub use recovery::{Recovered, RecoveredTask, RecoveryLimits};
pub use seed::SeedWebhook;
pub use webhooks::{NewWebhook, WebhookPatch, WebhookRecord, WebhookWriteError};
