//! What the registry stores, as versioned JSON documents, and under which
//! keys. Secrets are sealed ([`super::seal`]) or hashed, never in plain text.

use serde::{Deserialize, Serialize};
use switchboard_proto::OrgId;

use crate::directory::{RollupConfig, Scope};

/// The layout version this build reads and writes; older layouts are migrated at start.
pub const SCHEMA: u32 = 1;

/// Where each document lives.
pub mod key {
    use switchboard_proto::OrgId;

    pub const SCHEMA: &str = "meta.schema";
    pub const MASTER_CHECK: &str = "meta.master_check";
    pub const ORGS: &str = "orgs";
    pub const API_KEYS: &str = "keys";
    pub const REVOKED: &str = "revoked";

    pub fn org(org: &OrgId) -> String {
        format!("orgs.{org}")
    }
    pub fn api_keys(org: &OrgId) -> String {
        format!("keys.{org}")
    }
    pub fn api_key(org: &OrgId, id: &str) -> String {
        format!("keys.{org}.{id}")
    }
    pub fn users(org: &OrgId) -> String {
        format!("users.{org}")
    }
    pub fn user(org: &OrgId, user_id: &str) -> String {
        format!("users.{org}.{user_id}")
    }
    /// The username index: created if absent, so two creates of one name make one user.
    pub fn username(org: &OrgId, username: &str) -> String {
        format!("usernames.{org}.{}", super::super::store::token(username))
    }
    pub fn usernames(org: &OrgId) -> String {
        format!("usernames.{org}")
    }
    pub fn audits(org: &OrgId) -> String {
        format!("audit.{org}")
    }
    /// Audit entries sort by time: milliseconds, zero-padded, then a random tail.
    pub fn audit(org: &OrgId, at_ms: u64, tail: &str) -> String {
        format!("audit.{org}.{at_ms:013}-{tail}")
    }

    pub fn revocations(org: &OrgId) -> String {
        format!("revoked.{org}")
    }
    pub fn revocation(org: &OrgId, what: super::Revoke, id: &str) -> String {
        format!(
            "revoked.{org}.{}.{}",
            what.as_str(),
            super::super::store::token(id)
        )
    }
    /// The org's NATS account (cluster mode).
    pub fn account(org: &OrgId) -> String {
        format!("accounts.{org}")
    }
    pub const ACCOUNTS: &str = "accounts";
    pub const PUBLISHERS: &str = "publishers";
    pub fn publishers(org: &OrgId) -> String {
        format!("publishers.{org}")
    }
    pub fn publisher(org: &OrgId, name: &str) -> String {
        format!("publishers.{org}.{}", super::super::store::token(name))
    }
    /// A single-use ticket that was used.
    pub fn used_ticket(org: &OrgId, id: &str) -> String {
        format!("used.{org}.{}", super::super::store::token(id))
    }

    /// The org whose live view a key's change touches (`keys.acme.k1` → `acme`).
    pub fn org_of(key: &str) -> Option<&str> {
        let mut parts = key.split('.');
        match (parts.next(), parts.next()) {
            (Some("orgs" | "keys" | "revoked"), Some(org)) => Some(org),
            _ => None,
        }
    }
}

/// Limits an org's admin sets; `None` falls back to the server's setting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgLimits {
    /// Client connections open at once across the org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Client connections one subject may hold open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_subject: Option<u32>,
    /// Publishes (and sends) per second per connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<u32>,
    /// Operator sessions alive at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_operator_sessions: Option<u32>,
}

/// A key that verifies the org's client JWTs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "alg")]
pub enum StoredJwtKey {
    /// The shared secret, sealed.
    HS256 { kid: Option<String>, sealed: String },
    RS256 {
        kid: Option<String>,
        public_key_pem: String,
    },
    EdDSA {
        kid: Option<String>,
        public_key_pem: String,
    },
}

