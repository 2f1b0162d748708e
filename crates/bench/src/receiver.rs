//! The counting receiver. One process, HTTPS on `--listen`, counters as JSON on `--stats`.
//!
//! Endpoints are `/hook/{n}`: with `--hang-percent H --fail-percent F`, endpoint `n` hangs
//! (never answers) when `n % 100 < H`, answers 500 when `H <= n % 100 < H + F`, and answers
//! 200 otherwise, so a run knows exactly which deliveries must arrive. With `--mix` the
//! behaviour of endpoint `n` is instead [`Behaviour::of`]`(n)`: mostly 200, some failing
//! their first one or two attempts, some always failing, some hanging past the delivery
//! timeout (the fault harness's receivers).
//!
//! Besides its counters the receiver keeps a record of every request (endpoint, delivery id,
//! attempt number, what it answered), served as JSON lines by `GET /records`: the harness
//! accounts by sets from those records, not from counters.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aioka_core::WebhookSecret;
use aioka_core::signing::verify_aioka_signature;
use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hdrhistogram::Histogram;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// HTTPS address deliveries come to.
    #[arg(long, default_value = "127.0.0.1:18443")]
    listen: SocketAddr,
    /// Plain HTTP address of GET /stats and POST /reset.
    #[arg(long, default_value = "127.0.0.1:18444")]
    stats: SocketAddr,
    /// Directory for the CA (ca.pem, ca.key), created if missing; the delivery service must
    /// trust its ca.pem.
    #[arg(long)]
    ca_dir: PathBuf,
    /// The master secret of the seeding: a delivery to `/hook/{n}` must be signed with
    /// endpoint n's own secret (`secrets::endpoint_secret`), or it is answered 401 and counted
    /// as a bad signature.
    #[arg(long)]
    secret: String,
    /// First contact: issue no TLS session tickets and keep no session cache, so every new
    /// connection pays a full handshake (with `--close`, every delivery).
    #[arg(long)]
    no_resumption: bool,
    /// Close every connection after one response (cold runs: a fresh TCP and TLS handshake
    /// for each delivery).
    #[arg(long)]
    close: bool,
    #[arg(long, default_value_t = 0)]
    hang_percent: u64,
    #[arg(long, default_value_t = 0)]
    fail_percent: u64,
    /// Endpoint n behaves as `Behaviour::of(n)` (overrides the percentages).
    #[arg(long)]
    mix: bool,
    /// How long a hanging endpoint of the mix holds a request (past the delivery timeout).
    #[arg(long, default_value_t = 3.0)]
    hang_seconds: f64,
    /// Endpoint n answers 200 without keeping a record: a deliberate loss, to show that the
    /// accounting catches one.
    #[arg(long)]
    forget_endpoint: Option<u64>,
}

/// What one endpoint of the mix does; a pure function of its number, so the harness knows
/// what each one did without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 every time.
    Ok,
    /// 500 on the first `n` attempts of each delivery, 200 after.
    FailFirst(u32),
    /// 500 on every attempt: the webhook ends disabled.
    AlwaysFail,
    /// Never answers within the delivery timeout: the attempt times out.
    Hang,
}

impl Behaviour {
    /// Of every 40 endpoints: 2 fail the first attempt, 2 the first two, 2 always fail,
    /// 1 hangs, 33 answer 200.
    pub fn of(n: u64) -> Self {
        match n % 40 {
            0 | 20 => Behaviour::FailFirst(1),
            1 | 21 => Behaviour::FailFirst(2),
            2 | 22 => Behaviour::AlwaysFail,
            3 => Behaviour::Hang,
            _ => Behaviour::Ok,
        }
    }
}

/// One request as the receiver saw it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The endpoint's number (`/hook/{n}`).
    pub n: u64,
    /// `X-AIOKA-Delivery` (or `webhook-id` when that is missing).
    pub delivery: String,
    /// `x-aioka-attempt`; 0 when missing or not a number.
    pub attempt: u32,
    /// The status answered, or "hung".
    pub answer: String,
    /// The signature did not verify.
    #[serde(default)]
    pub bad_signature: bool,
    /// Milliseconds since the epoch at arrival.
    pub ms: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    bad_signatures: AtomicU64,
    hung: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug)]
struct Seen {
    deliveries: HashSet<String>,
    duplicates: u64,
    /// Milliseconds since the epoch of the first and last first arrival.
    first_ms: Option<u64>,
    last_ms: Option<u64>,
    /// Ingest-to-receipt latency of first arrivals, in microseconds.
    latency: Histogram<u64>,
}

