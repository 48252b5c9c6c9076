//! Secrets at rest: every secret the registry keeps (HS256 secrets, ticket
//! keys, later NATS signing seeds) is sealed with XChaCha20-Poly1305 under
//! one master key that never enters the store. The key comes from a file
//! (`switchboard init` writes one; the data directory holds one made on
//! first start otherwise) or from `SWITCHBOARD_MASTER_KEY`. A check value
//! sealed at first start makes a wrong key fail start-up instead of serving
//! garbage.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The sealed text of the check value.
const CHECK: &[u8] = b"switchboard registry master key check";
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the master key must be {KEY_BYTES} bytes, base64url-encoded")]
    BadKey,
    #[error("no randomness: {0}")]
    Random(String),
    #[error("a sealed secret does not open with this master key")]
    WrongKey,
    #[error("{0}")]
    Io(String),
}

/// The key every secret in the registry is sealed with.
#[derive(Clone)]
pub struct MasterKey(XChaCha20Poly1305);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

fn random<const N: usize>() -> Result<[u8; N], SealError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| SealError::Random(e.to_string()))?;
    Ok(bytes)
}

impl MasterKey {
    /// A key from its text form (base64url of 32 bytes; whitespace around it ignored).
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| SealError::BadKey)?;
        let key: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| SealError::BadKey)?;
        Ok(Self(XChaCha20Poly1305::new(&key.into())))
    }

    /// A fresh key and its text form.
    pub fn generate() -> Result<(Self, String), SealError> {
        let text = URL_SAFE_NO_PAD.encode(random::<KEY_BYTES>()?);
        Ok((Self::parse(&text)?, text))
    }

    /// Reads the key in `path`.
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SealError::Io(format!("cannot read the master key {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// `nonce || ciphertext`, base64url: what the store keeps.
    pub fn seal(&self, secret: &[u8]) -> Result<String, SealError> {
        let nonce = random::<NONCE_BYTES>()?;
        let sealed = self
            .0
            .encrypt(&XNonce::from(nonce), secret)
            .map_err(|_| SealError::WrongKey)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, SealError> {
        let raw = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| SealError::WrongKey)?;
        if raw.len() < NONCE_BYTES {
            return Err(SealError::WrongKey);
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| SealError::WrongKey)?;
        self.0
            .decrypt(&XNonce::from(nonce), ciphertext)
            .map_err(|_| SealError::WrongKey)
    }

    /// A sealed check value, kept in the store at first start.
    pub fn check_value(&self) -> Result<String, SealError> {
        self.seal(CHECK)
    }

    /// Whether `sealed` is the check value sealed with this very key.
    pub fn verify(&self, sealed: &str) -> Result<(), SealError> {
        match self.open(sealed) {
            Ok(text) if text == CHECK => Ok(()),
            _ => Err(SealError::WrongKey),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_with_the_same_key() {
        let (key, text) = MasterKey::generate().unwrap();
        let sealed = key.seal(b"hs256 secret").unwrap();
        assert_eq!(key.open(&sealed).unwrap(), b"hs256 secret");
        assert_ne!(
            key.seal(b"hs256 secret").unwrap(),
            sealed,
            "fresh nonce each time"
        );
        assert!(!sealed.contains("hs256"));
        let same = MasterKey::parse(&format!("{text}\n")).unwrap();
        same.verify(&key.check_value().unwrap()).unwrap();
        let (other, _) = MasterKey::generate().unwrap();
        assert!(matches!(other.open(&sealed), Err(SealError::WrongKey)));
        assert!(matches!(
            other.verify(&key.check_value().unwrap()),
            Err(SealError::WrongKey)
        ));
        assert!(matches!(MasterKey::parse("short"), Err(SealError::BadKey)));
        assert!(matches!(key.open("AAAA"), Err(SealError::WrongKey)));
        assert_eq!(format!("{key:?}"), "MasterKey(..)");
    }
}
