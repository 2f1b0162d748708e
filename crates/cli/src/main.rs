//! `aioka`: the operator's command line. Keys, migrations, partition maintenance, and a
//! local demo receiver.
//!
//! Output meant for scripts goes to stdout alone (`KEY=$(aioka keys create …)` works);
//! everything else goes to stderr.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

mod parking;
mod receiver;

use std::process::ExitCode;

use aioka_core::tier::Tier;
use aioka_core::{ApiKey, ApiKeyId, KeyKind};
use aioka_store::{DatabaseSettings, Maintained, NewKey, Store};
use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(name = "aioka", version, about = "AIOKA Webhooks administration")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply every database migration not yet applied (safe to run concurrently), then
    /// maintain the delivery log's partitions once.
    Migrate,
    /// Maintain the delivery log's partitions once, as the fanout service does on its own:
    /// create those ahead, drop those past `database.retention`, trim old events. Prints what
    /// it did as one JSON line.
    Partitions,
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Inspect and replay the parking queue.
    #[command(subcommand)]
    Parking(ParkingCommand),
    /// A local HTTPS endpoint that prints deliveries and checks their signatures (demos).
    Receiver(ReceiverArgs),
    /// Print the RabbitMQ permissions of a role's broker user for the configured prefix:
    /// configure, write and read patterns, one per line, as `rabbitmqctl set_permissions`
    /// takes them. Roles: producer, gateway, fanout, delivery.
    AmqpPermissions {
        role: aioka_queue::permissions::Role,
    },
}

