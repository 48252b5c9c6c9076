//! The per-org account pool of cluster mode: one NATS account per org, so
//! NATS itself keeps orgs apart. [`Accounts::open`] is the one provisioning
//! path: on an org's first use it makes the account (or adopts the one
//! another pod made: the registry's create-if-absent decides), pushes it to
//! nats-server and opens this pod's connection as a user the account's
//! signing key mints. Concurrent first uses on a pod wait for one another;
//! account updates go through the registry with compare-and-swap and are
//! pushed until nats-server holds the newest (never an older `iat`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use nkeys::KeyPair;
use parking_lot::Mutex;
use switchboard_actors::Services;
use switchboard_actors::telemetry;
use switchboard_proto::{ChannelName, OrgId};
use tokio_util::sync::CancellationToken;

use super::backplane::NatsBackplane;
use super::backplane::OrgLink;
use super::cluster::Cluster;
use super::jwt;
use crate::auth::now_secs;
use crate::registry::model::{AccountDoc, key};
use crate::registry::store::{Change, Revision, StoreError};
use crate::registry::{Registry, RegistryError, decode, encode};
use conn::OrgConn;

mod conn;

/// How long a push to nats-server or a connection attempt may take.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);
/// A pushed account that another pod replaced meanwhile is pushed again, at most this often.
const MAX_REPUSHES: usize = 10;
/// An org connection that cannot get back to NATS gives up after this many
/// attempts (a revoked account would retry forever: NATS.md, trap 9); the
/// pool opens a fresh one on the next use.
const ORG_RECONNECTS: usize = 30;
/// Broken-connection notices waiting for the pool's supervisor.
const TROUBLE_NOTICES: usize = 1024;
/// A broken org connection that could not be opened again is retried after this.
const REOPEN_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("nats-server refused the account of org {org}: {detail}")]
    Refused { org: OrgId, detail: String },
}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> Self {
        AccountError::Registry(e.into())
    }
}

fn nats_error(what: &str, e: impl std::fmt::Display) -> AccountError {
    AccountError::Nats(format!("{what}: {e}"))
}

#[derive(Default)]
struct Slot {
    /// Held while the connection is opened: concurrent first uses wait here.
    conn: tokio::sync::Mutex<Option<OrgConn>>,
    /// Milliseconds since the pool started, at the last use.
    last_used: AtomicU64,
}

pub struct Accounts {
    cluster: Arc<Cluster>,
    registry: Arc<Registry>,
    /// Where publisher events go.
    backplane: Arc<NatsBackplane>,
    /// This pod's connections, for presence requests from other pods.
    services: Arc<Services>,
    /// Largest publisher event taken (the client frame limit).
    max_event_bytes: usize,
    slots: Mutex<HashMap<OrgId, Arc<Slot>>>,
    /// Orgs with NATS publishers: open on every pod, idle or not, so their
    /// events are taken in as they come (`super::ingest`).
    publishing: Mutex<HashSet<OrgId>>,
    started: tokio::time::Instant,
    /// Orgs whose connection broke, for [`Accounts::run`] to open again.
    troubled: tokio::sync::mpsc::Sender<OrgId>,
    troubles: Mutex<Option<tokio::sync::mpsc::Receiver<OrgId>>>,
}

/// The org a publisher's registry key (`publishers.<org>.<name>`) names.
fn publishers_of(k: &str) -> Option<OrgId> {
    let rest = k.strip_prefix(key::PUBLISHERS)?.strip_prefix('.')?;
    OrgId::new(rest.split('.').next()?).ok()
}

impl Accounts {
    pub fn new(
        cluster: Arc<Cluster>,
        registry: Arc<Registry>,
        backplane: Arc<NatsBackplane>,
        services: Arc<Services>,
        max_event_bytes: usize,
    ) -> Arc<Accounts> {
        // A notice dropped when this is full loses nothing: the broken
        // connection is opened again on its org's next use anyway.
        let (troubled, troubles) = tokio::sync::mpsc::channel(TROUBLE_NOTICES);
        Arc::new(Accounts {
            troubled,
            troubles: Mutex::new(Some(troubles)),
            cluster,
            registry,
            backplane,
            services,
            max_event_bytes,
            slots: Mutex::new(HashMap::new()),
            publishing: Mutex::new(HashSet::new()),
            started: tokio::time::Instant::now(),
        })
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether the pod's broker connection (the registry's) is up.
    pub fn nats_connected(&self) -> bool {
        self.cluster.broker.connection_state() == async_nats::connection::State::Connected
    }

