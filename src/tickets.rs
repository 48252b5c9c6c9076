//! Short-lived WebSocket tickets, for browsers that should not hold a
//! long-lived JWT: a backend mints one with its API key
//! (`POST /v1/orgs/:org/tickets`) and the browser connects with
//! `/v1/ws?ticket=`. A ticket carries its claims and an HMAC-SHA256 over them,
//! so it is verified locally, with no store round-trip.
//!
//! Format: `sbt1.<b64url(claims JSON)>.<expiry unix secs>.<b64url(hmac)>`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use switchboard_actors::Identity;
use switchboard_proto::{Grants, OrgId, Subject};

use crate::auth::{AuthError, Verified, now_secs, refuse};
use crate::directory::OrgDirectory;

/// Lifetimes a ticket may ask for, in seconds, and the default.
pub const TTL_SECS: std::ops::RangeInclusive<u64> = 1..=3600;
pub const DEFAULT_TTL_SECS: u64 = 60;

/// Longer strings are refused before any decoding.
const MAX_TICKET_LEN: usize = 16 * 1024;
const VERSION: &str = "sbt1";

/// What a ticket lets its holder do: the same grants as a client JWT.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TicketClaims {
    pub org: OrgId,
    pub sub: Subject,
    #[serde(flatten)]
    pub grants: Grants,
}

/// The key tickets are signed with. One per process for now: a ticket is
/// good on the pod that minted it, until that pod restarts. Cluster mode
/// hands every pod the same key.
#[derive(Clone)]
pub struct TicketKey(Hmac<Sha256>);

impl TicketKey {
    /// A fresh key from the OS RNG.
    pub fn random() -> anyhow::Result<Self> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness for the ticket key: {e}"))?;
        Self::from_bytes(&key)
    }

    pub fn from_bytes(key: &[u8]) -> anyhow::Result<Self> {
        Ok(Self(Hmac::new_from_slice(key)?))
    }

    fn mac(&self, signed: &str) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(signed.as_bytes());
        mac
    }

    /// A ticket for `claims` that expires at `expires_at` (unix seconds).
    pub fn mint(&self, claims: &TicketClaims, expires_at: u64) -> Result<String, serde_json::Error> {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?);
        let signed = format!("{VERSION}.{body}.{expires_at}");
        let tag = URL_SAFE_NO_PAD.encode(self.mac(&signed).finalize().into_bytes());
        Ok(format!("{signed}.{tag}"))
    }

    /// Checks a ticket's signature and expiry, then that its org still exists.
    pub fn verify(&self, dir: &dyn OrgDirectory, ticket: &str) -> Result<Verified, AuthError> {
        self.verify_at(dir, ticket, now_secs())
    }

    fn verify_at(&self, dir: &dyn OrgDirectory, ticket: &str, now: u64) -> Result<Verified, AuthError> {
        if ticket.is_empty() {
            return Err(AuthError::Missing);
        }
        if ticket.len() > MAX_TICKET_LEN {
            return Err(refuse("ticket too long"));
        }
        let (signed, tag) = ticket.rsplit_once('.').ok_or_else(|| refuse("not a ticket"))?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| refuse("ticket tag is not base64url"))?;
        // Nothing inside is read before the tag checks out.
        self.mac(signed)
            .verify_slice(&tag)
            .map_err(|_| refuse("ticket tag does not match"))?;
        let mut parts = signed.split('.');
        let (Some(VERSION), Some(body), Some(expiry), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refuse("not a ticket of this version"));
        };
        let expires_at: u64 = expiry.parse().map_err(|_| refuse("bad ticket expiry"))?;
        if now >= expires_at {
            return Err(refuse("ticket expired"));
        }
        let body = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| refuse("ticket body is not base64url"))?;
        let claims: TicketClaims = serde_json::from_slice(&body).map_err(|_| refuse("bad ticket claims"))?;
        let org = dir
            .get(&claims.org)
            .ok_or_else(|| refuse("ticket of an unknown org"))?;
        Ok(Verified {
            identity: Identity {
                org: claims.org,
                subject: claims.sub,
                grants: claims.grants,
            },
            org,
            expires_at,
        })
    }
}

