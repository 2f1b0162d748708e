//! Broker-side faults for `scripts/chaos` that `rabbitmqctl` cannot make by itself.
//!
//! `retry-exchange delete` removes the retry exchange underneath running services: the next
//! retry a delivery service publishes there is answered 404 NOT_FOUND, which closes that
//! publisher's channel (the broker closes a channel on any channel-level error, see
//! <https://www.rabbitmq.com/docs/channels#error-handling>). `retry-exchange declare` puts the
//! whole topology back with the product's own declaration, bindings included (deleting an
//! exchange drops the bindings it was the source of).

use std::time::Duration;

use aioka_core::retry::RetrySchedule;
use aioka_queue::Topology;
use aioka_queue::lapin::options::ExchangeDeleteOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    Delete,
    Declare,
}

#[derive(Debug, clap::Args)]
pub struct RetryExchangeArgs {
    action: Action,
    #[arg(long, env = "AIOKA__AMQP__URL")]
    amqp_url: String,
    #[arg(long, env = "AIOKA__AMQP__PREFIX")]
    prefix: String,
    /// The retry delays in milliseconds (the services' `delivery.retry_schedule`), for the
    /// wait queues' TTLs.
    #[arg(long, value_delimiter = ',', default_value = "100,200,300")]
    delays_ms: Vec<u64>,
    /// `amqp.delivery_limit` of the services.
    #[arg(long, default_value_t = 20)]
    delivery_limit: u32,
}

pub async fn retry_exchange(args: RetryExchangeArgs) -> anyhow::Result<()> {
    let schedule = RetrySchedule::new(
        args.delays_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect(),
    )?;
    let topology = Topology::new(&args.prefix, schedule.tiers(), args.delivery_limit);
    let connection = aioka_queue::connect(&args.amqp_url, "aioka-bench-faults").await?;
    let channel = connection.create_channel().await?;
    match args.action {
        Action::Delete => {
            channel
                .exchange_delete(
                    topology.retry_exchange().as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await?;
            eprintln!("deleted exchange {}", topology.retry_exchange());
        }
        Action::Declare => {
            topology.declare(&channel).await?;
            eprintln!("declared the topology of {}", args.prefix);
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}
