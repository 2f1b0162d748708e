//! Exchange and queue names and how they are declared.
//!
//! See `proto/amqp.md` for the contract and `../../ARCHITECTURE.md` for why: quorum queues,
//! one TTL wait queue per retry delay (no head-of-line blocking, no plugin), at-least-once
//! dead-lettering back to the delivery exchange, and a delivery limit on every consumed queue
//! so a poison message ends in the parking queue instead of looping forever.
//! <https://www.rabbitmq.com/docs/quorum-queues#poison-message-handling>,
//! <https://www.rabbitmq.com/docs/dlx#safety>.

use aioka_core::retry::Tier;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use serde::Deserialize;

use crate::QueueError;

/// Routing key of delivery tasks on the deliveries exchange.
pub const DELIVERY_KEY: &str = "delivery";
/// Routing key, on the retry exchange, of tasks put off (not attempted) because their webhook
/// already has as many attempts in flight as one webhook may.
pub const DEFER_KEY: &str = "defer";
/// How long a put-off task waits before it is offered again.
pub const DEFER_DELAY_MS: i64 = 1000;
/// Header naming why a message was parked.
pub const PARK_REASON_HEADER: &str = "x-aioka-park-reason";
/// Header naming the queue a parked message came from.
pub const PARK_SOURCE_HEADER: &str = "x-aioka-park-source";
/// On an event the gateway accepted: when, in microseconds since the Unix epoch (decimal),
/// by the gateway's clock. Fan-out stores it as the event's `accepted_at`, the order of
/// ordered delivery.
pub const ACCEPTED_AT_HEADER: &str = "x-aioka-accepted-at";

/// `[amqp]` settings. `Debug` hides the URLs' passwords.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// One AMQP URL, or the nodes of a cluster separated by commas.
    pub url: String,
    /// The nodes of a cluster, separated by commas; when set, used instead of `url`.
    #[serde(default)]
    pub urls: String,
    pub prefix: String,
    pub delivery_limit: u32,
    /// How many queues delivery tasks are sharded over (by webhook id).
    #[serde(default = "one")]
    pub delivery_shards: u16,
}

fn one() -> u16 {
    1
}

impl AmqpSettings {
    /// The broker nodes to connect to, as [`crate::connect`] takes them.
    pub fn nodes(&self) -> String {
        if self.urls.trim().is_empty() {
            self.url.clone()
        } else {
            self.urls.clone()
        }
    }

    /// The setting that is wrong and why, if one is.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let key = if self.urls.trim().is_empty() {
            "url"
        } else {
            "urls"
        };
        let nodes = self.nodes();
        let list = crate::publisher::split_urls(&nodes);
        if list.is_empty() {
            return Some((key, "names no AMQP URL".to_owned()));
        }
        for (i, url) in list.iter().enumerate() {
            if let Err(e) = url.parse::<lapin::uri::AMQPUri>() {
                return Some((key, format!("entry {} is not an AMQP URL ({e})", i + 1)));
            }
        }
        if !(1..=aioka_core::shard::MAX_SHARDS).contains(&self.delivery_shards) {
            return Some((
                "delivery_shards",
                format!("must be from 1 to {}", aioka_core::shard::MAX_SHARDS),
            ));
        }
        None
    }

    /// The topology these settings name, with the retry schedule's `tiers`.
    pub fn topology(&self, tiers: Vec<Tier>) -> Topology {
        Topology::new(&self.prefix, tiers, self.delivery_limit).with_shards(self.delivery_shards)
    }
}

impl std::fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("url", &aioka_core::secret::redact_url(&self.url))
            .field("urls", &aioka_core::secret::redact_url(&self.urls))
            .field("prefix", &self.prefix)
            .field("delivery_limit", &self.delivery_limit)
            .field("delivery_shards", &self.delivery_shards)
            .finish()
    }
}

/// The names of one deployment's exchanges and queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    tiers: Vec<Tier>,
    delivery_limit: u32,
    shards: u16,
}

/// Which queues a service declares (see [`Topology::declare_part`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything: operators' tools and tests.
    All,
    /// `aioka.fanout`.
    Fanout,
    /// `aioka.delivery`, the retry tiers and `aioka.defer`.
    Delivery,
}

