//! One trace follows an event from the ingest request through fan-out to every delivery
//! attempt, carried in AMQP headers (W3C trace context). Its own test binary: it installs the
//! process's global subscriber with an in-memory span exporter.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use aioka_core::event::EventType;
use aioka_e2e::{Options, PATIENCE, System, sample};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::test]
async fn one_trace_spans_the_ingest_the_fan_out_and_every_attempt() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("e2e")))
        .init();

    let system = System::start_with(Options {
        schedule: "200ms",
        ..Options::default()
    })
    .await;
    let receiver = system.receiver().await;
    receiver.script(&[500]);
    let customer = system.customer().await;
    let producer = system.producer().await;
    system
        .register(&customer, &receiver.url, &["verdict.new"])
        .await;
    system
        .publish(&producer, sample(EventType::VerdictNew))
        .await;
    assert_eq!(receiver.wait_for(2, PATIENCE).await.len(), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = provider.force_flush();

    let spans = exporter.get_finished_spans().unwrap();
    let named = |name: &str| {
        spans
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.span_context.trace_id())
            .collect::<Vec<_>>()
    };
    let ingest = named("ingest");
    let fanout = named("fanout");
    let attempts = named("deliver");
    assert_eq!(ingest.len(), 1, "one ingest span");
    assert_eq!(fanout.len(), 1, "one fan-out span");
    assert_eq!(attempts.len(), 2, "a span per attempt, the retry included");
    let traces: HashSet<_> = ingest.iter().chain(&fanout).chain(&attempts).collect();
    assert_eq!(
        traces.len(),
        1,
        "gateway, fanout and both attempts share one trace id"
    );
}
