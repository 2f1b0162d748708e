//! The `aioka` binary against a real PostgreSQL database of its own.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use aioka_core::ApiKey;
use aioka_queue::lapin::BasicProperties;
use aioka_queue::lapin::options::BasicGetOptions;
use aioka_queue::lapin::types::{AMQPValue, FieldTable, LongString};
use aioka_testkit::{TestBroker, TestDb};
use serde_json::Value;

fn aioka(db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aioka"))
        .args(args)
        .env("AIOKA__DATABASE__URL", &db.url)
        .output()
        .expect("run aioka")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "aioka failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test]
async fn keys_create_prints_the_key_alone_and_stores_only_its_hash() {
    let db = TestDb::new().await;
    let out = stdout(&aioka(
        &db,
        &["keys", "create", "--name", "demo", "--tier", "basic"],
    ));
    let key = out.trim_end();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(key.starts_with("aioka_ck_"), "{key}");
    let record = db
        .store
        .find_active_key(&ApiKey::from_header(key))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.name, "demo");
    assert_eq!(record.tier.unwrap().as_str(), "basic");

    let producer = stdout(&aioka(
        &db,
        &["keys", "create", "--name", "pipe", "--producer"],
    ));
    assert!(producer.trim_end().starts_with("aioka_pk_"), "{producer}");

    let listing = stdout(&aioka(&db, &["keys", "list", "--json"]));
    assert!(!listing.contains(key), "a listing must never show a key");
    assert!(!listing.contains(producer.trim_end()));
    let rows: Vec<Value> = listing
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["kind"], "producer");
    assert_eq!(rows[1]["tier"], Value::Null);
}

#[tokio::test]
async fn keys_create_json_prints_the_record_with_the_key() {
    let db = TestDb::new().await;
    let out = stdout(&aioka(
        &db,
        &["keys", "create", "--name", "j", "--tier", "pro", "--json"],
    ));
    let value: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(value["id"].as_str().unwrap().starts_with("key_"));
    assert_eq!(value["tier"], "pro");
    assert_eq!(value["kind"], "customer");
    assert!(value["key"].as_str().unwrap().starts_with("aioka_ck_"));
}

#[tokio::test]
async fn a_revoked_key_stops_working_and_cannot_be_revoked_twice() {
    let db = TestDb::new().await;
    let out = stdout(&aioka(
        &db,
        &["keys", "create", "--name", "r", "--tier", "free", "--json"],
    ));
    let value: Value = serde_json::from_str(out.trim()).unwrap();
    let id = value["id"].as_str().unwrap();
    stdout(&aioka(&db, &["keys", "revoke", id]));
    let key = ApiKey::from_header(value["key"].as_str().unwrap());
    assert!(db.store.find_active_key(&key).await.unwrap().is_none());
    let again = aioka(&db, &["keys", "revoke", id]);
    assert!(!again.status.success());
    let table = stdout(&aioka(&db, &["keys", "list"]));
    assert!(table.contains("revoked"), "{table}");
}