impl Topology {
    /// `tiers` are the retry delays of the schedule; each gets a wait queue.
    pub fn new(prefix: &str, tiers: Vec<Tier>, delivery_limit: u32) -> Self {
        Self {
            prefix: prefix.to_owned(),
            tiers,
            delivery_limit: delivery_limit.max(1),
            shards: 1,
        }
    }

    /// The same names with delivery work spread over `shards` queues (`amqp.delivery_shards`;
    /// 1, the default, is the unsharded topology).
    #[must_use]
    pub fn with_shards(mut self, shards: u16) -> Self {
        self.shards = shards.clamp(1, aioka_core::shard::MAX_SHARDS);
        self
    }

    /// How many delivery shards tasks are routed over.
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// The shard of `webhook`'s tasks (`aioka_core::shard::shard_of`).
    pub fn shard_of(&self, webhook: aioka_core::WebhookId) -> u16 {
        aioka_core::shard::shard_of(webhook, self.shards)
    }

    /// The name prefix of every exchange and queue.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The name a service's connection shows in the broker (`aioka-delivery@aioka`), so an
    /// operator can tell deployments and services apart in `rabbitmqctl list_connections`.
    pub fn connection_name(&self, service: &str) -> String {
        format!("{service}@{}", self.prefix)
    }

    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }
    pub fn fanout_queue(&self) -> String {
        format!("{}.fanout", self.prefix)
    }
    pub fn deliveries_exchange(&self) -> String {
        format!("{}.deliveries", self.prefix)
    }
    /// Shard 0's delivery queue, the only one of an unsharded topology.
    pub fn delivery_queue(&self) -> String {
        self.shard_queue(0)
    }
    /// Shard `shard`'s delivery queue: `aioka.delivery` for shard 0 (the unsharded name, so
    /// going from 1 shard to more keeps the queue that exists), `aioka.delivery.<i>` after.
    pub fn shard_queue(&self, shard: u16) -> String {
        sharded(format!("{}.delivery", self.prefix), shard)
    }
    /// The routing key of shard `shard`'s tasks on the deliveries exchange.
    pub fn delivery_key(&self, shard: u16) -> String {
        sharded(DELIVERY_KEY.to_owned(), shard)
    }
    /// Where a task of `webhook` is published: the deliveries exchange and its shard's key.
    pub fn task_route(&self, webhook: aioka_core::WebhookId) -> (String, String) {
        (
            self.deliveries_exchange(),
            self.delivery_key(self.shard_of(webhook)),
        )
    }
    /// Where a retry of `webhook`'s task waits `tier`: the retry exchange and the key of
    /// its shard's wait queue, which dead-letters back to the same shard.
    pub fn retry_route(&self, webhook: aioka_core::WebhookId, tier: Tier) -> (String, String) {
        (
            self.retry_exchange(),
            sharded(tier.to_string(), self.shard_of(webhook)),
        )
    }
    /// Where a put-off task of `webhook` waits (`DEFER_DELAY_MS`), back to its shard.
    pub fn defer_route(&self, webhook: aioka_core::WebhookId) -> (String, String) {
        (
            self.retry_exchange(),
            sharded(DEFER_KEY.to_owned(), self.shard_of(webhook)),
        )
    }
    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.prefix)
    }
    /// Shard 0's wait queue of `tier`.
    pub fn retry_queue(&self, tier: Tier) -> String {
        self.shard_retry_queue(tier, 0)
    }
    pub fn shard_retry_queue(&self, tier: Tier, shard: u16) -> String {
        sharded(format!("{}.retry.{tier}", self.prefix), shard)
    }
    /// Shard 0's wait queue of put-off tasks (`DEFER_DELAY_MS`), back to the deliveries
    /// exchange.
    pub fn defer_queue(&self) -> String {
        self.shard_defer_queue(0)
    }
    pub fn shard_defer_queue(&self, shard: u16) -> String {
        sharded(format!("{}.defer", self.prefix), shard)
    }
    pub fn parking_exchange(&self) -> String {
        format!("{}.parking", self.prefix)
    }
    pub fn parking_queue(&self) -> String {
        format!("{}.parking", self.prefix)
    }

    /// Every queue this topology declares, for inspection and test clean-up.
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![self.fanout_queue(), self.parking_queue()];
        for shard in 0..self.shards {
            queues.extend(self.shard_queues(shard));
        }
        queues
    }

    /// The delivery queues of every shard, for consumers and depth gauges.
    pub fn delivery_queues(&self) -> Vec<String> {
        (0..self.shards).map(|s| self.shard_queue(s)).collect()
    }

    /// One shard's queues: its delivery queue, its defer queue, its retry wait queues.
    pub fn shard_queues(&self, shard: u16) -> Vec<String> {
        let mut queues = vec![self.shard_queue(shard), self.shard_defer_queue(shard)];
        queues.extend(self.tiers.iter().map(|t| self.shard_retry_queue(*t, shard)));
        queues
    }

    /// Every exchange this topology declares.
    pub fn exchanges(&self) -> Vec<String> {
        vec![
            self.events_exchange(),
            self.deliveries_exchange(),
            self.retry_exchange(),
            self.parking_exchange(),
        ]
    }

    /// Declares everything. Idempotent: declaring what exists with the same arguments is a
    /// no-op; different arguments fail with 406 PRECONDITION_FAILED (a topology change needs a
    /// new name or a policy, see ARCHITECTURE.md).
    pub async fn declare(&self, channel: &Channel) -> Result<(), QueueError> {
        self.declare_part(channel, Part::All).await
    }

    /// Declares every exchange, the parking queue, and the queues of `part`: what one
    /// service needs, with a broker user that may configure nothing else
    /// (`permissions.rs`).
    #[tracing::instrument(skip_all, fields(prefix = %self.prefix, ?part))]
    pub async fn declare_part(&self, channel: &Channel, part: Part) -> Result<(), QueueError> {
        self.declare_exchanges(channel).await?;
        self.queue(channel, &self.parking_queue(), quorum()).await?;
        self.bind(channel, &self.parking_queue(), &self.parking_exchange(), "")
            .await?;

        if matches!(part, Part::All | Part::Fanout) {
            self.queue(channel, &self.fanout_queue(), self.consumed_queue_args())
                .await?;
            self.bind(channel, &self.fanout_queue(), &self.events_exchange(), "#")
                .await?;
        }
        if !matches!(part, Part::All | Part::Delivery) {
            return Ok(());
        }
        for shard in 0..self.shards {
            self.declare_shard(channel, shard).await?;
        }
        Ok(())
    }

    /// One shard's delivery queue, bound with its key, and its wait queues (retry tiers and
    /// defer) that dead-letter back to it. Shards past 0 ask for their leader on the node
    /// with the fewest leaders (`x-queue-leader-locator=balanced`), so a cluster's shards
    /// spread over its nodes; shard 0 keeps the unsharded queue's arguments (a declared
    /// queue's arguments cannot change).
    async fn declare_shard(&self, channel: &Channel, shard: u16) -> Result<(), QueueError> {
        let mut consumed = self.consumed_queue_args();
        if shard > 0 {
            balanced(&mut consumed);
        }
        let queue = self.shard_queue(shard);
        self.queue(channel, &queue, consumed).await?;
        self.bind(
            channel,
            &queue,
            &self.deliveries_exchange(),
            &self.delivery_key(shard),
        )
        .await?;
        for tier in &self.tiers {
            let ttl = i64::try_from(tier.delay().as_millis()).unwrap_or(i64::MAX);
            self.wait_queue(
                channel,
                &self.shard_retry_queue(*tier, shard),
                ttl,
                &sharded(tier.to_string(), shard),
                shard,
            )
            .await?;
        }
        self.wait_queue(
            channel,
            &self.shard_defer_queue(shard),
            DEFER_DELAY_MS,
            &sharded(DEFER_KEY.to_owned(), shard),
            shard,
        )
        .await
    }

    /// Declares the exchanges only: what the gateway needs to publish, with a user that may
    /// configure nothing else (the queues are fanout's and delivery's to declare).
    #[tracing::instrument(skip_all, fields(prefix = %self.prefix))]
    pub async fn declare_exchanges(&self, channel: &Channel) -> Result<(), QueueError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let exchanges = [
            (self.events_exchange(), ExchangeKind::Topic),
            (self.deliveries_exchange(), ExchangeKind::Direct),
            (self.retry_exchange(), ExchangeKind::Direct),
            (self.parking_exchange(), ExchangeKind::Fanout),
        ];
        for (name, kind) in exchanges {
            channel
                .exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
                .await?;
        }
        Ok(())
    }

    /// A queue without consumers whose messages wait `ttl_ms`, then dead-letter back to the
    /// deliveries exchange with shard `shard`'s key; fed by the retry exchange with `key`.
    async fn wait_queue(
        &self,
        channel: &Channel,
        queue: &str,
        ttl_ms: i64,
        key: &str,
        shard: u16,
    ) -> Result<(), QueueError> {
        let mut args = quorum();
        put(&mut args, "x-message-ttl", AMQPValue::LongLongInt(ttl_ms));
        put(
            &mut args,
            "x-dead-letter-exchange",
            text(&self.deliveries_exchange()),
        );
        put(
            &mut args,
            "x-dead-letter-routing-key",
            text(&self.delivery_key(shard)),
        );
        at_least_once(&mut args);
        if shard > 0 {
            balanced(&mut args);
        }
        self.queue(channel, queue, args).await?;
        self.bind(channel, queue, &self.retry_exchange(), key).await
    }

    /// Arguments of a queue a service consumes: a delivery limit, and poison messages
    /// dead-lettered at least once to the parking exchange.
    fn consumed_queue_args(&self) -> FieldTable {
        let mut args = quorum();
        put(
            &mut args,
            "x-delivery-limit",
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        put(
            &mut args,
            "x-dead-letter-exchange",
            text(&self.parking_exchange()),
        );
        at_least_once(&mut args);
        args
    }

    async fn queue(
        &self,
        channel: &Channel,
        name: &str,
        args: FieldTable,
    ) -> Result<(), QueueError> {
        channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await?;
        Ok(())
    }

    async fn bind(
        &self,
        channel: &Channel,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), QueueError> {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }
}

