//! Secrets: webhook signing secrets, API keys, and the key that encrypts secrets at rest.
//!
//! None of these types prints its value through `Debug` or `Display`: a secret that reaches a
//! log line, a panic message or an error body through formatting is a bug we make impossible
//! by construction. The value is read only through an explicitly named method.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::ids::encode_u128;

const REDACTED: &str = "[redacted]";

/// A connection URL with its password replaced by `REDACTED`, for `Debug` and logs. A text
/// that does not parse as a URL is redacted whole, since it might be anything.
pub fn redact_url(text: &str) -> String {
    if text.contains(',') {
        // A list of URLs (the nodes of a cluster): each on its own.
        return text
            .split(',')
            .map(|one| redact_url(one.trim()))
            .collect::<Vec<_>>()
            .join(",");
    }
    if text.is_empty() {
        return String::new();
    }
    match url::Url::parse(text) {
        Ok(mut url) => {
            if url.password().is_some() {
                // Brackets would be percent-encoded inside a URL: use a plain word.
                let _ = url.set_password(Some("REDACTED"));
            }
            url.to_string()
        }
        Err(_) => REDACTED.to_owned(),
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The operating system's generator failing is not something a webhook platform can
    // recover from; refusing to invent a weaker secret is the only safe answer.
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    bytes
}

/// A webhook's signing secret: `whsec_` followed by standard base64 of 32 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

/// The prefix of every webhook secret, as the seed page shows it.
pub const WEBHOOK_SECRET_PREFIX: &str = "whsec_";

impl WebhookSecret {
    pub fn generate() -> Self {
        Self(format!(
            "{WEBHOOK_SECRET_PREFIX}{}",
            STANDARD.encode(random_bytes::<32>())
        ))
    }

    /// Wraps a secret read back from storage. The text must carry the `whsec_` prefix and a
    /// base64 part, or the Standard Webhooks signature could not be computed.
    pub fn from_exposed(text: String) -> Result<Self, SecretFormatError> {
        let encoded = text
            .strip_prefix(WEBHOOK_SECRET_PREFIX)
            .ok_or(SecretFormatError)?;
        let decoded = STANDARD.decode(encoded).map_err(|_| SecretFormatError)?;
        if decoded.is_empty() {
            return Err(SecretFormatError);
        }
        Ok(Self(text))
    }

    /// The whole secret as the customer received it. Call sites are the signing code, the
    /// one response that shows the secret, and encryption at rest.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key Standard Webhooks signs with: the base64-decoded part after `whsec_`.
    pub fn standard_webhooks_key(&self) -> Vec<u8> {
        let encoded = &self.0[WEBHOOK_SECRET_PREFIX.len()..];
        // from_exposed and generate both guarantee valid base64.
        STANDARD.decode(encoded).unwrap_or_default()
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A stored secret did not have the `whsec_<base64>` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a webhook secret must be whsec_ followed by base64")]
pub struct SecretFormatError;

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// Manages its own webhooks.
    Customer,
    /// Publishes events.
    Producer,
}

impl KeyKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyKind::Customer => "customer",
            KeyKind::Producer => "producer",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "customer" => Some(KeyKind::Customer),
            "producer" => Some(KeyKind::Producer),
            _ => None,
        }
    }

    const fn key_marker(self) -> &'static str {
        match self {
            KeyKind::Customer => "ck",
            KeyKind::Producer => "pk",
        }
    }
}

/// A plaintext API key. It exists only between generation and printing, and between reading
/// the `X-API-Key` header and hashing it; only [`ApiKey::hash`] is ever stored.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// `aioka_ck_…` (customer) or `aioka_pk_…` (producer) and 52 base32 characters of
    /// randomness. The marker lets secret scanners recognise a leaked key.
    pub fn generate(kind: KeyKind) -> Self {
        let bytes = random_bytes::<32>();
        let high = u128::from_be_bytes(bytes[..16].try_into().unwrap_or_default());
        let low = u128::from_be_bytes(bytes[16..].try_into().unwrap_or_default());
        Self(format!(
            "aioka_{}_{}{}",
            kind.key_marker(),
            encode_u128(high),
            encode_u128(low)
        ))
    }

    pub fn from_header(text: &str) -> Self {
        Self(text.trim().to_owned())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the key. Keys carry 256 bits of randomness, so a fast hash is enough: there
    /// is nothing to brute-force that a slow hash would protect.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }

    /// The first characters, safe to show in listings so an operator can tell keys apart.
    pub fn display_prefix(&self) -> String {
        self.0.chars().take(14).collect()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// The key that encrypts webhook secrets at rest (AES-256-GCM), from settings.
#[derive(Clone)]
pub struct EncryptionKey([u8; 32]);

/// Why a configured encryption key or a stored ciphertext was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "the secret key must be standard base64 of exactly 32 bytes (try: openssl rand -base64 32)"
    )]
    KeyFormat,
    #[error("the stored secret could not be decrypted with the configured key")]
    Decrypt,
}

const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// The key that authenticates delivery tasks between our own services (fanout and the
/// gateway tag each task, delivery checks the tag), so that a broker credential alone cannot
/// have a webhook's secret sign a body of the holder's choosing. Derived from the
/// [`EncryptionKey`] with a fixed label (HMAC-SHA256), so there is one key to manage and a
/// tag reveals nothing of it. Never printed.
#[derive(Clone)]
pub struct TaskKey(pub(crate) [u8; 32]);

