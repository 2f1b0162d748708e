//! `aioka-bench`: the tools behind `scripts/bench` and `scripts/chaos`.
//!
//! * `receiver` — a fast HTTPS receiver that verifies every `X-AIOKA-Signature`, counts
//!   deliveries (distinct by delivery id, duplicates, bad signatures), measures
//!   ingest-to-receipt latency, and can hang or fail a chosen share of endpoints or close
//!   every connection (cold runs). Its counters are served as JSON on a plain HTTP port.
//! * `seed` — many webhooks at once, straight into PostgreSQL, all with one secret.
//! * `burst`, `sustained` — publish through the gateway and measure.
//! * `resources` — peak RSS and CPU seconds of processes while a command runs.
//! * `publish` — a careful producer with its own event ids; writes the accepted ids.
//! * `account` — the chaos harness's accounting by sets (see `account.rs`).
//! * `retry-exchange` — deletes or declares the retry exchange, a broker-side fault.
//! * `wait-retrying` — until retries wait in the retry queues and attempts are in flight.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

// mimalloc: glibc's malloc was about a sixth of the delivery service's profile under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod account;
mod faults;
mod load;
mod receiver;
mod resources;
mod secrets;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "aioka-bench",
    about = "Benchmark and fault-harness tools for AIOKA Webhooks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Receiver(receiver::Args),
    Seed(load::SeedArgs),
    Burst(load::BurstArgs),
    Sustained(load::SustainedArgs),
    /// Publish events one by one, retrying refusals like a careful producer.
    Publish(load::PublishArgs),
    /// Wait for the receiver to count deliveries; print its counters.
    Wait(load::WaitArgs),
    Resources(resources::Args),
    /// Account by sets: accepted events x webhooks against the receiver's records and the log.
    Account(account::Args),
    /// Delete or declare the retry exchange (the publisher-channel-closed fault).
    RetryExchange(faults::RetryExchangeArgs),
    /// Wait until retries wait in the retry queues while attempts are in flight.
    WaitRetrying(faults::WaitRetryingArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Receiver(args) => receiver::run(args).await,
        Command::Seed(args) => load::seed(args).await,
        Command::Burst(args) => load::burst(args).await,
        Command::Sustained(args) => load::sustained(args).await,
        Command::Publish(args) => load::publish_many(args).await,
        Command::Wait(args) => load::wait(args).await,
        Command::Resources(args) => resources::run(args).await,
        Command::Account(args) => account::run(args).await,
        Command::RetryExchange(args) => faults::retry_exchange(args).await,
        Command::WaitRetrying(args) => faults::wait_retrying(args).await,
    }
}
