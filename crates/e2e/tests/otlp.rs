//! Trace export as an operator turns it on: the real gateway, fanout and delivery binaries
//! started with `AIOKA__TELEMETRY__OTLP_ENDPOINT` pointed at an OTLP/HTTP collector this test
//! runs itself (it decodes the protobuf export requests with `opentelemetry-proto`). One event
//! to two webhooks, one of which fails once: one trace id covers the ingest, the fan-out and
//! every attempt of both deliveries, each span from its own service, with the delivery's
//! attributes. The in-memory exporter of `trace.rs` could not see that the shipped exporter
//! crashed at start-up; this test starts what ships.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aioka_core::event::EventType;
use aioka_core::tier::Tier;
use aioka_core::{ApiKey, KeyKind};
use aioka_e2e::{PATIENCE, sample};
use aioka_store::NewKey;
use aioka_testkit::{Api, Receiver, TestBroker, TestCa, TestDb, TestEnv};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use prost::Message;
use serde_json::json;

/// One span as the collector received it, with the service that sent it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attributes: BTreeMap<String, String>,
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// An OTLP/HTTP collector on 127.0.0.1 (over HTTPS with a certificate of `tls`, when given):
/// every span of every export request it is sent.
async fn collector(tls: Option<&TestCa>) -> (String, Arc<Mutex<Vec<Got>>>) {
    let spans: Arc<Mutex<Vec<Got>>> = Arc::default();
    let store = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                let mut got = store.lock().unwrap();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .map(|a| text(a.value.as_ref()))
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            got.push(Got {
                                service: service.clone(),
                                name: span.name,
                                trace_id: span.trace_id,
                                span_id: span.span_id,
                                parent: span.parent_span_id,
                                attributes: span
                                    .attributes
                                    .iter()
                                    .map(|a| (a.key.clone(), text(a.value.as_ref())))
                                    .collect(),
                            });
                        }
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    match tls {
        None => {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            (format!("http://{addr}"), spans)
        }
        Some(ca) => {
            let (cert, key) = ca.server_pem();
            let config = axum_server::tls_rustls::RustlsConfig::from_pem(
                cert.into_bytes(),
                key.into_bytes(),
            )
            .await
            .unwrap();
            let server = axum_server::from_tcp_rustls(listener, config).unwrap();
            tokio::spawn(async move { server.serve(app.into_make_service()).await.unwrap() });
            (format!("https://127.0.0.1:{}", addr.port()), spans)
        }
    }
}