fn put(args: &mut FieldTable, key: &str, value: AMQPValue) {
    args.insert(ShortString::from(key), value);
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    put(&mut args, "x-queue-type", text("quorum"));
    args
}

/// `name` for shard 0, `name.<shard>` after.
fn sharded(name: String, shard: u16) -> String {
    if shard == 0 {
        name
    } else {
        format!("{name}.{shard}")
    }
}

/// Leader on the node with the fewest quorum queue leaders (RabbitMQ 3.10+).
fn balanced(args: &mut FieldTable) {
    put(args, "x-queue-leader-locator", text("balanced"));
}

/// At-least-once dead-lettering needs `reject-publish` overflow on the source queue.
fn at_least_once(args: &mut FieldTable) {
    put(args, "x-dead-letter-strategy", text("at-least-once"));
    put(args, "x-overflow", text("reject-publish"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use aioka_core::retry::RetrySchedule;

    #[test]
    fn names_follow_the_prefix_and_the_tiers() {
        let schedule: RetrySchedule = "300ms,5s,5s".parse().unwrap();
        let t = Topology::new("t1", schedule.tiers(), 20);
        assert_eq!(t.events_exchange(), "t1.events");
        assert_eq!(t.fanout_queue(), "t1.fanout");
        assert_eq!(t.delivery_queue(), "t1.delivery");
        assert_eq!(
            t.queues(),
            [
                "t1.fanout",
                "t1.parking",
                "t1.delivery",
                "t1.defer",
                "t1.retry.300ms",
                "t1.retry.5s"
            ]
        );
        let t = t.with_shards(3);
        assert_eq!(
            t.shard_queues(2),
            [
                "t1.delivery.2",
                "t1.defer.2",
                "t1.retry.300ms.2",
                "t1.retry.5s.2"
            ]
        );
        assert_eq!(
            t.delivery_queues(),
            ["t1.delivery", "t1.delivery.1", "t1.delivery.2"]
        );
        assert_eq!(
            (t.delivery_key(0), t.delivery_key(2)),
            ("delivery".to_owned(), "delivery.2".to_owned())
        );
        assert_eq!(t.queues().len(), 2 + 3 * 4);
        assert_eq!(
            t.exchanges(),
            ["t1.events", "t1.deliveries", "t1.retry", "t1.parking"]
        );
    }
}

/// `proto/amqp.md` and the code agree: the table names exactly the exchanges and queues this
/// module declares, and the documented messages parse as the code parses them.
#[cfg(test)]
mod contract {
    use std::collections::BTreeSet;

    use aioka_core::event::{DirectPublish, parse_direct};
    use aioka_core::messages::Task;
    use aioka_core::retry::RetrySchedule;

    use super::Topology;

    const DOC: &str = include_str!("../../../proto/amqp.md");

    fn table_names() -> BTreeSet<(String, bool)> {
        DOC.lines()
            .skip_while(|l| !l.starts_with("| name | kind |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let name = cells[1].trim_matches('`').to_owned();
                (name, cells[2].ends_with("exchange"))
            })
            .collect()
    }

    fn block(tag: &str) -> &'static str {
        let start = DOC
            .find(&format!("```json {tag}\n"))
            .unwrap_or_else(|| panic!("a ```json {tag} block"));
        let rest = &DOC[start..];
        let body = &rest[rest.find('\n').unwrap_or(0) + 1..];
        &body[..body.find("```").unwrap_or(body.len())]
    }

    #[test]
    fn the_documented_topology_is_the_declared_one() {
        let schedule: RetrySchedule = "5s".parse().unwrap();
        let t = Topology::new("aioka", schedule.tiers(), 20);
        let mut code: BTreeSet<(String, bool)> =
            t.exchanges().into_iter().map(|e| (e, true)).collect();
        code.extend(
            t.queues()
                .into_iter()
                .map(|q| (q.replace("aioka.retry.5s", "aioka.retry.<tier>"), false)),
        );
        assert_eq!(table_names(), code);
    }

    #[test]
    fn the_documented_batch_parses_as_one_event_to_distinct_webhooks() {
        let Task::V2(batch) =
            Task::from_bytes(block("batch").as_bytes()).expect("the documented batch parses")
        else {
            panic!("the documented batch is version 2")
        };
        assert_eq!(batch.webhooks.len(), 2);
        assert_ne!(batch.webhooks[0], batch.webhooks[1]);
        let envelope = parse_direct(DirectPublish {
            body: batch.body.as_bytes(),
            routing_key: batch.event_type.as_str(),
            message_id: None,
        })
        .expect("the batch's body is a valid envelope");
        assert_eq!(envelope.envelope.event, batch.event_type);
    }

    #[test]
    fn the_documented_task_and_envelope_parse() {
        let Task::V1(task) =
            Task::from_bytes(block("task").as_bytes()).expect("the documented task parses")
        else {
            panic!("the documented task is version 1")
        };
        assert_eq!(task.attempt, 1);
        assert_eq!(
            task.delivery_id,
            aioka_core::DeliveryId::for_pair(task.event_id, task.webhook_id),
            "the documented delivery id is the one derived from its event and webhook"
        );
        let envelope = parse_direct(DirectPublish {
            body: task.body.as_bytes(),
            routing_key: task.event_type.as_str(),
            message_id: None,
        })
        .expect("the task's body is a valid envelope");
        assert_eq!(envelope.envelope.event, task.event_type);
        let direct = block("envelope");
        parse_direct(DirectPublish {
            body: direct.as_bytes(),
            routing_key: "verdict.new",
            message_id: Some("verdict-2026-04-20T14:32"),
        })
        .expect("the documented direct publish is valid");
    }

    #[test]
    fn the_documented_size_cap_is_the_enforced_one() {
        let cap = aioka_core::event::MAX_EVENT_BYTES;
        let stated: Vec<usize> = DOC
            .split(" bytes")
            .filter_map(|before| before.rsplit(char::is_whitespace).next()?.parse().ok())
            .collect();
        assert!(
            !stated.is_empty() && stated.iter().all(|&n| n == cap),
            "proto/amqp.md states the direct-publish cap as {stated:?}; the code enforces {cap}"
        );
    }
}
