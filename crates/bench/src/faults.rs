//! Broker-side faults for `scripts/chaos` that `rabbitmqctl` cannot make by itself.
//!
//! `retry-exchange delete` removes the retry exchange underneath running services: the next
//! retry a delivery service publishes there is answered 404 NOT_FOUND, which closes that
//! publisher's channel (the broker closes a channel on any channel-level error, see
//! <https://www.rabbitmq.com/docs/channels#error-handling>). `retry-exchange declare` puts the
//! whole topology back with the product's own declaration, bindings included (deleting an
//! exchange drops the bindings it was the source of). `wait-retrying` finds the moment
//! retries are being scheduled, for the kill -9 that must land there.

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
    /// `amqp.delivery_shards` of the services: every shard's wait queues count.
    #[arg(long, env = "AIOKA__AMQP__DELIVERY_SHARDS", default_value_t = 1)]
    shards: u16,
}

pub async fn retry_exchange(args: RetryExchangeArgs) -> anyhow::Result<()> {
    let schedule = RetrySchedule::new(
        args.delays_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect(),
    )?;
    let topology =
        Topology::new(&args.prefix, schedule.tiers(), args.delivery_limit).with_shards(args.shards);
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

#[derive(Debug, clap::Args)]
pub struct WaitRetryingArgs {
    #[arg(long, env = "AIOKA__AMQP__URL")]
    amqp_url: String,
    #[arg(long, env = "AIOKA__AMQP__PREFIX")]
    prefix: String,
    #[arg(long, value_delimiter = ',', default_value = "100,200,300")]
    delays_ms: Vec<u64>,
    /// The delivery service's Prometheus endpoint, e.g. http://127.0.0.1:29092/metrics.
    #[arg(long)]
    metrics: String,
    #[arg(long, default_value_t = 20)]
    timeout_seconds: u64,
    /// `amqp.delivery_shards` of the services: every shard's wait queues count.
    #[arg(long, env = "AIOKA__AMQP__DELIVERY_SHARDS", default_value_t = 1)]
    shards: u16,
}

/// The sum of `aioka_delivery_in_flight` in a Prometheus text page.
fn in_flight(page: &str) -> u64 {
    page.lines()
        .filter(|l| {
            l.starts_with("aioka_delivery_in_flight ") || l.starts_with("aioka_delivery_in_flight{")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v.max(0.0) as u64)
        .sum()
}

/// Waits until retries are being scheduled: some retry wait queue holds messages (read from
/// the broker by passive declares, not from the services' 5 s samples) while attempts are in
/// flight. Prints `{"retries_waiting", "in_flight"}` of that moment and exits 0, or exits 1
/// after the timeout with the last figures.
pub async fn wait_retrying(args: WaitRetryingArgs) -> anyhow::Result<()> {
    use aioka_queue::lapin::options::QueueDeclareOptions;
    let schedule = RetrySchedule::new(
        args.delays_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect(),
    )?;
    let topology = Topology::new(&args.prefix, schedule.tiers(), 1).with_shards(args.shards);
    let queues: Vec<String> = schedule
        .tiers()
        .into_iter()
        .flat_map(|t| (0..args.shards).map(move |s| (t, s)))
        .map(|(t, s)| topology.shard_retry_queue(t, s))
        .collect();
    let connection = aioka_queue::connect(&args.amqp_url, "aioka-bench-faults").await?;
    let channel = connection.create_channel().await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(args.timeout_seconds);
    let (mut waiting, mut flying) = (0u64, 0u64);
    while std::time::Instant::now() < deadline {
        waiting = 0;
        for q in &queues {
            let declared = channel
                .queue_declare(q.as_str().into(), passive, Default::default())
                .await?;
            waiting += u64::from(declared.message_count());
        }
        if waiting > 0 {
            let page = match client.get(&args.metrics).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            flying = in_flight(&page);
            if flying > 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "{}",
        serde_json::json!({"retries_waiting": waiting, "in_flight": flying})
    );
    let _ = connection.close(200, "done".into()).await;
    if waiting == 0 || flying == 0 {
        std::process::exit(1);
    }
    Ok(())
}
