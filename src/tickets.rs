//! Short-lived WebSocket tickets, for browsers that should not hold a
//! long-lived JWT: a backend mints one with its API key
//! (`POST /v1/orgs/:org/tickets`) and the browser connects with
//! `/v1/ws?ticket=`. A ticket carries its claims and an HMAC-SHA256 over them
//! with one of its org's ticket keys (kept sealed in the registry, so every
//! pod verifies it, also after a restart), checked locally with no store
//! round-trip. Rotation adds a key that signs from then on; the previous one
//! keeps verifying until it is retired.
//!
//! Format: `sbt2.<org>.<key id>.<b64url(claims JSON)>.<expiry unix secs>.<b64url(hmac)>`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use switchboard_actors::Identity;
use switchboard_proto::{Grants, OrgId, Subject};

use crate::auth::{AuthError, Verified, now_secs, refuse};
use crate::directory::{OrgDirectory, OrgRecord};

/// Lifetimes a ticket may ask for, in seconds, and the default.
pub const TTL_SECS: std::ops::RangeInclusive<u64> = 1..=3600;
pub const DEFAULT_TTL_SECS: u64 = 60;

/// Longer strings are refused before any decoding.
const MAX_TICKET_LEN: usize = 16 * 1024;
const VERSION: &str = "sbt2";

/// What a ticket lets its holder do: the same grants as a client JWT.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TicketClaims {
    pub org: OrgId,
    pub sub: Subject,
    #[serde(flatten)]
    pub grants: Grants,
    /// The ticket's id, for revoking it (and for using it once).
    #[serde(default)]
    pub id: String,
    /// Unix seconds it was minted at.
    #[serde(default)]
    pub iat: u64,
    /// Good for one connection only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub once: bool,
}

/// One HMAC key tickets are signed with.
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

    /// A ticket for `claims`, signed with this key under `key_id`, that
    /// expires at `expires_at` (unix seconds).
    pub fn mint(
        &self,
        key_id: &str,
        claims: &TicketClaims,
        expires_at: u64,
    ) -> Result<String, serde_json::Error> {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?);
        let signed = format!("{VERSION}.{}.{key_id}.{body}.{expires_at}", claims.org);
        let tag = URL_SAFE_NO_PAD.encode(self.mac(&signed).finalize().into_bytes());
        Ok(format!("{signed}.{tag}"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("the org has no ticket key")]
    NoKey,
    #[error("the claims could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A ticket for `claims`, signed with the org's newest ticket key.
pub fn mint(org: &OrgRecord, claims: &TicketClaims, expires_at: u64) -> Result<String, MintError> {
    let key = org
        .ticket_keys
        .iter()
        .rfind(|k| !k.retired)
        .ok_or(MintError::NoKey)?;
    Ok(key.key.mint(&key.id, claims, expires_at)?)
}

/// Checks a ticket's signature (with its org's key of that id) and expiry.
pub fn verify(dir: &dyn OrgDirectory, ticket: &str) -> Result<Verified, AuthError> {
    verify_at(dir, ticket, now_secs())
}

fn verify_at(dir: &dyn OrgDirectory, ticket: &str, now: u64) -> Result<Verified, AuthError> {
    if ticket.is_empty() {
        return Err(AuthError::Missing);
    }
    if ticket.len() > MAX_TICKET_LEN {
        return Err(refuse("ticket too long"));
    }
    let (signed, tag) = ticket.rsplit_once('.').ok_or_else(|| refuse("not a ticket"))?;
    let mut parts = signed.split('.');
    let (Some(VERSION), Some(org), Some(key_id), Some(body), Some(expiry), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(refuse("not a ticket of this version"));
    };
    // Only the org and key id are read before the tag checks out: they pick the key.
    let org_id = OrgId::new(org).map_err(|_| refuse("bad org in ticket"))?;
    let record = dir
        .get(&org_id)
        .ok_or_else(|| refuse("ticket of an unknown org"))?;
    let key = record
        .ticket_keys
        .iter()
        .find(|k| k.id == key_id)
        .ok_or_else(|| refuse("ticket key unknown or retired"))?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| refuse("ticket tag is not base64url"))?;
    key.key
        .mac(signed)
        .verify_slice(&tag)
        .map_err(|_| refuse("ticket tag does not match"))?;
    let expires_at: u64 = expiry.parse().map_err(|_| refuse("bad ticket expiry"))?;
    if now >= expires_at {
        return Err(refuse("ticket expired"));
    }
    let body = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| refuse("ticket body is not base64url"))?;
    let claims: TicketClaims = serde_json::from_slice(&body).map_err(|_| refuse("bad ticket claims"))?;
    if claims.org != org_id {
        return Err(refuse("ticket claims name another org"));
    }
    if record
        .revoked
        .refuses(Some(&claims.id), claims.sub.as_str(), Some(claims.iat))
    {
        return Err(refuse("ticket revoked"));
    }
    let single_use = claims.once.then(|| claims.id.clone());
    Ok(Verified {
        identity: Identity {
            org: claims.org,
            subject: claims.sub,
            grants: claims.grants,
            publish_rate: record.limits.publish_rate,
            credential: (!claims.id.is_empty()).then(|| claims.id.as_str().into()),
        },
        org: record,
        expires_at,
        single_use,
    })
}

