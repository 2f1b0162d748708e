//! Consuming, acknowledging and parking.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};

use tokio_util::sync::CancellationToken;

use crate::{PARK_REASON_HEADER, PARK_SOURCE_HEADER, Publisher, QueueError, Topology, connect};

/// Opens a channel with `prefetch` unacknowledged messages at most, and consumes `queue`.
/// The prefetch is the bound on work in flight: the broker sends no more until we ack.
pub async fn consume(
    connection: &Connection,
    queue: &str,
    tag: &str,
    prefetch: u16,
) -> Result<(Channel, Consumer), QueueError> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch.max(1), BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            ShortString::from(queue),
            ShortString::from(tag),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Acknowledges a message. `Ok(false)` from the broker means it will come again (the channel
/// closed first); consumers are idempotent, so that is logged, not treated as an error.
pub async fn ack(delivery: &Delivery) {
    match delivery.ack(BasicAckOptions::default()).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!("ack not delivered; the message will be redelivered"),
        Err(e) => tracing::warn!(error = %e, "ack failed; the message will be redelivered"),
    }
}

/// Returns a message to its queue (work could not finish, e.g. on shutdown).
pub async fn requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(e) = delivery.nack(options).await {
        tracing::warn!(error = %e, "nack failed; the message will be redelivered");
    }
}

/// Moves a message that breaks its contract to the parking queue, with the reason and its
/// origin in headers and its body and properties unchanged, then acknowledges it. Nothing is
/// lost and nothing loops: an operator can inspect and replay it.
pub async fn park(
    publisher: &Publisher,
    topology: &Topology,
    delivery: &Delivery,
    source: &str,
    reason: &str,
) -> Result<(), QueueError> {
    park_copy(
        publisher,
        topology,
        (&delivery.data, &delivery.properties),
        delivery.routing_key.as_str(),
        source,
        reason,
    )
    .await?;
    ack(delivery).await;
    Ok(())
}

/// Parks a message made from a received one (`data` and `properties`, which came with
/// `routing_key`), such as one item of a batch, and acknowledges nothing.
pub async fn park_copy(
    publisher: &Publisher,
    topology: &Topology,
    (data, properties): (&[u8], &BasicProperties),
    routing_key: &str,
    source: &str,
    reason: &str,
) -> Result<(), QueueError> {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from(PARK_REASON_HEADER),
        AMQPValue::LongString(LongString::from(reason)),
    );
    headers.insert(
        ShortString::from(PARK_SOURCE_HEADER),
        AMQPValue::LongString(LongString::from(source)),
    );
    headers.insert(
        ShortString::from("x-aioka-original-routing-key"),
        AMQPValue::LongString(LongString::from(routing_key)),
    );
    let properties = properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2);
    publisher
        .publish(&topology.parking_exchange(), "", data, properties)
        .await?;
    tracing::warn!(source, reason, "message parked");
    metrics::counter!("aioka_messages_parked_total", "source" => source.to_owned()).increment(1);
    Ok(())
}

/// Marks a message published again by our own services after it may have been handled
/// already (a session that ended with it in hand, a swept retry): its consumer treats it as
/// redelivered (the delivery service claims its attempt before sending).
pub const REDELIVERED_HEADER: &str = "x-aioka-redelivered";

/// A message in hand, unsettled, when its session ended under it (the connection lost, the
/// publisher channel closed). The broker should hand it back, but with a quorum queue and the
/// consumer's node gone it was seen not to: in the three-node chaos (a node killed with 119
/// messages in hand on a delivery process connected to it) 33 tasks never came back, and
/// rabbitmq-server#12403 reports quorum queues acknowledging such messages by themselves. So
/// the next session waits [`HANDED_BACK_WITHIN`] for the broker to hand each back (a
/// redelivered message with the same body) and publishes those it did not, confirmed, marked
/// [`REDELIVERED_HEADER`]. Publishing at once would double every first attempt in hand, which
/// no claim can stop (a first attempt has no row to claim); a copy that still races the
/// broker's own is a duplicate, which every consumer here tolerates.
#[derive(Debug, Clone)]
struct Unsettled {
    exchange: String,
    routing_key: String,
    data: Vec<u8>,
    properties: BasicProperties,
}

impl Unsettled {
    /// A copy of what is needed to publish `delivery` again (the mark is added then, not on
    /// every message in hand).
    fn of(delivery: &Delivery) -> Self {
        Self {
            exchange: delivery.exchange.as_str().to_owned(),
            routing_key: delivery.routing_key.as_str().to_owned(),
            data: delivery.data.clone(),
            properties: delivery.properties.clone(),
        }
    }

    /// Its properties, marked [`REDELIVERED_HEADER`].
    fn marked(&self) -> BasicProperties {
        let mut headers = self.properties.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from(REDELIVERED_HEADER),
            AMQPValue::LongString(LongString::from("1")),
        );
        self.properties.clone().with_headers(headers)
    }
}

