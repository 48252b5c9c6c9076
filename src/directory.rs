//! Where orgs and their credentials come from. [`OrgDirectory`] is the seam:
//! the server uses the durable [`crate::registry::Registry`] (which imports
//! the config file's orgs); [`StaticOrgs`] holds parsed orgs for tests and
//! fuzzing. Both hand out the same [`OrgRecord`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};
use switchboard_actors::RollupRule;
use switchboard_actors::limits::MAX_ROLLUP;
use switchboard_proto::{ChannelPattern, OrgId};

use crate::registry::model::{RevocationDoc, Revoke};

/// An org as the config file describes it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgConfig {
    pub id: String,
    /// Origins browsers may connect from (exact `scheme://host[:port]`).
    /// Empty: any origin (and non-browser clients, which send none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Keys that verify the org's client JWTs; several allow rotation.
    #[serde(default)]
    pub jwt_keys: Vec<JwtKeyConfig>,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// Token rollup windows for turns, by channel pattern (first match wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollup: Vec<RollupConfig>,
}

/// `window_ms` of 0 sends every token as its own frame.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupConfig {
    pub channels: String,
    pub window_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "alg", deny_unknown_fields)]
pub enum JwtKeyConfig {
    /// A shared secret of at least 32 bytes.
    HS256 { secret: String, kid: Option<String> },
    RS256 {
        public_key_pem: String,
        kid: Option<String>,
    },
    EdDSA {
        public_key_pem: String,
        kid: Option<String>,
    },
}

/// An API key as stored: only the SHA-256 of its secret, never the secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub id: String,
    /// Hex SHA-256 of the key's secret part.
    pub sha256: String,
    /// Default: every scope but `admin`, which must be granted by name.
    #[serde(default = "Scope::unprivileged")]
    pub scopes: Vec<Scope>,
}

/// What an API key may do inside its org.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Publish on any channel.
    Publish,
    /// Read any channel's history and presence.
    History,
    /// Mint and list the org's operator sessions.
    Operators,
    /// Manage the org's users and keys.
    Admin,
    /// Mint short-lived WebSocket tickets for clients.
    Tickets,
}

impl Scope {
    pub fn all() -> Vec<Scope> {
        vec![
            Scope::Publish,
            Scope::History,
            Scope::Operators,
            Scope::Admin,
            Scope::Tickets,
        ]
    }

    /// What a key listed without `scopes` may do: everything but manage the org.
    pub fn unprivileged() -> Vec<Scope> {
        Self::all().into_iter().filter(|s| *s != Scope::Admin).collect()
    }
}

/// A key that verifies client tokens.
pub struct VerifyKey {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub key: DecodingKey,
}

pub struct ApiKey {
    pub id: String,
    pub sha256: [u8; 32],
    pub scopes: Vec<Scope>,
}

/// A key the org's tickets are signed with (see [`crate::tickets`]).
pub struct TicketKeyEntry {
    pub id: String,
    pub key: crate::tickets::TicketKey,
    /// Verifies tickets minted before a rotation; signs no new one.
    pub retired: bool,
}

/// An org ready for request handling: keys parsed once.
pub struct OrgRecord {
    pub id: OrgId,
    pub name: String,
    pub allowed_origins: Vec<String>,
    pub jwt_keys: Vec<VerifyKey>,
    pub api_keys: Vec<ApiKey>,
    pub rollup: Arc<[RollupRule]>,
    /// Oldest first; the newest unretired one signs.
    pub ticket_keys: Vec<TicketKeyEntry>,
    pub limits: crate::registry::model::OrgLimits,
    pub revoked: Revocations,
    /// Where the org's identity provider publishes more JWT keys (JWKS).
    pub jwks_url: Option<String>,
    /// When set, client JWTs must carry this `aud` / `iss`.
    pub jwt_audience: Option<String>,
    pub jwt_issuer: Option<String>,
}

/// Credentials of the org refused before they expire.
#[derive(Default, Debug)]
pub struct Revocations {
    /// Ids of tokens and tickets: either kind refuses the credential with that id.
    ids: HashSet<String>,
    /// Subjects, with when they were revoked.
    subjects: HashMap<String, u64>,
}