/// The directory of the workspace's binaries, built here if need be: the test runner builds
/// the test targets, not necessarily every service binary.
fn binaries() -> PathBuf {
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A service process, killed when dropped.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &std::path::Path, name: &str, env: &TestEnv, log: &std::path::Path) -> Service {
    let mut command = Command::new(bin.join(name));
    // Only the test's settings: none the caller's environment happens to hold.
    for (key, _) in std::env::vars() {
        if key.starts_with("AIOKA__") {
            command.env_remove(key);
        }
    }
    let log = std::fs::File::create(log.join(format!("{name}.log"))).unwrap();
    let child = command
        .envs(env.vars().iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Service(child)
}

async fn wait_ready(client: &reqwest::Client, admin: u16, name: &str, log: &std::path::Path) {
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
struct Stack {
    api: Api,
    ca: TestCa,
    customer: String,
    producer: String,
    delivery_admin: u16,
    logs: PathBuf,
    _services: Vec<Service>,
    _db: TestDb,
    _broker: TestBroker,
}

impl Stack {
    async fn start(settings: &[(&str, String)]) -> Self {
        let bin = binaries();
        let db = TestDb::new().await;
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
        let services: Vec<Service> = ["aioka-gateway", "aioka-fanout", "aioka-delivery"]
            .iter()
            .map(|name| start(&bin, name, &env, &logs))
            .collect();
        let client = aioka_testkit::http_client();
        for (port, name) in [
            (gw_admin, "aioka-gateway"),
            (fo_admin, "aioka-fanout"),
            (dl_admin, "aioka-delivery"),
        ] {
            wait_ready(&client, port, name, &logs).await;
        }
        let key = |kind, tier| {
            let key = ApiKey::generate(kind);
            let store = db.store.clone();
            async move {
                store
                    .insert_key(&NewKey {
                        name: "otlp",
                        kind,
                        tier,
                        key: &key,
                    })
                    .await
                    .unwrap();
                key.expose().to_owned()
            }
        };
        let customer = key(KeyKind::Customer, Some(Tier::Basic)).await;
        let producer = key(KeyKind::Producer, None).await;
        Self {
            api: Api::new(format!("http://127.0.0.1:{api_port}")),
            ca,
            customer,
            producer,
            delivery_admin: dl_admin,
            logs,
            _services: services,
            _db: db,
            _broker: broker,
        }
    }

    /// Registers a webhook to `receiver` for verdict.new; returns its id.
    async fn register(&self, receiver: &Receiver) -> String {
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

    async fn publish(&self) {
        let r = self
            .api
            .post("/v1/events", &self.producer, &sample(EventType::VerdictNew))
            .await;
        assert_eq!(r.status(), 202);
    }

    fn log(&self, service: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{service}.log"))).unwrap_or_default()
    }
}

/// Waits until the collector holds the ingest, the fan-out and `attempts` attempt spans.
async fn spans_of_one_event(spans: &Mutex<Vec<Got>>, attempts: usize) -> Vec<Got> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got = spans.lock().unwrap().clone();
        let count = |name: &str| got.iter().filter(|s| s.name == name).count();
        if count("ingest") >= 1 && count("fanout") >= 1 && count("deliver") >= attempts {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the collector never received the spans: {:?}",
            got.iter()
                .map(|s| (&s.service, &s.name))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_real_binaries_export_one_trace_per_event_to_an_otlp_collector() {
    let (collector_url, spans) = collector(None).await;
    let stack = Stack::start(&[("AIOKA__TELEMETRY__OTLP_ENDPOINT", collector_url)]).await;
    let ok = Receiver::start(&stack.ca).await;
    let failing = Receiver::start(&stack.ca).await;
    failing.script(&[500]);
    let mut hooks = BTreeMap::new();
    hooks.insert(stack.register(&ok).await, vec!["1"]);
    hooks.insert(stack.register(&failing).await, vec!["1", "2"]);
    stack.publish().await;
    ok.wait_for(1, PATIENCE).await;
    failing.wait_for(2, PATIENCE).await;

    // The batch exporter sends every few seconds.
    let got = spans_of_one_event(&spans, 3).await;
    let of = |name: &str| -> Vec<&Got> { got.iter().filter(|s| s.name == name).collect() };
    let (ingest, fanout, deliver) = (of("ingest"), of("fanout"), of("deliver"));
    assert_eq!(ingest.len(), 1, "one ingest span");
    assert_eq!(fanout.len(), 1, "one fan-out span");
    assert_eq!(deliver.len(), 3, "a span per attempt, the retry included");
    assert_eq!(ingest[0].service, "aioka-gateway");
    assert_eq!(fanout[0].service, "aioka-fanout");
    assert!(deliver.iter().all(|s| s.service == "aioka-delivery"));
    let traces: BTreeSet<&Vec<u8>> = ingest
        .iter()
        .chain(&fanout)
        .chain(&deliver)
        .map(|s| &s.trace_id)
        .collect();
    assert_eq!(
        traces.len(),
        1,
        "gateway, fanout and every attempt share one trace id"
    );
    // Each attempt names its delivery, webhook and attempt number.
    let mut attempts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for span in &deliver {
        assert!(
            span.attributes
                .get("delivery_id")
                .is_some_and(|d| d.starts_with("dlv_")),
            "{span:?}"
        );
        attempts
            .entry(span.attributes["webhook_id"].clone())
            .or_default()
            .push(span.attributes["attempt"].clone());
    }
    for list in attempts.values_mut() {
        list.sort();
    }
    // The tree an operator sees: the fan-out under the ingest request, each first attempt
    // under the fan-out, a retry under the attempt that scheduled it.
    assert_eq!(
        fanout[0].parent, ingest[0].span_id,
        "fan-out under the ingest"
    );
    for span in &deliver {
        let parent = if span.attributes["attempt"] == "1" {
            fanout[0].span_id.clone()
        } else {
            deliver
                .iter()
                .find(|d| {
                    d.attributes["webhook_id"] == span.attributes["webhook_id"]
                        && d.attributes["attempt"] == "1"
                })
                .unwrap()
                .span_id
                .clone()
        };
        assert_eq!(span.parent, parent, "the parent of {span:?}");
    }
    let expected: BTreeMap<String, Vec<String>> = hooks
        .into_iter()
        .map(|(hook, list)| (hook, list.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(attempts, expected, "attempts per webhook");
}

/// A directory for the services' logs, kept for a failed run to read.
fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("aioka-otlp-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_over_https_with_a_private_ca_gets_the_trace_through_the_extra_roots_setting() {
    let ca = TestCa::new();
    let (collector_url, spans) = collector(Some(&ca)).await;
    let stack = Stack::start(&[
        ("AIOKA__TELEMETRY__OTLP_ENDPOINT", collector_url),
        (
            "AIOKA__TELEMETRY__OTLP_EXTRA_ROOT_CERTS",
            ca.pem_path.to_str().unwrap().to_owned(),
        ),
    ])
    .await;
    let receiver = Receiver::start(&stack.ca).await;
    stack.register(&receiver).await;
    stack.publish().await;
    receiver.wait_for(1, PATIENCE).await;
    let got = spans_of_one_event(&spans, 1).await;
    let services: BTreeSet<&str> = got.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["aioka-delivery", "aioka-fanout", "aioka-gateway"])
    );
    for service in ["aioka-gateway", "aioka-fanout", "aioka-delivery"] {
        assert!(
            !stack.log(service).contains("trace export is failing"),
            "{service}: {}",
            stack.log(service)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_that_is_down_costs_no_delivery_and_its_dropped_spans_are_counted_and_logged_once()
 {
    // Nothing listens there: every export is refused.
    let (stack, receiver) = {
        let stack = Stack::start(&[(
            "AIOKA__TELEMETRY__OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", free_port()),
        )])
        .await;
        let receiver = Receiver::start(&stack.ca).await;
        stack.register(&receiver).await;
        (stack, receiver)
    };
    for _ in 0..3 {
        stack.publish().await;
    }
    receiver.wait_for(3, PATIENCE).await;
    let client = aioka_testkit::http_client();
    let dropped = || async {
        let metrics = client
            .get(format!("http://127.0.0.1:{}/metrics", stack.delivery_admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .filter(|l| l.starts_with("aioka_trace_spans_dropped_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let wait_dropped = |above: f64| async move {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let n = dropped().await;
            if n > above {
                return n;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no more dropped spans counted than {above}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let first = wait_dropped(0.0).await;
    // A second failed export, of a later event: still one line in the log.
    stack.publish().await;
    receiver.wait_for(4, PATIENCE).await;
    let second = wait_dropped(first).await;
    let log = stack.log("aioka-delivery");
    assert_eq!(
        log.matches("trace export is failing").count(),
        1,
        "dropped {first} then {second}; log: {log}"
    );
}
