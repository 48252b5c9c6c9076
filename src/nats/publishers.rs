//! Publishers on NATS: users of an org's account that may only publish on
//! its publisher subjects (`pub.<channel>`), for backends that speak NATS
//! rather than HTTP. Their `.creds` are handed out once; revoking one adds
//! it to the account's revocations, and nats-server cuts its connection.
//! [`super::ingest`] turns what they publish into channel messages.

use switchboard_proto::{ChannelPattern, OrgId, subjects};

use super::accounts::{AccountError, Accounts};
use super::jwt;
use crate::auth::now_secs;
use crate::registry::model::{PublisherDoc, key};
use crate::registry::store::StoreError;
use crate::registry::{decode, encode};

#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error("publisher {0:?} already exists")]
    Exists(String),
    #[error("publisher {0:?} not found")]
    NotFound(String),
    #[error(transparent)]
    Account(#[from] AccountError),
}

impl From<StoreError> for PublisherError {
    fn from(e: StoreError) -> Self {
        PublisherError::Account(e.into())
    }
}

impl From<crate::registry::RegistryError> for PublisherError {
    fn from(e: crate::registry::RegistryError) -> Self {
        PublisherError::Account(e.into())
    }
}

/// A new publisher: its record and its `.creds` (the only copy of its seed).
pub struct NewPublisher {
    pub doc: PublisherDoc,
    pub creds: String,
}

impl Accounts {
    /// Mints a publisher of `org` that may publish on `channels` (every
    /// channel when empty) and nothing else; subscribing is denied.
    pub async fn create_publisher(
        &self,
        org: &OrgId,
        name: &str,
        channels: &[ChannelPattern],
    ) -> Result<NewPublisher, PublisherError> {
        let (account, _, _) = self.record(org).await?;
        let signing = self.signing_key(&account)?;
        let user = nkeys::KeyPair::new_user();
        let seed = user
            .seed()
            .map_err(|e| AccountError::Nats(format!("a new key has no seed: {e}")))?;
        let allow = if channels.is_empty() {
            vec![subjects::PUBLISH_ALL.to_owned()]
        } else {
            channels.iter().map(subjects::publish_grant).collect()
        };
        let permissions = jwt::Permissions {
            publish: jwt::Permission { allow, deny: vec![] },
            // An empty allow list would mean "anything": deny it all.
            subscribe: jwt::Permission {
                allow: vec![],
                deny: vec![">".into()],
            },
        };
        let user_jwt = jwt::user(
            &signing,
            Some(&account.account),
            &user.public_key(),
            name,
            permissions,
        )
        .map_err(|e| AccountError::Nats(format!("cannot sign the publisher: {e}")))?;
        let doc = PublisherDoc {
            name: name.to_owned(),
            user: user.public_key(),
            channels: channels.iter().map(|c| c.to_string()).collect(),
            created_at: now_secs(),
        };
        match self
            .registry()
            .store()
            .create(&key::publisher(org, name), encode(&doc))
            .await
        {
            Ok(_) => {}
            Err(StoreError::Exists) => return Err(PublisherError::Exists(name.to_owned())),
            Err(e) => return Err(e.into()),
        }
        // The account must be on the server before the publisher connects,
        // and the org open (its `PUB` stream there to keep what it sends).
        self.update(org, |_| {}).await?;
        self.open(org).await?;
        Ok(NewPublisher {
            doc,
            creds: jwt::creds(&user_jwt, &seed),
        })
    }

    pub async fn publishers(&self, org: &OrgId) -> Result<Vec<PublisherDoc>, PublisherError> {
        let entries = self.registry().store().list(&key::publishers(org)).await?;
        let mut out = entries
            .iter()
            .map(decode::<PublisherDoc>)
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Revokes a publisher: nats-server refuses its JWT from now on and
    /// cuts its live connection.
    pub async fn revoke_publisher(&self, org: &OrgId, name: &str) -> Result<(), PublisherError> {
        let store = self.registry().store();
        let k = key::publisher(org, name);
        let Some(entry) = store.get(&k).await? else {
            return Err(PublisherError::NotFound(name.to_owned()));
        };
        let doc: PublisherDoc = decode(&entry)?;
        let at = now_secs();
        self.update(org, |account| {
            account.revocations.insert(doc.user.clone(), at);
        })
        .await?;
        store.delete(&k).await?;
        Ok(())
    }
}
