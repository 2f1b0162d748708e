//! Event types, the delivery envelope, and validation of what producers send.
//!
//! The JSON Schemas in `proto/events/` are the single definition of each event's `data`: they
//! are compiled into this crate and used as they are, so the document a customer reads and the
//! check the gateway and the fanout apply cannot drift apart.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{EventId, SourceIdError};

/// The five event types of the seed page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "verdict.new")]
    VerdictNew,
    #[serde(rename = "council.new")]
    CouncilNew,
    #[serde(rename = "regime.change")]
    RegimeChange,
    #[serde(rename = "ghost.signal")]
    GhostSignal,
    #[serde(rename = "macro.alert")]
    MacroAlert,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::VerdictNew,
        EventType::CouncilNew,
        EventType::RegimeChange,
        EventType::GhostSignal,
        EventType::MacroAlert,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::VerdictNew => "verdict.new",
            EventType::CouncilNew => "council.new",
            EventType::RegimeChange => "regime.change",
            EventType::GhostSignal => "ghost.signal",
            EventType::MacroAlert => "macro.alert",
        }
    }

    /// The list shown in error messages: `verdict.new, council.new, …`.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }

    const fn schema_source(self) -> &'static str {
        match self {
            EventType::VerdictNew => {
                include_str!("../../../proto/events/verdict.new.schema.json")
            }
            EventType::CouncilNew => {
                include_str!("../../../proto/events/council.new.schema.json")
            }
            EventType::RegimeChange => {
                include_str!("../../../proto/events/regime.change.schema.json")
            }
            EventType::GhostSignal => {
                include_str!("../../../proto/events/ghost.signal.schema.json")
            }
            EventType::MacroAlert => {
                include_str!("../../../proto/events/macro.alert.schema.json")
            }
        }
    }

    /// The JSON Schema of this type's `data`, as published in `proto/events/`.
    pub fn schema(self) -> Value {
        // The files are part of this crate's source; a unit test parses every one of them.
        serde_json::from_str(self.schema_source()).unwrap_or(Value::Null)
    }

    /// The first example of the schema: the payload of a test event.
    pub fn sample_data(self) -> Value {
        self.schema()["examples"][0].clone()
    }

    fn validator(self) -> &'static jsonschema::Validator {
        static VALIDATORS: OnceLock<Vec<jsonschema::Validator>> = OnceLock::new();
        let all = VALIDATORS.get_or_init(|| {
            Self::ALL
                .iter()
                .map(|t| {
                    jsonschema::validator_for(&t.schema())
                        .expect("the schemas in proto/events are valid JSON Schema")
                })
                .collect()
        });
        &all[self as usize]
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that is not one of the five event types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type '{0}'")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

/// A problem with one field of an input, reported to whoever sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Stable machine-readable code, e.g. `invalid_field`, `missing_field`.
    pub code: &'static str,
    /// The field's path, e.g. `data.confidence` or `events[2]`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn missing(field: &str) -> Self {
        Self::new("missing_field", field, format!("{field} is required"))
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new("invalid_field", field, message)
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The body of every delivery: `{"event", "timestamp", "data"}` in that order, as the seed
/// page shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub event: EventType,
    pub timestamp: String,
    pub data: Value,
}

