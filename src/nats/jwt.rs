//! NATS decentralized-auth JWTs (v2), minted with `nkeys`: operator,
//! account and user claims as serde structs, signed `ed25519-nkey`. Limits
//! are always explicit: one left out means 0 to nats-server (NATS.md, trap 3).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::auth::now_secs;

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("not a NATS JWT: {0}")]
    Malformed(&'static str),
    #[error("the signature does not verify with {0}")]
    BadSignature(String),
}

/// Unlimited, as nats-server spells it.
const UNLIMITED: i64 = -1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims<N> {
    pub iat: u64,
    pub iss: String,
    pub jti: String,
    pub name: String,
    pub sub: String,
    pub nats: N,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Operator {
    pub signing_keys: Vec<String>,
    pub system_account: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccountLimits {
    pub subs: i64,
    pub data: i64,
    pub payload: i64,
    pub imports: i64,
    pub exports: i64,
    pub wildcards: bool,
    pub conn: i64,
    pub leaf: i64,
    /// JetStream is on for the account when either storage limit is not 0;
    /// -1 reserves nothing against the server's totals (NATS.md, trap 4).
    pub mem_storage: i64,
    pub disk_storage: i64,
    pub streams: i64,
    pub consumer: i64,
}

impl AccountLimits {
    /// No limit anywhere; JetStream on or off.
    pub fn unlimited(jetstream: bool) -> Self {
        let js = if jetstream { UNLIMITED } else { 0 };
        AccountLimits {
            subs: UNLIMITED,
            data: UNLIMITED,
            payload: UNLIMITED,
            imports: UNLIMITED,
            exports: UNLIMITED,
            wildcards: true,
            conn: UNLIMITED,
            leaf: UNLIMITED,
            mem_storage: js,
            disk_storage: js,
            streams: js,
            consumer: js,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Permission {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Permissions {
    #[serde(rename = "pub")]
    pub publish: Permission,
    #[serde(rename = "sub")]
    pub subscribe: Permission,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Account {
    pub limits: AccountLimits,
    pub signing_keys: Vec<String>,
    pub default_permissions: Permissions,
    /// Users (public keys) whose JWTs issued at or before the time are refused,
    /// and whose live connections nats-server cuts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revocations: BTreeMap<String, u64>,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct User {
    #[serde(rename = "pub")]
    pub publish: Permission,
    #[serde(rename = "sub")]
    pub subscribe: Permission,
    pub subs: i64,
    pub data: i64,
    pub payload: i64,
    /// Set when an account's signing key (not the account key) signs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer_account: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
}

fn jti() -> String {
    let mut bytes = [0u8; 16];
    // The server does not check it; a clock-based fallback is unique enough.
    if getrandom::fill(&mut bytes).is_err() {
        bytes = u128::from(now_secs()).to_le_bytes();
    }
    data_encoding::BASE32_NOPAD.encode(&bytes)
}

/// Signs `claims` (issued by `issuer` about `subject`) as a NATS JWT.
pub fn encode<N: Serialize>(
    issuer: &KeyPair,
    subject: &str,
    name: &str,
    nats: N,
) -> Result<String, JwtError> {
    encode_at(issuer, subject, name, nats, now_secs())
}

/// [`encode`] with an explicit issue time (an account update must never
/// carry an older one than the JWT it replaces: NATS.md, trap 2).
pub fn encode_at<N: Serialize>(
    issuer: &KeyPair,
    subject: &str,
    name: &str,
    nats: N,
    iat: u64,
) -> Result<String, JwtError> {
    let claims = Claims {
        iat,
        iss: issuer.public_key(),
        jti: jti(),
        name: name.to_owned(),
        sub: subject.to_owned(),
        nats,
    };
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = serde_json::to_vec(&claims).map_err(|e| JwtError::Sign(e.to_string()))?;
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(body));
    let sig = issuer
        .sign(signed.as_bytes())
        .map_err(|e| JwtError::Sign(e.to_string()))?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// Checks `jwt`'s signature against `issuer` (a public key) and returns its claims.
pub fn verify<N: for<'de> Deserialize<'de>>(jwt: &str, issuer: &str) -> Result<Claims<N>, JwtError> {
    let (signed, sig) = jwt.rsplit_once('.').ok_or(JwtError::Malformed("no signature"))?;
    let (_, body) = signed.split_once('.').ok_or(JwtError::Malformed("no header"))?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    let key =
        KeyPair::from_public_key(issuer).map_err(|_| JwtError::Malformed("issuer is not a public key"))?;
    key.verify(signed.as_bytes(), &sig)
        .map_err(|_| JwtError::BadSignature(issuer.to_owned()))?;
    let body = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| JwtError::Malformed("claims are not base64url"))?;
    let claims: Claims<N> = serde_json::from_slice(&body).map_err(|_| JwtError::Malformed("claims"))?;
    if claims.iss != issuer {
        return Err(JwtError::BadSignature(issuer.to_owned()));
    }
    Ok(claims)
}

pub fn operator(
    identity: &KeyPair,
    signing: &KeyPair,
    system_account: &str,
    name: &str,
) -> Result<String, JwtError> {
    encode(
        identity,
        &identity.public_key(),
        name,
        Operator {
            signing_keys: vec![signing.public_key()],
            system_account: system_account.to_owned(),
            kind: "operator".into(),
            version: 2,
        },
    )
}

/// An account JWT signed by the operator's signing key.
pub fn account(
    operator_signing: &KeyPair,
    account: &str,
    name: &str,
    jetstream: bool,
    signing_keys: Vec<String>,
) -> Result<String, JwtError> {
    encode(
        operator_signing,
        account,
        name,
        Account {
            limits: AccountLimits::unlimited(jetstream),
            signing_keys,
            default_permissions: Permissions::default(),
            revocations: BTreeMap::new(),
            kind: "account".into(),
            version: 2,
        },
    )
}

/// A user JWT signed by `signer`: the account key itself, or one of its
/// signing keys (then `issuer_account` names the account).
pub fn user(
    signer: &KeyPair,
    issuer_account: Option<&str>,
    user: &str,
    name: &str,
    permissions: Permissions,
) -> Result<String, JwtError> {
    encode(
        signer,
        user,
        name,
        User {
            publish: permissions.publish,
            subscribe: permissions.subscribe,
            subs: UNLIMITED,
            data: UNLIMITED,
            payload: UNLIMITED,
            issuer_account: issuer_account.map(str::to_owned),
            kind: "user".into(),
            version: 2,
        },
    )
}

/// A `.creds` file: the user JWT and its seed between the standard fences.
pub fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_each_kind() {
        let (op, op_sk, acct, usr) = (
            KeyPair::new_operator(),
            KeyPair::new_operator(),
            KeyPair::new_account(),
            KeyPair::new_user(),
        );
        let o = operator(&op, &op_sk, &acct.public_key(), "op").unwrap();
        let claims: Claims<Operator> = verify(&o, &op.public_key()).unwrap();
        assert_eq!(claims.nats.signing_keys, vec![op_sk.public_key()]);
        assert_eq!(claims.sub, op.public_key());
        let a = account(&op_sk, &acct.public_key(), "acct", true, vec![]).unwrap();
        let claims: Claims<Account> = verify(&a, &op_sk.public_key()).unwrap();
        assert_eq!(
            (claims.nats.limits.conn, claims.nats.limits.disk_storage),
            (-1, -1)
        );
        assert!(
            verify::<Account>(&a, &op.public_key()).is_err(),
            "not the identity key's"
        );
        let u = user(&acct, None, &usr.public_key(), "u", Permissions::default()).unwrap();
        let claims: Claims<User> = verify(&u, &acct.public_key()).unwrap();
        assert_eq!(claims.nats.kind, "user");
        let mut tampered = u.clone();
        tampered.insert(40, 'x');
        assert!(verify::<User>(&tampered, &acct.public_key()).is_err());
        let text = creds(&u, &usr.seed().unwrap());
        assert!(text.contains("BEGIN NATS USER JWT") && text.contains(&u));
    }
}
