//! One signing secret per seeded webhook, derivable by the receiver.
//!
//! Webhook `<base>/<n>` is seeded with `endpoint_secret(master, n)`, and the receiver checks a
//! delivery to `/hook/{n}` with the same derivation, so a delivery signed with another
//! webhook's secret fails the run, while the receiver keeps no table of 100 000 secrets.

use aioka_core::WebhookSecret;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The secret of endpoint `n`: `whsec_` + base64 of HMAC-SHA256(master's key, "endpoint <n>").
pub fn endpoint_secret(master: &WebhookSecret, n: u64) -> WebhookSecret {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&master.standard_webhooks_key())
        .expect("HMAC takes any key");
    mac.update(format!("endpoint {n}").as_bytes());
    let text = format!("whsec_{}", STANDARD.encode(mac.finalize().into_bytes()));
    WebhookSecret::from_exposed(text).expect("whsec_ and base64 are a valid secret")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_gets_its_own_stable_secret() {
        let master = WebhookSecret::generate();
        let a = endpoint_secret(&master, 1);
        assert_eq!(a.expose(), endpoint_secret(&master, 1).expose());
        assert_ne!(a.expose(), endpoint_secret(&master, 2).expose());
        assert_ne!(a.expose(), master.expose());
        assert_ne!(
            a.expose(),
            endpoint_secret(&WebhookSecret::generate(), 1).expose()
        );
    }
}
