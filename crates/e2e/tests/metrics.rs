//! The documented metrics are the exported ones: after one event to a webhook that fails
//! once and then succeeds, the `/metrics` of each real binary, read with a Prometheus text
//! parser (`prometheus-parse`), has every metric `docs/operations.md` lists for that service,
//! with the labels it lists, except those that only appear when what they count happens
//! (each named below with the event that makes it appear).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aioka_e2e::PATIENCE;
use aioka_e2e::real::Stack;
use aioka_testkit::Receiver;

/// Metrics that appear only once what they count has happened, which one event to a webhook
/// failing once does not make happen.
const ONLY_WHEN_IT_HAPPENS: &[(&str, &str)] = &[
    (
        "aioka_trace_spans_dropped_total",
        "a collector refused spans (tests/otlp.rs)",
    ),
    (
        "aioka_gateway_id_conflicts_total",
        "a producer reused an id with other content",
    ),
    (
        "aioka_gateway_rate_limited_total",
        "a key exceeded its rate limit",
    ),
    (
        "aioka_fanout_duplicates_total",
        "an event was published twice",
    ),
    (
        "aioka_fanout_claims_lost_total",
        "a fan-out was taken over by another fanout",
    ),
    ("aioka_messages_parked_total", "a message was parked"),
    ("aioka_handler_panics_total", "a handler panicked"),
    (
        "aioka_messages_republished_total",
        "a broker session ended with messages in hand",
    ),
    (
        "aioka_partition_maintenance_failures_total",
        "a maintenance run failed",
    ),
    (
        "aioka_delivery_deferred_total",
        "a webhook had its per-pod cap of attempts in flight",
    ),
    (
        "aioka_delivery_claims_held_total",
        "two copies of one task met",
    ),
    (
        "aioka_delivery_repeats_avoided_total",
        "a task came again after its attempt was recorded",
    ),
    ("aioka_webhooks_disabled_total", "a webhook was disabled"),
    (
        "aioka_delivery_fifo_waits_total",
        "a task of an ordered webhook came before its turn (tests/it/ordering.rs)",
    ),
    (
        "aioka_delivery_fifo_handovers_total",
        "an ordered webhook's delivery ended (tests/it/ordering.rs)",
    ),
    (
        "aioka_delivery_retries_swept_total",
        "a retry the broker lost was published again (tests/it/chains.rs)",
    ),
    (
        "aioka_partitions_created_total{by=\"recorder\"}",
        "a record found no partition",
    ),
];

/// One documented metric: its name and the labels its row names (`{a,b}`, or `{a="v"}`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Documented {
    row: String,
    name: String,
    labels: BTreeMap<String, Option<String>>,
}

/// The metrics `docs/operations.md` lists under each service's heading.
fn documented() -> BTreeMap<&'static str, Vec<Documented>> {
    let doc = include_str!("../../../docs/operations.md");
    let mut out: BTreeMap<&str, Vec<Documented>> = BTreeMap::new();
    let mut section = None;
    for line in doc.lines() {
        section = match line {
            "Every service, when trace export is on:" => Some("every"),
            "Gateway (9090):" => Some("gateway"),
            "Fanout (9091):" => Some("fanout"),
            "Delivery (9092):" => Some("delivery"),
            l if l.starts_with("## ") => None,
            _ => section,
        };
        let (Some(service), Some(cell)) = (section, line.strip_prefix("| `")) else {
            continue;
        };
        let row = cell.split('`').next().unwrap().to_owned();
        let (name, labels) = match row.split_once('{') {
            None => (row.clone(), BTreeMap::new()),
            Some((name, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split(',')
                    .map(|l| match l.split_once('=') {
                        Some((k, v)) => (k.to_owned(), Some(v.trim_matches('"').to_owned())),
                        None => (l.to_owned(), None),
                    })
                    .collect();
                (name.to_owned(), labels)
            }
        };
        out.entry(service)
            .or_default()
            .push(Documented { row, name, labels });
    }
    out
}

async fn scrape(port: u16) -> Vec<prometheus_parse::Sample> {
    let text = aioka_e2e::metrics_text(&format!("http://127.0.0.1:{port}")).await;
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap()
        .samples
}

/// Whether `samples` hold `metric` with its labels (a documented value in the docs' default
/// prefix `aioka.` stands for the stack's prefix).
fn exported(samples: &[prometheus_parse::Sample], metric: &Documented, prefix: &str) -> bool {
    samples.iter().any(|s| {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| s.metric.strip_suffix(suffix))
            .unwrap_or(&s.metric);
        (s.metric == metric.name || base == metric.name)
            && metric
                .labels
                .iter()
                .all(|(k, v)| match (s.labels.get(k), v) {
                    (Some(_), None) => true,
                    (Some(got), Some(want)) => {
                        got == want || got == want.replacen("aioka.", &format!("{prefix}."), 1)
                    }
                    (None, _) => false,
                })
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_metric_is_exported_by_its_service_with_its_labels() {
    let stack = Stack::start(&[]).await;
    let receiver = Receiver::start(&stack.ca).await;
    receiver.script(&[500]);
    stack.register(&receiver).await;
    stack.publish().await;
    receiver.wait_for(2, PATIENCE).await;
    // The queue gauges are sampled every 5 s; records are flushed within 50 ms.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let documented = documented();
    assert!(
        ["gateway", "fanout", "delivery", "every"]
            .iter()
            .all(|s| documented
                .get(s)
                .is_some_and(|m| m.len() >= 2 || *s == "every")),
        "the metrics tables of docs/operations.md were not found: {documented:?}"
    );
    let ports = [
        ("gateway", stack.gateway_admin),
        ("fanout", stack.fanout_admin),
        ("delivery", stack.delivery_admin),
    ];
    let mut missing = BTreeSet::new();
    let mut conditional_seen = BTreeSet::new();
    for (service, port) in ports {
        let samples = scrape(port).await;
        for metric in documented[service].iter().chain(&documented["every"]) {
            let conditional = ONLY_WHEN_IT_HAPPENS
                .iter()
                .any(|(name, _)| *name == metric.row || *name == metric.name);
            match (exported(&samples, metric, &stack.prefix), conditional) {
                (true, true) => {
                    conditional_seen.insert(metric.row.clone());
                }
                (false, false) => {
                    missing.insert(format!("{service}: {}", metric.row));
                }
                _ => {}
            }
        }
    }
    assert!(
        missing.is_empty(),
        "documented but not exported after one delivery: {missing:?}"
    );
    // A metric listed as conditional that one delivery exports belongs in the main check.
    assert!(
        conditional_seen.is_empty(),
        "exported although listed as appearing only when it happens: {conditional_seen:?}"
    );
}
