//! Trace export as an operator turns it on: the real gateway, fanout and delivery binaries
//! started with `AIOKA__TELEMETRY__OTLP_ENDPOINT` pointed at an OTLP/HTTP collector this test
//! runs itself (it decodes the protobuf export requests with `opentelemetry-proto`). One event
//! to two webhooks, one of which fails once: one trace id covers the ingest, the fan-out and
//! every attempt of both deliveries, each span from its own service, with the delivery's
//! attributes. The in-memory exporter of `trace.rs` could not see that the shipped exporter
//! crashed at start-up; this test starts what ships.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aioka_e2e::PATIENCE;
use aioka_e2e::real::{Stack, free_port};
use aioka_testkit::{Receiver, TestCa};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use prost::Message;

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
    let admin = format!("http://127.0.0.1:{}", stack.delivery_admin);
    let dropped = || async {
        aioka_e2e::metric_sum(
            &aioka_e2e::metrics_text(&admin).await,
            "aioka_trace_spans_dropped_total",
        )
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