impl fmt::Debug for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl EncryptionKey {
    /// The key for [`crate::messages::DeliveryTask`] tags, derived from this one.
    pub fn task_key(&self) -> TaskKey {
        use hmac::Mac;
        let mut mac = <hmac::Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes keys of any length");
        mac.update(b"aioka delivery task authentication v1");
        TaskKey(mac.finalize().into_bytes().into())
    }

    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let bytes = STANDARD
            .decode(text.trim())
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim()))
            .map_err(|_| CryptoError::KeyFormat)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::KeyFormat)?;
        Ok(Self(bytes))
    }

    pub fn generate() -> Self {
        Self(random_bytes::<32>())
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Encrypts `plaintext`, bound to `context` (the webhook id) so a ciphertext copied onto
    /// another row does not decrypt. Layout: version byte, 12-byte nonce, ciphertext and tag.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let cipher = Aes256Gcm::new((&self.0).into());
        let nonce_bytes = random_bytes::<NONCE_LEN>();
        let nonce = Nonce::from(nonce_bytes);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            // AES-GCM encryption fails only for plaintexts near 64 GiB.
            .expect("AES-GCM encryption of a short secret cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (version, rest) = sealed.split_first().ok_or(CryptoError::Decrypt)?;
        if *version != SEAL_VERSION || rest.len() < NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Decrypt)?;
        Aes256Gcm::new((&self.0).into())
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| CryptoError::Decrypt)
    }

    pub fn seal_secret(&self, secret: &WebhookSecret, context: &[u8]) -> Vec<u8> {
        self.seal(secret.expose().as_bytes(), context)
    }

    pub fn open_secret(&self, sealed: &[u8], context: &[u8]) -> Result<WebhookSecret, CryptoError> {
        let plain = self.open(sealed, context)?;
        let text = String::from_utf8(plain).map_err(|_| CryptoError::Decrypt)?;
        WebhookSecret::from_exposed(text).map_err(|_| CryptoError::Decrypt)
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_secret_is_whsec_and_base64_of_32_bytes() {
        let secret = WebhookSecret::generate();
        let text = secret.expose();
        assert!(text.starts_with("whsec_"));
        assert_eq!(text.len(), 6 + 44);
        assert_eq!(STANDARD.decode(&text[6..]).unwrap().len(), 32);
        assert_eq!(secret.standard_webhooks_key().len(), 32);
    }

    #[test]
    fn two_generated_secrets_differ() {
        assert_ne!(WebhookSecret::generate(), WebhookSecret::generate());
        assert_ne!(
            ApiKey::generate(KeyKind::Customer),
            ApiKey::generate(KeyKind::Customer)
        );
    }

    #[test]
    fn secrets_and_keys_never_print_their_value() {
        let secret = WebhookSecret::generate();
        let key = ApiKey::generate(KeyKind::Producer);
        let enc = EncryptionKey::generate();
        for printed in [
            format!("{secret:?}"),
            format!("{key:?}"),
            format!("{enc:?}"),
        ] {
            assert_eq!(printed, "[redacted]");
        }
    }

    #[test]
    fn an_api_key_names_its_kind_and_hashes_stably() {
        let key = ApiKey::generate(KeyKind::Customer);
        assert!(key.expose().starts_with("aioka_ck_"));
        assert_eq!(key.expose().len(), 9 + 52);
        assert!(
            ApiKey::generate(KeyKind::Producer)
                .expose()
                .starts_with("aioka_pk_")
        );
        assert_eq!(key.hash(), ApiKey::from_header(key.expose()).hash());
        assert_eq!(key.display_prefix().len(), 14);
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_context() {
        let key = EncryptionKey::generate();
        let secret = WebhookSecret::generate();
        let sealed = key.seal_secret(&secret, b"wh_1");
        assert!(
            !sealed
                .windows(secret.expose().len())
                .any(|w| w == secret.expose().as_bytes()),
            "the ciphertext must not contain the secret"
        );
        assert_eq!(key.open_secret(&sealed, b"wh_1").unwrap(), secret);
        assert_eq!(key.open_secret(&sealed, b"wh_2"), Err(CryptoError::Decrypt));
        assert_eq!(
            EncryptionKey::generate().open_secret(&sealed, b"wh_1"),
            Err(CryptoError::Decrypt)
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            key.open_secret(&tampered, b"wh_1"),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn sealing_twice_gives_different_ciphertexts() {
        let key = EncryptionKey::generate();
        assert_ne!(key.seal(b"same", b"c"), key.seal(b"same", b"c"));
    }

    #[test]
    fn an_encryption_key_must_be_32_bytes_of_base64() {
        let key = EncryptionKey::generate();
        assert!(EncryptionKey::from_base64(&key.to_base64()).is_ok());
        assert_eq!(
            EncryptionKey::from_base64("c2hvcnQ=").unwrap_err(),
            CryptoError::KeyFormat
        );
        assert_eq!(
            EncryptionKey::from_base64("not base64 at all!").unwrap_err(),
            CryptoError::KeyFormat
        );
    }

    #[test]
    fn connection_urls_lose_their_password_when_printed() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:REDACTED@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/aioka"),
            "postgres://postgres@127.0.0.1:5432/aioka"
        );
        assert_eq!(redact_url("host=x password=y"), "[redacted]");
        assert_eq!(
            redact_url("amqp://a:one@127.0.0.1:5681/%2f, amqp://a:two@127.0.0.1:5682/%2f"),
            "amqp://a:REDACTED@127.0.0.1:5681/%2f,amqp://a:REDACTED@127.0.0.1:5682/%2f",
            "every URL of a list is redacted"
        );
    }

    #[test]
    fn a_stored_secret_without_the_prefix_is_refused() {
        assert!(WebhookSecret::from_exposed("abc".into()).is_err());
        assert!(WebhookSecret::from_exposed("whsec_!!".into()).is_err());
        assert!(WebhookSecret::from_exposed("whsec_".into()).is_err());
    }
}
