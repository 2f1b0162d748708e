//! The outbound HTTP client: one per process, connections pooled per host, TLS by rustls
//! (system roots plus `delivery.extra_root_certs`), no redirects followed, connect and total
//! timeouts, the response read capped, and the SSRF address policy applied inside the DNS
//! resolver at connect time (and to literal addresses before connecting), as Svix does.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aioka_core::disable::Outcome;
use aioka_core::messages::DeliveryTask;
use aioka_core::signing::{aioka_signature, standard_webhooks_signature};
use aioka_core::url_policy::refused;
use aioka_core::{USER_AGENT, WebhookSecret};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::settings::DeliverySettings;

/// The outcome of one HTTP attempt.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub outcome: Outcome,
    pub status_code: Option<u16>,
    /// For failures: timeout, connect, tls, dns, blocked_address, http_status, request.
    pub error_kind: Option<&'static str>,
    pub latency: Duration,
    pub snippet: Option<String>,
    /// What a 429 or 503 answer's `Retry-After` asked for.
    pub retry_after: Option<Duration>,
}

/// Why a name was not resolved to a usable address.
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("{0} resolves only to addresses webhooks may not target")]
    Blocked(String),
    #[error("{0} does not resolve: {1}")]
    Lookup(String, std::io::Error),
    #[error("{0} resolves to no address")]
    Empty(String),
}

/// Resolves with the system resolver and drops addresses the URL policy blocks.
#[derive(Debug)]
struct PolicyResolver {
    allow_private: bool,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let answer: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| ResolveError::Lookup(host.clone(), e))?
                .collect();
            let addrs = screen(host, answer, allow_private)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The addresses of a DNS answer we may connect to. Blocked ones are dropped (the client
/// tries the rest); an empty answer, or one left with none, is refused.
fn screen(
    host: String,
    answer: Vec<SocketAddr>,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, ResolveError> {
    // An empty answer is a DNS failure, not a policy one, whatever the policy.
    if answer.is_empty() {
        return Err(ResolveError::Empty(host));
    }
    let addrs: Vec<SocketAddr> = answer
        .into_iter()
        .filter(|a| refused(a.ip(), allow_private).is_none())
        .collect();
    if addrs.is_empty() {
        return Err(ResolveError::Blocked(host));
    }
    Ok(addrs)
}

/// A client could not be built from the settings.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("delivery.extra_root_certs: {0}")]
    Roots(String),
    #[error("HTTP client: {0}")]
    Build(String),
}

/// The secrets an attempt is signed with.
#[derive(Debug, Clone, Copy)]
pub struct Signing<'a> {
    pub current: &'a WebhookSecret,
    /// The secret a rotation replaced, while its overlap lasts.
    pub previous: Option<&'a WebhookSecret>,
}

impl<'a> Signing<'a> {
    /// One secret: no rotation under way.
    pub fn one(current: &'a WebhookSecret) -> Self {
        Self {
            current,
            previous: None,
        }
    }
}

/// Sends signed deliveries.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
    snippet_bytes: usize,
    max_response_bytes: usize,
}