/// The ticket fuzz target: byte 0 picks what the rest is. 0: a ticket as a
/// client sends it. 1: claims JSON, signed with acme's key (everything
/// behind the MAC gets fuzzed too). 2: the signed part of a ticket, signed.
#[cfg(any(test, fuzzing))]
pub(crate) fn fuzz_verify(data: &[u8]) {
    use std::sync::LazyLock;

    use crate::directory::StaticOrgs;

    const NOW: u64 = 1_000_000;
    static KEY: LazyLock<TicketKey> =
        LazyLock::new(|| TicketKey(Hmac::new_from_slice(&[7; 32]).unwrap_or_else(|_| unreachable!())));
    static DIR: LazyLock<StaticOrgs> = LazyLock::new(|| tests_support::orgs_with_key("acme", &KEY));
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
        1 => signed(format!(
            "{VERSION}.acme.k1.{}.{}",
            URL_SAFE_NO_PAD.encode(rest),
            NOW + 60
        )),
        _ => signed(text.into_owned()),
    };
    if let Ok(v) = verify_at(&*DIR, &ticket, NOW) {
        assert_eq!(v.identity.org.as_str(), "acme", "only the org that exists");
        assert!(v.expires_at > NOW, "never an expired one");
    }
}

/// A directory whose orgs hold one ticket key, `k1`.
#[cfg(any(test, fuzzing))]
pub(crate) mod tests_support {
    use super::TicketKey;
    use crate::directory::{OrgConfig, OrgRecord, StaticOrgs, TicketKeyEntry};