    /// Orgs this pod holds a connection for (open, or being opened).
    pub fn open_orgs(&self) -> usize {
        self.slots.lock().len()
    }

    /// This pod's connection into `org`'s account, made (account included)
    /// on first use.
    pub async fn open(&self, org: &OrgId) -> Result<async_nats::Client, AccountError> {
        self.open_conn(org).await.map(|link| link.client)
    }

    /// As [`Accounts::open`], with the connection's id: another id means
    /// the connection was replaced (what was made over the old one is gone).
    pub async fn open_conn(&self, org: &OrgId) -> Result<OrgLink, AccountError> {
        let slot = self.slots.lock().entry(org.clone()).or_default().clone();
        slot.last_used.store(self.now_ms(), Ordering::Relaxed);
        let mut conn = slot.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            if !c.broken.load(Ordering::Acquire) {
                return Ok(c.link());
            }
            *conn = None;
        }
        let started = tokio::time::Instant::now();
        let (doc, revision, made) = self.record(org).await?;
        let doc = if made {
            self.push_newest(org, doc, revision).await?
        } else {
            doc
        };
        let opened = match self.connect(org, &doc).await {
            Ok(c) => c,
            // nats-server may not know the account (a fresh server, a lost
            // resolver directory): push what the registry holds and retry.
            Err(first) if !made => {
                tracing::info!(org = %org, error = %first, "org account not on the NATS server; pushing it again");
                let doc = self.push_newest(org, doc, revision).await?;
                self.connect(org, &doc).await?
            }
            Err(e) => return Err(e),
        };
        let opened_now = opened.link();
        gauge!(telemetry::NATS_ORG_CONNECTIONS).increment(1.0);
        histogram!(telemetry::NATS_ORG_OPEN_SECONDS).record(started.elapsed().as_secs_f64());
        *conn = Some(opened);
        Ok(opened_now)
    }

    /// The org's account record, made if it has none (or a retired one).
    /// True if this call made it.
    pub(crate) async fn record(&self, org: &OrgId) -> Result<(AccountDoc, Revision, bool), AccountError> {
        let store = self.registry.store();
        let key = key::account(org);
        loop {
            let current = store.get(&key).await?;
            if let Some(e) = &current {
                let doc: AccountDoc = decode(e)?;
                if !doc.retired {
                    return Ok((doc, e.revision, false));
                }
            }
            let doc = self.new_account(org)?;
            let written = match &current {
                None => store.create(&key, encode(&doc)).await,
                Some(e) => store.update(&key, encode(&doc), e.revision).await,
            };
            match written {
                Ok(revision) => {
                    counter!(telemetry::NATS_ACCOUNTS_MADE).increment(1);
                    tracing::info!(org = %org, account = %doc.account, "made the org's NATS account");
                    return Ok((doc, revision, true));
                }
                // Another pod came first: adopt its account.
                Err(StoreError::Exists | StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn new_account(&self, org: &OrgId) -> Result<AccountDoc, AccountError> {
        let account = KeyPair::new_account();
        let signing = KeyPair::new_account();
        let seed = signing
            .seed()
            .map_err(|e| nats_error("a new key has no seed", e))?;
        let mut doc = AccountDoc {
            account: account.public_key(),
            signing_key: signing.public_key(),
            signing_seed: self
                .registry
                .master()
                .seal(seed.as_bytes())
                .map_err(RegistryError::from)?,
            jwt: String::new(),
            iat: 0,
            revocations: Default::default(),
            retired: false,
        };
        self.mint(org, &mut doc)?;
        Ok(doc)
    }

    /// Signs `doc`'s claims into `doc.jwt`, never with an older `iat` than
    /// the JWT it replaces, and checks the result against the operator.
    fn mint(&self, org: &OrgId, doc: &mut AccountDoc) -> Result<(), AccountError> {
        let mut limits = jwt::AccountLimits::unlimited(true);
        let signing_keys = if doc.retired {
            // No signing key: every user it issued is cut off; no connection at all.
            limits.conn = 0;
            limits.leaf = 0;
            vec![]
        } else {
            vec![doc.signing_key.clone()]
        };
        let claims = jwt::Account {
            limits,
            signing_keys,
            default_permissions: jwt::Permissions::default(),
            revocations: doc.revocations.clone(),
            kind: "account".into(),
            version: 2,
        };
        doc.iat = now_secs().max(doc.iat);
        let signing = &self.cluster.operator.signing;
        doc.jwt = jwt::encode_at(signing, &doc.account, org.as_str(), claims, doc.iat)
            .map_err(|e| nats_error("cannot sign the account", e))?;
        // nats-server would take claims signed by an unknown key and fail later (NATS.md, trap 1).
        jwt::verify::<jwt::Account>(&doc.jwt, &signing.public_key())
            .map_err(|e| nats_error("the account JWT does not verify", e))?;
        Ok(())
    }

    /// Pushes `doc` to nats-server, then again whatever replaced it in the
    /// registry meanwhile, so the last push always carries the newest claims.
    async fn push_newest(
        &self,
        org: &OrgId,
        mut doc: AccountDoc,
        mut revision: Revision,
    ) -> Result<AccountDoc, AccountError> {
        let key = key::account(org);
        for _ in 0..MAX_REPUSHES {
            self.push(org, &doc.jwt).await?;
            match self.registry.store().get(&key).await? {
                Some(e) if e.revision != revision => {
                    doc = decode(&e)?;
                    revision = e.revision;
                }
                _ => return Ok(doc),
            }
        }
        Err(nats_error(
            "pushing the account",
            format!("org {org}'s account kept changing"),
        ))
    }

    async fn push(&self, org: &OrgId, account_jwt: &str) -> Result<(), AccountError> {
        let reply = tokio::time::timeout(
            NATS_TIMEOUT,
            self.cluster
                .sys
                .request("$SYS.REQ.CLAIMS.UPDATE", account_jwt.to_owned().into()),
        )
        .await
        .map_err(|_| nats_error("pushing the account", "no reply"))?
        .map_err(|e| nats_error("pushing the account", e))?;
        let body: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
        if body["data"]["code"] == 200 {
            Ok(())
        } else {
            Err(AccountError::Refused {
                org: org.clone(),
                detail: String::from_utf8_lossy(&reply.payload).into_owned(),
            })
        }
    }

    /// The account's signing key, unsealed.
    pub(crate) fn signing_key(&self, doc: &AccountDoc) -> Result<KeyPair, AccountError> {
        let seed = self
            .registry
            .master()
            .open(&doc.signing_seed)
            .map_err(RegistryError::from)?;
        let seed = String::from_utf8(seed).map_err(|e| nats_error("the signing seed", e))?;
        KeyPair::from_seed(&seed).map_err(|e| nats_error("the signing seed", e))
    }

    /// Who is subscribed to `channel` of `org` on any pod (connections per
    /// subject), and how many pods answered.
    pub async fn presence(
        &self,
        org: &OrgId,
        channel: &ChannelName,
    ) -> Result<(std::collections::BTreeMap<String, usize>, usize), AccountError> {
        let client = self.open(org).await?;
        super::presence::gather(&client, channel)
            .await
            .map_err(|e| nats_error("presence", e))
    }

    /// The operator sessions of `org` on every pod.
    pub async fn sessions(&self, org: &OrgId) -> Result<Vec<super::presence::Hosted>, AccountError> {
        let client = self.open(org).await?;
        super::presence::sessions(&client)
            .await
            .map_err(|e| nats_error("operator sessions", e))
    }

    /// Changes the org's account (a revocation, retirement) in the registry
    /// with compare-and-swap, and pushes the result.
    pub(crate) async fn update(
        &self,
        org: &OrgId,
        mut change: impl FnMut(&mut AccountDoc),
    ) -> Result<AccountDoc, AccountError> {
        let store = self.registry.store();
        let key = key::account(org);
        loop {
            let (mut doc, revision, _) = self.record(org).await?;
            change(&mut doc);
            self.mint(org, &mut doc)?;
            match store.update(&key, encode(&doc), revision).await {
                Ok(revision) => return self.push_newest(org, doc, revision).await,
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Retires the org's account: nats-server cuts every connection in it
    /// (every pod's, every publisher's) and takes no new one. A later org
    /// of the same id gets a new account.
    pub async fn retire(&self, org: &OrgId) -> Result<(), AccountError> {
        let store = self.registry.store();
        let key = key::account(org);
        let Some(entry) = store.get(&key).await? else {
            return Ok(());
        };
        let mut doc: AccountDoc = decode(&entry)?;
        if !doc.retired {
            doc.retired = true;
            self.mint(org, &mut doc)?;
            match store.update(&key, encode(&doc), entry.revision).await {
                Ok(revision) => {
                    self.push_newest(org, doc, revision).await?;
                }
                // Changed meanwhile: retire what is there now.
                Err(StoreError::Conflict) => return Box::pin(self.retire(org)).await,
                Err(e) => return Err(e.into()),
            }
        }
        store.delete(&key).await?;
        self.slots.lock().remove(org);
        tracing::info!(org = %org, "retired the org's NATS account");
        Ok(())
    }

    /// Closes idle orgs' connections and drops those whose account went
    /// away on another pod, until `cancel`. `active` says whether an org
    /// has clients on this pod.
    pub async fn run(
        self: Arc<Self>,
        idle: Duration,
        active: impl Fn(&OrgId) -> bool + Send + 'static,
        cancel: CancellationToken,
    ) {
        let mut changes = self.registry.store().watch();
        let Some(mut troubles) = self.troubles.lock().take() else {
            tracing::error!("the account pool runs once");
            return;
        };
        let mut sweep =
            tokio::time::interval((idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(30)));
        self.clone().keep_publishing_open(None);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = sweep.tick() => self.close_idle(idle, &active),
                Some(org) = troubles.recv() => {
                    // Open it again (pushing the account if NATS lost it) while
                    // the org is in use here; an unused one waits for its next use.
                    if active(&org) {
                        let pool = self.clone();
                        tokio::spawn(async move {
                            if let Err(e) = pool.open(&org).await {
                                tracing::warn!(org = %org, error = %e, "cannot open the org's NATS connection again; retrying");
                                tokio::time::sleep(REOPEN_PAUSE).await;
                                let _ = pool.troubled.try_send(org);
                            }
                        });
                    }
                }
                change = changes.recv() => {
                    if let Ok(change) = &change
                        && let Some(org) = publishers_of(change.key())
                    {
                        self.clone().keep_publishing_open(Some(org));
                    }
                    if let Ok(Change::Delete { key, .. }) = change
                        && let Some(org) = key
                            .strip_prefix(key::ACCOUNTS)
                            .and_then(|rest| rest.strip_prefix('.'))
                            .and_then(|o| OrgId::new(o).ok())
                    {
                        self.slots.lock().remove(&org);
                    }
                }
            }
        }
        self.slots.lock().clear();
    }

    /// Finds which orgs have publishers (`org`'s only, when given) and
    /// opens them here; forgets an org whose last publisher went.
    fn keep_publishing_open(self: Arc<Self>, org: Option<OrgId>) {
        tokio::spawn(async move {
            let prefix = org
                .as_ref()
                .map_or_else(|| key::PUBLISHERS.to_owned(), key::publishers);
            let entries = match self.registry.store().list(&prefix).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list NATS publishers; their orgs open on first use");
                    return;
                }
            };
            let found: HashSet<OrgId> = entries.iter().filter_map(|e| publishers_of(&e.key)).collect();
            if let Some(org) = &org
                && !found.contains(org)
            {
                self.publishing.lock().remove(org);
            }
            for org in found {
                if self.publishing.lock().insert(org.clone())
                    && let Err(e) = self.open(&org).await
                {
                    tracing::warn!(org = %org, error = %e, "cannot open an org with publishers; it opens on its next use");
                }
            }
        });
    }

    fn close_idle(&self, idle: Duration, active: &impl Fn(&OrgId) -> bool) {
        let now = self.now_ms();
        let idle_ms = idle.as_millis() as u64;
        let mut closed = Vec::new();
        let publishing = self.publishing.lock().clone();
        self.slots.lock().retain(|org, slot| {
            let fresh = now.saturating_sub(slot.last_used.load(Ordering::Relaxed)) < idle_ms;
            // A slot being opened right now is kept: its opener holds the lock.
            let keep = fresh || active(org) || publishing.contains(org) || slot.conn.try_lock().is_err();
            if !keep {
                closed.push(org.clone());
            }
            keep
        });
        // The backplane's handles share the connection: it closes once they go too.
        for org in closed {
            self.backplane.forget(&org);
        }
    }
}