fn tls_config(extra_roots: &str, ticket_bytes: usize) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A malformed system certificate is skipped, as every TLS client does.
        let _ = roots.add(cert);
    }
    if !extra_roots.is_empty() {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(extra_roots)
            .map_err(|e| ClientError::Roots(e.to_string()))?
        {
            let cert = cert.map_err(|e| ClientError::Roots(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Roots(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(ClientError::Roots(format!(
                "no certificate in {extra_roots}"
            )));
        }
    }
    // Prefer TLS_AES_128_GCM_SHA256: as safe, and its SHA-256 key schedule costs less per
    // handshake than SHA-384's (visible in cold-connection profiles).
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = Arc::new(provider);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Build(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // HTTP/1.1 only: over HTTP/2 every delivery to one host shares one connection, and a
    // receiver that hangs on some requests fills the server's concurrent-stream limit and
    // stalls the rest (measured in the isolation benchmark). One connection per request in
    // flight, pooled and reused, isolates them; it is also what every receiver speaks.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Resume TLS sessions: a reconnection to a host we spoke to (the next event, minutes
    // later, or the next connection of a burst) skips certificate verification on our side
    // and signing on the receiver's. Many tickets per host, within a byte budget.
    config.resumption = rustls::client::Resumption::store(std::sync::Arc::new(
        crate::tls_sessions::DeepTicketStore::new(ticket_bytes),
    ));
    Ok(config)
}

impl Sender {
    pub fn new(settings: &DeliverySettings, allow_private: bool) -> Result<Self, ClientError> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(
                &settings.extra_root_certs,
                settings.tls_ticket_bytes,
            )?)
            .dns_resolver(Arc::new(PolicyResolver { allow_private }))
            .redirect(reqwest::redirect::Policy::none())
            .http1_only()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(USER_AGENT)
            .no_proxy()
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(Self {
            client,
            allow_private,
            snippet_bytes: settings.response_snippet_bytes,
            max_response_bytes: settings.max_response_bytes,
        })
    }

    /// The headers of one attempt: both signatures, ids, and the attempt number. During a
    /// rotation's overlap `webhook-signature` carries a `v1,` signature of each secret (the
    /// new one first) and `X-AIOKA-Signature`, one digest compared whole, keeps the old one:
    /// a receiver that has not yet deployed the new secret still verifies both.
    pub fn headers(task: &DeliveryTask, signing: Signing<'_>, timestamp: i64) -> HeaderMap {
        let body = task.body.as_bytes();
        let delivery = task.delivery_id.to_string();
        let mut headers = HeaderMap::new();
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        };
        put(
            "x-aioka-signature",
            aioka_signature(signing.previous.unwrap_or(signing.current), body),
        );
        put("x-aioka-event", task.event_type.as_str().to_owned());
        put("x-aioka-delivery", delivery.clone());
        put("x-aioka-attempt", task.attempt.to_string());
        // A test event (POST /v1/webhooks/test) says so: a receiver acting on events (a
        // trading bot) must be able to ignore it.
        if task.test {
            put("x-aioka-test", "true".to_owned());
        }
        put("webhook-id", delivery.clone());
        put("webhook-timestamp", timestamp.to_string());
        let mut standard = standard_webhooks_signature(signing.current, &delivery, timestamp, body);
        if let Some(previous) = signing.previous {
            standard.push(' ');
            standard.push_str(&standard_webhooks_signature(
                previous, &delivery, timestamp, body,
            ));
        }
        put("webhook-signature", standard);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers
    }

    /// Makes one attempt. Never fails: every problem is an outcome with its kind.
    pub async fn send(
        &self,
        url: &str,
        task: &DeliveryTask,
        signing: Signing<'_>,
    ) -> AttemptResult {
        let started = Instant::now();
        let failed = |kind: &'static str, status: Option<u16>| AttemptResult {
            outcome: Outcome::Failure,
            status_code: status,
            error_kind: Some(kind),
            latency: started.elapsed(),
            snippet: None,
            retry_after: None,
        };
        // reqwest skips the resolver for literal addresses: judge them here (a metadata
        // service is refused even with private targets allowed).
        if let Ok(parsed) = url::Url::parse(url) {
            let literal: Option<IpAddr> = match parsed.host() {
                Some(url::Host::Ipv4(ip)) => Some(ip.into()),
                Some(url::Host::Ipv6(ip)) => Some(ip.into()),
                _ => None,
            };
            if literal.is_some_and(|ip| refused(ip, self.allow_private).is_some()) {
                return failed("blocked_address", None);
            }
        }
        let timestamp = chrono::Utc::now().timestamp();
        let request = self
            .client
            .post(url)
            .headers(Self::headers(task, signing, timestamp))
            .body(task.body.clone());
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = ?e, "attempt failed before an answer");
                return failed(classify(&e), None);
            }
        };
        let status = response.status();
        let latency = started.elapsed();
        let retry_after = if matches!(status.as_u16(), 429 | 503) {
            response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| aioka_core::retry::parse_retry_after(v, chrono::Utc::now()))
        } else {
            None
        };
        let snippet = self.read_snippet(&mut response).await;
        let code = status.as_u16();
        let (outcome, error_kind) = if status.is_success() {
            (Outcome::Success, None)
        } else if code == 410 {
            (Outcome::Gone, Some("http_status"))
        } else {
            (Outcome::Failure, Some("http_status"))
        };
        AttemptResult {
            outcome,
            status_code: Some(code),
            error_kind,
            latency,
            snippet,
            retry_after,
        }
    }

    /// Reads at most `max_response_bytes` of the body and keeps the first
    /// `response_snippet_bytes` as text. A body that cannot be read leaves no snippet; it does
    /// not change the outcome, which the status decided.
    async fn read_snippet(&self, response: &mut reqwest::Response) -> Option<String> {
        let mut kept = Vec::new();
        let mut read = 0usize;
        while read < self.max_response_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    let room = self.snippet_bytes.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        if kept.is_empty() {
            return None;
        }
        // PostgreSQL text cannot hold NUL; replace it like any other undecodable byte.
        Some(String::from_utf8_lossy(&kept).replace('\0', "\u{FFFD}"))
    }
}

