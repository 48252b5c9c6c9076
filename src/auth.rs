//! Credentials: client JWTs (verified with the org's keys), org API keys
//! (stored as SHA-256, compared in constant time) and bearer extraction.
//!
//! Every refusal reaches the caller as one generic reason; the precise one
//! goes to the debug log, never with the credential itself.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use switchboard_actors::Identity;
use switchboard_proto::{ChannelPattern, Grants, OrgId, Subject, TargetPattern};

use crate::directory::{OrgDirectory, OrgRecord, Scope, VerifyKey};

/// Clock skew tolerated on `exp`, at connect and on open sockets.
pub const LEEWAY_SECS: u64 = 30;

/// The claims of a client token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientClaims {
    pub sub: String,
    pub org: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The token's id, for revoking one token before it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Channel patterns the client may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<ChannelPattern>,
    /// Channel patterns the client may publish on.
    #[serde(default)]
    pub publish: Vec<ChannelPattern>,
    /// Operator addresses it may `send` to: `role:<name>`, `role:*`, `op:*`, `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub send: Vec<TargetPattern>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials")]
    Missing,
    #[error("invalid credentials")]
    Invalid,
    #[error("this key may not do that")]
    Scope,
}

/// A verified client.
pub struct Verified {
    pub identity: Identity,
    pub org: std::sync::Arc<OrgRecord>,
    /// Unix seconds when the credential expires.
    pub expires_at: u64,
    /// A single-use ticket's id: the connect consumes it.
    pub single_use: Option<String>,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The one refusal a caller sees; the precise reason goes to the debug log.
pub(crate) fn refuse(why: &str) -> AuthError {
    tracing::debug!(reason = why, "credential refused");
    AuthError::Invalid
}

/// Verifies a client token against the keys of the org it names.
pub fn verify_client_token(dir: &dyn OrgDirectory, token: &str) -> Result<Verified, AuthError> {
    verify_client_token_with(dir, token, &[])
}

/// The org a token claims to be of, read without checking it: to pick its
/// keys (a JWKS fetch) before verifying.
pub fn claimed_org(token: &str) -> Option<OrgId> {
    #[derive(Deserialize)]
    struct OrgOnly {
        org: String,
    }
    let claimed: OrgOnly = jsonwebtoken::dangerous::insecure_decode_claims(token).ok()?;
    OrgId::new(&claimed.org).ok()
}

/// [`verify_client_token`], also trying `published` (the org's JWKS keys).
pub fn verify_client_token_with(
    dir: &dyn OrgDirectory,
    token: &str,
    published: &[VerifyKey],
) -> Result<Verified, AuthError> {
    #[derive(Deserialize)]
    struct OrgOnly {
        org: String,
    }
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| refuse("malformed token"))?;
    // The org claim only picks which keys to try; it is trusted once the
    // signature made with one of them checks out.
    let claimed: OrgOnly =
        jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| refuse("no org claim"))?;
    let org_id = OrgId::new(&claimed.org).map_err(|_| refuse("bad org claim"))?;
    let org = dir.get(&org_id).ok_or_else(|| refuse("unknown org"))?;
    let mut validation = Validation::new(header.alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    match &org.jwt_audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    if let Some(iss) = &org.jwt_issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    let keys = org
        .jwt_keys
        .iter()
        .chain(published)
        .filter(|k| k.alg == header.alg && (header.kid.is_none() || header.kid == k.kid));
    for key in keys {
        let Ok(data) = jsonwebtoken::decode::<ClientClaims>(token, &key.key, &validation) else {
            continue;
        };
        let c = data.claims;
        if c.org != claimed.org {
            return Err(refuse("org claim changed"));
        }
        let subject = Subject::new(&c.sub).map_err(|_| refuse("bad sub"))?;
        if org.revoked.refuses(c.jti.as_deref(), &c.sub, c.iat) {
            return Err(refuse("token revoked"));
        }
        return Ok(Verified {
            identity: Identity {
                org: org_id,
                subject,
                grants: Grants {
                    subscribe: c.subscribe,
                    publish: c.publish,
                    send: c.send,
                },
                publish_rate: org.limits.publish_rate,
                credential: c.jti.map(Into::into),
            },
            org,
            expires_at: c.exp,
            single_use: None,
        });
    }
    Err(refuse("no key verified the token"))
}

