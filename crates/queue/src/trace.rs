//! W3C trace context carried in AMQP message headers, so one trace follows an event from the
//! gateway through fanout to every delivery attempt.
//! <https://www.w3.org/TR/trace-context/>

use std::collections::HashMap;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut FieldTable);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
}

struct HeaderExtractor(HashMap<String, String>);

impl Extractor for HeaderExtractor {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Headers carrying the current span's context (empty when tracing is not exported).
pub fn inject_trace_context() -> FieldTable {
    let mut headers = FieldTable::default();
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(&mut headers));
    });
    headers
}

/// Makes `span` a child of the context found in `headers`, if any.
pub fn extract_trace_context(headers: Option<&FieldTable>, span: &tracing::Span) {
    let Some(headers) = headers else { return };
    let map = headers
        .inner()
        .iter()
        .filter_map(|(k, v)| match v {
            AMQPValue::LongString(s) => Some((
                k.as_str().to_owned(),
                String::from_utf8_lossy(s.as_bytes()).into_owned(),
            )),
            _ => None,
        })
        .collect();
    let extractor = HeaderExtractor(map);
    let context =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&extractor));
    let _ = span.set_parent(context);
}