struct Shared {
    secret: WebhookSecret,
    close: bool,
    hang_percent: u64,
    fail_percent: u64,
    mix: bool,
    hang: Duration,
    forget_endpoint: Option<u64>,
    counters: Counters,
    seen: Mutex<Seen>,
    records: Mutex<Vec<Record>>,
}

fn fresh_seen() -> Seen {
    Seen {
        deliveries: HashSet::new(),
        duplicates: 0,
        first_ms: None,
        last_ms: None,
        // 1 µs to 10 min at 3 significant figures: valid bounds, so this cannot fail.
        latency: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "AIOKA bench CA");
    Ok(params)
}

async fn tls(
    ca_dir: &std::path::Path,
    resumption: bool,
) -> anyhow::Result<axum_server::tls_rustls::RustlsConfig> {
    std::fs::create_dir_all(ca_dir)?;
    let key_path = ca_dir.join("ca.key");
    let ca_key = if key_path.is_file() {
        KeyPair::from_pem(&std::fs::read_to_string(&key_path)?)?
    } else {
        let key = KeyPair::generate()?;
        std::fs::write(&key_path, key.serialize_pem())?;
        key
    };
    let params = ca_params()?;
    std::fs::write(ca_dir.join("ca.pem"), params.self_signed(&ca_key)?.pem())?;
    let issuer = Issuer::from_params(&params, &ca_key);
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?
        .signed_by(&leaf_key, &issuer)?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("leaf key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)?;
    if resumption {
        // Like common servers (nginx, Envoy, CDNs), issue TLS 1.3 session tickets, so a client
        // that comes back can resume instead of a full handshake.
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(100_000);
    } else {
        // A host seen for the first time: nothing to resume from.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    }
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(
        Arc::new(config),
    ))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let secret = WebhookSecret::from_exposed(args.secret.clone()).context("--secret")?;
    let shared = Arc::new(Shared {
        secret,
        close: args.close,
        hang_percent: args.hang_percent,
        fail_percent: args.fail_percent,
        mix: args.mix,
        hang: Duration::from_secs_f64(args.hang_seconds.max(0.0)),
        forget_endpoint: args.forget_endpoint,
        counters: Counters::default(),
        seen: Mutex::new(fresh_seen()),
        records: Mutex::new(Vec::new()),
    });
    let config = tls(&args.ca_dir, !args.no_resumption).await?;
    let hooks = Router::new()
        .route("/hook/{n}", post(receive))
        .with_state(shared.clone());
    let stats = Router::new()
        .route("/stats", get(stats))
        .route("/records", get(records))
        .route("/reset", post(reset))
        .with_state(shared);
    let stats_listener = tokio::net::TcpListener::bind(args.stats).await?;
    tokio::spawn(async move {
        let _ = axum::serve(stats_listener, stats).await;
    });
    eprintln!(
        "bench receiver on https://{}/hook/{{n}}, stats on http://{}/stats{}",
        args.listen,
        args.stats,
        if args.close {
            " (closing every connection)"
        } else {
            ""
        }
    );
    // TCP_NODELAY, as real servers set it: without it a kept-alive connection's response
    // waits ~40 ms on Nagle and delayed ACKs, which measured the receiver, not us.
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
        .acceptor(axum_server::accept::NoDelayAcceptor::new());
    axum_server::bind(args.listen)
        .acceptor(acceptor)
        .serve(hooks.into_make_service())
        .await?;
    Ok(())
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    Path(n): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if shared.mix {
        return receive_mix(&shared, n, &headers, &body).await;
    }
    let c = &shared.counters;
    c.requests.fetch_add(1, Ordering::Relaxed);
    let class = n % 100;
    if class < shared.hang_percent {
        c.hung.fetch_add(1, Ordering::Relaxed);
        // Never answer: the delivery service's timeout ends the attempt.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    let signature = headers
        .get("x-aioka-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !verify_aioka_signature(
        &crate::secrets::endpoint_secret(&shared.secret, n),
        &body,
        signature,
    ) {
        c.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if class < shared.hang_percent + shared.fail_percent {
        c.failed.fetch_add(1, Ordering::Relaxed);
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let delivery = header_text(&headers, "x-aioka-delivery").to_owned();
    count_arrival(&shared, delivery, &body);
    ok_response(&shared)
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn ok_response(shared: &Shared) -> Response {
    let mut response = StatusCode::OK.into_response();
    if shared.close {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Counts a 200: distinct by delivery id, latency of first arrivals.
fn count_arrival(shared: &Shared, delivery: String, body: &[u8]) {
    let now = now_ms();
    let latency_us = event_time_ms(body).map(|t| now.saturating_sub(t) * 1000);
    if let Ok(mut seen) = shared.seen.lock() {
        if seen.deliveries.insert(delivery) {
            seen.first_ms.get_or_insert(now);
            seen.last_ms = Some(now);
            if let Some(us) = latency_us {
                let _ = seen.latency.record(us.max(1));
            }
        } else {
            seen.duplicates += 1;
        }
    }
}

/// The harness's receiver: endpoint `n` behaves as `Behaviour::of(n)`, and every request is
/// recorded before it is answered (a hang is recorded as "hung" when it arrives, since the
/// delivery service gives up on it before any answer).
async fn receive_mix(shared: &Shared, n: u64, headers: &HeaderMap, body: &[u8]) -> Response {
    let c = &shared.counters;
    c.requests.fetch_add(1, Ordering::Relaxed);
    let mut delivery = header_text(headers, "x-aioka-delivery");
    if delivery.is_empty() {
        delivery = header_text(headers, "webhook-id");
    }
    let delivery = delivery.to_owned();
    let attempt = header_text(headers, "x-aioka-attempt")
        .parse::<u32>()
        .unwrap_or(0);
    let signature = header_text(headers, "x-aioka-signature");
    let bad_signature = !verify_aioka_signature(
        &crate::secrets::endpoint_secret(&shared.secret, n),
        body,
        signature,
    );
    let behaviour = Behaviour::of(n);
    let status = if bad_signature {
        c.bad_signatures.fetch_add(1, Ordering::Relaxed);
        Some(StatusCode::UNAUTHORIZED)
    } else {
        match behaviour {
            Behaviour::Ok => Some(StatusCode::OK),
            Behaviour::FailFirst(k) if attempt > k => Some(StatusCode::OK),
            Behaviour::FailFirst(_) | Behaviour::AlwaysFail => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                Some(StatusCode::INTERNAL_SERVER_ERROR)
            }
            Behaviour::Hang => {
                c.hung.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    };
    let forget = shared.forget_endpoint == Some(n);
    if !forget && let Ok(mut records) = shared.records.lock() {
        records.push(Record {
            n,
            delivery: delivery.clone(),
            attempt,
            answer: status.map_or_else(|| "hung".to_owned(), |s| s.as_u16().to_string()),
            bad_signature,
            ms: now_ms(),
        });
    }
    match status {
        Some(StatusCode::OK) => {
            if !forget {
                count_arrival(shared, delivery, body);
            }
            ok_response(shared)
        }
        Some(other) => other.into_response(),
        None => {
            // Past the delivery timeout: the attempt times out and the client goes away.
            tokio::time::sleep(shared.hang).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
    }
}

/// The envelope's `timestamp` (stamped by the gateway at ingest) in ms since the epoch.
fn event_time_ms(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        timestamp: &'a str,
    }
    let envelope: Envelope<'_> = serde_json::from_slice(body).ok()?;
    let at = chrono::DateTime::parse_from_rfc3339(envelope.timestamp).ok()?;
    u64::try_from(at.timestamp_millis()).ok()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let c = &shared.counters;
    let Ok(seen) = shared.seen.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let q = |p: f64| seen.latency.value_at_quantile(p) as f64 / 1000.0;
    axum::Json(serde_json::json!({
        "requests": c.requests.load(Ordering::Relaxed),
        "distinct": seen.deliveries.len(),
        "duplicates": seen.duplicates,
        "bad_signatures": c.bad_signatures.load(Ordering::Relaxed),
        "hung": c.hung.load(Ordering::Relaxed),
        "failed": c.failed.load(Ordering::Relaxed),
        "first_ms": seen.first_ms,
        "last_ms": seen.last_ms,
        "latency_ms": {
            "p50": q(0.50), "p95": q(0.95), "p99": q(0.99),
            "max": seen.latency.max() as f64 / 1000.0,
            "count": seen.latency.len(),
        },
    }))
    .into_response()
}

/// Every request recorded so far, one JSON object a line.
async fn records(State(shared): State<Arc<Shared>>) -> Response {
    let Ok(records) = shared.records.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut out = String::with_capacity(records.len() * 120);
    for r in records.iter() {
        if let Ok(line) = serde_json::to_string(r) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    ([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response()
}

async fn reset(State(shared): State<Arc<Shared>>) -> StatusCode {
    let c = &shared.counters;
    for counter in [&c.requests, &c.bad_signatures, &c.hung, &c.failed] {
        counter.store(0, Ordering::Relaxed);
    }
    if let Ok(mut seen) = shared.seen.lock() {
        *seen = fresh_seen();
    }
    if let Ok(mut records) = shared.records.lock() {
        records.clear();
    }
    StatusCode::NO_CONTENT
}
