//! The two signatures every delivery carries.
//!
//! * `X-AIOKA-Signature`: lowercase hex HMAC-SHA256 of the raw body, keyed with the UTF-8 bytes
//!   of the whole `whsec_…` secret — exactly what the seed page's `verify_webhook` recomputes.
//! * `webhook-signature`: the Standard Webhooks scheme
//!   (<https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>):
//!   `v1,` + base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the
//!   base64-decoded part of the secret, so off-the-shelf verifier libraries accept our deliveries.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::secret::WebhookSecret;

type HmacSha256 = Hmac<Sha256>;

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0xf) as usize] as char);
    }
    out
}

/// The `X-AIOKA-Signature` header value for `body`.
pub fn aioka_signature(secret: &WebhookSecret, body: &[u8]) -> String {
    to_hex(&hmac_sha256(secret.expose().as_bytes(), &[body]))
}

/// The `webhook-signature` header value (Standard Webhooks, version `v1`).
pub fn standard_webhooks_signature(
    secret: &WebhookSecret,
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let ts = timestamp.to_string();
    let digest = hmac_sha256(
        &secret.standard_webhooks_key(),
        &[webhook_id.as_bytes(), b".", ts.as_bytes(), b".", body],
    );
    format!("v1,{}", STANDARD.encode(digest))
}

/// Checks an `X-AIOKA-Signature` in constant time, as the seed page tells customers to.
pub fn verify_aioka_signature(secret: &WebhookSecret, body: &[u8], header: &str) -> bool {
    let mut mac =
        HmacSha256::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    match decode_hex(header) {
        Some(bytes) => mac.verify_slice(&bytes).is_ok(),
        None => false,
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn vectors() -> Value {
        serde_json::from_str(include_str!("../../../proto/signature-test-vectors.json")).unwrap()
    }

    fn secret(v: &Value) -> WebhookSecret {
        WebhookSecret::from_exposed(v["secret"].as_str().unwrap().to_owned()).unwrap()
    }

    #[test]
    fn the_aioka_signature_matches_the_seed_pages_algorithm() {
        let vectors = vectors();
        let cases = vectors["aioka_signature"].as_array().unwrap();
        assert!(!cases.is_empty());
        for v in cases {
            let body = v["body"].as_str().unwrap().as_bytes();
            let expected = v["x_aioka_signature"].as_str().unwrap();
            assert_eq!(aioka_signature(&secret(v), body), expected);
            assert!(verify_aioka_signature(&secret(v), body, expected));
        }
    }

    #[test]
    fn the_standard_webhooks_signature_matches_the_reference_library() {
        let vectors = vectors();
        let cases = vectors["standard_webhooks_signature"].as_array().unwrap();
        assert_eq!(cases.len(), 2);
        for v in cases {
            let signature = standard_webhooks_signature(
                &secret(v),
                v["webhook_id"].as_str().unwrap(),
                v["webhook_timestamp"].as_i64().unwrap(),
                v["body"].as_str().unwrap().as_bytes(),
            );
            assert_eq!(signature, v["webhook_signature"].as_str().unwrap());
        }
    }

    #[test]
    fn a_changed_body_or_a_malformed_header_fails_verification() {
        let secret = WebhookSecret::generate();
        let signature = aioka_signature(&secret, b"{}");
        assert!(
            signature
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(signature.len(), 64);
        assert!(!verify_aioka_signature(&secret, b"{ }", &signature));
        assert!(!verify_aioka_signature(&secret, b"{}", "zz"));
        assert!(!verify_aioka_signature(&secret, b"{}", &signature[1..]));
        assert!(!verify_aioka_signature(
            &WebhookSecret::generate(),
            b"{}",
            &signature
        ));
    }
}
