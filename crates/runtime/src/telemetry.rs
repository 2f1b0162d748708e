//! Logs and traces. Logs are structured (JSON by default) through `tracing`; when
//! `telemetry.otlp_endpoint` is set, spans are also exported over OTLP/HTTP and the W3C trace
//! context is the process's propagator, so a trace follows an event through RabbitMQ headers.
//!
//! Export runs on the SDK's own thread with a bounded queue: a collector that is down or slow
//! never holds up the service. Spans it cannot take are dropped and counted
//! (`aioka_trace_spans_dropped_total`), and the log says once that export is failing (and
//! once that it works again).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::{LogFormat, TelemetrySettings};

/// Flushes exported spans when dropped; keep it alive for the life of `main`.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber for `service`. Call once, from `main`.
pub fn init(
    service: &'static str,
    settings: &TelemetrySettings,
) -> Result<TelemetryGuard, Box<dyn std::error::Error + Send + Sync>> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_new(&settings.log_filter)?;
    let fmt = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        // Colours only for a terminal: a text log piped to a file stays plain text.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .boxed(),
    };
    let (otel, provider) = if settings.otlp_endpoint.trim().is_empty() {
        (None, None)
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(otlp_client(settings)?)
            .with_timeout(EXPORT_TIMEOUT)
            .with_endpoint(format!(
                "{}/v1/traces",
                settings.otlp_endpoint.trim_end_matches('/')
            ))
            .build()?;
        let exporter = Counted {
            inner: exporter,
            failing: AtomicBool::new(false),
            endpoint: settings.otlp_endpoint.clone(),
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        let tracer = provider.tracer(service);
        opentelemetry::global::set_tracer_provider(provider.clone());
        (
            Some(tracing_opentelemetry::layer().with_tracer(tracer)),
            Some(provider),
        )
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

/// How long one export request may take (connect included) before its spans are dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The exporter's HTTP client: the machine's root certificates plus
/// `telemetry.otlp_extra_root_certs` (a collector behind a private CA), with a bounded timeout.
/// Built on a thread of its own, as the OTLP crate does: a blocking client must not be made
/// inside the async runtime.
fn otlp_client(
    settings: &TelemetrySettings,
) -> Result<reqwest::blocking::Client, Box<dyn std::error::Error + Send + Sync>> {
    // reqwest is built without a default crypto provider (the delivery service hands its
    // client a rustls config of its own); this client takes the process's default, so one
    // must be installed before it is built. Installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = settings.otlp_extra_root_certs.trim().to_owned();
    let extra = if path.is_empty() {
        Vec::new()
    } else {
        let pem = std::fs::read(&path)
            .map_err(|e| format!("telemetry.otlp_extra_root_certs: cannot read {path}: {e}"))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            format!("telemetry.otlp_extra_root_certs: {path} holds no PEM certificates: {e}")
        })?;
        if certs.is_empty() {
            return Err(format!(
                "telemetry.otlp_extra_root_certs: {path} holds no PEM certificates"
            )
            .into());
        }
        certs
    };
    std::thread::Builder::new()
        .name("otlp-client".into())
        .spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(EXPORT_TIMEOUT)
                .connect_timeout(Duration::from_secs(2))
                .tls_certs_merge(extra)
                .build()
        })?
        .join()
        .map_err(|_| "telemetry: building the OTLP HTTP client panicked")?
        .map_err(|e| format!("telemetry: building the OTLP HTTP client failed: {e}").into())
}

/// The OTLP exporter, counting what it fails to send and saying so in the log once per
/// change between working and failing.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    failing: AtomicBool,
    endpoint: String,
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for Counted<E>
{
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "trace export works again");
                }
            }
            Err(e) => {
                metrics::counter!("aioka_trace_spans_dropped_total").increment(spans);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        error = %e,
                        "trace export is failing; spans are dropped (aioka_trace_spans_dropped_total) until it works again"
                    );
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