fn classify(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        return "timeout";
    }
    // Walk the whole chain. `io::Error::source` skips the error it wraps, and hyper nests
    // io errors, so descend through `get_ref` too.
    let mut pending: Vec<&(dyn std::error::Error + 'static)> = vec![error];
    while let Some(e) = pending.pop() {
        if let Some(resolve) = e.downcast_ref::<ResolveError>() {
            return match resolve {
                ResolveError::Blocked(_) => "blocked_address",
                ResolveError::Lookup(..) | ResolveError::Empty(_) => "dns",
            };
        }
        if e.downcast_ref::<rustls::Error>().is_some() {
            return "tls";
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return "timeout";
            }
            if let Some(inner) = io.get_ref() {
                pending.push(inner);
            }
        }
        if let Some(source) = e.source() {
            pending.push(source);
        }
    }
    if error.is_connect() {
        "connect"
    } else {
        "request"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aioka_core::event::EventType;
    use aioka_core::{DeliveryId, EventId, WebhookId};

    fn answer(addrs: &[&str]) -> Vec<SocketAddr> {
        addrs
            .iter()
            .map(|a| SocketAddr::new(a.parse().unwrap(), 0))
            .collect()
    }

    #[test]
    fn an_empty_dns_answer_is_a_dns_failure_even_when_private_targets_are_allowed() {
        for allow_private in [false, true] {
            let refused = screen("example.com".into(), Vec::new(), allow_private);
            assert!(
                matches!(refused, Err(ResolveError::Empty(_))),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn blocked_addresses_in_an_answer_are_dropped_and_an_all_blocked_answer_is_refused() {
        let mixed = answer(&["64:ff9b:1::10.0.0.1", "::ffff:0:127.0.0.1", "93.184.215.14"]);
        let kept = screen("example.com".into(), mixed.clone(), false).unwrap();
        assert_eq!(kept, answer(&["93.184.215.14"]));
        assert_eq!(
            screen("example.com".into(), mixed.clone(), true).unwrap(),
            mixed
        );
        let blocked = answer(&["64:ff9b::169.254.169.254", "2002:a00:1::"]);
        assert!(matches!(
            screen("example.com".into(), blocked, false),
            Err(ResolveError::Blocked(_))
        ));
    }

    #[test]
    fn a_metadata_service_in_an_answer_is_dropped_even_when_private_targets_are_allowed() {
        let demo = answer(&["127.0.0.1", "169.254.169.254", "fd00:ec2::254", "10.0.0.1"]);
        assert_eq!(
            screen("demo.test".into(), demo, true).unwrap(),
            answer(&["127.0.0.1", "10.0.0.1"])
        );
        assert!(matches!(
            screen("metadata.test".into(), answer(&["169.254.169.254"]), true),
            Err(ResolveError::Blocked(_))
        ));
    }

    #[test]
    fn every_attempt_carries_both_signatures_and_its_ids() {
        let secret = WebhookSecret::generate();
        let event_id = EventId::new();
        let webhook_id = WebhookId::new();
        let task = DeliveryTask {
            delivery_id: DeliveryId::for_pair(event_id, webhook_id),
            event_id,
            webhook_id,
            event_type: EventType::RegimeChange,
            body: r#"{"event":"regime.change"}"#.into(),
            attempt: 3,
            series_start: 1,
            auth: None,
            test: false,
        };
        let h = Sender::headers(&task, Signing::one(&secret), 1_776_695_520);
        let dlv = task.delivery_id.to_string();
        assert_eq!(
            h["x-aioka-signature"],
            aioka_signature(&secret, task.body.as_bytes()).as_str()
        );
        assert_eq!(h["x-aioka-event"], "regime.change");
        assert_eq!(h["x-aioka-delivery"], dlv.as_str());
        assert_eq!(h["x-aioka-attempt"], "3");
        assert_eq!(h["webhook-id"], dlv.as_str());
        assert_eq!(h["webhook-timestamp"], "1776695520");
        assert_eq!(
            h["webhook-signature"],
            standard_webhooks_signature(&secret, &dlv, 1_776_695_520, task.body.as_bytes())
                .as_str()
        );
        assert_eq!(h["content-type"], "application/json");
    }
}