#[derive(Debug, Subcommand)]
enum ParkingCommand {
    /// Print parked messages (JSON lines) with their origin and reason; nothing is removed.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Send parked messages back where they came from (events to aioka.events with their
    /// routing key, tasks to aioka.deliveries).
    Replay {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Delete every parked message. Needs --yes.
    Purge {
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
struct ReceiverArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9443")]
    listen: std::net::SocketAddr,
    /// Directory of the local CA (ca.pem, ca.key), created if missing; a relative path is
    /// under the project's root, wherever the command runs. The delivery service must trust
    /// its ca.pem (AIOKA__DELIVERY__EXTRA_ROOT_CERTS; scripts/up sets it).
    #[arg(long, default_value = ".run/demo-ca")]
    ca_dir: std::path::PathBuf,
    /// The webhook's whsec_ secret, to verify signatures. Prefer the environment variable:
    /// a command-line argument is visible to every user in `ps`.
    #[arg(long, env = "AIOKA_WEBHOOK_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Also write each delivery to this directory: `<n>.body` holds its exact body bytes,
    /// `<n>.json` its arrival time and headers (to check signatures with your own code).
    #[arg(long)]
    raw_dir: Option<std::path::PathBuf>,
    /// Extra host names for the receiver's certificate (it always covers localhost,
    /// 127.0.0.1 and ::1), e.g. `--san demo-receiver` inside Docker Compose.
    #[arg(long = "san")]
    san: Vec<String>,
    /// The HTTP status to answer (e.g. 500 to watch retries, 410 to disable the webhook).
    #[arg(long, default_value_t = 200)]
    status: u16,
    /// Only create the CA and print the path of its certificate.
    #[arg(long)]
    init_ca: bool,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print it once; only its hash is stored.
    Create(CreateKey),
    /// List keys (never their secret part).
    List {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id (key_…): it stops working at once.
    Revoke { id: String },
}

#[derive(Debug, Args)]
struct CreateKey {
    /// A name to recognise the key by.
    #[arg(long)]
    name: String,
    /// The customer's tier (customer keys).
    #[arg(long, value_parser = parse_tier, conflicts_with = "producer", required_unless_present = "producer")]
    tier: Option<Tier>,
    /// Create a producer key, which may publish events.
    #[arg(long)]
    producer: bool,
    /// Print the key's record, with the key, as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_tier(text: &str) -> Result<Tier, String> {
    text.parse()
        .map_err(|e: aioka_core::tier::UnknownTier| e.to_string())
}

#[derive(Debug, Deserialize)]
struct Settings {
    database: DatabaseSettings,
    amqp: aioka_queue::AmqpSettings,
    delivery: Schedule,
}

#[derive(Debug, Deserialize)]
struct Schedule {
    retry_schedule: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aioka: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // The receiver needs no database; everything else does.
    let command = match cli.command {
        Command::Receiver(args) if args.init_ca => {
            println!(
                "{}",
                receiver::ensure_ca(&receiver::resolve(&args.ca_dir))?.display()
            );
            return Ok(());
        }
        Command::Receiver(args) => {
            return receiver::serve(
                args.listen,
                &receiver::resolve(&args.ca_dir),
                args.san,
                args.secret,
                args.status,
                args.raw_dir,
            )
            .await;
        }
        other => other,
    };
    let settings: Settings = aioka_runtime::load()?;
    if let Command::AmqpPermissions { role } = &command {
        // The patterns name exchanges and queues only, so the tiers do not matter.
        let topology = aioka_queue::Topology::new(&settings.amqp.prefix, Vec::new(), 1);
        let p = aioka_queue::permissions::permissions(&topology, *role);
        println!("{}\n{}\n{}", p.configure, p.write, p.read);
        return Ok(());
    }
    if let Command::Parking(parking) = &command {
        let schedule: aioka_core::retry::RetrySchedule = settings
            .delivery
            .retry_schedule
            .parse()
            .context("delivery.retry_schedule")?;
        let topology = settings.amqp.topology(schedule.tiers());
        let nodes = settings.amqp.nodes();
        return match parking {
            ParkingCommand::List { limit } => parking::list(&nodes, &topology, *limit).await,
            ParkingCommand::Replay { limit } => parking::replay(&nodes, &topology, *limit).await,
            ParkingCommand::Purge { yes: false } => {
                bail!("purge deletes every parked message for good; add --yes to confirm")
            }
            ParkingCommand::Purge { yes: true } => parking::purge(&nodes, &topology).await,
        };
    }
    settings
        .database
        .partition_policy()
        .map_err(|e| aioka_runtime::SettingsError::invalid("database", e.key, e.problem))?;
    let store = Store::connect(&settings.database)?;
    match command {
        Command::Migrate => {
            let applied = store.migrate().await.context("migrating the database")?;
            eprintln!("migrations applied: {applied}");
            let done = store
                .maintain_partitions()
                .await
                .context("maintaining the partitions")?;
            eprintln!("{}", partitions_summary(&done));
        }
        Command::Partitions => {
            let done = store
                .maintain_partitions()
                .await
                .context("maintaining the partitions")?;
            println!("{}", partitions_json(&done));
            eprintln!("{}", partitions_summary(&done));
        }
        Command::Keys(KeysCommand::Create(args)) => create_key(&store, args).await?,
        Command::Keys(KeysCommand::List { json }) => list_keys(&store, json).await?,
        Command::Keys(KeysCommand::Revoke { id }) => {
            let id: ApiKeyId = id.parse().context("the id to revoke")?;
            if !store.revoke_key(id).await? {
                bail!("no active key {id}");
            }
            eprintln!("revoked {id}");
        }
        Command::Receiver(_) | Command::Parking(_) | Command::AmqpPermissions { .. } => {}
    }
    Ok(())
}

fn partitions_json(done: &Maintained) -> serde_json::Value {
    serde_json::json!({
        "skipped": done.skipped,
        "created": done.created,
        "dropped": done.dropped,
        "events_trimmed": done.events_trimmed,
        "log_starts_at": done.log_starts_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    })
}

fn partitions_summary(done: &Maintained) -> String {
    if done.skipped {
        return "partitions: another process is maintaining them now; nothing done".to_owned();
    }
    let reach = done.log_starts_at.map_or_else(
        || "nowhere (no partition)".to_owned(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    format!(
        "partitions: {} created, {} dropped, {} events trimmed; the delivery log reaches back to {reach}",
        done.created.len(),
        done.dropped.len(),
        done.events_trimmed
    )
}

async fn create_key(store: &Store, args: CreateKey) -> anyhow::Result<()> {
    let name = args.name.trim();
    if name.is_empty() || name.len() > 200 {
        bail!("--name must be 1 to 200 characters");
    }
    let kind = if args.producer {
        KeyKind::Producer
    } else {
        KeyKind::Customer
    };
    let key = ApiKey::generate(kind);
    let record = store
        .insert_key(&NewKey {
            name,
            kind,
            tier: args.tier,
            key: &key,
        })
        .await
        .context("storing the key")?;
    if args.json {
        let mut value = serde_json::to_value(&record)?;
        value["key"] = serde_json::Value::String(key.expose().to_owned());
        println!("{value}");
    } else {
        println!("{}", key.expose());
    }
    eprintln!("created {} {} ({})", kind.as_str(), record.id, record.name);
    Ok(())
}

async fn list_keys(store: &Store, json: bool) -> anyhow::Result<()> {
    let keys = store.list_keys().await?;
    if json {
        for key in &keys {
            println!("{}", serde_json::to_string(key)?);
        }
        return Ok(());
    }
    println!(
        "{:<30}  {:<8}  {:<10}  {:<14}  {:<8}  NAME",
        "ID", "KIND", "TIER", "PREFIX", "STATUS"
    );
    for key in &keys {
        println!(
            "{:<30}  {:<8}  {:<10}  {:<14}  {:<8}  {}",
            key.id.to_string(),
            key.kind.as_str(),
            key.tier.map(Tier::as_str).unwrap_or("-"),
            key.key_prefix,
            if key.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            },
            key.name
        );
    }
    Ok(())
}