/// How long a session consumes, after one before it ended under messages in hand, waiting for
/// the broker to hand them back before it publishes the rest again.
pub const HANDED_BACK_WITHIN: Duration = Duration::from_secs(10);

/// What sessions left unsettled, by the hash of each message's body, and since when.
#[derive(Debug, Default)]
struct Stash {
    since: Option<Instant>,
    messages: HashMap<u64, Unsettled>,
}

fn body_key(data: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut hasher);
    hasher.finish()
}

impl Stash {
    fn keep(&mut self, messages: impl IntoIterator<Item = Unsettled>) {
        for message in messages {
            self.messages.insert(body_key(&message.data), message);
        }
        if !self.messages.is_empty() {
            self.since.get_or_insert_with(Instant::now);
        }
    }

    /// The broker handed this one back: it needs no copy.
    fn handed_back(&mut self, delivery: &Delivery) {
        if delivery.redelivered && !self.messages.is_empty() {
            self.messages.remove(&body_key(&delivery.data));
        }
    }

    /// A session has begun consuming: the broker can hand back from now on.
    fn start_clock(&mut self) {
        if !self.messages.is_empty() {
            self.since = Some(Instant::now());
        }
    }

    fn due(&self) -> bool {
        self.since
            .is_some_and(|since| since.elapsed() >= HANDED_BACK_WITHIN)
    }
}

/// Publishes again what the broker did not hand back (see [`Unsettled`]); those not
/// confirmed stay for the next try.
async fn publish_again(publisher: &Publisher, stash: &mut Stash) -> Result<(), QueueError> {
    if stash.messages.is_empty() {
        stash.since = None;
        return Ok(());
    }
    let count = stash.messages.len();
    let keys: Vec<u64> = stash.messages.keys().copied().collect();
    for key in keys {
        let Some(message) = stash.messages.get(&key) else {
            continue;
        };
        publisher
            .publish(
                &message.exchange,
                &message.routing_key,
                &message.data,
                message.marked(),
            )
            .await?;
        stash.messages.remove(&key);
    }
    stash.since = None;
    tracing::warn!(
        count,
        "messages a session left in hand, not handed back by the broker, published again"
    );
    metrics::counter!("aioka_messages_republished_total").increment(count as u64);
    Ok(())
}

/// How often a consumer session declares its part of the topology again (idempotent).
pub const REASSERT_TOPOLOGY: Duration = Duration::from_secs(5);

/// Unacknowledged messages per consumer channel at most; a larger prefetch opens more channels.
pub const PER_CHANNEL: u16 = 128;

/// What [`run_consumer`] consumes, and as whom.
#[derive(Debug, Clone)]
pub struct ConsumerSpec<'a> {
    pub url: &'a str,
    pub topology: &'a Topology,
    /// The service name, for the connection name and consumer tag.
    pub service: &'a str,
    /// The queues consumed, all in one session (delivery consumes every shard it is given).
    pub queues: Vec<String>,
    /// Also consume delivery shards past the topology's count that still exist (left by a
    /// larger `amqp.delivery_shards`), so lowering the count strands nothing.
    pub drain_leftover_shards: bool,
    /// The queues this service declares at the start of each session.
    pub part: crate::Part,
    /// Messages in flight at most: the broker sends no more until one is acked.
    pub prefetch: u16,
    /// On shutdown, how long messages in hand may take; the rest go back to the queue.
    pub grace: Duration,
}

/// Why a broker session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("the consumer was cancelled or its channel closed")]
    Ended,
    #[error("the publisher channel was closed by the broker")]
    PublisherClosed,
}