impl Envelope {
    /// The exact bytes sent to every receiver. Computed once, when the event is accepted, and
    /// carried unchanged in every task and retry so every attempt signs the same bytes.
    pub fn to_body(&self) -> Vec<u8> {
        // Serializing a struct of a string, an enum and a JSON value cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Formats a time as the envelope does: RFC 3339 in UTC with a `Z`, and only as many
/// fractional digits as the time has.
pub fn format_timestamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Parses an RFC 3339 timestamp with any offset and gives it back normalised to UTC.
pub fn normalize_timestamp(text: &str) -> Option<(DateTime<Utc>, String)> {
    let parsed = DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc);
    Some((parsed, format_timestamp(parsed)))
}

/// The current time in envelope form, to the millisecond: two events of one type in the same
/// second stay distinguishable for receivers that deduplicate on event + timestamp.
pub fn now_timestamp() -> (DateTime<Utc>, String) {
    let now = Utc::now();
    (now, now.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// An event that passed every check: ready to be stored and fanned out.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    pub id: EventId,
    pub envelope: Envelope,
    pub occurred_at: DateTime<Utc>,
}

/// Checks `data` against the schema of `event`, naming the first offending field.
pub fn validate_data(event: EventType, data: &Value) -> Result<(), FieldError> {
    if !data.is_object() {
        return Err(FieldError::invalid("data", "data must be a JSON object"));
    }
    match event.validator().iter_errors(data).next() {
        None => Ok(()),
        Some(error) => {
            let pointer = error.instance_path().to_string();
            let field = if pointer.is_empty() {
                "data".to_owned()
            } else {
                format!("data{}", pointer.replace('/', "."))
            };
            Err(FieldError::invalid(
                field,
                format!("does not match the {event} schema: {error}"),
            ))
        }
    }
}

fn event_type_field(value: Option<&Value>) -> Result<EventType, FieldError> {
    let text = value
        .ok_or_else(|| FieldError::missing("event"))?
        .as_str()
        .ok_or_else(|| FieldError::invalid("event", "event must be a string"))?;
    text.parse().map_err(|_| {
        FieldError::new(
            "unknown_event_type",
            "event",
            format!(
                "unknown event type '{text}'; expected one of {}",
                EventType::names()
            ),
        )
    })
}

fn timestamp_field(value: &Value) -> Result<(DateTime<Utc>, String), FieldError> {
    value.as_str().and_then(normalize_timestamp).ok_or_else(|| {
        FieldError::invalid(
            "timestamp",
            "timestamp must be an RFC 3339 date-time, e.g. 2026-04-20T14:32:00Z",
        )
    })
}

fn reject_unknown(object: &Map<String, Value>, known: &[&str]) -> Result<(), FieldError> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(FieldError::new(
            "unknown_field",
            key.clone(),
            format!("unknown field '{key}'; expected {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// Validates the body of `POST /v1/events`: `{"event", "data", "timestamp"?, "id"?}`.
/// Without `id` the event gets a new id; without `timestamp` it is stamped now.
pub fn parse_ingest(body: &Value) -> Result<ValidEvent, FieldError> {
    let object = body
        .as_object()
        .ok_or_else(|| FieldError::invalid("", "the body must be a JSON object"))?;
    reject_unknown(object, &["event", "data", "timestamp", "id"])?;
    let event = event_type_field(object.get("event"))?;
    let data = object
        .get("data")
        .ok_or_else(|| FieldError::missing("data"))?;
    validate_data(event, data)?;
    let (occurred_at, timestamp) = match object.get("timestamp") {
        None | Some(Value::Null) => now_timestamp(),
        Some(value) => timestamp_field(value)?,
    };
    let id = match object.get("id") {
        None | Some(Value::Null) => EventId::new(),
        Some(Value::String(source)) => EventId::from_source_id(source)
            .map_err(|e: SourceIdError| FieldError::invalid("id", format!("id {e}")))?,
        Some(_) => return Err(FieldError::invalid("id", "id must be a string")),
    };
    let envelope = Envelope {
        event,
        timestamp,
        data: data.clone(),
    };
    // The envelope fanout will receive, not the request: an added timestamp or a rewritten
    // number can make it longer, and fanout would park what was accepted.
    check_size(envelope.to_body().len(), "the event's envelope")?;
    Ok(ValidEvent {
        id,
        envelope,
        occurred_at,
    })
}

/// The largest event, in bytes of its envelope as delivered, that any path accepts: HTTP
/// ingestion and direct publishes to `aioka.events` alike (64 KiB, the gateway's default body
/// limit). Every delivery task carries its own copy of the envelope, so this bounds what one
/// event times its subscribers puts into the delivery queue.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Refuses an event whose envelope (or raw input) is over [`MAX_EVENT_BYTES`].
fn check_size(bytes: usize, what: &str) -> Result<(), FieldError> {
    if bytes > MAX_EVENT_BYTES {
        return Err(FieldError::new(
            "payload_too_large",
            "body",
            format!("{what} is {bytes} bytes; an event may be at most {MAX_EVENT_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// What a producer published straight to the `aioka.events` exchange, as received.
#[derive(Debug, Clone, Copy)]
pub struct DirectPublish<'a> {
    pub body: &'a [u8],
    pub routing_key: &'a str,
    pub message_id: Option<&'a str>,
}

/// Validates a direct AMQP publish against the contract in `proto/amqp.md`: the body is the
/// whole envelope (`event`, `timestamp` and `data`, nothing else), the routing key is the event
/// type, and `message_id`, if present, is the event's id or idempotency key.
pub fn parse_direct(publish: DirectPublish<'_>) -> Result<ValidEvent, FieldError> {
    check_size(publish.body.len(), "the body")?;
    let body: Value = serde_json::from_slice(publish.body)
        .map_err(|e| FieldError::new("malformed_json", "body", format!("body is not JSON: {e}")))?;
    let object = body
        .as_object()
        .ok_or_else(|| FieldError::invalid("body", "the body must be a JSON object"))?;
    reject_unknown(object, &["event", "timestamp", "data"])?;
    let event = event_type_field(object.get("event"))?;
    if publish.routing_key != event.as_str() {
        return Err(FieldError::invalid(
            "routing_key",
            format!(
                "routing key '{}' must equal the event type '{event}'",
                publish.routing_key
            ),
        ));
    }
    let data = object
        .get("data")
        .ok_or_else(|| FieldError::missing("data"))?;
    validate_data(event, data)?;
    let (occurred_at, timestamp) = timestamp_field(
        object
            .get("timestamp")
            .ok_or_else(|| FieldError::missing("timestamp"))?,
    )?;
    let id = match publish.message_id {
        Some(source) => EventId::from_source_id(source)
            .map_err(|e| FieldError::invalid("message_id", format!("message_id {e}")))?,
        None => EventId::from_body(publish.body),
    };
    let envelope = Envelope {
        event,
        timestamp,
        data: data.clone(),
    };
    // Normalising (the timestamp to UTC, numbers rewritten) can lengthen it: the cap is on
    // what every task copies.
    check_size(envelope.to_body().len(), "the normalised envelope")?;
    Ok(ValidEvent {
        id,
        envelope,
        occurred_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_types_round_trip_through_their_names() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
            assert_eq!(
                serde_json::to_value(t).unwrap(),
                Value::String(t.as_str().into())
            );
        }
        assert!("verdict.old".parse::<EventType>().is_err());
    }

    #[test]
    fn every_schema_compiles_and_accepts_its_own_example() {
        for t in EventType::ALL {
            let schema = t.schema();
            assert!(schema.is_object(), "{t}");
            assert_eq!(validate_data(t, &t.sample_data()), Ok(()), "{t}");
        }
    }

    #[test]
    fn the_seed_pages_payloads_are_valid() {
        let seed = [
            (
                EventType::VerdictNew,
                json!({"ruling":"STRONG_BUY","composite_score":0.82,"confidence":0.79,"regime":"BULL_TRENDING"}),
            ),
            (
                EventType::CouncilNew,
                json!({"ruling":"BUY","confidence":0.76,"consensus_level":"STRONG","agents_succeeded":6}),
            ),
            (
                EventType::RegimeChange,
                json!({"from_regime":"ACCUMULATION","to_regime":"BULL_TRENDING","confidence":0.83}),
            ),
        ];
        for (t, data) in seed {
            assert_eq!(validate_data(t, &data), Ok(()), "{t}");
        }
    }

    #[test]
    fn data_that_breaks_its_schema_names_the_field() {
        let err = validate_data(
            EventType::VerdictNew,
            &json!({"ruling":"STRONG_BUY","composite_score":0.82,"confidence":1.5,"regime":"BULL_TRENDING"}),
        )
        .unwrap_err();
        assert_eq!(err.field, "data.confidence");
        assert_eq!(err.code, "invalid_field");
        let err = validate_data(EventType::RegimeChange, &json!({"to_regime":"BULL"})).unwrap_err();
        assert_eq!(err.field, "data");
        assert!(err.message.contains("from_regime"), "{}", err.message);
        let err = validate_data(EventType::MacroAlert, &json!([])).unwrap_err();
        assert_eq!(err.field, "data");
    }

    #[test]
    fn a_risk_off_alert_below_70_is_refused() {
        let mut data = EventType::MacroAlert.sample_data();
        data["score"] = json!(65);
        assert_eq!(
            validate_data(EventType::MacroAlert, &data)
                .unwrap_err()
                .field,
            "data.score"
        );
        data["alert_type"] = json!("FED_HAWKISH_SPIKE");
        assert_eq!(validate_data(EventType::MacroAlert, &data), Ok(()));
    }

    #[test]
    fn the_envelope_serializes_in_the_seed_pages_order() {
        let envelope = Envelope {
            event: EventType::VerdictNew,
            timestamp: "2026-04-20T14:32:00Z".into(),
            data: serde_json::from_str(
                r#"{"ruling":"STRONG_BUY","composite_score":0.82,"confidence":0.79,"regime":"BULL_TRENDING"}"#,
            )
            .unwrap(),
        };
        assert_eq!(
            String::from_utf8(envelope.to_body()).unwrap(),
            r#"{"event":"verdict.new","timestamp":"2026-04-20T14:32:00Z","data":{"ruling":"STRONG_BUY","composite_score":0.82,"confidence":0.79,"regime":"BULL_TRENDING"}}"#
        );
    }

    #[test]
    fn an_ingested_event_without_timestamp_or_id_gets_both() {
        let event = parse_ingest(
            &json!({"event":"council.new","data":EventType::CouncilNew.sample_data()}),
        )
        .unwrap();
        assert_eq!(event.envelope.event, EventType::CouncilNew);
        assert!(event.envelope.timestamp.ends_with('Z'));
        assert!(normalize_timestamp(&event.envelope.timestamp).is_some());
    }

    #[test]
    fn an_ingested_timestamp_is_normalised_to_utc() {
        let event = parse_ingest(&json!({
            "event":"regime.change",
            "timestamp":"2026-04-20T16:45:00+02:00",
            "data":EventType::RegimeChange.sample_data()
        }))
        .unwrap();
        assert_eq!(event.envelope.timestamp, "2026-04-20T14:45:00Z");
    }

    #[test]
    fn ingest_errors_name_the_field() {
        let data = EventType::VerdictNew.sample_data();
        let cases = [
            (json!({"data": data}), "event", "missing_field"),
            (
                json!({"event":"verdict.nope","data":data}),
                "event",
                "unknown_event_type",
            ),
            (json!({"event":"verdict.new"}), "data", "missing_field"),
            (
                json!({"event":"verdict.new","data":data,"timestamp":"yesterday"}),
                "timestamp",
                "invalid_field",
            ),
            (
                json!({"event":"verdict.new","data":data,"id":7}),
                "id",
                "invalid_field",
            ),
            (
                json!({"event":"verdict.new","data":data,"id":""}),
                "id",
                "invalid_field",
            ),
            (
                json!({"event":"verdict.new","data":data,"extra":1}),
                "extra",
                "unknown_field",
            ),
        ];
        for (body, field, code) in cases {
            let err = parse_ingest(&body).unwrap_err();
            assert_eq!((err.field.as_str(), err.code), (field, code), "{body}");
        }
    }

    #[test]
    fn the_same_producer_id_gives_the_same_event_id() {
        let body =
            json!({"event":"verdict.new","id":"v-1","data":EventType::VerdictNew.sample_data()});
        assert_eq!(
            parse_ingest(&body).unwrap().id,
            parse_ingest(&body).unwrap().id
        );
    }

    #[test]
    fn a_direct_publish_must_keep_the_contract() {
        let body = br#"{"event":"verdict.new","timestamp":"2026-04-20T14:32:00Z","data":{"ruling":"BUY","composite_score":0.1,"confidence":0.5,"regime":"RANGE"}}"#;
        let ok = DirectPublish {
            body,
            routing_key: "verdict.new",
            message_id: None,
        };
        let event = parse_direct(ok).unwrap();
        assert_eq!(event.id, EventId::from_body(body));
        assert_eq!(event.envelope.to_body(), body.to_vec());
        let wrong_key = DirectPublish {
            routing_key: "council.new",
            ..ok
        };
        assert_eq!(parse_direct(wrong_key).unwrap_err().field, "routing_key");
        let not_json = DirectPublish {
            body: b"{nope",
            ..ok
        };
        assert_eq!(parse_direct(not_json).unwrap_err().code, "malformed_json");
        let no_ts = DirectPublish {
            body: br#"{"event":"verdict.new","data":{}}"#,
            ..ok
        };
        assert_eq!(parse_direct(no_ts).unwrap_err().field, "data");
        let with_id = DirectPublish {
            message_id: Some("producer-42"),
            ..ok
        };
        assert_eq!(
            parse_direct(with_id).unwrap().id,
            EventId::from_source_id("producer-42").unwrap()
        );
    }

    /// A verdict whose envelope is `len` bytes, padded with an extra field (the schemas allow
    /// more properties than they name).
    fn verdict_of(len: usize) -> Vec<u8> {
        let head = r#"{"event":"verdict.new","timestamp":"2026-04-20T14:32:00Z","data":{"ruling":"BUY","composite_score":0.1,"confidence":0.5,"regime":"RANGE","pad":""#;
        let tail = r#""}}"#;
        let mut body = head.as_bytes().to_vec();
        body.resize(len - tail.len(), b'x');
        body.extend_from_slice(tail.as_bytes());
        body
    }

    #[test]
    fn a_direct_publish_over_the_event_cap_is_refused_and_one_at_the_cap_is_not() {
        let publish = |body: &[u8]| {
            parse_direct(DirectPublish {
                body,
                routing_key: "verdict.new",
                message_id: None,
            })
        };
        let at_cap = verdict_of(MAX_EVENT_BYTES);
        assert_eq!(
            publish(&at_cap).unwrap().envelope.to_body().len(),
            at_cap.len()
        );
        let error = publish(&verdict_of(MAX_EVENT_BYTES + 1)).unwrap_err();
        assert_eq!(error.code, "payload_too_large");
        assert!(error.message.contains("65537 bytes"), "{error}");
    }

    #[test]
    fn a_direct_publish_whose_normalised_envelope_outgrows_the_cap_is_refused() {
        // `1e15` is four bytes as sent and eighteen as the envelope writes it.
        let numbers = vec!["1e15"; 100].join(",");
        let head = format!(
            r#"{{"event":"verdict.new","timestamp":"2026-04-20T14:32:00Z","data":{{"ruling":"BUY","composite_score":0.1,"confidence":0.5,"regime":"RANGE","n":[{numbers}],"pad":""#
        );
        let tail = r#""}}"#;
        let mut body = head.into_bytes();
        body.resize(MAX_EVENT_BYTES - tail.len(), b'x');
        body.extend_from_slice(tail.as_bytes());
        assert_eq!(body.len(), MAX_EVENT_BYTES);
        let error = parse_direct(DirectPublish {
            body: &body,
            routing_key: "verdict.new",
            message_id: None,
        })
        .unwrap_err();
        assert_eq!(error.code, "payload_too_large", "{error}");
        assert!(error.message.contains("normalised"), "{error}");
    }

    #[test]
    fn an_ingested_event_whose_envelope_is_over_the_cap_is_refused() {
        let pad = "x".repeat(MAX_EVENT_BYTES);
        let body = serde_json::json!({
            "event": "verdict.new",
            "data": {"ruling":"BUY","composite_score":0.1,"confidence":0.5,"regime":"RANGE","pad": pad},
        });
        assert_eq!(parse_ingest(&body).unwrap_err().code, "payload_too_large");
    }
}
