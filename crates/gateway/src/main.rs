//! `aioka-gateway`: loads settings and telemetry, binds the listener, runs until SIGTERM.
#![forbid(unsafe_code)]

// mimalloc: glibc's malloc was about a sixth of the delivery service's profile under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use aioka_gateway::{Listeners, Settings, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _telemetry = aioka_runtime::telemetry::init("aioka-gateway", &settings.telemetry)
        .map_err(|e| anyhow::anyhow!("telemetry: {e}"))?;
    let listeners = Listeners::bind(&settings).await?;
    run(settings, listeners, aioka_runtime::shutdown_on_signal()).await
}
