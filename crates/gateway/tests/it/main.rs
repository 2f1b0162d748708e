//! Gateway integration tests: the real gateway on port 0 against the machine's real PostgreSQL,
//! one database per test.
#![allow(clippy::unwrap_used)]

mod auth;
mod catalog;
mod delivery_log;
mod fuzz;
mod openapi;
mod test_events;
mod webhooks;

use aioka_core::tier::Tier;
use aioka_core::{ApiKey, KeyKind};
use aioka_gateway::Settings;
use aioka_store::{KeyRecord, NewKey};
use aioka_testkit::{Api, TestBroker, TestDb, TestEnv};
use reqwest::Response;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct App {
    /// The API; `App` derefs to it (`app.post(…)`, `app.client`).
    pub api: Api,
    pub admin_base: String,
    pub db: TestDb,
    pub broker: TestBroker,
    pub env: TestEnv,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl std::ops::Deref for App {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl App {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut TestEnv)) -> Self {
        aioka_testkit::init_logs();
        let db = TestDb::new().await;
        let broker = TestBroker::new("1s");
        // The queues are fanout's and delivery's to declare (the gateway declares only the
        // exchanges); neither runs here, so the test declares them as a deployment's would
        // have, and the gateway's publishes are routed.
        let connection = broker.connect().await;
        broker
            .topology()
            .declare(&connection.create_channel().await.unwrap())
            .await
            .unwrap();
        let _ = connection.close(200, "declared".into()).await;
        let mut env = TestEnv::new(&db, Some(&broker));
        configure(&mut env);
        let settings: Settings = env.load();
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", api.local_addr().unwrap());
        let admin_base = format!("http://{}", admin.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(aioka_gateway::run(
            settings,
            aioka_gateway::Listeners { api, admin },
            shutdown.clone(),
        ));
        Self {
            api: Api::new(base),
            admin_base,
            db,
            broker,
            env,
            shutdown,
            handle: Some(handle),
        }
    }

    /// Creates a key the way `aioka keys create` does and returns its plaintext and record.
    pub async fn key(&self, kind: KeyKind, tier: Option<Tier>) -> (String, KeyRecord) {
        let key = ApiKey::generate(kind);
        let record = self
            .db
            .store
            .insert_key(&NewKey {
                name: "test",
                kind,
                tier,
                key: &key,
            })
            .await
            .unwrap();
        (key.expose().to_owned(), record)
    }

    pub async fn customer(&self, tier: Tier) -> String {
        self.key(KeyKind::Customer, Some(tier)).await.0
    }

    pub async fn producer(&self) -> String {
        self.key(KeyKind::Producer, None).await.0
    }

    /// Registers a webhook and returns the 201 body.
    pub async fn register(&self, key: &str, url: &str, events: &[&str]) -> Value {
        let response = self
            .post(
                "/v1/webhooks",
                key,
                &serde_json::json!({"url": url, "events": events}),
            )
            .await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        response.json().await.unwrap()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Asserts an error response: status, code, and (if given) field. Returns the body.
pub async fn assert_error(
    response: Response,
    status: u16,
    code: &str,
    field: Option<&str>,
) -> Value {
    let actual = response.status().as_u16();
    let body: Value = response.json().await.expect("error bodies are JSON");
    assert_eq!(actual, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    match field {
        Some(field) => assert_eq!(body["error"]["field"], field, "{body}"),
        None => assert!(body["error"].get("field").is_none(), "{body}"),
    }
    body
}