impl Revocations {
    pub fn add(&mut self, doc: &RevocationDoc) {
        match doc.what {
            Revoke::Sub => {
                self.subjects.insert(doc.id.clone(), doc.at);
            }
            Revoke::Jti | Revoke::Ticket => {
                self.ids.insert(doc.id.clone());
            }
        }
    }

    /// Whether a credential with this id (a JWT's `jti` or a ticket's id),
    /// for `sub`, issued at `iat`, is refused. A revoked subject refuses
    /// what was issued up to the revocation (everything without an `iat`).
    pub fn refuses(&self, id: Option<&str>, sub: &str, iat: Option<u64>) -> bool {
        let by_id = id.is_some_and(|id| self.ids.contains(id));
        let by_sub = self
            .subjects
            .get(sub)
            .is_some_and(|at| iat.is_none_or(|iat| iat <= *at));
        by_id || by_sub
    }
}

impl OrgRecord {
    /// Whether a browser at `origin` may connect. Clients that send no
    /// `Origin` (servers, CLIs) are not browsers and pass.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(_) if self.allowed_origins.is_empty() => true,
            Some(o) => self.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o)),
        }
    }

    pub fn from_config(c: &OrgConfig) -> Result<OrgRecord, Vec<String>> {
        let mut errors = Vec::new();
        let id = OrgId::new(&c.id).map_err(|e| vec![format!("orgs: {:?}: {e}", c.id)])?;
        let at = |what: &str| format!("orgs.{id}.{what}");
        let mut jwt_keys = Vec::new();
        for (i, k) in c.jwt_keys.iter().enumerate() {
            let parsed = match k {
                JwtKeyConfig::HS256 { secret, kid } if secret.len() >= 32 => {
                    Ok((Algorithm::HS256, kid, DecodingKey::from_secret(secret.as_bytes())))
                }
                JwtKeyConfig::HS256 { .. } => Err("an HS256 secret must be at least 32 bytes".to_string()),
                JwtKeyConfig::RS256 { public_key_pem, kid } => {
                    DecodingKey::from_rsa_pem(public_key_pem.as_bytes())
                        .map(|key| (Algorithm::RS256, kid, key))
                        .map_err(|e| format!("not an RSA public key in PEM: {e}"))
                }
                JwtKeyConfig::EdDSA { public_key_pem, kid } => {
                    DecodingKey::from_ed_pem(public_key_pem.as_bytes())
                        .map(|key| (Algorithm::EdDSA, kid, key))
                        .map_err(|e| format!("not an Ed25519 public key in PEM: {e}"))
                }
            };
            match parsed {
                Ok((alg, kid, key)) => jwt_keys.push(VerifyKey {
                    alg,
                    kid: kid.clone(),
                    key,
                }),
                Err(e) => errors.push(format!("{}: {e}", at(&format!("jwt_keys[{i}]")))),
            }
        }
        let mut api_keys: Vec<ApiKey> = Vec::new();
        for k in &c.api_keys {
            if api_keys.iter().any(|seen| seen.id == k.id) {
                errors.push(format!("{}: key id {:?} is listed twice", at("api_keys"), k.id));
                continue;
            }
            let valid_id = !k.id.is_empty()
                && k.id.len() <= 64
                && k.id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_id {
                errors.push(format!(
                    "{}: key ids are 1-64 letters, digits, '-' or '_'",
                    at("api_keys")
                ));
                continue;
            }
            match hex32(&k.sha256) {
                Some(sha256) => api_keys.push(ApiKey {
                    id: k.id.clone(),
                    sha256,
                    scopes: k.scopes.clone(),
                }),
                None => errors.push(format!(
                    "{}: sha256 must be 64 hex digits",
                    at(&format!("api_keys.{}", k.id))
                )),
            }
        }
        let mut rollup = Vec::new();
        for r in &c.rollup {
            match ChannelPattern::new(&r.channels) {
                Ok(channels) if Duration::from_millis(r.window_ms) <= MAX_ROLLUP => rollup.push(RollupRule {
                    channels,
                    window: Duration::from_millis(r.window_ms),
                }),
                Ok(_) => errors.push(format!(
                    "{}: window_ms is at most {}",
                    at("rollup"),
                    MAX_ROLLUP.as_millis()
                )),
                Err(e) => errors.push(format!("{}: {e}", at("rollup"))),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(OrgRecord {
            name: id.to_string(),
            id,
            ticket_keys: Vec::new(),
            limits: Default::default(),
            revoked: Revocations::default(),
            jwks_url: None,
            jwt_audience: None,
            jwt_issuer: None,
            allowed_origins: c.allowed_origins.clone(),
            jwt_keys,
            api_keys,
            rollup: rollup.into(),
        })
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Looks orgs up by id. Implementations keep an in-memory view, so lookups
/// on the connect path never wait on I/O.
pub trait OrgDirectory: Send + Sync + 'static {
    fn get(&self, org: &OrgId) -> Option<Arc<OrgRecord>>;
}

/// Orgs from the config file, fixed for the life of the process.
#[derive(Clone, Default)]
pub struct StaticOrgs {
    orgs: HashMap<OrgId, Arc<OrgRecord>>,
}

impl StaticOrgs {
    /// Orgs already parsed (tests and fuzzing build them by hand).
    pub fn from_records(records: Vec<OrgRecord>) -> StaticOrgs {
        StaticOrgs {
            orgs: records.into_iter().map(|r| (r.id.clone(), Arc::new(r))).collect(),
        }
    }

    pub fn from_config(orgs: &[OrgConfig]) -> Result<StaticOrgs, Vec<String>> {
        let mut errors = Vec::new();
        let mut map = HashMap::new();
        for c in orgs {
            match OrgRecord::from_config(c) {
                Ok(r) => {
                    if map.insert(r.id.clone(), Arc::new(r)).is_some() {
                        errors.push(format!("orgs: {:?} is defined twice", c.id));
                    }
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(StaticOrgs { orgs: map })
        } else {
            Err(errors)
        }
    }
}

impl OrgDirectory for StaticOrgs {
    fn get(&self, org: &OrgId) -> Option<Arc<OrgRecord>> {
        self.orgs.get(org).cloned()
    }
}

impl std::fmt::Debug for StaticOrgs {
    /// Ids only: the records hold key material.
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_list().entries(self.orgs.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(toml_text: &str) -> Result<OrgRecord, Vec<String>> {
        OrgRecord::from_config(&toml::from_str(toml_text).unwrap())
    }

    #[test]
    fn parses_keys_and_reports_every_problem() {
        let ok = org(&format!(
            "id = \"acme\"\n[[jwt_keys]]\nalg = \"HS256\"\nsecret = \"{}\"\n[[api_keys]]\nid = \"k1\"\nsha256 = \"{}\"\n",
            "s".repeat(32),
            "ab".repeat(32)
        ))
        .unwrap();
        assert_eq!((ok.jwt_keys.len(), ok.api_keys.len()), (1, 1));
        assert!(
            !ok.api_keys[0].scopes.contains(&Scope::Admin),
            "admin is never granted by default"
        );
        assert_eq!(ok.api_keys[0].scopes.len(), Scope::all().len() - 1);
        let errs = org(
            "id = \"acme\"\n[[jwt_keys]]\nalg = \"HS256\"\nsecret = \"short\"\n[[jwt_keys]]\nalg = \"RS256\"\npublic_key_pem = \"nope\"\n[[api_keys]]\nid = \"k1\"\nsha256 = \"xyz\"\n",
        )
        .err()
        .unwrap();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(org("id = \"a b\"").is_err());
    }

    #[test]
    fn origins() {
        let mut o = org("id = \"acme\"").unwrap();
        assert!(o.origin_allowed(Some("https://evil.example")));
        o.allowed_origins = vec!["https://app.example".into()];
        assert!(o.origin_allowed(Some("https://APP.example")));
        assert!(!o.origin_allowed(Some("https://evil.example")));
        assert!(o.origin_allowed(None));
    }

    #[test]
    fn duplicate_key_ids_in_an_org_are_refused() {
        let key = format!("[[api_keys]]\nid = \"k1\"\nsha256 = \"{}\"\n", "ab".repeat(32));
        let errs = org(&format!("id = \"acme\"\n{key}{key}")).err().unwrap();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("listed twice"), "{errs:?}");
    }

    #[test]
    fn duplicate_orgs_are_refused() {
        let c: OrgConfig = toml::from_str("id = \"a\"").unwrap();
        assert!(StaticOrgs::from_config(&[c.clone(), c]).is_err());
    }
}