/// Signs a client token with an HS256 secret (for `switchboard token` and tests).
pub fn sign_hs256(secret: &str, claims: &ClientClaims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// An org API key as shown to its owner once: `sbk.<org>.<key id>.<secret>`.
pub struct NewApiKey {
    pub plaintext: String,
    pub id: String,
    pub sha256_hex: String,
}

const API_KEY_PREFIX: &str = "sbk";

/// Makes a fresh key with 256 random bits from the OS.
pub fn new_api_key(org: &OrgId, id: &str) -> Result<NewApiKey, getrandom::Error> {
    let secret = random_token(32)?;
    Ok(NewApiKey {
        plaintext: format!("{API_KEY_PREFIX}.{org}.{id}.{secret}"),
        id: id.to_owned(),
        sha256_hex: hex(&Sha256::digest(secret.as_bytes())),
    })
}

/// `bytes` random bytes from the OS RNG, base64url without padding.
pub fn random_token(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks an API key: it must belong to `org` (when the route names one) and
/// carry `scope`. Returns the key's org.
pub fn verify_api_key(
    dir: &dyn OrgDirectory,
    presented: Option<&str>,
    org: Option<&OrgId>,
    scope: Scope,
) -> Result<std::sync::Arc<OrgRecord>, AuthError> {
    let presented = presented.filter(|p| !p.is_empty()).ok_or(AuthError::Missing)?;
    let mut parts = presented.splitn(4, '.');
    let (Some(API_KEY_PREFIX), Some(key_org), Some(key_id), Some(secret)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse("not an API key"));
    };
    let key_org = OrgId::new(key_org).map_err(|_| refuse("bad org in key"))?;
    if org.is_some_and(|o| *o != key_org) {
        return Err(refuse("key of another org"));
    }
    let record = dir.get(&key_org).ok_or_else(|| refuse("unknown org"))?;
    let key = record
        .api_keys
        .iter()
        .find(|k| k.id == key_id)
        .ok_or_else(|| refuse("unknown key id"))?;
    let digest = Sha256::digest(secret.as_bytes());
    if !bool::from(digest[..].ct_eq(&key.sha256)) {
        return Err(refuse("wrong secret"));
    }
    if !key.scopes.contains(&scope) {
        return Err(AuthError::Scope);
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{ApiKeyConfig, JwtKeyConfig, OrgConfig, StaticOrgs};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn dir(keys: Vec<ApiKeyConfig>) -> StaticOrgs {
        let org = |id: &str, secret: &str| OrgConfig {
            rollup: vec![],
            id: id.into(),
            allowed_origins: vec![],
            jwt_keys: vec![JwtKeyConfig::HS256 {
                secret: secret.into(),
                kid: None,
            }],
            api_keys: keys.clone(),
        };
        StaticOrgs::from_config(&[org("acme", SECRET), org("globex", &SECRET.replace('0', "z"))]).unwrap()
    }

    fn claims(org: &str, exp: u64) -> ClientClaims {
        ClientClaims {
            sub: "alice".into(),
            org: org.into(),
            exp,
            iat: None,
            jti: None,
            subscribe: vec![ChannelPattern::new("chat.>").unwrap()],
            publish: vec![],
            send: vec![],
        }
    }

    #[test]
    fn client_tokens() {
        let d = dir(vec![]);
        let good = sign_hs256(SECRET, &claims("acme", now_secs() + 60)).unwrap();
        let v = verify_client_token(&d, &good).unwrap();
        assert_eq!(v.identity.org.as_str(), "acme");
        assert_eq!(v.identity.subject.as_str(), "alice");
        assert_eq!(v.identity.grants.subscribe.len(), 1);

        let expired = sign_hs256(SECRET, &claims("acme", now_secs() - 120)).unwrap();
        assert_eq!(verify_client_token(&d, &expired).err(), Some(AuthError::Invalid));
        // Signed with acme's secret but claiming globex: globex's key refuses it.
        let cross = sign_hs256(SECRET, &claims("globex", now_secs() + 60)).unwrap();
        assert_eq!(verify_client_token(&d, &cross).err(), Some(AuthError::Invalid));
        let unknown = sign_hs256(SECRET, &claims("nobody", now_secs() + 60)).unwrap();
        assert_eq!(verify_client_token(&d, &unknown).err(), Some(AuthError::Invalid));
        assert_eq!(verify_client_token(&d, "garbage").err(), Some(AuthError::Invalid));
        assert_eq!(verify_client_token(&d, "").err(), Some(AuthError::Missing));
        let mut tampered = good.clone();
        tampered.pop();
        assert_eq!(verify_client_token(&d, &tampered).err(), Some(AuthError::Invalid));
    }

    #[test]
    fn rs256_and_eddsa_tokens() {
        use jsonwebtoken::{EncodingKey, encode};
        let org = OrgConfig {
            rollup: vec![],
            id: "acme".into(),
            allowed_origins: vec![],
            jwt_keys: vec![
                JwtKeyConfig::RS256 {
                    public_key_pem: include_str!("../tests/keys/rsa-public.pem").into(),
                    kid: None,
                },
                JwtKeyConfig::EdDSA {
                    public_key_pem: include_str!("../tests/keys/ed25519-public.pem").into(),
                    kid: Some("ed-1".into()),
                },
            ],
            api_keys: vec![],
        };
        let d = StaticOrgs::from_config(&[org]).unwrap();
        let c = claims("acme", now_secs() + 60);
        let rsa = EncodingKey::from_rsa_pem(include_bytes!("../tests/keys/rsa-private.pem")).unwrap();
        let ed = EncodingKey::from_ed_pem(include_bytes!("../tests/keys/ed25519-private.pem")).unwrap();
        let rs_token = encode(&Header::new(Algorithm::RS256), &c, &rsa).unwrap();
        assert!(verify_client_token(&d, &rs_token).is_ok());
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("ed-1".into());
        let ed_token = encode(&header, &c, &ed).unwrap();
        assert!(verify_client_token(&d, &ed_token).is_ok());
        // A kid that names no key is refused, as is an algorithm the org has no key for.
        header.kid = Some("ed-2".into());
        let wrong_kid = encode(&header, &c, &ed).unwrap();
        assert_eq!(
            verify_client_token(&d, &wrong_kid).err(),
            Some(AuthError::Invalid)
        );
        let hs = sign_hs256(SECRET, &c).unwrap();
        assert_eq!(verify_client_token(&d, &hs).err(), Some(AuthError::Invalid));
    }

    #[test]
    fn api_keys() {
        let acme = OrgId::new("acme").unwrap();
        let key = new_api_key(&acme, "k1").unwrap();
        let stored = |scopes| ApiKeyConfig {
            id: "k1".into(),
            sha256: key.sha256_hex.clone(),
            scopes,
        };
        let d = dir(vec![stored(vec![Scope::Publish])]);
        let ok = verify_api_key(&d, Some(&key.plaintext), Some(&acme), Scope::Publish).unwrap();
        assert_eq!(ok.id, acme);
        assert_eq!(
            verify_api_key(&d, Some(&key.plaintext), Some(&acme), Scope::History).err(),
            Some(AuthError::Scope)
        );
        let globex = OrgId::new("globex").unwrap();
        assert_eq!(
            verify_api_key(&d, Some(&key.plaintext), Some(&globex), Scope::Publish).err(),
            Some(AuthError::Invalid)
        );
        let wrong = format!("{}x", key.plaintext);
        assert_eq!(
            verify_api_key(&d, Some(&wrong), None, Scope::Publish).err(),
            Some(AuthError::Invalid)
        );
        assert_eq!(
            verify_api_key(&d, None, None, Scope::Publish).err(),
            Some(AuthError::Missing)
        );
        assert_eq!(
            verify_api_key(&d, Some("sbk.acme.k2.x"), None, Scope::Publish).err(),
            Some(AuthError::Invalid)
        );
    }

    #[test]
    fn bearer_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