/// Consumes `spec.queues` until `shutdown`: connects, declares the topology, and hands every
/// message to `handle` with a confirm-mode publisher, `spec.prefetch` at a time. When the
/// broker goes away it reconnects with backoff (100 ms doubling to 5 s, restarting after a
/// healthy session); `connected` is told each change, for readiness. On shutdown it stops
/// taking messages, lets the ones in hand finish, and closes the connection.
pub async fn run_consumer<H, Fut>(
    spec: ConsumerSpec<'_>,
    shutdown: &CancellationToken,
    connected: impl Fn(bool),
    handle: H,
) where
    H: Fn(Publisher, Delivery) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut backoff = Duration::from_millis(100);
    let mut unsettled = Stash::default();
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        match session(&spec, shutdown, &connected, &handle, &mut unsettled).await {
            Ok(()) => return,
            Err(e) => {
                connected(false);
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(100);
                }
                tracing::warn!(error = %e, retry_in = ?backoff, queues = ?spec.queues, "broker session ended");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn session<H, Fut>(
    spec: &ConsumerSpec<'_>,
    shutdown: &CancellationToken,
    connected: &impl Fn(bool),
    handle: &H,
    unsettled: &mut Stash,
) -> Result<(), SessionError>
where
    H: Fn(Publisher, Delivery) -> Fut,
    Fut: Future<Output = ()>,
{
    let connection = connect(spec.url, &spec.topology.connection_name(spec.service)).await?;
    let publisher = Publisher::new(&connection).await?;
    spec.topology
        .declare_part(publisher.channel(), spec.part)
        .await?;
    let mut queues = spec.queues.clone();
    if spec.drain_leftover_shards {
        queues.extend(leftover_shards(&connection, spec.topology).await?);
    }
    // The prefetch is shared by the queues, and each queue's share is spread over channels
    // of at most PER_CHANNEL messages each. RabbitMQ finds the message a single ack names by
    // walking its channel's unacked list from the oldest: with one channel of 2048 and a few
    // attempts hanging at the head for 10 s, every ack walked (and copied) hundreds of
    // entries, and the broker's CPU tripled. (Quorum queues have no per-channel prefetch
    // shared by several consumers, so each queue gets a share.)
    let count = u16::try_from(queues.len().max(1)).unwrap_or(u16::MAX);
    let per_queue = spec.prefetch.max(1).div_ceil(count);
    let channels = per_queue.div_ceil(PER_CHANNEL);
    let per_channel = per_queue.div_ceil(channels);
    let mut open = Vec::new();
    let mut streams = Vec::new();
    for queue in &queues {
        for _ in 0..channels {
            let (channel, consumer) =
                consume(&connection, queue, spec.service, per_channel).await?;
            open.push(channel);
            // Each consumer's end shows as a `None` item, so one closed channel ends the
            // session.
            streams.push(
                consumer
                    .map(Some)
                    .chain(futures_util::stream::once(async { None }))
                    .boxed(),
            );
        }
    }
    let channels = open.len();
    let consumer = futures_util::stream::select_all(streams);
    connected(true);
    let queue = queues.join(",");
    tracing::info!(%queue, prefetch = spec.prefetch, channels, "consuming");
    unsettled.start_clock();
    let handle_one = |delivery: Delivery| {
        let publisher = publisher.clone();
        let queue = &queue;
        async move {
            // A handler that panics must not take the consumer down with it: the message
            // goes back to its queue, and after the queue's delivery limit the broker parks
            // it (x-death says why) while the rest flows on.
            let acker = delivery.acker.clone();
            let handled = std::panic::AssertUnwindSafe(handle(publisher, delivery))
                .catch_unwind()
                .await;
            if handled.is_err() {
                tracing::error!(queue = %queue, "message handler panicked; requeueing");
                metrics::counter!("aioka_handler_panics_total", "queue" => queue.to_owned())
                    .increment(1);
                let options = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                let _ = acker.nack(options).await;
            }
        }
    };
    // The consumer stays alive until every message in hand is settled: dropping it cancels
    // the consumer on the broker, and acks sent after that were seen not to take effect
    // (the messages came back as duplicates after a SIGTERM). On shutdown we only stop
    // taking new messages; those prefetched but not started go back when the channel closes.
    let mut consumer = consumer;
    let mut in_hand = futures_util::stream::FuturesUnordered::new();
    // A copy of each message in hand, until its handler ends (see `Unsettled`).
    let mut held: HashMap<u64, Unsettled> = HashMap::new();
    let mut next_key = 0u64;
    let mut stopping = false;
    let mut ended = false;
    // The broker closes a channel on a channel-level error (a publish to an exchange that
    // is gone, a permission refused): every later publish on it fails. A session whose
    // publisher is dead can do no work (fanout cannot confirm a task, delivery cannot
    // schedule a retry), so it ends and reconnects, and readiness shows it meanwhile.
    let mut watchdog = tokio::time::interval(Duration::from_millis(200));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut publisher_dead = false;
    // Each service declares only its part of the topology (its broker user may configure
    // nothing else), so a binding lost with a deleted exchange is restored by the service
    // that owns it, which re-asserts its part now and then, not only when it reconnects.
    // It runs beside the loop, so the messages in hand are never held up by its declares.
    let reassert_failed = std::sync::Arc::new(tokio::sync::Notify::new());
    let reassert = {
        let (topology, channel, part) = (
            spec.topology.clone(),
            publisher.channel().clone(),
            spec.part,
        );
        let failed = reassert_failed.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REASSERT_TOPOLOGY).await;
                if let Err(e) = topology.declare_part(&channel, part).await {
                    tracing::warn!(error = %e, %queue, "re-asserting the topology failed; reconnecting");
                    failed.notify_one();
                    return;
                }
            }
        })
    };
    let _stop_reassert = AbortOnDrop(reassert);
    let grace = tokio::time::sleep(Duration::MAX);
    tokio::pin!(grace);
    loop {
        if stopping && in_hand.is_empty() {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                grace.as_mut().reset(tokio::time::Instant::now() + spec.grace);
            }
            _ = &mut grace, if stopping => {
                tracing::warn!(grace = ?spec.grace, in_hand = in_hand.len(), "messages still in hand after the grace period; handing them back");
                break;
            }
            Some(key) = in_hand.next(), if !in_hand.is_empty() => {
                held.remove(&key);
            }
            () = reassert_failed.notified(), if !stopping => {
                publisher_dead = true;
                break;
            }
            _ = watchdog.tick() => {
                if unsettled.due() {
                    publish_again(&publisher, unsettled).await?;
                }
                if !publisher.channel().status().connected() {
                    tracing::warn!(%queue, in_hand = in_hand.len(), "the publisher channel closed under the session; reconnecting");
                    publisher_dead = true;
                    break;
                }
            }
            message = consumer.next(), if !stopping && in_hand.len() < usize::from(spec.prefetch.max(1)) => {
                match message.flatten() {
                    Some(Ok(delivery)) => {
                        let key = next_key;
                        next_key += 1;
                        unsettled.handed_back(&delivery);
                        held.insert(key, Unsettled::of(&delivery));
                        in_hand.push(handle_one(delivery).map(move |()| key));
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                    None => {
                        // The channel or connection closed under us: settle nothing more
                        // here (acks would not arrive); the broker requeues what we held.
                        ended = true;
                        break;
                    }
                }
            }
        }
    }
    drop(in_hand);
    drop(consumer);
    if publisher_dead || (ended && !shutdown.is_cancelled()) {
        // The session ends under the messages in hand: the next one publishes them again.
        unsettled.keep(held.into_values());
    }
    if publisher_dead {
        // Closing the connection hands every unacknowledged message back to its queue; the
        // handlers were dropped with `in_hand`, and their work is idempotent.
        connected(false);
        let _ = connection
            .close(200, "publisher channel closed".into())
            .await;
        return Err(SessionError::PublisherClosed);
    }
    if ended && !shutdown.is_cancelled() {
        return Err(SessionError::Ended);
    }
    for channel in &open {
        let _ = channel.close(200, "shutdown".into()).await;
    }
    let _ = connection.close(200, "shutdown".into()).await;
    if shutdown.is_cancelled() {
        Ok(())
    } else {
        Err(SessionError::Ended)
    }
}

