//! The registry: orgs, their users, API keys, ticket keys and audit log,
//! durable and shared. [`Registry`] keeps typed documents ([`model`]) in a
//! [`Store`] (the embedded one here; a JetStream bucket in cluster mode),
//! seals every secret with the master key ([`seal`]), and serves the connect
//! path from an in-memory view of each org ([`OrgDirectory`]) that it
//! rebuilds whenever the org or its keys change, on this pod or another.
//!
//! # Layout
//! - [`store`]: the key-value seam (revisions, create-if-absent, CAS, watch).
//! - [`embedded`]: the redb backend; [`jetstream`]: the cluster one.
//! - [`seal`]: the master key and sealed secrets.
//! - [`model`]: the documents and their keys.
//! - [`admin`]: the operations the admin API and CLI perform on orgs,
//!   keys, ticket keys, revocations and the audit log; [`users`]: org users.

pub mod admin;
#[doc(hidden)]
pub mod conformance;
pub mod embedded;
pub mod jetstream;
mod mirror;
pub mod model;
pub mod seal;
pub mod store;
pub mod users;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchboard_proto::OrgId;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::directory::{ApiKeyConfig, JwtKeyConfig, OrgConfig, OrgDirectory, OrgRecord};
use model::{KeyDoc, OrgDoc, RevocationDoc, SCHEMA, StoredJwtKey, key};
use seal::{MasterKey, SealError};
use store::{Entry, Store, StoreError};

pub use embedded::Embedded;

/// The registry's file in the data directory.
pub const STORE_FILE: &str = "registry.redb";
/// The master key's file in the data directory, when none is given.
pub const MASTER_KEY_FILE: &str = "master.key";
/// How often expired revocations and used tickets are forgotten.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("record {key} is not readable: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("the registry was written by a newer Switchboard (layout {0}); this one reads up to {SCHEMA}")]
    TooNew(u32),
    #[error("org {org}: {detail}")]
    InvalidOrg { org: String, detail: String },
}

/// Decodes a stored document.
pub(crate) fn decode<T: DeserializeOwned>(entry: &Entry) -> Result<T, RegistryError> {
    serde_json::from_slice(&entry.value).map_err(|e| RegistryError::Corrupt {
        key: entry.key.clone(),
        detail: e.to_string(),
    })
}

pub(crate) fn encode<T: Serialize>(doc: &T) -> Bytes {
    // Our own documents always serialize: plain structs of strings and numbers.
    Bytes::from(serde_json::to_vec(doc).unwrap_or_default())
}

/// Where the master key comes from.
#[derive(Clone, Debug)]
pub enum MasterSource {
    /// Given as text (`SWITCHBOARD_MASTER_KEY`).
    Text(String),
    /// A key file; made (0600) on first start if missing and the store is new.
    File(PathBuf),
}

pub struct Registry {
    store: Arc<dyn Store>,
    master: MasterKey,
    orgs: RwLock<HashMap<OrgId, Arc<OrgRecord>>>,
    /// Reloads read the store and apply what they read under this lock, so
    /// the view always ends with the state the last reload read.
    reloading: tokio::sync::Mutex<()>,
}

impl OrgDirectory for Registry {
    fn get(&self, org: &OrgId) -> Option<Arc<OrgRecord>> {
        self.orgs.read().get(org).cloned()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("orgs", &self.orgs.read().len())
            .finish()
    }
}

