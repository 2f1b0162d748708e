//! `aioka receiver`: a local HTTPS endpoint for trying the platform end to end. It prints
//! every delivery with whether both signatures verify, and can answer with a chosen status to
//! show retries and auto-disable. Its certificate is issued by a local CA whose certificate
//! the delivery service trusts through `AIOKA__DELIVERY__EXTRA_ROOT_CERTS` (scripts/up wires
//! this up). With `--raw-dir` it also writes each delivery's exact body bytes and headers to
//! files, for checking signatures with one's own code.
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

/// The project's root: the directory holding `scripts/up`, found from this executable
/// (`target/<profile>/aioka`) or else from the current directory upwards.
fn project_root() -> Option<PathBuf> {
    let is_root = |d: &Path| d.join("scripts/up").is_file() && d.join("Cargo.toml").is_file();
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent()?.parent().map(Path::to_path_buf))
        .filter(|d| is_root(d));
    from_exe.or_else(|| {
        let cwd = std::env::current_dir().ok()?;
        cwd.ancestors().find(|d| is_root(d)).map(Path::to_path_buf)
    })
}

/// A relative `--ca-dir` means the same directory wherever the command runs
/// from: under the project's root (where scripts/up keeps `.run/demo-ca`), or under the
/// current directory outside a checkout.
pub fn resolve(dir: &Path) -> PathBuf {
    if dir.is_absolute() {
        return dir.to_path_buf();
    }
    project_root().map_or_else(|| dir.to_path_buf(), |root| root.join(dir))
}

/// Creates `dir/ca.pem` and `dir/ca.key` (the key readable by its owner only) unless they
/// exist; returns the CA certificate path.
pub fn ensure_ca(dir: &Path) -> anyhow::Result<PathBuf> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    if cert_path.is_file() && key_path.is_file() {
        // A key written by an older version may be readable by others: not any more.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600));
        return Ok(cert_path);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key_path)
            .with_context(|| format!("writing {}", key_path.display()))?;
        file.write_all(key.serialize_pem().as_bytes())?;
    }
    std::fs::write(&cert_path, cert.pem())?;
    Ok(cert_path)
}

struct Shared {
    secret: Option<WebhookSecret>,
    status: StatusCode,
    /// Where each delivery's raw body and headers go (`--raw-dir`), and how many so far.
    raw_dir: Option<PathBuf>,
    received: std::sync::atomic::AtomicU64,
}

/// Serves HTTPS on `listen` until interrupted.
pub async fn serve(
    listen: SocketAddr,
    ca_dir: &Path,
    extra_names: Vec<String>,
    secret: Option<String>,
    status: u16,
    raw_dir: Option<PathBuf>,
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
    if let Some(dir) = &raw_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        eprintln!(
            "writing each delivery's raw body and headers to {}",
            dir.display()
        );
    }
    let shared = Arc::new(Shared {
        secret,
        status: StatusCode::from_u16(status).context("--status")?,
        raw_dir,
        received: std::sync::atomic::AtomicU64::new(0),
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
    let received_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let n = shared
        .received
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
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
    if let Some(dir) = &shared.raw_dir {
        // <n>.body: the bytes exactly as received (what both signatures cover);
        // <n>.json: arrival time and every header.
        let all: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
                )
            })
            .collect();
        let meta = serde_json::json!({"received_at": received_at, "headers": all});
        let written = std::fs::write(dir.join(format!("{n:06}.body")), &body)
            .and_then(|()| std::fs::write(dir.join(format!("{n:06}.json")), meta.to_string()));
        if let Err(e) = written {
            eprintln!("could not write delivery {n} to {}: {e}", dir.display());
        }
    }
    let line = serde_json::json!({
        "n": n,
        "received_at": received_at,
        "event": header("x-aioka-event"),
        "delivery": header("x-aioka-delivery"),
        "attempt": header("x-aioka-attempt"),
        "test": headers.contains_key("x-aioka-test"),
        "x_aioka_signature_valid": seed_ok,
        "webhook_signature_valid": standard_ok,
        "answered": shared.status.as_u16(),
        "body": serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default(),
    });
    println!("{line}");
    shared.status
}
