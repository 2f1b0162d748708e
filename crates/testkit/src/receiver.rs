//! Real HTTPS receivers for delivery tests, with a test CA the delivery service is configured
//! to trust (`AIOKA__DELIVERY__EXTRA_ROOT_CERTS`), and signature checks written the way a
//! customer writes them: from the seed page's Python and the Standard Webhooks specification,
//! not with our own signing code.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::any;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use sha2::Sha256;
use tokio::sync::Notify;

/// A certificate authority for one test, written to a PEM file for the delivery service.
#[derive(Debug)]
pub struct TestCa {
    pub pem_path: PathBuf,
    params: CertificateParams,
    key: KeyPair,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "AIOKA test CA");
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        let pem_path =
            std::env::temp_dir().join(format!("{}.pem", crate::unique("aioka-test-ca-")));
        std::fs::write(&pem_path, cert.pem()).expect("write CA PEM");
        Self {
            pem_path,
            params,
            key,
        }
    }

    /// A certificate and key for localhost, 127.0.0.1 and ::1, signed by this CA.
    fn leaf(&self, expired: bool) -> (String, String) {
        let issuer = Issuer::from_params(&self.params, &self.key);
        let mut params = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .expect("leaf params");
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &issuer).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    }
}

impl TestCa {
    /// A certificate and key (PEM) for localhost, 127.0.0.1 and ::1, signed by this CA: for
    /// a test's own TLS server.
    pub fn server_pem(&self) -> (String, String) {
        self.leaf(false)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pem_path);
    }
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    /// The query string of the request URL, e.g. `w=3` for `/hook?w=3`.
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The seed page's `verify_webhook`, transcribed:
    /// `hmac.new(secret.encode(), payload_bytes, hashlib.sha256).hexdigest()` compared with
    /// the `X-AIOKA-Signature` header.
    pub fn seed_signature_valid(&self, secret: &str) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
        mac.update(&self.body);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        expected == self.header("x-aioka-signature")
    }

    /// The Standard Webhooks verification: key = base64-decoded secret after `whsec_`,
    /// message = `{webhook-id}.{webhook-timestamp}.{body}`, one of the space-separated
    /// `v1,<base64>` signatures must match.
    pub fn standard_signature_valid(&self, secret: &str) -> bool {
        let Some(encoded) = secret.strip_prefix("whsec_") else {
            return false;
        };
        let Ok(key) = STANDARD.decode(encoded) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key");
        mac.update(self.header("webhook-id").as_bytes());
        mac.update(b".");
        mac.update(self.header("webhook-timestamp").as_bytes());
        mac.update(b".");
        mac.update(&self.body);
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        self.header("webhook-signature")
            .split(' ')
            .any(|candidate| candidate == expected)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Debug, Default)]
struct Inner {
    received: Vec<Received>,
    /// Statuses to answer, in order; when empty, `default_status`.
    script: VecDeque<u16>,
    default_status: u16,
    delay: Duration,
    /// Bytes of body to answer with, and whether to send them a few at a time, slowly.
    body_size: usize,
    dribble: bool,
    retry_after: Option<String>,
    location: Option<String>,
    /// Bytes of response bodies handed to the connection so far (a chunk at a time, so a
    /// client that stops reading stops this count within a few socket buffers).
    body_bytes_sent: Arc<AtomicUsize>,
}

/// An HTTPS server on 127.0.0.1 that records every request and answers as told.
#[derive(Debug)]
pub struct Receiver {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    arrived: Arc<Notify>,
    handle: axum_server::Handle<std::net::SocketAddr>,
}

impl Receiver {
    /// Starts a receiver answering 200 to everything.
    pub async fn start(ca: &TestCa) -> Self {
        Self::start_with_cert(ca, false).await
    }

    /// Starts a receiver whose certificate expired years ago.
    pub async fn start_expired(ca: &TestCa) -> Self {
        Self::start_with_cert(ca, true).await
    }

