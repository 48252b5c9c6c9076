//! What an admin can do to the registry, for the HTTP admin API and the
//! config import: orgs, API keys, ticket key rotation, revocations, and the
//! audit log every action is appended to (users are in [`super::users`]).
//! Secrets are returned once, by the call that made them, and stored sealed
//! or hashed.

use serde::Serialize;
use switchboard_proto::OrgId;

use super::model::{
    AuditEntry, KeyDoc, OrgDoc, OrgLimits, RevocationDoc, Revoke, StoredJwtKey, StoredTicketKey, key,
};
use super::store::StoreError;
use super::{Registry, RegistryError, decode, encode};
use crate::auth::{hex, new_api_key, now_secs, random_token};
use crate::directory::{JwtKeyConfig, OrgConfig, Scope};

/// Most keys an org may hold: each is checked on its org's requests.
pub const MAX_KEYS_PER_ORG: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        AdminError::Registry(e.into())
    }
}

impl From<super::seal::SealError> for AdminError {
    fn from(e: super::seal::SealError) -> Self {
        AdminError::Registry(e.into())
    }
}

pub(super) fn random_bytes(n: usize) -> Result<Vec<u8>, AdminError> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| AdminError::Invalid(format!("no randomness: {e}")))?;
    Ok(bytes)
}

fn short_id() -> Result<String, AdminError> {
    Ok(hex(&random_bytes(4)?))
}

/// What creating an org returns: the secrets are shown this once.
#[derive(Debug, Serialize)]
pub struct CreatedOrg {
    pub id: OrgId,
    pub name: String,
    /// HS256 secret the org's backend signs client JWTs with.
    pub hs256_secret: String,
}

/// A new org as asked for.
#[derive(Debug)]
pub struct NewOrg {
    pub id: OrgId,
    pub name: Option<String>,
    pub allowed_origins: Vec<String>,
    /// Public keys (RS256/EdDSA) to verify client JWTs with, beside the generated secret.
    pub public_keys: Vec<JwtKeyConfig>,
    /// A JWKS URL (`http://` or `https://`) publishing more client-JWT keys.
    pub jwks_url: Option<String>,
    /// The `aud` and `iss` client JWTs must carry, if any.
    pub jwt_audience: Option<String>,
    pub jwt_issuer: Option<String>,
    pub limits: OrgLimits,
}

impl NewOrg {
    /// An org with only an id: a name like it, any origin, no limits.
    pub fn new(id: OrgId) -> Self {
        NewOrg {
            id,
            name: None,
            allowed_origins: Vec::new(),
            public_keys: Vec::new(),
            jwks_url: None,
            jwt_audience: None,
            jwt_issuer: None,
            limits: OrgLimits::default(),
        }
    }
}

/// A key as the API shows it (never its secret).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub scopes: Vec<Scope>,
    pub created_at: u64,
}

impl From<&KeyDoc> for KeyView {
    fn from(k: &KeyDoc) -> Self {
        KeyView {
            id: k.id.clone(),
            name: k.name.clone(),
            scopes: k.scopes.clone(),
            created_at: k.created_at,
        }
    }
}

impl Registry {
    fn seal_text(&self, text: &str) -> Result<String, AdminError> {
        Ok(self.master.seal(text.as_bytes())?)
    }

    fn new_ticket_key(&self) -> Result<StoredTicketKey, AdminError> {
        Ok(StoredTicketKey {
            id: short_id()?,
            sealed: self.master.seal(&random_bytes(32)?)?,
            created_at: now_secs(),
            retired: false,
        })
    }