#[tokio::test]
async fn bad_arguments_are_refused() {
    let db = TestDb::new().await;
    for args in [
        &["keys", "create", "--name", "x"][..],
        &["keys", "create", "--name", "x", "--tier", "gold"],
        &[
            "keys",
            "create",
            "--name",
            "x",
            "--tier",
            "basic",
            "--producer",
        ],
        &["keys", "create", "--name", "", "--tier", "basic"],
        &["keys", "revoke", "wh_nope"],
    ] {
        let out = aioka(&db, args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
}

#[tokio::test]
async fn migrate_is_idempotent() {
    let db = TestDb::new().await;
    let out = aioka(&db, &["migrate"]);
    stdout(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("migrations applied: 0"));
}

fn aioka_amqp(broker: &TestBroker, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aioka"))
        .args(args)
        .env("AIOKA__AMQP__URL", &broker.url)
        .env("AIOKA__AMQP__PREFIX", &broker.prefix)
        .env(
            "AIOKA__DELIVERY__RETRY_SCHEDULE",
            broker.schedule.to_string(),
        )
        .output()
        .expect("run aioka")
}

#[tokio::test]
async fn parked_messages_are_listed_with_their_reason_and_replayed_to_their_origin() {
    let broker = TestBroker::new("1s");
    let topology = broker.topology();
    let connection = broker.connect().await;
    let publisher = aioka_queue::Publisher::new(&connection).await.unwrap();
    topology.declare(publisher.channel()).await.unwrap();
    let parked = |source: &str, key: &str| {
        let mut headers = FieldTable::default();
        for (k, v) in [
            (aioka_queue::PARK_SOURCE_HEADER, source),
            (
                aioka_queue::PARK_REASON_HEADER,
                "breaks the event contract: test",
            ),
            ("x-aioka-original-routing-key", key),
        ] {
            headers.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
        }
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers)
    };
    publisher
        .publish(
            &topology.parking_exchange(),
            "",
            b"{\"task\":1}",
            parked("delivery", ""),
        )
        .await
        .unwrap();
    publisher
        .publish(
            &topology.parking_exchange(),
            "",
            b"{\"event\":2}",
            parked("fanout", "macro.alert"),
        )
        .await
        .unwrap();

    let listing = stdout(&aioka_amqp(&broker, &["parking", "list"]));
    let rows: Vec<Value> = listing
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{listing}");
    assert_eq!(rows[0]["source"], "delivery");
    assert!(rows[0]["reason"].as_str().unwrap().contains("contract"));
    assert_eq!(rows[1]["routing_key"], "macro.alert");
    // Listing removes nothing.
    assert_eq!(
        stdout(&aioka_amqp(&broker, &["parking", "list"]))
            .lines()
            .count(),
        2
    );

    stdout(&aioka_amqp(&broker, &["parking", "replay"]));
    let channel = connection.create_channel().await.unwrap();
    let get = |queue: String| {
        let channel = channel.clone();
        async move {
            channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
        }
    };
    let task = get(topology.delivery_queue())
        .await
        .expect("the task is back in the delivery queue");
    assert_eq!(task.delivery.data, b"{\"task\":1}");
    assert!(
        aioka_queue::header_str(
            task.delivery.properties.headers().as_ref(),
            aioka_queue::PARK_REASON_HEADER
        )
        .is_none()
    );
    let event = get(topology.fanout_queue())
        .await
        .expect("the event is back in the fanout queue");
    assert_eq!(event.delivery.routing_key.as_str(), "macro.alert");
    assert!(
        get(topology.parking_queue()).await.is_none(),
        "the parking queue is empty"
    );
}

/// `aioka` with the database of `db` and these `[database]` partition settings.
fn aioka_partitioned(db: &TestDb, args: &[&str], settings: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aioka"));
    command.args(args).env("AIOKA__DATABASE__URL", &db.url);
    for (key, value) in settings {
        command.env(key, value);
    }
    command.output().expect("run aioka")
}

const HOURS: [(&str, &str); 3] = [
    ("AIOKA__DATABASE__PARTITION_INTERVAL", "1h"),
    ("AIOKA__DATABASE__RETENTION", "3h"),
    ("AIOKA__DATABASE__PARTITIONS_AHEAD", "2"),
];

/// Both tables' partitions of the three hours from `start`.
fn three_hours(start: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    let mut names: Vec<String> = ["deliveries", "delivery_attempts"]
        .iter()
        .flat_map(|table| {
            (0..3).map(move |h| {
                let from = start + chrono::Duration::hours(h);
                format!("{table}_p{}", from.format("%Y%m%dt%H%M%S"))
            })
        })
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn partitions_makes_them_at_the_configured_width_and_prints_what_it_did() {
    // Migrated without maintenance: no partition yet.
    let db = TestDb::at_version(8).await;
    let out = stdout(&aioka_partitioned(&db, &["partitions"], &HOURS));
    assert_eq!(out.lines().count(), 1, "{out}");
    let done: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(done["skipped"], false);
    let start: chrono::DateTime<chrono::Utc> =
        done["log_starts_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(start.timestamp() % 3600, 0, "{done}");
    assert!(chrono::Utc::now() - start < chrono::Duration::hours(1));
    let mut created: Vec<String> = serde_json::from_value(done["created"].clone()).unwrap();
    created.sort();
    assert_eq!(created, three_hours(start));
    assert_eq!(done["dropped"], serde_json::json!([]));

    let again: Value =
        serde_json::from_str(stdout(&aioka_partitioned(&db, &["partitions"], &HOURS)).trim())
            .unwrap();
    assert_eq!(again["created"], serde_json::json!([]), "{again}");
}

#[tokio::test]
async fn migrate_makes_the_partitions_after_migrating() {
    let db = TestDb::at_version(7).await;
    let out = aioka_partitioned(&db, &["migrate"], &HOURS);
    stdout(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("partitions: 6 created, 0 dropped"),
        "{stderr}"
    );
    let mut names: Vec<String> = db
        .store
        .partitions()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    names.sort();
    let start = db.store.log_window().await.unwrap().starts_at;
    assert_eq!(names, three_hours(start));
}

#[tokio::test]
async fn a_bad_partition_setting_is_refused_with_its_name() {
    let db = TestDb::new().await;
    for (key, value, name) in [
        (
            "AIOKA__DATABASE__PARTITIONS_AHEAD",
            "0",
            "database.partitions_ahead",
        ),
        ("AIOKA__DATABASE__RETENTION", "1h", "database.retention"),
        (
            "AIOKA__DATABASE__PARTITION_INTERVAL",
            "1500ms",
            "database.partition_interval",
        ),
    ] {
        let out = aioka_partitioned(&db, &["partitions"], &[(key, value)]);
        assert!(!out.status.success(), "{key}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(name) && stderr.contains(key),
            "{key}: {stderr}"
        );
    }
}

/// The project's root, where scripts/up keeps `.run/demo-ca`.
fn project_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

#[test]
fn a_relative_ca_dir_is_under_the_project_root_wherever_the_command_runs_and_its_key_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let relative = format!(".run/{}", aioka_testkit::unique("test-ca-"));
    let elsewhere = std::env::temp_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_aioka"))
        .args(["receiver", "--init-ca", "--ca-dir", &relative])
        .current_dir(&elsewhere)
        .output()
        .unwrap();
    let printed = stdout(&out);
    let dir = project_root().join(&relative);
    assert_eq!(
        std::path::Path::new(printed.trim_end()),
        dir.join("ca.pem"),
        "{printed}"
    );
    assert!(
        !elsewhere.join(&relative).exists(),
        "made under the current directory"
    );
    let mode = std::fs::metadata(dir.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the CA key is {mode:o}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_receiver_writes_each_deliverys_exact_body_and_headers_with_raw_dir() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = std::env::temp_dir().join(aioka_testkit::unique("aioka-raw-"));
    let (ca, raw) = (tmp.join("ca"), tmp.join("raw"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_aioka"))
        .args(["receiver", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--ca-dir")
        .arg(&ca)
        .arg("--raw-dir")
        .arg(&raw)
        .env(
            "AIOKA_WEBHOOK_SECRET",
            aioka_core::WebhookSecret::generate().expose(),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pem = loop {
        if let Ok(pem) = std::fs::read(ca.join("ca.pem")) {
            break pem;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .build()
        .unwrap();
    // Bytes a JSON parser would normalise: the file must keep them as sent.
    let body = "{\"event\":\"verdict.new\",  \"data\":{\"x\":1.50}}\n";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        match client
            .post(format!("https://127.0.0.1:{port}/hook"))
            .header("x-aioka-delivery", "dlv_test")
            .header("x-aioka-attempt", "2")
            .body(body)
            .send()
            .await
        {
            Ok(r) => break r.status(),
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(status, 200);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        std::fs::read(raw.join("000001.body")).unwrap(),
        body.as_bytes()
    );
    let meta: Value =
        serde_json::from_slice(&std::fs::read(raw.join("000001.json")).unwrap()).unwrap();
    assert_eq!(meta["headers"]["x-aioka-delivery"], "dlv_test");
    assert_eq!(meta["headers"]["x-aioka-attempt"], "2");
    assert!(
        meta["received_at"]
            .as_str()
            .is_some_and(|t| t.parse::<chrono::DateTime<chrono::Utc>>().is_ok()),
        "{meta}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}