    async fn start_with_cert(ca: &TestCa, expired: bool) -> Self {
        crate::install_crypto();
        let (cert, key) = ca.leaf(expired);
        let config =
            axum_server::tls_rustls::RustlsConfig::from_pem(cert.into_bytes(), key.into_bytes())
                .await
                .expect("receiver TLS config");
        let inner = Arc::new(Mutex::new(Inner {
            default_status: 200,
            ..Inner::default()
        }));
        let arrived = Arc::new(Notify::new());
        // Every method and path is answered and recorded: a client that follows a redirect
        // (a POST turned into a GET) must show up here, not in a 404 or 405.
        let app = Router::new()
            .route("/hook", any(receive))
            .fallback(receive)
            .with_state((inner.clone(), arrived.clone()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let handle = axum_server::Handle::new();
        // TCP_NODELAY, as real servers set it (else ~40 ms per kept-alive response).
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
            .acceptor(axum_server::accept::NoDelayAcceptor::new());
        let server = axum_server::from_tcp(listener)
            .expect("receiver server")
            .acceptor(acceptor)
            .handle(handle.clone());
        tokio::spawn(async move {
            let _ = server.serve(app.into_make_service()).await;
        });
        Self {
            url: format!("https://127.0.0.1:{}/hook", addr.port()),
            inner,
            arrived,
            handle,
        }
    }

    /// Answers `status` from now on.
    pub fn respond_with(&self, status: u16) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.default_status = status;
            inner.script.clear();
        }
    }

    /// Answers these statuses to the next requests, then the default.
    pub fn script(&self, statuses: &[u16]) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.script = statuses.iter().copied().collect();
        }
    }

    /// Answers with a body of `bytes` bytes; with `dribble`, a few bytes every 50 ms.
    pub fn body(&self, bytes: usize, dribble: bool) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.body_size = bytes;
            inner.dribble = dribble;
        }
    }

    /// Adds `Retry-After: <value>` to every answer.
    pub fn retry_after(&self, value: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.retry_after = Some(value.to_owned());
        }
    }

    /// Adds `Location: <url>` to every answer (with a 3xx status, a redirect).
    pub fn location(&self, url: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.location = Some(url.to_owned());
        }
    }

    /// Bytes of response bodies this receiver managed to hand to its connections so far.
    /// It runs ahead of what the client read by at most the buffers in between (hyper's,
    /// rustls's and both sockets').
    pub fn body_bytes_sent(&self) -> usize {
        self.inner
            .lock()
            .map(|i| i.body_bytes_sent.load(Ordering::Relaxed))
            .unwrap_or_default()
    }

    /// Waits this long before answering (to exceed the delivery timeout).
    pub fn delay(&self, delay: Duration) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.delay = delay;
        }
    }

    /// Requests whose query string is `query`.
    pub fn received_for(&self, query: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.query == query)
            .collect()
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner
            .lock()
            .map(|i| i.received.clone())
            .unwrap_or_default()
    }

    /// Waits until at least `count` requests arrived, or `timeout` passed; returns them all.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.received();
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

type ReceiverState = (Arc<Mutex<Inner>>, Arc<Notify>);

async fn receive(
    State((inner, arrived)): State<ReceiverState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let (status, delay, body_size, dribble, retry_after, location, sent) = {
        let mut inner = inner.lock().expect("receiver state");
        inner.received.push(Received {
            at: Instant::now(),
            query: uri.query().unwrap_or_default().to_owned(),
            headers,
            body,
        });
        let status = inner.script.pop_front().unwrap_or(inner.default_status);
        (
            status,
            inner.delay,
            inner.body_size,
            inner.dribble,
            inner.retry_after.clone(),
            inner.location.clone(),
            inner.body_bytes_sent.clone(),
        )
    };
    arrived.notify_waiters();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if dribble {
        let chunks = futures_util::stream::iter((0..body_size).step_by(4)).then(|_| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, std::io::Error>(Bytes::from_static(b"slow"))
        });
        axum::body::Body::from_stream(chunks)
    } else if body_size == 0 {
        axum::body::Body::empty()
    } else {
        // 16 KiB at a time, counted as each is handed over: hyper asks for the next chunk only
        // when its write buffer has room, so a client that stops reading soon stops the count.
        const CHUNK: usize = 16 * 1024;
        let chunk = Bytes::from(vec![b'x'; CHUNK]);
        let chunks = futures_util::stream::iter((0..body_size).step_by(CHUNK)).map(move |at| {
            let piece = chunk.slice(..CHUNK.min(body_size - at));
            sent.fetch_add(piece.len(), Ordering::Relaxed);
            Ok::<_, std::io::Error>(piece)
        });
        axum::body::Body::from_stream(chunks)
    };
    let mut response = axum::response::Response::new(body);
    *response.status_mut() = status;
    if let Some(value) = location
        && let Ok(v) = axum::http::HeaderValue::from_str(&value)
    {
        response
            .headers_mut()
            .insert(axum::http::header::LOCATION, v);
    }
    if let Some(value) = retry_after
        && let Ok(v) = axum::http::HeaderValue::from_str(&value)
    {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, v);
    }
    response
}

/// An address that accepts TCP connections and resets them at once (SO_LINGER 0).
pub async fn resetting_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    });
    format!("https://127.0.0.1:{port}/hook")
}