    pub fn orgs_with_key(org: &str, key: &TicketKey) -> StaticOrgs {
        let config = OrgConfig {
            id: org.into(),
            ..OrgConfig::default()
        };
        let mut record = OrgRecord::from_config(&config).unwrap_or_else(|_| unreachable!());
        record.ticket_keys.push(TicketKeyEntry {
            id: "k1".into(),
            key: key.clone(),
            retired: false,
        });
        StaticOrgs::from_records(vec![record])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_proto::ChannelPattern;

    use crate::directory::{OrgConfig, OrgRecord, StaticOrgs, TicketKeyEntry};

    /// acme with keys k1 (retired) and k2; globex with k1; both from `keys`.
    fn dir(keys: &[TicketKey; 3]) -> StaticOrgs {
        let org = |id: &str, entries: Vec<TicketKeyEntry>| {
            let mut r = OrgRecord::from_config(&OrgConfig {
                id: id.into(),
                ..OrgConfig::default()
            })
            .unwrap();
            r.ticket_keys = entries;
            r
        };
        let entry = |id: &str, key: &TicketKey, retired| TicketKeyEntry {
            id: id.into(),
            key: key.clone(),
            retired,
        };
        StaticOrgs::from_records(vec![
            org(
                "acme",
                vec![entry("k1", &keys[0], true), entry("k2", &keys[1], false)],
            ),
            org("globex", vec![entry("k1", &keys[2], false)]),
        ])
    }

    fn keys() -> [TicketKey; 3] {
        [
            TicketKey::random().unwrap(),
            TicketKey::random().unwrap(),
            TicketKey::random().unwrap(),
        ]
    }

    fn claims(org: &str) -> TicketClaims {
        TicketClaims {
            org: OrgId::new(org).unwrap(),
            sub: Subject::new("user-1").unwrap(),
            grants: Grants {
                subscribe: vec![ChannelPattern::new("chat.>").unwrap()],
                ..Grants::default()
            },
            id: "t1".into(),
            iat: 900,
            once: false,
        }
    }

    #[test]
    fn a_ticket_verifies_until_it_expires_with_the_newest_key_signing() {
        let k = keys();
        let d = dir(&k);
        let acme = d.get(&OrgId::new("acme").unwrap()).unwrap();
        let ticket = mint(&acme, &claims("acme"), 1_000).unwrap();
        assert!(ticket.starts_with("sbt2.acme.k2."), "{ticket}");
        let v = verify_at(&d, &ticket, 999).unwrap();
        assert_eq!(v.identity.org.as_str(), "acme");
        assert_eq!(v.identity.subject.as_str(), "user-1");
        assert_eq!(v.identity.grants, claims("acme").grants);
        assert_eq!(v.expires_at, 1_000);
        assert_eq!(verify_at(&d, &ticket, 1_000).err(), Some(AuthError::Invalid));
        // Minted with the retired key before the rotation: still good.
        let older = k[0].mint("k1", &claims("acme"), 1_000).unwrap();
        assert!(verify_at(&d, &older, 999).is_ok());
    }

    #[test]
    fn tampered_foreign_and_malformed_tickets_are_refused() {
        let k = keys();
        let d = dir(&k);
        let ticket = k[1].mint("k2", &claims("acme"), 1_000).unwrap();
        let parts: Vec<&str> = ticket.split('.').collect();
        // globex's claims under acme's name, well signed with acme's key.
        let foreign_claims = {
            let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("globex")).unwrap());
            let signed = format!("sbt2.acme.k2.{body}.1000");
            let tag = URL_SAFE_NO_PAD.encode(k[1].mac(&signed).finalize().into_bytes());
            format!("{signed}.{tag}")
        };
        // acme's claims signed with globex's key, presented as globex's.
        let cross = k[2].mint("k1", &claims("acme"), 1_000).unwrap();
        // A later expiry under the old tag.
        let extended = format!("sbt2.acme.k2.{}.9999.{}", parts[3], parts[5]);
        let other_key = TicketKey::random()
            .unwrap()
            .mint("k2", &claims("acme"), 1_000)
            .unwrap();
        let unknown_key = k[1].mint("k9", &claims("acme"), 1_000).unwrap();
        let unknown_org = k[1].mint("k2", &claims("initech"), 1_000).unwrap();
        for bad in [
            foreign_claims.as_str(),
            &cross.replace("sbt2.acme.", "sbt2.globex."),
            &extended,
            &other_key,
            &unknown_key,
            &unknown_org,
            "sbt2",
            "a.b.c.d",
            "sbt2.acme.k2.x.1000.!!!",
            &format!("{ticket}x"),
            &"a".repeat(MAX_TICKET_LEN + 1),
        ] {
            assert_eq!(
                verify_at(&d, bad, 999).err(),
                Some(AuthError::Invalid),
                "{bad:.60}"
            );
        }
        assert_eq!(verify_at(&d, "", 999).err(), Some(AuthError::Missing));
    }

    #[test]
    fn an_org_without_keys_cannot_mint() {
        let record = OrgRecord::from_config(&OrgConfig {
            id: "acme".into(),
            ..OrgConfig::default()
        })
        .unwrap();
        assert!(matches!(
            mint(&record, &claims("acme"), 10),
            Err(MintError::NoKey)
        ));
    }
}
