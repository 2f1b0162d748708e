//! Seeding, and the burst and sustained loads. Each load prints one JSON line of figures.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aioka_core::event::EventType;
use aioka_core::{EncryptionKey, EventId, WebhookSecret};
use aioka_store::{DatabaseSettings, SeedWebhook, Store};
use anyhow::{Context, bail};
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct SeedArgs {
    #[arg(long, env = "AIOKA__DATABASE__URL")]
    database_url: String,
    #[arg(long, env = "AIOKA__SECURITY__SECRET_KEY")]
    secret_key: String,
    /// Webhooks to create.
    #[arg(long)]
    count: usize,
    /// Base of the URLs: webhook i gets `<base>/<start + i>`.
    #[arg(long)]
    url_base: String,
    /// The first endpoint number: seeding in steps keeps every URL, and so every secret,
    /// distinct.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// The master secret: endpoint n signs with `endpoint_secret(master, n)`, its own, which
    /// the receiver derives the same way.
    #[arg(long)]
    secret: String,
    #[arg(long, default_value = "verdict.new")]
    event: String,
    #[arg(long, default_value_t = 5)]
    per_key: usize,
}

fn store(url: &str) -> anyhow::Result<Store> {
    Ok(Store::connect(&DatabaseSettings::new(
        url,
        4,
        Duration::from_secs(10),
    ))?)
}

