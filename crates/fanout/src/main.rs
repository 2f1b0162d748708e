//! `aioka-fanout`: loads settings and telemetry, binds the health listener, runs until SIGTERM.
#![forbid(unsafe_code)]

// mimalloc: glibc's malloc was about a sixth of the delivery service's profile under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use aioka_fanout::{Settings, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let _telemetry = aioka_runtime::telemetry::init("aioka-fanout", &settings.telemetry)
        .map_err(|e| anyhow::anyhow!("telemetry: {e}"))?;
    let listener = tokio::net::TcpListener::bind(settings.health_addr()?).await?;
    run(settings, listener, aioka_runtime::shutdown_on_signal()).await
}