    /// Appends to the org's audit log. A failed append is logged, not fatal:
    /// the action it records has already happened.
    pub async fn audit(&self, org: &OrgId, actor: &str, action: &str, target: &str) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let entry = AuditEntry {
            at,
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
        };
        let tail = short_id().unwrap_or_else(|_| "0".into());
        if let Err(e) = self.store.put(&key::audit(org, at, &tail), encode(&entry)).await {
            tracing::warn!(org = %org, action, error = %e, "audit entry not written");
        }
    }

    pub async fn audit_log(&self, org: &OrgId) -> Result<Vec<AuditEntry>, AdminError> {
        let mut out = Vec::new();
        for e in self.store.list(&key::audits(org)).await? {
            out.push(decode(&e)?);
        }
        Ok(out)
    }

    pub async fn org_doc(&self, org: &OrgId) -> Result<Option<OrgDoc>, AdminError> {
        Ok(match self.store.get(&key::org(org)).await? {
            Some(e) => Some(decode(&e)?),
            None => None,
        })
    }

    pub async fn org_docs(&self) -> Result<Vec<OrgDoc>, AdminError> {
        let mut out = Vec::new();
        for e in self.store.list(key::ORGS).await? {
            out.push(decode(&e)?);
        }
        Ok(out)
    }

    /// Creates an org with a fresh HS256 secret and ticket key.
    pub async fn create_org(&self, new: NewOrg, actor: &str) -> Result<CreatedOrg, AdminError> {
        let secret = random_token(32).map_err(|e| AdminError::Invalid(e.to_string()))?;
        let mut jwt_keys = vec![StoredJwtKey::HS256 {
            kid: None,
            sealed: self.seal_text(&secret)?,
        }];
        for k in new.public_keys {
            jwt_keys.push(match k {
                JwtKeyConfig::RS256 { public_key_pem, kid } => StoredJwtKey::RS256 { kid, public_key_pem },
                JwtKeyConfig::EdDSA { public_key_pem, kid } => StoredJwtKey::EdDSA { kid, public_key_pem },
                JwtKeyConfig::HS256 { .. } => {
                    return Err(AdminError::Invalid(
                        "HS256 secrets are generated, not uploaded".into(),
                    ));
                }
            });
        }
        if let Some(url) = &new.jwks_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(AdminError::Invalid(
                "jwks_url must be an http:// or https:// URL".into(),
            ));
        }
        let doc = OrgDoc {
            jwks_url: new.jwks_url,
            jwt_audience: new.jwt_audience,
            jwt_issuer: new.jwt_issuer,
            name: new.name.unwrap_or_else(|| new.id.to_string()),
            id: new.id.clone(),
            created_at: now_secs(),
            allowed_origins: new.allowed_origins,
            jwt_keys,
            ticket_keys: vec![self.new_ticket_key()?],
            limits: new.limits,
            rollup: Vec::new(),
            from_config: false,
        };
        // Parse it as the connect path will before anything is stored.
        self.record(&doc, &[])?;
        match self.store.create(&key::org(&new.id), encode(&doc)).await {
            Err(StoreError::Exists) => return Err(AdminError::Exists(format!("org {}", new.id))),
            other => other?,
        };
        self.reload(&new.id).await?;
        self.audit(&new.id, actor, "org.create", new.id.as_str()).await;
        Ok(CreatedOrg {
            id: doc.id,
            name: doc.name,
            hs256_secret: secret,
        })
    }

    /// Deletes the org and everything it owns in the registry.
    pub async fn delete_org(&self, org: &OrgId) -> Result<(), AdminError> {
        if !self.store.delete(&key::org(org)).await? {
            return Err(AdminError::NotFound(format!("org {org}")));
        }
        self.reload(org).await?;
        for prefix in [
            key::api_keys(org),
            key::users(org),
            key::usernames(org),
            key::audits(org),
            key::revocations(org),
            key::publishers(org),
        ] {
            for e in self.store.list(&prefix).await? {
                self.store.delete(&e.key).await?;
            }
        }
        Ok(())
    }

    /// Retires every ticket key but the newest and adds a new one that
    /// signs from now on; the retired ones keep verifying until
    /// [`Registry::retire_ticket_keys`] drops them.
    pub async fn rotate_ticket_key(&self, org: &OrgId, actor: &str) -> Result<String, AdminError> {
        let id = self
            .update_org(org, |doc| {
                let fresh = self.new_ticket_key()?;
                let id = fresh.id.clone();
                doc.ticket_keys.retain(|k| !k.retired);
                for k in &mut doc.ticket_keys {
                    k.retired = true;
                }
                doc.ticket_keys.push(fresh);
                Ok(id)
            })
            .await?;
        self.audit(org, actor, "ticket_key.rotate", &id).await;
        Ok(id)
    }

    /// Reads, changes and writes the org document with compare-and-swap,
    /// retrying when another writer came first.
    async fn update_org<T>(
        &self,
        org: &OrgId,
        mut change: impl FnMut(&mut OrgDoc) -> Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        loop {
            let entry = self
                .store
                .get(&key::org(org))
                .await?
                .ok_or_else(|| AdminError::NotFound(format!("org {org}")))?;
            let mut doc: OrgDoc = decode(&entry)?;
            let out = change(&mut doc)?;
            match self.store.update(&entry.key, encode(&doc), entry.revision).await {
                Ok(_) => {
                    self.reload(org).await?;
                    return Ok(out);
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub async fn create_key(
        &self,
        org: &OrgId,
        name: Option<String>,
        scopes: Vec<Scope>,
        actor: &str,
    ) -> Result<(KeyView, String), AdminError> {
        if self.org_doc(org).await?.is_none() {
            return Err(AdminError::NotFound(format!("org {org}")));
        }
        if self.store.list(&key::api_keys(org)).await?.len() >= MAX_KEYS_PER_ORG {
            return Err(AdminError::Invalid(format!(
                "an org holds at most {MAX_KEYS_PER_ORG} keys"
            )));
        }
        let id = format!("k{}", short_id()?);
        let key = new_api_key(org, &id).map_err(|e| AdminError::Invalid(e.to_string()))?;
        let doc = KeyDoc {
            id: id.clone(),
            name,
            sha256: key.sha256_hex,
            scopes,
            created_at: now_secs(),
            from_config: false,
        };
        self.store.create(&key::api_key(org, &id), encode(&doc)).await?;
        self.reload(org).await?;
        self.audit(org, actor, "key.create", &id).await;
        Ok((KeyView::from(&doc), key.plaintext))
    }

    pub async fn keys(&self, org: &OrgId) -> Result<Vec<KeyView>, AdminError> {
        let mut out = Vec::new();
        for e in self.store.list(&key::api_keys(org)).await? {
            out.push(KeyView::from(&decode::<KeyDoc>(&e)?));
        }
        Ok(out)
    }

    /// Revokes a key: refused from the next request on.
    pub async fn revoke_key(&self, org: &OrgId, id: &str, actor: &str) -> Result<(), AdminError> {
        let k = key::api_key(org, id);
        if super::store::check_key(&k).is_err() || !self.store.delete(&k).await? {
            return Err(AdminError::NotFound(format!("key {id}")));
        }
        self.reload(org).await?;
        self.audit(org, actor, "key.revoke", id).await;
        Ok(())
    }

    /// Revokes a credential (a JWT's `jti`, a subject, a ticket's id) until
    /// `until`: it is refused from now on, on every pod.
    pub async fn revoke(
        &self,
        org: &OrgId,
        what: Revoke,
        id: &str,
        until: u64,
        actor: &str,
    ) -> Result<RevocationDoc, AdminError> {
        if id.is_empty() || id.len() > 256 {
            return Err(AdminError::Invalid("the revoked id must be 1-256 bytes".into()));
        }
        if self.org_doc(org).await?.is_none() {
            return Err(AdminError::NotFound(format!("org {org}")));
        }
        let doc = RevocationDoc {
            what,
            id: id.to_owned(),
            at: now_secs(),
            until,
        };
        self.store
            .put(&key::revocation(org, what, id), encode(&doc))
            .await?;
        self.reload(org).await?;
        self.audit(org, actor, &format!("revoke.{}", what.as_str()), id)
            .await;
        Ok(doc)
    }

    pub async fn revocations(&self, org: &OrgId) -> Result<Vec<RevocationDoc>, AdminError> {
        let mut out = Vec::new();
        for e in self.store.list(&key::revocations(org)).await? {
            out.push(decode(&e)?);
        }
        Ok(out)
    }

    /// Makes the registry hold the orgs the config file declares: each is
    /// created if missing, and the fields the file sets (origins, JWT keys,
    /// API keys, rollup) replace what the registry had from the file before.
    /// Keys and ticket keys made over the API stay.
    pub async fn import(&self, configs: &[OrgConfig]) -> Result<(), AdminError> {
        for c in configs {
            let org = OrgId::new(&c.id).map_err(|e| AdminError::Invalid(e.to_string()))?;
            let mut jwt_keys = Vec::new();
            for k in &c.jwt_keys {
                jwt_keys.push(match k {
                    JwtKeyConfig::HS256 { secret, kid } => StoredJwtKey::HS256 {
                        kid: kid.clone(),
                        sealed: self.seal_text(secret)?,
                    },
                    JwtKeyConfig::RS256 { public_key_pem, kid } => StoredJwtKey::RS256 {
                        kid: kid.clone(),
                        public_key_pem: public_key_pem.clone(),
                    },
                    JwtKeyConfig::EdDSA { public_key_pem, kid } => StoredJwtKey::EdDSA {
                        kid: kid.clone(),
                        public_key_pem: public_key_pem.clone(),
                    },
                });
            }
            let existing = self.org_doc(&org).await?;
            let doc = OrgDoc {
                id: org.clone(),
                name: existing.as_ref().map_or_else(|| c.id.clone(), |d| d.name.clone()),
                created_at: existing.as_ref().map_or_else(now_secs, |d| d.created_at),
                allowed_origins: c.allowed_origins.clone(),
                jwt_keys,
                ticket_keys: match &existing {
                    Some(d) if !d.ticket_keys.is_empty() => d.ticket_keys.clone(),
                    _ => vec![self.new_ticket_key()?],
                },
                limits: existing.as_ref().map(|d| d.limits.clone()).unwrap_or_default(),
                rollup: c.rollup.clone(),
                jwks_url: existing.as_ref().and_then(|d| d.jwks_url.clone()),
                jwt_audience: existing.as_ref().and_then(|d| d.jwt_audience.clone()),
                jwt_issuer: existing.as_ref().and_then(|d| d.jwt_issuer.clone()),
                from_config: true,
            };
            self.store.put(&key::org(&org), encode(&doc)).await?;
            for e in self.store.list(&key::api_keys(&org)).await? {
                let k: KeyDoc = decode(&e)?;
                if k.from_config && !c.api_keys.iter().any(|a| a.id == k.id) {
                    self.store.delete(&e.key).await?;
                }
            }
            for a in &c.api_keys {
                let doc = KeyDoc {
                    id: a.id.clone(),
                    name: None,
                    sha256: a.sha256.clone(),
                    scopes: a.scopes.clone(),
                    created_at: now_secs(),
                    from_config: true,
                };
                self.store.put(&key::api_key(&org, &a.id), encode(&doc)).await?;
            }
            self.reload(&org).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::registry::Embedded;
    use crate::registry::seal::MasterKey;
    use crate::registry::users::{NewUser, check_password};
    use std::sync::Arc;

    pub(crate) async fn registry() -> Arc<Registry> {
        let (master, _) = MasterKey::generate().unwrap();
        Registry::open(Arc::new(Embedded::in_memory().unwrap()), master)
            .await
            .unwrap()
    }

    pub(crate) fn acme() -> OrgId {
        OrgId::new("acme").unwrap()
    }

    #[tokio::test]
    async fn orgs_users_and_keys() {
        let r = registry().await;
        use crate::directory::OrgDirectory;
        let made = r.create_org(NewOrg::new(acme()), "admin").await.unwrap();
        assert_eq!(made.hs256_secret.len(), 43);
        assert!(r.get(&acme()).is_some(), "live at once");
        assert!(matches!(
            r.create_org(NewOrg::new(acme()), "admin").await,
            Err(AdminError::Exists(_))
        ));
        let stored =
            String::from_utf8_lossy(&r.store.get("orgs.acme").await.unwrap().unwrap().value).into_owned();
        assert!(
            !stored.contains(&made.hs256_secret),
            "the secret is sealed at rest"
        );

        let new = || NewUser {
            username: "alice@example.com".into(),
            ..NewUser::default()
        };
        let first = r.create_user(&acme(), new(), "admin").await.unwrap();
        let (password, token) = first.secrets.clone().unwrap();
        assert_eq!(password.len(), 32);
        assert!(password.bytes().all(|b| b.is_ascii_alphanumeric()));
        let again = r.create_user(&acme(), new(), "admin").await.unwrap();
        assert_eq!(again.user.user_id, first.user.user_id);
        assert!(again.secrets.is_none(), "no new secret for an existing user");
        let user = r.verify_user_token(&acme(), &token).await.unwrap().unwrap();
        assert!(check_password(&password, &user.password));
        assert!(!check_password("wrong", &user.password));
        assert!(user.password.starts_with("$argon2id$"));
        assert!(
            r.verify_user_token(&acme(), &format!("{token}x"))
                .await
                .unwrap()
                .is_none()
        );

        let (view, plaintext) = r
            .create_key(&acme(), Some("backend".into()), vec![Scope::Publish], "admin")
            .await
            .unwrap();
        let record = r.get(&acme()).unwrap();
        assert!(record.api_keys.iter().any(|k| k.id == view.id));
        assert!(plaintext.starts_with(&format!("sbk.acme.{}.", view.id)));
        r.revoke_key(&acme(), &view.id, "admin").await.unwrap();
        assert!(r.get(&acme()).unwrap().api_keys.is_empty(), "refused from now on");

        let actions: Vec<String> = r
            .audit_log(&acme())
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.action)
            .collect();
        assert_eq!(
            actions,
            vec!["org.create", "user.create", "key.create", "key.revoke"]
        );

        r.delete_org(&acme()).await.unwrap();
        assert!(r.get(&acme()).is_none());
        assert!(r.store.list("users.acme").await.unwrap().is_empty());
        assert!(matches!(
            r.delete_org(&acme()).await,
            Err(AdminError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_wrong_master_key_fails_to_open() {
        let store = Arc::new(Embedded::in_memory().unwrap());
        let (right, _) = MasterKey::generate().unwrap();
        Registry::open(store.clone(), right).await.unwrap();
        let (wrong, _) = MasterKey::generate().unwrap();
        let err = Registry::open(store, wrong).await.unwrap_err();
        assert!(err.to_string().contains("master key"), "{err}");
    }
}