/// A key tickets are signed with. The newest unretired one signs; every
/// unretired one verifies, so a rotation breaks no ticket in flight.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredTicketKey {
    pub id: String,
    pub sealed: String,
    pub created_at: u64,
    #[serde(default)]
    pub retired: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrgDoc {
    pub id: OrgId,
    pub name: String,
    pub created_at: u64,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub jwt_keys: Vec<StoredJwtKey>,
    #[serde(default)]
    pub ticket_keys: Vec<StoredTicketKey>,
    #[serde(default)]
    pub limits: OrgLimits,
    #[serde(default)]
    pub rollup: Vec<RollupConfig>,
    /// Where the org's identity provider publishes more JWT keys (JWKS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// When set, client JWTs must carry this `aud` / `iss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_audience: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_issuer: Option<String>,
    /// Declared in the config file: re-applied from it at every start.
    #[serde(default)]
    pub from_config: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyDoc {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Hex SHA-256 of the key's secret part.
    pub sha256: String,
    pub scopes: Vec<Scope>,
    pub created_at: u64,
    #[serde(default)]
    pub from_config: bool,
}

/// An org user's role: owners and admins manage users and keys, members read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    #[default]
    Member,
}

impl Role {
    pub fn manages(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserDoc {
    pub user_id: String,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub role: Role,
    /// argon2id, PHC string.
    pub password: String,
    /// Hex SHA-256 of the user's API token's secret part.
    pub token_sha256: String,
    pub created_at: u64,
}

/// What a revocation refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Revoke {
    /// Client JWTs with this `jti`.
    Jti,
    /// Client JWTs of this subject issued before the revocation (all of
    /// them if they carry no `iat`), and tickets for it.
    Sub,
    /// The ticket with this id.
    Ticket,
}

impl Revoke {
    pub fn as_str(self) -> &'static str {
        match self {
            Revoke::Jti => "jti",
            Revoke::Sub => "sub",
            Revoke::Ticket => "ticket",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RevocationDoc {
    pub what: Revoke,
    pub id: String,
    /// Unix seconds it was revoked at.
    pub at: u64,
    /// Unix seconds after which it no longer matters (the credential expired).
    pub until: u64,
}

/// One admin action: who did what to what, when.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Unix milliseconds.
    pub at: u64,
    /// `admin`, `key:<id>` or `user:<username>`.
    pub actor: String,
    /// `org.create`, `user.delete`, `key.revoke`, ...
    pub action: String,
    pub target: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_store_keys() {
        let acme = OrgId::new("acme").unwrap();
        for k in [
            key::org(&acme),
            key::api_key(&acme, "k-1"),
            key::user(&acme, "0f3a"),
            key::username(&acme, "alice@example.com"),
            key::audit(&acme, 1_700_000_000_000, "ab12"),
        ] {
            crate::registry::store::check_key(&k).unwrap();
        }
        assert_eq!(key::org_of("keys.acme.k1"), Some("acme"));
        assert_eq!(key::org_of("orgs.acme"), Some("acme"));
        assert_eq!(key::org_of("users.acme.x"), None);
        assert!(
            key::audit(&acme, 5, "x") < key::audit(&acme, 40, "x"),
            "time order"
        );
    }
}

/// An org's NATS account (cluster mode), made by whichever pod used the org
/// first; every pod connects to it as users its signing key mints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccountDoc {
    /// The account's public key (`A…`).
    pub account: String,
    /// The account's signing key: public, and its seed sealed.
    pub signing_key: String,
    pub signing_seed: String,
    /// The account JWT as last pushed, and its issue time.
    pub jwt: String,
    pub iat: u64,
    /// Revoked users (public key → revocation time).
    #[serde(default)]
    pub revocations: std::collections::BTreeMap<String, u64>,
    /// Its org was deleted: no signing key, no connections.
    #[serde(default)]
    pub retired: bool,
}

/// A publisher: a NATS user of the org's account that may only publish on
/// the org's publisher subjects. Its seed is handed out once, never kept.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublisherDoc {
    pub name: String,
    /// The NATS user's public key (`U…`).
    pub user: String,
    /// Channel patterns it may publish on (empty: every channel).
    pub channels: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
}
