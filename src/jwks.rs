//! Client-JWT keys an org's identity provider publishes at a JWKS URL:
//! fetched on first use, cached, refetched when stale and whenever a token
//! names a key id the cache does not hold (no more often than a setting
//! allows, so random key ids cannot make us hammer the provider). A key
//! rotation at the provider is picked up without a restart; a failed fetch
//! keeps the keys we had.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;
use switchboard_actors::clock::{self, Instant};
use switchboard_proto::OrgId;

use crate::directory::{OrgRecord, VerifyKey};

/// Keys older than this are refetched on the next connect.
const STALE_AFTER: Duration = Duration::from_secs(600);
/// A provider that does not answer within this is skipped for this connect.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Providers rotate keys rarely; a connect with an unknown key id may
/// refetch at most this often per org.
pub const DEFAULT_MIN_REFETCH: Duration = Duration::from_secs(10);

struct Cached {
    url: String,
    keys: Arc<Vec<VerifyKey>>,
    fetched: Instant,
}

pub struct Jwks {
    client: reqwest::Client,
    cache: Mutex<HashMap<OrgId, Cached>>,
    min_refetch: Duration,
}

/// The verification key for one JWK, if we support its kind.
fn verify_key(jwk: &jsonwebtoken::jwk::Jwk) -> Option<VerifyKey> {
    let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(KeyAlgorithm::RS256), _) | (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
        (Some(KeyAlgorithm::EdDSA), _) | (None, AlgorithmParameters::OctetKeyPair(_)) => Algorithm::EdDSA,
        (Some(KeyAlgorithm::ES256), _) | (None, AlgorithmParameters::EllipticCurve(_)) => Algorithm::ES256,
        _ => return None,
    };
    Some(VerifyKey {
        alg,
        kid: jwk.common.key_id.clone(),
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

impl Jwks {
    pub fn new(min_refetch: Duration) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .unwrap_or_default(),
            cache: Mutex::new(HashMap::new()),
            min_refetch,
        }
    }

    /// The org's published keys for a token that names `kid`; none if the
    /// org publishes none.
    pub async fn keys(&self, org: &OrgRecord, kid: Option<&str>) -> Arc<Vec<VerifyKey>> {
        let Some(url) = org.jwks_url.as_deref() else {
            return Arc::default();
        };
        let now = clock::now();
        let (cached, due) = {
            let cache = self.cache.lock();
            match cache.get(&org.id).filter(|c| c.url == url) {
                Some(c) => {
                    let age = now.saturating_duration_since(c.fetched);
                    let unknown =
                        kid.is_some_and(|kid| !c.keys.iter().any(|k| k.kid.as_deref() == Some(kid)));
                    (
                        Some(c.keys.clone()),
                        age > STALE_AFTER || (unknown && age >= self.min_refetch),
                    )
                }
                None => (None, true),
            }
        };
        if !due {
            return cached.unwrap_or_default();
        }
        match self.fetch(url).await {
            Ok(keys) => {
                let keys = Arc::new(keys);
                self.cache.lock().insert(
                    org.id.clone(),
                    Cached {
                        url: url.to_owned(),
                        keys: keys.clone(),
                        fetched: now,
                    },
                );
                keys
            }
            Err(e) => {
                tracing::warn!(org = %org.id, error = %e, "JWKS fetch failed; keeping the keys we had");
                if let Some(c) = self.cache.lock().get_mut(&org.id) {
                    // Wait as long before the next try as after a success.
                    c.fetched = now;
                }
                cached.unwrap_or_default()
            }
        }
    }

    async fn fetch(&self, url: &str) -> anyhow::Result<Vec<VerifyKey>> {
        let res = self.client.get(url).send().await?.error_for_status()?;
        let body = res.bytes().await?;
        anyhow::ensure!(
            body.len() <= MAX_JWKS_BYTES,
            "the JWKS document is over {MAX_JWKS_BYTES} bytes"
        );
        let set: JwkSet = serde_json::from_slice(&body)?;
        Ok(set.keys.iter().filter_map(verify_key).collect())
    }

    /// Forgets an org's keys (it was deleted or its URL changed).
    pub fn forget(&self, org: &OrgId) {
        self.cache.lock().remove(org);
    }
}