/// The ticket fuzz target: byte 0 picks what the rest is. 0: a ticket as a
/// client sends it. 1: claims JSON, signed with the key (everything behind
/// the MAC gets fuzzed too). 2: the signed part of a ticket, signed.
#[cfg(any(test, fuzzing))]
pub(crate) fn fuzz_verify(data: &[u8]) {
    use std::sync::LazyLock;

    use crate::directory::{OrgConfig, StaticOrgs};

    const NOW: u64 = 1_000_000;
    static KEY: LazyLock<TicketKey> =
        LazyLock::new(|| TicketKey(Hmac::new_from_slice(&[7; 32]).unwrap_or_else(|_| unreachable!())));
    static DIR: LazyLock<StaticOrgs> = LazyLock::new(|| {
        let org: OrgConfig = toml::from_str("id = \"acme\"").unwrap_or_else(|_| unreachable!());
        StaticOrgs::from_config(&[org]).unwrap_or_else(|_| unreachable!())
    });
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let signed = |signed: String| {
        let tag = URL_SAFE_NO_PAD.encode(KEY.mac(&signed).finalize().into_bytes());
        format!("{signed}.{tag}")
    };
    let ticket = match mode % 3 {
        0 => text.into_owned(),
        1 => signed(format!("{VERSION}.{}.{}", URL_SAFE_NO_PAD.encode(rest), NOW + 60)),
        _ => signed(text.into_owned()),
    };
    if let Ok(v) = KEY.verify_at(&*DIR, &ticket, NOW) {
        assert_eq!(v.identity.org.as_str(), "acme", "only the org that exists");
        assert!(v.expires_at > NOW, "never an expired one");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::ChannelPattern;

    use crate::directory::{OrgConfig, StaticOrgs};

    fn dir() -> StaticOrgs {
        let org = |id: &str| OrgConfig {
            rollup: vec![],
            id: id.into(),
            allowed_origins: vec![],
            jwt_keys: vec![],
            api_keys: vec![],
        };
        StaticOrgs::from_config(&[org("acme"), org("globex")]).unwrap()
    }

    fn claims(org: &str) -> TicketClaims {
        TicketClaims {
            org: OrgId::new(org).unwrap(),
            sub: Subject::new("user-1").unwrap(),
            grants: Grants {
                subscribe: vec![ChannelPattern::new("chat.>").unwrap()],
                ..Grants::default()
            },
        }
    }

    #[test]
    fn a_ticket_verifies_until_it_expires() {
        let key = TicketKey::random().unwrap();
        let d = dir();
        let ticket = key.mint(&claims("acme"), 1_000).unwrap();
        assert!(ticket.starts_with("sbt1."));
        let v = key.verify_at(&d, &ticket, 999).unwrap();
        assert_eq!(v.identity.org.as_str(), "acme");
        assert_eq!(v.identity.subject.as_str(), "user-1");
        assert_eq!(v.identity.grants, claims("acme").grants);
        assert_eq!(v.expires_at, 1_000);
        assert_eq!(key.verify_at(&d, &ticket, 1_000).err(), Some(AuthError::Invalid));
    }

    #[test]
    fn tampered_foreign_and_malformed_tickets_are_refused() {
        let key = TicketKey::random().unwrap();
        let d = dir();
        let ticket = key.mint(&claims("acme"), 1_000).unwrap();
        let parts: Vec<&str> = ticket.split('.').collect();
        // Another org's claims under acme's tag.
        let globex = key.mint(&claims("globex"), 1_000).unwrap();
        let swapped = format!("sbt1.{}.1000.{}", globex.split('.').nth(1).unwrap(), parts[3]);
        // A later expiry under the old tag.
        let extended = format!("sbt1.{}.9999.{}", parts[1], parts[3]);
        let other_key = TicketKey::random().unwrap().mint(&claims("acme"), 1_000).unwrap();
        let unknown_org = key.mint(&claims("initech"), 1_000).unwrap();
        for bad in [
            swapped.as_str(),
            &extended,
            &other_key,
            &unknown_org,
            "sbt1",
            "a.b.c.d",
            "sbt1.x.1000.!!!",
            &format!("{ticket}x"),
            &"a".repeat(MAX_TICKET_LEN + 1),
        ] {
            assert_eq!(
                key.verify_at(&d, bad, 999).err(),
                Some(AuthError::Invalid),
                "{bad:.60}"
            );
        }
        assert_eq!(key.verify_at(&d, "", 999).err(), Some(AuthError::Missing));
    }

    #[test]
    fn a_well_signed_ticket_of_another_version_is_refused() {
        let key = TicketKey::random().unwrap();
        let signed = format!("sbt2.{}.1000", URL_SAFE_NO_PAD.encode(b"{}"));
        let tag = URL_SAFE_NO_PAD.encode(key.mac(&signed).finalize().into_bytes());
        assert_eq!(
            key.verify_at(&dir(), &format!("{signed}.{tag}"), 999).err(),
            Some(AuthError::Invalid)
        );
    }
}
