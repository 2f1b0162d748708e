//! The real binaries: `aioka-gateway`, `aioka-fanout` and `aioka-delivery` as processes,
//! started the way an operator starts them (settings only from `AIOKA__…` variables), for the
//! tests of what the shipped binaries do with a setting (`tests/otlp.rs`, `tests/settings.rs`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aioka_core::KeyKind;
use aioka_core::event::EventType;
use aioka_core::tier::Tier;
use aioka_testkit::{Api, Receiver, TestBroker, TestCa, TestDb, TestEnv};
use serde_json::json;

use crate::{PATIENCE, sample};

/// The directory of the workspace's binaries, built here if need be: the test runner builds
/// the test targets, not necessarily every service binary.
pub fn binaries() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--locked", "--bins"])
        .args([
            "-p",
            "aioka-gateway",
            "-p",
            "aioka-fanout",
            "-p",
            "aioka-delivery",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "building the service binaries failed");
    // target/<profile>/deps/<this test> → target/<profile>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A service process, killed when dropped.
#[derive(Debug)]
pub struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &Path, name: &str, env: &TestEnv, log: &Path) -> Service {
    let mut command = Command::new(bin.join(name));
    // Only the test's settings: none the caller's environment happens to hold.
    for (key, _) in std::env::vars() {
        if key.starts_with("AIOKA__") {
            command.env_remove(key);
        }
    }
    // Appended: a restarted service's lines follow those of the one before it.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log.join(format!("{name}.log")))
        .unwrap();
    let child = command
        .envs(env.vars().iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Service(child)
}

async fn wait_ready(client: &reqwest::Client, admin: u16, name: &str, log: &Path) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
            && r.status() == 200
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never became ready: {}",
            std::fs::read_to_string(log.join(format!("{name}.log"))).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The three real binaries on a database and broker of their own, with `settings` on top of
/// the test's; a customer and a producer key.
#[allow(missing_debug_implementations)]
pub struct Stack {
    pub api: Api,
    pub ca: TestCa,
    pub customer: String,
    pub producer: String,
    pub gateway_admin: u16,
    pub fanout_admin: u16,
    pub delivery_admin: u16,
    /// The broker prefix of this stack's queues (`<prefix>.delivery`, …).
    pub prefix: String,
    pub logs: PathBuf,
    bin: PathBuf,
    env: TestEnv,
    services: Vec<(&'static str, Service)>,
    _db: TestDb,
    _broker: TestBroker,
}

impl Stack {
    pub async fn start(settings: &[(&str, String)]) -> Self {
        let bin = binaries();
        // Migrated as `aioka migrate` would under these settings (their partition policy).
        let db = TestDb::with_partitions(aioka_testkit::partition_policy(
            settings.iter().map(|(k, v)| ((*k).to_owned(), v.clone())),
        ))
        .await;
        let broker = TestBroker::new("200ms");
        let ca = TestCa::new();
        let logs = tempdir();
        let (api_port, gw_admin, fo_admin, dl_admin) =
            (free_port(), free_port(), free_port(), free_port());
        let mut env = TestEnv::new(&db, Some(&broker));
        env.set(
            "AIOKA__DELIVERY__EXTRA_ROOT_CERTS",
            ca.pem_path.to_str().unwrap(),
        );
        env.set("AIOKA__GATEWAY__LISTEN", &format!("127.0.0.1:{api_port}"));
        env.set(
            "AIOKA__GATEWAY__ADMIN_LISTEN",
            &format!("127.0.0.1:{gw_admin}"),
        );
        env.set(
            "AIOKA__FANOUT__HEALTH_LISTEN",
            &format!("127.0.0.1:{fo_admin}"),
        );
        env.set(
            "AIOKA__DELIVERY__HEALTH_LISTEN",
            &format!("127.0.0.1:{dl_admin}"),
        );
        env.set("AIOKA__TELEMETRY__LOG_FILTER", "info");
        for (k, v) in settings {
            env.set(k, v);
        }
        let services: Vec<(&'static str, Service)> =
            ["aioka-gateway", "aioka-fanout", "aioka-delivery"]
                .into_iter()
                .map(|name| (name, start(&bin, name, &env, &logs)))
                .collect();
        let client = aioka_testkit::http_client();
        for (port, name) in [
            (gw_admin, "aioka-gateway"),
            (fo_admin, "aioka-fanout"),
            (dl_admin, "aioka-delivery"),
        ] {
            wait_ready(&client, port, name, &logs).await;
        }
        let customer = crate::new_key(&db.store, KeyKind::Customer, Some(Tier::Basic)).await;
        let producer = crate::new_key(&db.store, KeyKind::Producer, None).await;
        Self {
            api: Api::new(format!("http://127.0.0.1:{api_port}")),
            ca,
            customer,
            producer,
            gateway_admin: gw_admin,
            fanout_admin: fo_admin,
            delivery_admin: dl_admin,
            prefix: broker.prefix.clone(),
            logs,
            bin,
            env,
            services,
            _db: db,
            _broker: broker,
        }
    }

    /// Registers a webhook to `receiver` for verdict.new; returns its id.
    pub async fn register(&self, receiver: &Receiver) -> String {
        let r = self
            .api
            .post(
                "/v1/webhooks",
                &self.customer,
                &json!({"url": receiver.url, "events": ["verdict.new"]}),
            )
            .await;
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = r.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn publish(&self) {
        let r = self
            .api
            .post("/v1/events", &self.producer, &sample(EventType::VerdictNew))
            .await;
        assert_eq!(r.status(), 202);
    }

    /// `kill -9` of a service (`aioka-delivery`, say): no shutdown, nothing acknowledged or
    /// recorded that was not already.
    pub fn kill9(&mut self, name: &str) {
        let (_, service) = self
            .services
            .iter_mut()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no service {name}"));
        service.0.kill().unwrap();
        service.0.wait().unwrap();
    }

    /// Starts a killed service again, with the same settings, and waits until it is ready
    /// (its log goes on in the same file, after the killed one's).
    pub async fn restart(&mut self, name: &'static str) {
        let admin = match name {
            "aioka-gateway" => self.gateway_admin,
            "aioka-fanout" => self.fanout_admin,
            _ => self.delivery_admin,
        };
        let service = start(&self.bin, name, &self.env, &self.logs);
        if let Some(slot) = self.services.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = service;
        }
        wait_ready(&aioka_testkit::http_client(), admin, name, &self.logs).await;
    }

    pub fn log(&self, service: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{service}.log"))).unwrap_or_default()
    }
}

/// A directory for the services' logs, kept for a failed run to read.
pub fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("aioka-otlp-{}", aioka_testkit::unique("")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
