//! Org users: created once by name (a second create returns the same user
//! and no secret, also when two race), an argon2id password and an API token
//! (`sbu.<org>.<user id>.<secret>`, stored as SHA-256) shown once, a role
//! that decides what the token may do on the org's admin routes.

use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};
use switchboard_proto::OrgId;

use super::admin::{AdminError, random_bytes};
use super::model::{Role, UserDoc, key};
use super::store::StoreError;
use super::{Registry, decode, encode};
use crate::auth::{hex, now_secs, random_token};

/// Length of a user's initial password: 32 letters and digits (~190 bits).
const PASSWORD_LEN: usize = 32;

fn random_alphanumeric(n: usize) -> Result<String, AdminError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // 248 is the largest multiple of 62 below 256: rejection keeps it uniform.
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in random_bytes(n)? {
            if b < 248 && out.len() < n {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

/// A user as the API shows it (never its secrets).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub user_id: String,
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub role: Role,
    pub created_at: u64,
}

impl From<&UserDoc> for UserView {
    fn from(u: &UserDoc) -> Self {
        UserView {
            user_id: u.user_id.clone(),
            username: u.username.clone(),
            display_name: u.display_name.clone(),
            email: u.email.clone(),
            role: u.role,
            created_at: u.created_at,
        }
    }
}

#[derive(Debug, Default)]
pub struct NewUser {
    pub username: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub role: Role,
}

/// What creating a user did: `secrets` only when it made the user.
#[derive(Debug)]
pub struct UserCreate {
    pub user: UserView,
    /// (initial password, API token), shown once.
    pub secrets: Option<(String, String)>,
}

const USER_TOKEN_PREFIX: &str = "sbu";

/// Checks a username: 1-128 printable characters, no spaces at either end.
fn check_username(name: &str) -> Result<(), AdminError> {
    let ok =
        !name.is_empty() && name.len() <= 128 && name.trim() == name && !name.chars().any(char::is_control);
    ok.then_some(())
        .ok_or_else(|| AdminError::Invalid("username must be 1-128 printable characters".into()))
}

/// argon2id with the crate's default cost, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, AdminError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&random_bytes(16)?).map_err(|e| AdminError::Invalid(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AdminError::Invalid(e.to_string()))
}

/// Whether `password` matches a stored PHC string.
pub fn check_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

impl Registry {
    /// Creates the user unless one of that name exists: then returns it as
    /// it is, with no new secret. Safe to repeat.
    pub async fn create_user(
        &self,
        org: &OrgId,
        new: NewUser,
        actor: &str,
    ) -> Result<UserCreate, AdminError> {
        check_username(&new.username)?;
        if self.org_doc(org).await?.is_none() {
            return Err(AdminError::NotFound(format!("org {org}")));
        }
        let index = key::username(org, &new.username);
        if let Some(existing) = self.user_by_index(org, &index).await? {
            return Ok(UserCreate {
                user: UserView::from(&existing),
                secrets: None,
            });
        }
        let user_id = uuid::Uuid::new_v4().simple().to_string();
        let password = random_alphanumeric(PASSWORD_LEN)?;
        let secret = random_token(32).map_err(|e| AdminError::Invalid(e.to_string()))?;
        let doc = UserDoc {
            user_id: user_id.clone(),
            username: new.username.clone(),
            display_name: new.display_name,
            email: new.email,
            role: new.role,
            password: hash_password(&password)?,
            token_sha256: hex(&Sha256::digest(secret.as_bytes())),
            created_at: now_secs(),
        };
        // The user first, then the name: a name never points at nothing.
        self.store.put(&key::user(org, &user_id), encode(&doc)).await?;
        match self.store.create(&index, Bytes::from(user_id.clone())).await {
            Ok(_) => {}
            Err(StoreError::Exists) => {
                // A concurrent create of the same name won: return its user.
                self.store.delete(&key::user(org, &user_id)).await?;
                let existing = self
                    .user_by_index(org, &index)
                    .await?
                    .ok_or_else(|| AdminError::NotFound(format!("user {}", new.username)))?;
                return Ok(UserCreate {
                    user: UserView::from(&existing),
                    secrets: None,
                });
            }
            Err(e) => return Err(e.into()),
        }
        self.audit(org, actor, "user.create", &new.username).await;
        let token = format!("{USER_TOKEN_PREFIX}.{org}.{user_id}.{secret}");
        Ok(UserCreate {
            user: UserView::from(&doc),
            secrets: Some((password, token)),
        })
    }

    async fn user_by_index(&self, org: &OrgId, index: &str) -> Result<Option<UserDoc>, AdminError> {
        let Some(id) = self.store.get(index).await? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&id.value).into_owned();
        self.user(org, &id).await
    }

    pub async fn user(&self, org: &OrgId, user_id: &str) -> Result<Option<UserDoc>, AdminError> {
        let k = key::user(org, user_id);
        if super::store::check_key(&k).is_err() {
            return Ok(None);
        }
        Ok(match self.store.get(&k).await? {
            Some(e) => Some(decode(&e)?),
            None => None,
        })
    }

    /// Users in username order, from `after` (a username), at most `limit`.
    pub async fn users(
        &self,
        org: &OrgId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserView>, AdminError> {
        let mut all = Vec::new();
        for e in self.store.list(&key::users(org)).await? {
            all.push(UserView::from(&decode::<UserDoc>(&e)?));
        }
        all.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(all
            .into_iter()
            .filter(|u| after.is_none_or(|a| u.username.as_str() > a))
            .take(limit)
            .collect())
    }

    /// Removes the user; its token stops working at once.
    pub async fn delete_user(&self, org: &OrgId, user_id: &str, actor: &str) -> Result<(), AdminError> {
        let user = self
            .user(org, user_id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("user {user_id}")))?;
        self.store.delete(&key::user(org, user_id)).await?;
        self.store.delete(&key::username(org, &user.username)).await?;
        self.audit(org, actor, "user.delete", &user.username).await;
        Ok(())
    }

    /// The user a `sbu.<org>.<user id>.<secret>` token belongs to, if it checks out.
    pub async fn verify_user_token(&self, org: &OrgId, token: &str) -> Result<Option<UserDoc>, AdminError> {
        use subtle::ConstantTimeEq;
        let mut parts = token.splitn(4, '.');
        let (Some(USER_TOKEN_PREFIX), Some(token_org), Some(user_id), Some(secret)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Ok(None);
        };
        if token_org != org.as_str() {
            return Ok(None);
        }
        let Some(user) = self.user(org, user_id).await? else {
            return Ok(None);
        };
        let digest = hex(&Sha256::digest(secret.as_bytes()));
        Ok(bool::from(digest.as_bytes().ct_eq(user.token_sha256.as_bytes())).then_some(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::admin::NewOrg;
    use crate::registry::admin::tests::{acme, registry};

    #[tokio::test]
    async fn concurrent_creates_of_one_user_make_one() {
        let r = registry().await;
        r.create_org(NewOrg::new(acme()), "admin").await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move {
                    r.create_user(
                        &acme(),
                        NewUser {
                            username: "bob".into(),
                            ..NewUser::default()
                        },
                        "admin",
                    )
                    .await
                    .unwrap()
                })
            })
            .collect();
        let mut ids = Vec::new();
        let mut made = 0;
        for t in tasks {
            let c = t.await.unwrap();
            made += usize::from(c.secrets.is_some());
            ids.push(c.user.user_id);
        }
        ids.sort();
        ids.dedup();
        assert_eq!((ids.len(), made), (1, 1));
        assert_eq!(r.users(&acme(), None, 10).await.unwrap().len(), 1);
    }
}
