//! Every documented setting starts: the real binaries, started once with every setting of
//! `config/default.toml` set to a valid value other than its default (and once with the
//! values `scripts/up` sets, plus the harness's own four), become ready and deliver an event. A setting added to
//! `config/default.toml` or to the README's table without a value here fails the test, so no
//! documented setting can again crash the binaries untested (the OTLP endpoint did).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use aioka_e2e::PATIENCE;
use aioka_e2e::real::{Stack, free_port};
use aioka_testkit::{Receiver, TestCa};

/// Settings the harness sets itself, each to a value other than its default: the database
/// and broker of the test's own (url, prefix, the broker's retry schedule), the encryption
/// key, private targets allowed (receivers run on 127.0.0.1), the four listen addresses on
/// free ports, the receivers' CA as extra roots.
const SET_BY_THE_HARNESS: &[&str] = &[
    "database.url",
    "amqp.url",
    "amqp.prefix",
    "security.secret_key",
    "security.allow_private_targets",
    "gateway.listen",
    "gateway.admin_listen",
    "fanout.health_listen",
    "delivery.health_listen",
    "delivery.extra_root_certs",
    "delivery.retry_schedule",
];

/// Every other setting with a valid value other than its default.
fn values(ca: &TestCa, broker_url: &str) -> Vec<(&'static str, String)> {
    let pem = ca.pem_path.to_str().unwrap().to_owned();
    vec![
        ("database.pool_size", "7".into()),
        ("database.connect_timeout", "7s".into()),
        ("database.retention", "10d".into()),
        ("database.partition_interval", "12h".into()),
        ("database.partitions_ahead", "2".into()),
        // The list form: both entries the test broker (the list is what is under test).
        ("amqp.urls", format!("{broker_url}, {broker_url}")),
        ("amqp.delivery_limit", "15".into()),
        ("amqp.delivery_shards", "2".into()),
        ("gateway.shutdown_grace", "7s".into()),
        ("gateway.max_body_bytes", "32768".into()),
        ("gateway.max_webhooks_per_key", "7".into()),
        ("gateway.request_timeout", "9s".into()),
        ("gateway.dns_timeout", "2s".into()),
        ("gateway.rate_limit", "30".into()),
        ("fanout.shutdown_grace", "7s".into()),
        ("fanout.prefetch", "2".into()),
        ("fanout.chunk_size", "500".into()),
        ("fanout.batch_size", "20".into()),
        ("fanout.claim_lease", "12s".into()),
        ("delivery.shutdown_grace", "12s".into()),
        ("delivery.timeout", "8s".into()),
        ("delivery.connect_timeout", "4s".into()),
        ("delivery.disable_after", "5".into()),
        ("delivery.max_in_flight", "512".into()),
        ("delivery.max_in_flight_per_webhook", "4".into()),
        ("delivery.slow_after", "2s".into()),
        ("delivery.fifo_settle", "300ms".into()),
        ("delivery.slow_lane_in_flight", "1024".into()),
        ("delivery.response_snippet_bytes", "512".into()),
        ("delivery.max_response_bytes", "32768".into()),
        ("delivery.tls_ticket_bytes", "1048576".into()),
        ("delivery.record_batch_size", "100".into()),
        ("delivery.record_flush_interval", "20ms".into()),
        ("delivery.record_writers", "2".into()),
        ("delivery.cache_ttl", "30s".into()),
        ("delivery.retry_sweep_after", "2m".into()),
        ("delivery.retry_sweep_interval", "5s".into()),
        ("delivery.shards", "0-1".into()),
        ("telemetry.log_format", "text".into()),
        ("telemetry.log_filter", "info,aioka_delivery=debug".into()),
        // A collector that is not there: export fails, the services run.
        (
            "telemetry.otlp_endpoint",
            format!("http://127.0.0.1:{}", free_port()),
        ),
        ("telemetry.otlp_extra_root_certs", pem),
    ]
}

fn env_name(setting: &str) -> String {
    format!("AIOKA__{}", setting.replace('.', "__").to_uppercase())
}

/// `section.key` of every setting in `config/default.toml`.
fn documented_defaults() -> BTreeSet<String> {
    let table: toml::Table = aioka_runtime::settings::DEFAULTS.parse().unwrap();
    table
        .iter()
        .flat_map(|(section, keys)| {
            keys.as_table()
                .unwrap()
                .keys()
                .map(move |key| format!("{section}.{key}"))
        })
        .collect()
}

/// `section.key` of every `AIOKA__SECTION__KEY` the README names.
fn readme_settings() -> BTreeSet<String> {
    let readme = include_str!("../../../README.md");
    let mut found = BTreeSet::new();
    for (i, _) in readme.match_indices("AIOKA__") {
        let name: String = readme[i + "AIOKA__".len()..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if let Some((section, key)) = name.split_once("__")
            && !key.is_empty()
            && name != "SECTION__KEY"
        {
            found.insert(format!("{}.{}", section.to_lowercase(), key.to_lowercase()));
        }
    }
    found
}

#[tokio::test]
async fn every_setting_of_default_toml_and_the_readme_has_a_value_in_this_test() {
    let ca = TestCa::new();
    let covered: BTreeSet<String> = values(&ca, "amqp://x")
        .iter()
        .map(|(k, _)| (*k).to_owned())
        .chain(SET_BY_THE_HARNESS.iter().map(|k| (*k).to_owned()))
        .collect();
    let defaults = documented_defaults();
    let missing: Vec<_> = defaults.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "settings of config/default.toml this test does not start: {missing:?}"
    );
    let unknown: Vec<_> = readme_settings()
        .into_iter()
        .filter(|s| !defaults.contains(s))
        .collect();
    assert!(
        unknown.is_empty(),
        "the README names settings config/default.toml does not have: {unknown:?}"
    );
}

async fn delivers(stack: &Stack) {
    let receiver = Receiver::start(&stack.ca).await;
    stack.register(&receiver).await;
    stack.publish().await;
    receiver.wait_for(1, PATIENCE).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binaries_start_ready_and_deliver_with_every_setting_changed() {
    // The extra roots of the collector setting need a PEM file that outlives the stack.
    let ca = TestCa::new();
    let broker_url = aioka_testkit::TestBroker::new("1s").url.clone();
    let settings: Vec<(String, String)> = values(&ca, &broker_url)
        .into_iter()
        .map(|(k, v)| (env_name(k), v))
        .collect();
    let borrowed: Vec<(&str, String)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let stack = Stack::start(&borrowed).await;
    delivers(&stack).await;
    // The text log format is on: a person's lines, not JSON, and no colour codes in a file.
    let log = stack.log("aioka-delivery");
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO ") && !l.starts_with('{')),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "colour codes in a log file: {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binaries_start_ready_and_deliver_with_the_values_scripts_up_sets() {
    // scripts/up sets the database URL, a secret key, private targets allowed, the listen
    // addresses and the demo CA as extra roots. The harness sets those too, and four more
    // of its own: the test's broker prefix and short retry schedule (isolation and speed),
    // a pool of 8 connections and a rate limit of 1000/s (its defaults for every test); so
    // this is scripts/up's values with those four, not strictly alone.
    let stack = Stack::start(&[]).await;
    delivers(&stack).await;
}