pub async fn seed(args: SeedArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let store = store(&args.database_url)?;
    let key = EncryptionKey::from_base64(&args.secret_key)?;
    let secret = WebhookSecret::from_exposed(args.secret.clone()).context("--secret")?;
    let event: EventType = args.event.parse()?;
    let webhooks: Vec<SeedWebhook> = (args.start..args.start + args.count as u64)
        .map(|n| SeedWebhook {
            url: format!("{}/{n}", args.url_base.trim_end_matches('/')),
            secret: Some(crate::secrets::endpoint_secret(&secret, n)),
        })
        .collect();
    let ids = store
        .seed_webhooks(&webhooks, &[event], &secret, &key, args.per_key)
        .await?;
    println!(
        "{}",
        json!({"seeded": ids.len(), "seconds": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn stats(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    Ok(client
        .get(format!("{url}/stats"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

async fn reset(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    client
        .post(format!("{url}/reset"))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// Publishes one event; returns its id.
async fn publish(
    client: &reqwest::Client,
    gateway: &str,
    key: &str,
    event: EventType,
) -> anyhow::Result<String> {
    match publish_with_id(client, gateway, key, event, None).await {
        Ok(id) => Ok(id),
        Err(Refused::Retry(e, _) | Refused::Fatal(e)) => Err(e),
    }
}

/// Why a publish was not accepted: worth sending again with the same id (a 5xx, a timeout,
/// a connection error; with the status when there was one), or not (any other answer).
enum Refused {
    Retry(anyhow::Error, Option<u16>),
    Fatal(anyhow::Error),
}

/// Publishes one event, with the producer's own `id` when given; returns the gateway's id.
async fn publish_with_id(
    client: &reqwest::Client,
    gateway: &str,
    key: &str,
    event: EventType,
    id: Option<&str>,
) -> Result<String, Refused> {
    let mut body = json!({"event": event.as_str(), "data": event.sample_data()});
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    let response = client
        .post(format!("{gateway}/v1/events"))
        .header("X-API-Key", key)
        .json(&body)
        .send()
        .await
        .map_err(|e| Refused::Retry(e.into(), None))?;
    let status = response.status();
    if status != 202 {
        let text = response.text().await.unwrap_or_default();
        let e = anyhow::anyhow!("publish answered {status}: {text}");
        // The event id is the producer's, so sending again after any 5xx is safe: the same
        // event is accepted at most once.
        return Err(if status.is_server_error() {
            Refused::Retry(e, Some(status.as_u16()))
        } else {
            Refused::Fatal(e)
        });
    }
    let body: Value = response
        .json()
        .await
        .map_err(|e| Refused::Retry(e.into(), None))?;
    Ok(body["id"].as_str().unwrap_or_default().to_owned())
}

/// Waits until the receiver has `expect` distinct deliveries, or no progress for `stall`.
async fn wait_for(
    client: &reqwest::Client,
    url: &str,
    expect: u64,
    stall: Duration,
) -> anyhow::Result<Value> {
    let mut last = 0;
    let mut progressed = Instant::now();
    loop {
        let s = stats(client, url).await?;
        let distinct = s["distinct"].as_u64().unwrap_or(0);
        if distinct >= expect {
            return Ok(s);
        }
        if distinct > last {
            last = distinct;
            progressed = Instant::now();
        } else if progressed.elapsed() > stall {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug, clap::Args)]
pub struct BurstArgs {
    #[arg(long)]
    gateway: String,
    #[arg(long, env = "AIOKA_PRODUCER_KEY")]
    producer_key: String,
    /// The bench receiver's stats address, e.g. http://127.0.0.1:18444.
    #[arg(long)]
    stats: String,
    /// Deliveries that must arrive (subscribers answering 2xx).
    #[arg(long)]
    expect: u64,
    /// For the records-keep-pace figure: the database the services write to.
    #[arg(long, env = "AIOKA__DATABASE__URL")]
    database_url: Option<String>,
    #[arg(long, default_value = "burst")]
    label: String,
    /// The event type published (its subscribers are the webhooks of the case).
    #[arg(long, default_value = "verdict.new")]
    event: String,
    /// Events published at once (each to every subscriber).
    #[arg(long, default_value_t = 1)]
    events: usize,
    /// Every endpoint answers 2xx: the run fails if any delivery is left pending.
    #[arg(long)]
    healthy: bool,
    /// The delivery service's /metrics: its `aioka_delivery_records_total` says when the
    /// records may have caught up, before the log is read.
    #[arg(long)]
    delivery_metrics: Option<String>,
}

pub async fn burst(args: BurstArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    reset(&client, &args.stats).await?;
    let records_before = match &args.delivery_metrics {
        Some(url) => records_written(&client, url).await,
        None => 0,
    };
    let event_type: EventType = args.event.parse()?;
    let sent_ms = now_ms();
    // Several events go out at once (many events to few webhooks): the clock starts at the
    // first 202.
    let published = futures_util::future::join_all(
        (0..args.events.max(1))
            .map(|_| publish(&client, &args.gateway, &args.producer_key, event_type)),
    )
    .await;
    let events = published
        .into_iter()
        .collect::<anyhow::Result<Vec<String>>>()?;
    let accepted_ms = now_ms();
    let s = wait_for(&client, &args.stats, args.expect, Duration::from_secs(30)).await?;
    let distinct = s["distinct"].as_u64().unwrap_or(0);
    let last_ms = s["last_ms"].as_u64().unwrap_or(accepted_ms);
    let first_ms = s["first_ms"].as_u64().unwrap_or(accepted_ms);
    let from = if args.events > 1 {
        first_ms.min(accepted_ms)
    } else {
        accepted_ms
    };
    let seconds = (last_ms.saturating_sub(from)) as f64 / 1000.0;
    // Records keep pace: how long after the last arrival the log shows every success. One
    // that never catches up (60 s) is reported as such and fails the target.
    let mut records_lag = Value::Null;
    let mut pending = Value::Null;
    let mut problems = Vec::new();
    if let Some(url) = &args.database_url {
        let store = store(url)?;
        let ids: Vec<EventId> = events
            .iter()
            .map(|e| e.parse().context("event id"))
            .collect::<anyhow::Result<_>>()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut left = 0;
        // The delivery service's count of records written is cheap to read: the log is
        // queried (a read of the whole partition) only once it counts at least one record per
        // arrival, and then every 100 ms, so the measurement does not take PostgreSQL's CPU
        // from what it measures (polling the log every 20 ms per event did: one core of
        // sequential scans in the many-events case after the 100 000 bursts).
        while Instant::now() < deadline {
            let gate_ms = now_ms();
            if let Some(url) = &args.delivery_metrics
                && records_written(&client, url)
                    .await
                    .saturating_sub(records_before)
                    < distinct
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            let (_, succeeded, waiting) = store.event_delivery_counts(&ids).await?;
            left = waiting;
            if succeeded as u64 >= distinct {
                records_lag = json!(gate_ms.saturating_sub(last_ms) as f64 / 1000.0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if records_lag.is_null() {
            problems
                .push("the attempt records never caught up with the arrivals (60 s)".to_owned());
        }
        pending = json!(left);
        if args.healthy && left > 0 {
            problems.push(format!(
                "{left} deliveries left pending by a run of healthy endpoints"
            ));
        }
    }
    println!(
        "{}",
        json!({
            "label": args.label,
            "events": events.len(),
            "expected": args.expect,
            "delivered": distinct,
            "lost": args.expect.saturating_sub(distinct),
            "duplicates": s["duplicates"],
            "bad_signatures": s["bad_signatures"],
            "ingest_ms": accepted_ms - sent_ms,
            "seconds": seconds,
            "per_second": if seconds > 0.0 { distinct as f64 / seconds } else { 0.0 },
            "records_lag_seconds": records_lag,
            "records_never_caught_up": records_lag.is_null() && args.database_url.is_some(),
            "pending": pending,
            "latency_ms": s["latency_ms"],
        })
    );
    check(&s, distinct, args.expect)?;
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

/// A run that lost a delivery or received a bad signature is a failed run.
fn check(stats: &Value, distinct: u64, expect: u64) -> anyhow::Result<()> {
    if distinct < expect {
        bail!("{distinct} of {expect} deliveries arrived");
    }
    let bad = stats["bad_signatures"].as_u64().unwrap_or(0);
    if bad > 0 {
        bail!("{bad} deliveries arrived with an invalid X-AIOKA-Signature");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct SustainedArgs {
    #[arg(long)]
    gateway: String,
    #[arg(long, env = "AIOKA_PRODUCER_KEY")]
    producer_key: String,
    #[arg(long)]
    stats: String,
    /// Subscribers of each event (deliveries per event).
    #[arg(long)]
    subscribers: u64,
    /// Events published per second.
    #[arg(long)]
    events_per_second: f64,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// To sample the delivery queue's backlog.
    #[arg(long, env = "AIOKA__AMQP__URL")]
    amqp_url: String,
    #[arg(long)]
    queue: String,
    /// The delivery service's /metrics: its `aioka_delivery_in_flight` (tasks taken but not
    /// acknowledged) is added to the queue's ready messages, so the backlog counts both.
    #[arg(long)]
    delivery_metrics: Option<String>,
    /// The event type published (its subscribers are the M).
    #[arg(long, default_value = "council.new")]
    event: String,
    #[arg(long, default_value = "sustained")]
    label: String,
}

pub async fn sustained(args: SustainedArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    reset(&client, &args.stats).await?;
    let backlog = tokio::spawn(deepest_backlog(
        args.amqp_url.clone(),
        args.queue.clone(),
        args.delivery_metrics.clone(),
        Duration::from_secs(args.seconds + 60),
    ));
    let event: EventType = args.event.parse()?;
    let period = Duration::from_secs_f64(1.0 / args.events_per_second.max(0.01));
    let mut ticker = tokio::time::interval(period);
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let mut published = 0u64;
    while Instant::now() < until {
        ticker.tick().await;
        publish(&client, &args.gateway, &args.producer_key, event).await?;
        published += 1;
    }
    let expect = published * args.subscribers;
    let s = wait_for(&client, &args.stats, expect, Duration::from_secs(30)).await?;
    backlog.abort();
    let deepest = DEEPEST.load(std::sync::atomic::Ordering::Relaxed);
    let distinct = s["distinct"].as_u64().unwrap_or(0);
    let span_ms = s["last_ms"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(s["first_ms"].as_u64().unwrap_or(0));
    let per_second = if span_ms > 0 {
        distinct as f64 * 1000.0 / span_ms as f64
    } else {
        0.0
    };
    println!(
        "{}",
        json!({
            "label": args.label,
            "events": published,
            "expected": expect,
            "delivered": distinct,
            "lost": expect.saturating_sub(distinct),
            "duplicates": s["duplicates"],
            "bad_signatures": s["bad_signatures"],
            "per_second": per_second,
            "latency_ms": s["latency_ms"],
            "deepest_backlog": deepest,
        })
    );
    check(&s, distinct, expect)
}

/// `aioka_delivery_records_total` from a /metrics page; 0 when it cannot be read.
async fn records_written(http: &reqwest::Client, url: &str) -> u64 {
    let Ok(response) = http.get(url).timeout(Duration::from_secs(1)).send().await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("aioka_delivery_records_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `aioka_delivery_in_flight` from a /metrics page; 0 when it cannot be read.
async fn in_flight(http: &reqwest::Client, url: &str) -> u32 {
    let Ok(response) = http.get(url).timeout(Duration::from_secs(1)).send().await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("aioka_delivery_in_flight"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u32
}

static DEEPEST: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The deepest backlog seen: ready messages of `queue` plus, with `metrics`, the delivery
/// service's tasks in flight (delivered to it, not yet acknowledged).
async fn deepest_backlog(url: String, queue: String, metrics: Option<String>, limit: Duration) {
    let Ok(connection) = aioka_queue::connect(&url, "aioka-bench").await else {
        return;
    };
    let http = reqwest::Client::new();
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    let started = Instant::now();
    while started.elapsed() < limit {
        let passive = aioka_queue::lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        if let Ok(q) = channel
            .queue_declare(queue.as_str().into(), passive, Default::default())
            .await
        {
            let unacked = match &metrics {
                Some(m) => in_flight(&http, m).await,
                None => 0,
            };
            DEEPEST.fetch_max(
                q.message_count() + unacked,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    #[arg(long)]
    gateway: String,
    #[arg(long, env = "AIOKA_PRODUCER_KEY")]
    producer_key: String,
    /// Events to get accepted.
    #[arg(long)]
    count: u64,
    /// Pause between events.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    #[arg(long, default_value = "verdict.new")]
    event: String,
    /// Give up on one event after this long of refusals (503 while a dependency is down).
    #[arg(long, default_value_t = 120)]
    patience_seconds: u64,
    /// Event n is published with the producer id `<id-prefix>-<n>`, and sent again with the
    /// same id after a 503, a timeout or a connection error, so an event that was stored
    /// although its answer was lost is still one event.
    #[arg(long, default_value = "bench")]
    id_prefix: String,
    /// Where to write the ids of the accepted events, one a line, as each is accepted.
    #[arg(long)]
    accepted_file: Option<std::path::PathBuf>,
    /// How long one request may take before it counts as a timeout.
    #[arg(long, default_value_t = 20)]
    request_timeout_seconds: u64,
}

/// Publishes `count` events like a careful producer: each one has its own producer id and is
/// sent again with that id after a 5xx, a timeout or a connection error until the gateway
/// accepts it (202); a refusal is never counted as accepted, and any 4xx ends the run. The accepted ids are the ones the gateway answered, and must be the ids derived
/// from the producer ids (checked). Prints `{"accepted", "refusals"}`.
pub async fn publish_many(args: PublishArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.request_timeout_seconds))
        .build()?;
    let event: EventType = args.event.parse()?;
    let mut file = match &args.accepted_file {
        Some(path) => Some(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => None,
    };
    let (mut accepted, mut refusals) = (0u64, 0u64);
    // Refusals by status ("503", "500", "none" for timeouts and connection errors): a 500 is
    // not a 503, and the harness shows which the gateway answered during an outage.
    let mut by_status: std::collections::BTreeMap<String, u64> = Default::default();
    for n in 0..args.count {
        let source = format!("{}-{n}", args.id_prefix);
        let expected = EventId::from_source_id(&source)
            .map_err(|e| anyhow::anyhow!("producer id {source}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(args.patience_seconds);
        loop {
            match publish_with_id(
                &client,
                &args.gateway,
                &args.producer_key,
                event,
                Some(&source),
            )
            .await
            {
                Ok(id) => {
                    if id != expected.to_string() {
                        bail!(
                            "the gateway answered id {id} for producer id {source}, not {expected}"
                        );
                    }
                    accepted += 1;
                    if let Some(f) = file.as_mut() {
                        writeln!(f, "{id}")?;
                        f.flush()?;
                    }
                    break;
                }
                Err(Refused::Retry(_, status)) if Instant::now() < deadline => {
                    refusals += 1;
                    *by_status
                        .entry(status.map_or_else(|| "none".to_owned(), |s| s.to_string()))
                        .or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(Refused::Retry(e, _) | Refused::Fatal(e)) => {
                    return Err(e.context(format!("{source}, after {accepted} accepted")));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    println!(
        "{}",
        json!({"accepted": accepted, "refusals": refusals, "refused_with": by_status})
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    #[arg(long)]
    stats: String,
    /// Distinct deliveries to wait for.
    #[arg(long)]
    expect: u64,
    /// Give up after this long without a new delivery.
    #[arg(long, default_value_t = 60)]
    stall_seconds: u64,
}

/// Waits for the receiver to count `expect` distinct deliveries (or to stall) and prints its
/// counters. Exits non-zero if fewer arrived.
pub async fn wait(args: WaitArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let s = wait_for(
        &client,
        &args.stats,
        args.expect,
        Duration::from_secs(args.stall_seconds),
    )
    .await?;
    println!("{s}");
    let distinct = s["distinct"].as_u64().unwrap_or(0);
    check(&s, distinct, args.expect)
}