impl Registry {
    /// Opens the embedded registry in `dir` (created if missing).
    pub async fn open_dir(dir: &Path, master: &MasterSource) -> anyhow::Result<Arc<Registry>> {
        use anyhow::Context;
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
            // Sealed secrets and key hashes: for the server's user only.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("cannot make {} private", dir.display()))?;
            }
        }
        let store_path = dir.join(STORE_FILE);
        let new_store = !store_path.exists();
        let store = Embedded::open(&store_path)?;
        let master = match master {
            MasterSource::Text(text) => MasterKey::parse(text).context("SWITCHBOARD_MASTER_KEY")?,
            MasterSource::File(path) if path.exists() => MasterKey::load(path)?,
            MasterSource::File(path) if new_store => {
                let (key, text) = MasterKey::generate()?;
                crate::cli::write_private(path, &format!("{text}\n"))?;
                tracing::info!(path = %path.display(), "made a new master key; keep it with the data (or pass SWITCHBOARD_MASTER_KEY)");
                key
            }
            MasterSource::File(path) => anyhow::bail!(
                "the registry in {} was sealed with a master key, and {} is missing; \
                 restore it or set SWITCHBOARD_MASTER_KEY",
                dir.display(),
                path.display()
            ),
        };
        Ok(Self::open(Arc::new(store), master).await?)
    }

    /// Opens the registry of a cluster: the JetStream bucket every pod
    /// shares, sealed with the master key every pod holds (never made here:
    /// a pod with a key of its own would lock the others out).
    pub async fn open_cluster(
        broker: async_nats::Client,
        master: &MasterSource,
    ) -> anyhow::Result<Arc<Registry>> {
        use anyhow::Context;
        let master = match master {
            MasterSource::Text(text) => MasterKey::parse(text).context("SWITCHBOARD_MASTER_KEY")?,
            MasterSource::File(path) => MasterKey::load(path).with_context(|| {
                format!(
                    "cluster mode needs the master key every pod shares: {} (made by `switchboard nats init`) or SWITCHBOARD_MASTER_KEY",
                    path.display()
                )
            })?,
        };
        let store = jetstream::JetStreamKv::open(broker, jetstream::BUCKET)
            .await
            .context("cannot open the registry in NATS")?;
        Ok(Self::open(Arc::new(store), master).await?)
    }

    /// Opens the registry in `store`: checks the master key against the one
    /// the store was sealed with, migrates the layout, loads every org.
    pub async fn open(store: Arc<dyn Store>, master: MasterKey) -> Result<Arc<Registry>, RegistryError> {
        match store.get(key::MASTER_CHECK).await? {
            Some(check) => {
                let sealed = String::from_utf8_lossy(&check.value).into_owned();
                master.verify(&sealed)?;
            }
            None => {
                let check = master.check_value()?;
                // Another pod may seal the store first: then its check must match.
                if let Err(StoreError::Exists) = store.create(key::MASTER_CHECK, Bytes::from(check)).await
                    && let Some(check) = store.get(key::MASTER_CHECK).await?
                {
                    master.verify(&String::from_utf8_lossy(&check.value))?;
                }
            }
        }
        let schema = match store.get(key::SCHEMA).await? {
            Some(e) => decode::<u32>(&e)?,
            None => 0,
        };
        if schema > SCHEMA {
            return Err(RegistryError::TooNew(schema));
        }
        // Layout 0 (an empty store) to 1: nothing to move yet. Later layouts
        // migrate here, one step at a time, before the version is raised.
        if schema < SCHEMA {
            store.put(key::SCHEMA, encode(&SCHEMA)).await?;
        }
        let registry = Arc::new(Registry {
            store,
            master,
            orgs: RwLock::new(HashMap::new()),
            reloading: tokio::sync::Mutex::new(()),
        });
        registry.reload_all().await?;
        Ok(registry)
    }

    /// The store under the registry, for documents other modules own
    /// (the NATS accounts of cluster mode).
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn master(&self) -> &MasterKey {
        &self.master
    }

    /// Marks a single-use ticket used, on every pod that shares the store:
    /// true the first time, false if it was used before. The mark is kept
    /// until the ticket would have expired anyway ([`Registry::sweep`]).
    pub async fn use_ticket(&self, org: &OrgId, id: &str, expires_at: u64) -> Result<bool, RegistryError> {
        let expiry = Bytes::from(expires_at.to_string());
        match self.store.create(&key::used_ticket(org, id), expiry).await {
            Ok(_) => Ok(true),
            Err(StoreError::Exists) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Rebuilds every org's view: three listings (orgs, keys,
    /// revocations) whatever the number of orgs, so a pod with thousands of
    /// them starts in about the time it takes to read them once.
    async fn reload_all(&self) -> Result<(), RegistryError> {
        let _one_at_a_time = self.reloading.lock().await;
        let docs = self.store.list(key::ORGS).await?;
        let mut keys: HashMap<String, Vec<Entry>> = HashMap::new();
        for entry in self.store.list(key::API_KEYS).await? {
            if let Some(org) = key::org_of(&entry.key) {
                keys.entry(org.to_owned()).or_default().push(entry);
            }
        }
        let mut revoked: HashMap<String, Vec<Entry>> = HashMap::new();
        for entry in self.store.list(key::REVOKED).await? {
            if let Some(org) = key::org_of(&entry.key) {
                revoked.entry(org.to_owned()).or_default().push(entry);
            }
        }
        let mut orgs = HashMap::with_capacity(docs.len());
        for entry in &docs {
            let doc: OrgDoc = decode(entry)?;
            let id = doc.id.to_string();
            let record = self.build(
                &doc,
                keys.get(&id).map_or(&[][..], Vec::as_slice),
                revoked.get(&id).map_or(&[][..], Vec::as_slice),
            )?;
            orgs.insert(doc.id.clone(), Arc::new(record));
        }
        *self.orgs.write() = orgs;
        Ok(())
    }

    /// Rebuilds `org`'s view from the store (or drops it if the org is gone).
    pub async fn reload(&self, org: &OrgId) -> Result<(), RegistryError> {
        let _one_at_a_time = self.reloading.lock().await;
        let Some(entry) = self.store.get(&key::org(org)).await? else {
            self.orgs.write().remove(org);
            return Ok(());
        };
        let doc: OrgDoc = decode(&entry)?;
        let keys = self.store.list(&key::api_keys(org)).await?;
        let revoked = self.store.list(&key::revocations(org)).await?;
        let record = self.build(&doc, &keys, &revoked)?;
        self.orgs.write().insert(org.clone(), Arc::new(record));
        Ok(())
    }

    /// An org's view from its document, its keys' and its revocations' entries.
    fn build(&self, doc: &OrgDoc, keys: &[Entry], revoked: &[Entry]) -> Result<OrgRecord, RegistryError> {
        let keys = keys.iter().map(decode::<KeyDoc>).collect::<Result<Vec<_>, _>>()?;
        let mut record = self.record(doc, &keys)?;
        let now = crate::auth::now_secs();
        for entry in revoked {
            let revoked: RevocationDoc = decode(entry)?;
            if revoked.until > now {
                record.revoked.add(&revoked);
            }
        }
        Ok(record)
    }

    /// Forgets what no longer matters: revocations and used single-use
    /// tickets whose credentials have expired anyway. Returns how many.
    pub async fn sweep(&self) -> Result<usize, RegistryError> {
        let now = crate::auth::now_secs();
        let mut gone = 0;
        for entry in self.store.list("revoked").await? {
            if decode::<RevocationDoc>(&entry).is_ok_and(|r| r.until <= now) {
                gone += usize::from(self.store.delete(&entry.key).await?);
            }
        }
        for entry in self.store.list("used").await? {
            let expired = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .is_none_or(|until| until <= now);
            if expired {
                gone += usize::from(self.store.delete(&entry.key).await?);
            }
        }
        Ok(gone)
    }

    /// The connect path's view of an org: its secrets opened, its keys parsed.
    fn record(&self, doc: &OrgDoc, keys: &[KeyDoc]) -> Result<OrgRecord, RegistryError> {
        let invalid = |detail: String| RegistryError::InvalidOrg {
            org: doc.id.to_string(),
            detail,
        };
        let mut jwt_keys = Vec::new();
        for k in &doc.jwt_keys {
            jwt_keys.push(match k {
                StoredJwtKey::HS256 { kid, sealed } => JwtKeyConfig::HS256 {
                    secret: String::from_utf8(self.master.open(sealed)?)
                        .map_err(|_| invalid("an HS256 secret is not text".into()))?,
                    kid: kid.clone(),
                },
                StoredJwtKey::RS256 { kid, public_key_pem } => JwtKeyConfig::RS256 {
                    public_key_pem: public_key_pem.clone(),
                    kid: kid.clone(),
                },
                StoredJwtKey::EdDSA { kid, public_key_pem } => JwtKeyConfig::EdDSA {
                    public_key_pem: public_key_pem.clone(),
                    kid: kid.clone(),
                },
            });
        }
        let config = OrgConfig {
            id: doc.id.to_string(),
            allowed_origins: doc.allowed_origins.clone(),
            jwt_keys,
            api_keys: keys
                .iter()
                .map(|k| ApiKeyConfig {
                    id: k.id.clone(),
                    sha256: k.sha256.clone(),
                    scopes: k.scopes.clone(),
                })
                .collect(),
            rollup: doc.rollup.clone(),
        };
        let mut record = OrgRecord::from_config(&config).map_err(|e| invalid(e.join("; ")))?;
        for t in &doc.ticket_keys {
            let secret = self.master.open(&t.sealed)?;
            let key = crate::tickets::TicketKey::from_bytes(&secret).map_err(|e| invalid(e.to_string()))?;
            record.ticket_keys.push(crate::directory::TicketKeyEntry {
                id: t.id.clone(),
                key,
                retired: t.retired,
            });
        }
        record.limits = doc.limits.clone();
        record.name = doc.name.clone();
        record.jwks_url = doc.jwks_url.clone();
        record.jwt_audience = doc.jwt_audience.clone();
        record.jwt_issuer = doc.jwt_issuer.clone();
        Ok(record)
    }

    /// Follows the store's changes until `cancel`: what another pod (or this
    /// one) wrote about an org reaches the live view.
    pub async fn follow(self: Arc<Self>, cancel: CancellationToken) {
        let mut changes = self.store.watch();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            let change = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sweep.tick() => {
                    if let Err(e) = self.sweep().await {
                        tracing::warn!(error = %e, "registry sweep failed");
                    }
                    continue;
                }
                change = changes.recv() => change,
            };
            let result = match change {
                Ok(change) => match key::org_of(change.key()).and_then(|o| OrgId::new(o).ok()) {
                    Some(org) => self.reload(&org).await,
                    None => Ok(()),
                },
                // Missed some: read everything again.
                Err(RecvError::Lagged(_)) => self.reload_all().await,
                Err(RecvError::Closed) => return,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "registry change not applied");
            }
        }
    }
}
