//! What every handler shares.

use std::sync::Arc;

use aioka_core::EncryptionKey;
use aioka_queue::SharedPublisher;
use aioka_runtime::Health;
use aioka_store::Store;

use crate::settings::GatewaySettings;

/// Per-key request budgets.
pub type RateLimiter = governor::DefaultKeyedRateLimiter<aioka_core::ApiKeyId>;

#[derive(Clone, Debug)]
pub struct AppState {
    /// `None` when `gateway.rate_limit` is 0.
    pub rate_limiter: Option<Arc<RateLimiter>>,
    pub store: Store,
    pub publisher: Arc<SharedPublisher>,
    pub encryption_key: Arc<EncryptionKey>,
    pub settings: Arc<GatewaySettings>,
    pub allow_private_targets: bool,
    pub health: Health,
}
