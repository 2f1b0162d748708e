//! What every AIOKA service shares and no service owns: loading settings, telemetry (logs,
//! traces, metrics), the health endpoints, and the shutdown signal.
//!
//! This crate knows no service: each binary brings its own typed settings struct and
//! decides what "ready" means for it.
#![forbid(unsafe_code)]

pub mod health;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use health::Health;
pub use settings::{SecuritySettings, SettingsError, TelemetrySettings, load};
pub use shutdown::shutdown_on_signal;
