//! The harness of the end-to-end tests (`tests/`): gateway, fanout and delivery, each through
//! its real `run`, with a database and a broker prefix of their own, delivering to real HTTPS
//! receivers that check signatures the way a customer would.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod ordered;
pub mod real;

use std::time::Duration;

use aioka_core::KeyKind;
use aioka_core::tier::Tier;
use aioka_store::NewKey;
use aioka_testkit::{Api, Receiver, TestBroker, TestCa, TestDb, TestEnv};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen; generous, never a timing claim.
pub const PATIENCE: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct System {
    /// The gateway's API; `System` derefs to it (`system.post(…)`, `system.client`).
    pub api: Api,
    /// The admin addresses of gateway, fanout and delivery, in that order (without fanout's
    /// when the system starts without one: `Options::fanout`).
    pub admins: Vec<String>,
    pub ca: TestCa,
    pub env: TestEnv,
    pub db: TestDb,
    pub broker: TestBroker,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// Options for one system under test.
#[derive(Debug, Clone)]
pub struct Options {
    pub schedule: &'static str,
    /// Settings for the delivery service only (applied after the shared ones).
    pub delivery_env: Vec<(&'static str, String)>,
    /// Settings for every service.
    pub env: Vec<(&'static str, String)>,
    /// Whether the system starts a fanout of its own; without one, a test runs its own
    /// ([`System::spawn_fanout`]) and stops it when it likes.
    pub fanout: bool,
    /// Whether the system starts a delivery service of its own; without one, a test starts
    /// its own ([`System::spawn_delivery`]) when it likes.
    pub delivery: bool,
    /// Each service connects as a broker user of its own, with the least privileges of its
    /// role (`aioka_queue::permissions`), as `scripts/up` runs them.
    pub broker_users: bool,
}

/// A service (fanout or delivery) a test started and stops on its own.
#[derive(Debug)]
pub struct Fanout {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            schedule: "200ms,400ms,600ms",
            delivery_env: Vec::new(),
            env: Vec::new(),
            fanout: true,
            delivery: true,
            broker_users: false,
        }
    }
}

impl std::ops::Deref for System {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl System {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        aioka_testkit::init_logs();
        // The database is prepared as `aioka migrate` prepares it under the services' settings.
        let db = TestDb::with_partitions(aioka_testkit::partition_policy(
            options
                .env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone())),
        ))
        .await;
        let broker = TestBroker::new(options.schedule);
        let ca = TestCa::new();
        let mut env = TestEnv::new(&db, Some(&broker));
        env.set(
            "AIOKA__DELIVERY__EXTRA_ROOT_CERTS",
            ca.pem_path.to_str().unwrap(),
        );
        env.set("AIOKA__DELIVERY__TIMEOUT", "3s");
        env.set("AIOKA__DELIVERY__CONNECT_TIMEOUT", "2s");
        env.set("AIOKA__DELIVERY__RECORD_FLUSH_INTERVAL", "10ms");
        env.set("AIOKA__FANOUT__CHUNK_SIZE", "7");
        for (k, v) in &options.env {
            env.set(k, v);
        }
        let mut delivery_env = env.clone();
        for (k, v) in &options.delivery_env {
            delivery_env.set(k, v);
        }
        let (mut gateway_env, mut fanout_env) = (env.clone(), env.clone());
        if options.broker_users {
            use aioka_queue::permissions::Role;
            gateway_env.set("AIOKA__AMQP__URL", &broker.user(Role::Gateway));
            fanout_env.set("AIOKA__AMQP__URL", &broker.user(Role::Fanout));
            delivery_env.set("AIOKA__AMQP__URL", &broker.user(Role::Delivery));
        }
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();

        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = format!("http://{}", api.local_addr().unwrap());
        let mut admins = vec![format!("http://{}", admin.local_addr().unwrap())];
        tasks.push(tokio::spawn(aioka_gateway::run(
            gateway_env.load(),
            aioka_gateway::Listeners { api, admin },
            shutdown.clone(),
        )));
        if options.fanout {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            admins.push(format!("http://{}", listener.local_addr().unwrap()));
            tasks.push(tokio::spawn(aioka_fanout::run(
                fanout_env.load(),
                listener,
                shutdown.clone(),
            )));
        }
        if options.delivery {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            admins.push(format!("http://{}", listener.local_addr().unwrap()));
            tasks.push(tokio::spawn(aioka_delivery::run(
                delivery_env.load(),
                listener,
                shutdown.clone(),
            )));
        }
        let system = Self {
            api: Api::new(gateway),
            admins,
            ca,
            env,
            db,
            broker,
            shutdown,
            tasks,
        };
        system.wait_ready().await;
        system
    }

    /// Waits until every service reports the broker and database ready (each declares the
    /// topology as it connects).
    pub async fn wait_ready(&self) {
        for admin in &self.admins {
            let mut ready = false;
            for _ in 0..400 {
                if let Ok(r) = self.client.get(format!("{admin}/readyz")).send().await
                    && r.status() == 200
                {
                    ready = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(ready, "{admin} never became ready");
        }
    }

    /// Starts one more fanout with the system's settings and a shutdown token of its own,
    /// and waits until it is ready.
    pub async fn spawn_fanout(&self) -> Fanout {
        self.spawn_fanout_with(&[]).await
    }

    /// As [`System::spawn_fanout`], with settings of its own on top of the system's.
    pub async fn spawn_fanout_with(&self, settings: &[(&str, String)]) -> Fanout {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(aioka_fanout::run(
            self.env_with(settings).load(),
            listener,
            shutdown.clone(),
        ));
        self.await_ready(&admin).await;
        Fanout { shutdown, task }
    }

    /// Starts one more delivery service with the system's settings (and `settings` on
    /// top) and a shutdown token of its own, and waits until it is ready.
    pub async fn spawn_delivery(&self, settings: &[(&str, String)]) -> Fanout {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(aioka_delivery::run(
            self.env_with(settings).load(),
            listener,
            shutdown.clone(),
        ));
        self.await_ready(&admin).await;
        Fanout { shutdown, task }
    }

    fn env_with(&self, settings: &[(&str, String)]) -> TestEnv {
        let mut env = self.env.clone();
        for (k, v) in settings {
            env.set(k, v);
        }
        env
    }

    async fn await_ready(&self, admin: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(r) = self.client.get(format!("{admin}/readyz")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{admin} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn receiver(&self) -> Receiver {
        Receiver::start(&self.ca).await
    }

    async fn key(&self, kind: KeyKind, tier: Option<Tier>) -> String {
        new_key(&self.db.store, kind, tier).await
    }

    pub async fn customer(&self) -> String {
        self.key(KeyKind::Customer, Some(Tier::Basic)).await
    }

    pub async fn producer(&self) -> String {
        self.key(KeyKind::Producer, None).await
    }

    /// A receiver, a customer with one webhook to it for `events`, and a producer: the
    /// start of most tests. Returns (receiver, customer key, producer key, webhook id, secret).
    pub async fn subscriber(&self, events: &[&str]) -> (Receiver, String, String, String, String) {
        let receiver = self.receiver().await;
        let customer = self.customer().await;
        let producer = self.producer().await;
        let (webhook, secret) = self.register(&customer, &receiver.url, events).await;
        (receiver, customer, producer, webhook, secret)
    }

    /// Registers a webhook; returns its id and secret.
    pub async fn register(&self, key: &str, url: &str, events: &[&str]) -> (String, String) {
        let response = self
            .post("/v1/webhooks", key, &json!({"url": url, "events": events}))
            .await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let body: Value = response.json().await.unwrap();
        (
            body["id"].as_str().unwrap().to_owned(),
            body["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// Publishes an event as a producer; returns its id.
    pub async fn publish(&self, producer: &str, body: Value) -> String {
        let response = self.post("/v1/events", producer, &body).await;
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
        let body: Value = response.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn webhook(&self, key: &str, id: &str) -> Value {
        self.get_json(&format!("/v1/webhooks/{id}"), key).await
    }

    pub async fn deliveries(&self, key: &str, webhook: &str) -> Value {
        self.get_json(&format!("/v1/webhooks/{webhook}/deliveries"), key)
            .await
    }

    /// Polls the delivery log until `check` holds for the newest delivery, or fails the test.
    pub async fn wait_for_delivery(
        &self,
        key: &str,
        webhook: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let log = self.deliveries(key, webhook).await;
            if let Some(newest) = log["data"].get(0)
                && check(newest)
            {
                return newest.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the delivery log never reached the expected state: {log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls a webhook until `check` holds.
    pub async fn wait_for_webhook(
        &self,
        key: &str,
        id: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let webhook = self.webhook(key, id).await;
            if check(&webhook) {
                return webhook;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the webhook never reached the expected state: {webhook}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) {
        self.halt().await;
    }

    /// Stops every service and waits for each to end, keeping the database and the broker
    /// prefix to look at what they left.
    pub async fn halt(&mut self) {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Stores a new API key of `kind` (and `tier`) and returns it.
pub async fn new_key(store: &aioka_store::Store, kind: KeyKind, tier: Option<Tier>) -> String {
    let key = aioka_core::ApiKey::generate(kind);
    store
        .insert_key(&NewKey {
            name: "e2e",
            kind,
            tier,
            key: &key,
        })
        .await
        .unwrap();
    key.expose().to_owned()
}

/// The Prometheus text of an admin address's `/metrics` (`http://host:port`).
pub async fn metrics_text(admin: &str) -> String {
    aioka_testkit::http_client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sum of every sample of `name` (all label sets) in a Prometheus text page; 0 when absent.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The seed page's verdict.new payload.
pub fn verdict(timestamp: Option<&str>) -> Value {
    let mut body = json!({
        "event": "verdict.new",
        "data": {"ruling": "STRONG_BUY", "composite_score": 0.82, "confidence": 0.79, "regime": "BULL_TRENDING"}
    });
    if let Some(ts) = timestamp {
        body["timestamp"] = json!(ts);
    }
    body
}

/// A valid event of `event_type` (its schema's example).
pub fn sample(event_type: aioka_core::event::EventType) -> Value {
    json!({"event": event_type.as_str(), "data": event_type.sample_data()})
}

/// The broker's ids (pids) of the connections whose client properties contain `marker`:
/// `@<prefix>"}` for all of a system's, or `"aioka-delivery@<prefix>"` for one service's.
pub fn connections(marker: &str) -> std::collections::BTreeSet<String> {
    let output = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "client_properties", "pid"])
        .output()
        .expect("this test needs rabbitmqctl (the machine's RabbitMQ)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(marker))
        .map(|line| line.rsplit('\t').next().unwrap().trim().to_owned())
        .collect()
}

/// Closes, from the broker's side (as a network failure would), every connection
/// [`connections`] finds for `marker`. Returns how many were closed.
pub fn close_connections(marker: &str) -> usize {
    let pids = connections(marker);
    for pid in &pids {
        let status = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "fault test"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    pids.len()
}

/// Takes up to `count` messages from the parking queue (waiting up to [`PATIENCE`]) and
/// returns each one's (reason, source) headers.
pub async fn parked(
    channel: &lapin::Channel,
    topology: &aioka_queue::Topology,
    count: usize,
) -> Vec<(String, String)> {
    let mut parked = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while parked.len() < count && tokio::time::Instant::now() < deadline {
        match channel
            .basic_get(
                topology.parking_queue().as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            Some(message) => {
                let headers = message.delivery.properties.headers().clone();
                let get =
                    |name| aioka_queue::header_str(headers.as_ref(), name).unwrap_or_default();
                parked.push((
                    get(aioka_queue::PARK_REASON_HEADER),
                    get(aioka_queue::PARK_SOURCE_HEADER),
                ));
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    parked
}