/// Delivery shards numbered from the topology's count up that exist on the broker (each
/// probed by a passive declare on a channel of its own, which a missing queue closes), up to
/// the first that does not.
async fn leftover_shards(
    connection: &Connection,
    topology: &Topology,
) -> Result<Vec<String>, QueueError> {
    let mut found = Vec::new();
    for shard in topology.shards()..aioka_core::shard::MAX_SHARDS {
        let queue = topology.shard_queue(shard);
        let channel = connection.create_channel().await?;
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..lapin::options::QueueDeclareOptions::default()
        };
        let exists = channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .is_ok();
        let _ = channel.close(200, "probed".into()).await;
        if !exists {
            break;
        }
        tracing::warn!(%queue, shards = topology.shards(), "consuming a delivery shard left by a larger shard count until it is deleted");
        found.push(queue);
    }
    Ok(found)
}

/// Aborts a background task when the session that started it ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Samples the depth and consumer count of `queues` every `every` into the gauges
/// `aioka_queue_messages{queue}` and `aioka_queue_consumers{queue}` (consumer lag, as RabbitMQ
/// reports it), until `shutdown`. Uses a connection of its own and passive declares only.
pub async fn sample_queue_depth(
    url: String,
    name: String,
    queues: Vec<String>,
    every: Duration,
    shutdown: CancellationToken,
) {
    // The first sample waits one period, by when the services have declared their queues.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut live: Option<(lapin::Connection, lapin::Channel)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if live
            .as_ref()
            .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            live = match connect(&url, &name).await {
                Ok(c) => match c.create_channel().await {
                    Ok(ch) => Some((c, ch)),
                    Err(_) => None,
                },
                Err(_) => None,
            };
        }
        let Some((_, channel)) = live.as_ref() else {
            continue;
        };
        for queue in &queues {
            let passive = lapin::options::QueueDeclareOptions {
                passive: true,
                ..lapin::options::QueueDeclareOptions::default()
            };
            match channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                Ok(q) => {
                    metrics::gauge!("aioka_queue_messages", "queue" => queue.clone())
                        .set(f64::from(q.message_count()));
                    metrics::gauge!("aioka_queue_consumers", "queue" => queue.clone())
                        .set(f64::from(q.consumer_count()));
                }
                Err(_) => {
                    // A failed passive declare closes the channel; reconnect next tick.
                    live = None;
                    break;
                }
            }
        }
    }
}
