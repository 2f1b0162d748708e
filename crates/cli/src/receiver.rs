//! `aioka receiver`: a local HTTPS endpoint for trying the platform end to end. It prints
//! every delivery with whether both signatures verify, and can answer with a chosen status to
//! show retries and auto-disable. Its certificate is issued by a local CA whose certificate
//! the delivery service trusts through `AIOKA__DELIVERY__EXTRA_ROOT_CERTS` (scripts/up wires
//! this up).
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aioka_core::WebhookSecret;
use aioka_core::signing::{standard_webhooks_signature, verify_aioka_signature};
use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "AIOKA local demo CA");
    Ok(params)
}

/// Creates `dir/ca.pem` and `dir/ca.key` unless they exist; returns the CA certificate path.
pub fn ensure_ca(dir: &Path) -> anyhow::Result<PathBuf> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    if cert_path.is_file() && key_path.is_file() {
        return Ok(cert_path);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    std::fs::write(&key_path, key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem())?;
    Ok(cert_path)
}

struct Shared {
    secret: Option<WebhookSecret>,
    status: StatusCode,
}

/// Serves HTTPS on `listen` until interrupted.
pub async fn serve(
    listen: SocketAddr,
    ca_dir: &Path,
    extra_names: Vec<String>,
    secret: Option<String>,
    status: u16,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    ensure_ca(ca_dir)?;
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key"))?)?;
    let ca = ca_params()?;
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf_key = KeyPair::generate()?;
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(extra_names);
    let leaf = CertificateParams::new(names)?.signed_by(&leaf_key, &issuer)?;
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        leaf.pem().into_bytes(),
        leaf_key.serialize_pem().into_bytes(),
    )
    .await?;
    let secret = secret
        .map(|s| WebhookSecret::from_exposed(s).context("--secret must be the whsec_… secret"))
        .transpose()?;
    let shared = Arc::new(Shared {
        secret,
        status: StatusCode::from_u16(status).context("--status")?,
    });
    let app = Router::new().fallback(post(receive)).with_state(shared);
    eprintln!("receiving on https://{listen}/ (any path); answering {status}");
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
        .acceptor(axum_server::accept::NoDelayAcceptor::new());
    axum_server::bind(listen)
        .acceptor(acceptor)
        .serve(app.into_make_service())
        .await?;
    Ok(())
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (seed_ok, standard_ok) = match &shared.secret {
        Some(secret) => {
            let ts: i64 = header("webhook-timestamp").parse().unwrap_or(0);
            let expected = standard_webhooks_signature(secret, &header("webhook-id"), ts, &body);
            (
                Some(verify_aioka_signature(
                    secret,
                    &body,
                    &header("x-aioka-signature"),
                )),
                Some(
                    header("webhook-signature")
                        .split(' ')
                        .any(|s| s == expected),
                ),
            )
        }
        None => (None, None),
    };
    let line = serde_json::json!({
        "event": header("x-aioka-event"),
        "delivery": header("x-aioka-delivery"),
        "attempt": header("x-aioka-attempt"),
        "x_aioka_signature_valid": seed_ok,
        "webhook_signature_valid": standard_ok,
        "answered": shared.status.as_u16(),
        "body": serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default(),
    });
    println!("{line}");
    shared.status
}
