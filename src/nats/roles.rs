//! Operator roles and sessions across pods (cluster mode). A role is a
//! lease in the `roles` key-value bucket of the broker's account: claimed
//! with create-if-absent (of concurrent claims on any pods exactly one
//! wins), renewed by its pod with compare-and-swap every third of the
//! lease, and gone once its pod stops renewing it (the bucket's `max_age`),
//! so a crashed pod never holds a role for longer than a lease. The pod
//! hosting a session answers requests on `op.<sid>` in the org's account;
//! a `send` on another pod resolves the role there and hands the frame over
//! with one request. The host also keeps the session's record in the
//! `sessions` bucket, so an operator that reconnects to another pod takes
//! its session there: the leases move by compare-and-swap and the old host
//! (if alive) lets the session go ([`host`]: what pods ask each other).
//! Frames for an away operator wait in the org's parking stream
//! ([`super::parking`]) for whichever pod it comes back to.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::{self, kv};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchboard_actors::backplane::BoxFuture;
use switchboard_actors::{Ask, Forwarded, LeaseError, RoleLeases, Services, SessionInfo, SessionRecord};
use switchboard_proto::{ChannelName, OrgId, PreparedFrame, RoleName, Sid, Target, TurnId, subjects};
use tokio_util::sync::CancellationToken;

use super::accounts::Accounts;
use super::parking::Parking;
use records::{Stored, bucket};

mod host;
mod records;

/// The roles bucket in the broker account.
pub const BUCKET: &str = "roles";
/// The session records bucket in the broker account.
pub const RECORDS: &str = "sessions";
/// How long a session record outlives its pod's last renewal: about the
/// time an operator has to come back (operators.session_expiry_secs).
const RECORD_TTL: Duration = Duration::from_secs(120);
/// Asks the pod hosting a session to let it go (another pod adopts it).
const MOVE: &str = "Sb-Move";
/// Asks the pod hosting a session for its state (`info`) or to end it (`end`).
const ASK: &str = "Sb-Ask";
/// How long a pod waits for another to take a frame.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a session's inbox tries to listen again after its org
/// connection was replaced.
const RELISTEN_PAUSE: Duration = Duration::from_millis(200);

/// A role's lease: the session holding it and the pod hosting that session.
#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    sid: Sid,
    pod: String,
}

/// What this pod claimed for one of its sessions.
struct Held {
    org: OrgId,
    /// Each role's key and the revision this pod last wrote.
    roles: Vec<(String, u64)>,
    /// The session's record as stored, and its revision.
    record: (bytes::Bytes, u64),
    /// Answers requests for the session from other pods.
    inbox: tokio::task::AbortHandle,
}

pub struct ClusterRoles {
    /// Itself, for the tasks that answer its sessions' requests.
    me: Weak<ClusterRoles>,
    /// This process, as leases name it.
    pod: String,
    lease: Duration,
    kv: kv::Store,
    /// Session records by sid, so another pod can adopt a session.
    records: kv::Store,
    pool: Arc<OnceLock<Arc<Accounts>>>,
    services: OnceLock<Weak<Services>>,
    held: Mutex<HashMap<Sid, Held>>,
    /// Frames for sessions whose operator is away.
    parking: Arc<Parking>,
    /// This pod is shutting down: its sessions end here but live on for
    /// other pods to adopt.
    leaving: std::sync::atomic::AtomicBool,
}

fn key(org: &OrgId, role: &RoleName) -> String {
    format!("{org}.{role}")
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> LeaseError {
    LeaseError::Unavailable(format!("{what}: {e}"))
}

impl ClusterRoles {
    /// Opens the roles bucket (made if missing) over the broker's connection.
    pub async fn open(
        broker: async_nats::Client,
        lease: Duration,
        pool: Arc<OnceLock<Arc<Accounts>>>,
    ) -> anyhow::Result<Arc<ClusterRoles>> {
        let js = jetstream::new(broker);
        let kv = bucket(&js, BUCKET, lease).await?;
        let records = bucket(&js, RECORDS, RECORD_TTL.max(lease)).await?;
        Ok(Arc::new_cyclic(|me| ClusterRoles {
            me: me.clone(),
            records,
            pod: uuid::Uuid::new_v4().simple().to_string(),
            lease,
            kv,
            services: OnceLock::new(),
            held: Mutex::new(HashMap::new()),
            parking: Arc::new(Parking::new(Arc::clone(&pool), RECORD_TTL.max(lease))),
            leaving: std::sync::atomic::AtomicBool::new(false),
            pool,
        }))
    }

    /// The tree's services, once it stands (frames from other pods reach
    /// sessions through them).
    pub fn serve(&self, services: &Arc<Services>) {
        let _ = self.services.set(Arc::downgrade(services));
    }

    fn lease_of(&self, sid: &Sid) -> bytes::Bytes {
        let lease = Lease {
            sid: sid.clone(),
            pod: self.pod.clone(),
        };
        serde_json::to_vec(&lease).unwrap_or_default().into()
    }

    async fn client(&self, org: &OrgId) -> Result<async_nats::Client, String> {
        let accounts = self.pool.get().ok_or("the account pool is not up yet")?;
        accounts.open(org).await.map_err(|e| e.to_string())
    }

    async fn claim_now(&self, record: &SessionRecord) -> Result<(), LeaseError> {
        let (org, sid, roles) = (&record.org, &record.sid, &record.roles);
        let mut claimed = Vec::new();
        let mut taken = Vec::new();
        let mut failed = None;
        for role in roles {
            let k = key(org, role);
            match self.kv.create(&k, self.lease_of(sid)).await {
                Ok(revision) => claimed.push((k, revision)),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => taken.push(role.clone()),
                Err(e) => {
                    failed = Some(unavailable("role lease", e));
                    break;
                }
            }
        }
        let hosted = match (&failed, taken.is_empty()) {
            (None, true) => match self.host(record).await {
                Ok(hosted) => Some(hosted),
                Err(e) => {
                    failed = Some(e);
                    None
                }
            },
            _ => None,
        };
        let Some((stored, inbox)) = hosted else {
            // All or nothing: what this claim took goes back.
            for (k, revision) in claimed {
                let _ = self.kv.delete_expect_revision(&k, Some(revision)).await;
            }
            return Err(failed.unwrap_or(LeaseError::Held(taken)));
        };
        self.keep(record, claimed, stored, inbox);
        Ok(())
    }

    /// Stores the session's record (this pod hosts it) and answers its
    /// requests from other pods.
    async fn host(
        &self,
        record: &SessionRecord,
    ) -> Result<((bytes::Bytes, u64), tokio::task::AbortHandle), LeaseError> {
        let stored = self.store_record(record).await?;
        let inbox = self
            .inbox(&record.org, &record.sid)
            .await
            .map_err(LeaseError::Unavailable)?;
        Ok((stored, inbox))
    }

    /// Writes the session's record, naming this pod its host.
    async fn store_record(&self, record: &SessionRecord) -> Result<(bytes::Bytes, u64), LeaseError> {
        let value: bytes::Bytes = serde_json::to_vec(&Stored::of(record, &self.pod))
            .map_err(|e| unavailable("session record", e))?
            .into();
        let revision = self
            .records
            .put(record.sid.as_str(), value.clone())
            .await
            .map_err(|e| unavailable("session record", e))?;
        Ok((value, revision))
    }

    fn keep(
        &self,
        record: &SessionRecord,
        roles: Vec<(String, u64)>,
        stored: (bytes::Bytes, u64),
        inbox: tokio::task::AbortHandle,
    ) {
        let held = Held {
            org: record.org.clone(),
            roles,
            record: stored,
            inbox,
        };
        if let Some(old) = self.held.lock().insert(record.sid.clone(), held) {
            old.inbox.abort();
        }
    }

    async fn adopt_now(&self, record: &SessionRecord) -> Result<Vec<(TurnId, ChannelName)>, LeaseError> {
        let (org, sid) = (&record.org, &record.sid);
        let mut turns = Vec::new();
        let mut moved = Vec::new();
        let mut taken = Vec::new();
        for role in &record.roles {
            let k = key(org, role);
            let current = self
                .kv
                .entry(k.clone())
                .await
                .map_err(|e| unavailable("role lease", e))?;
            let held_by = current
                .as_ref()
                .filter(|e| e.operation == kv::Operation::Put)
                .and_then(|e| serde_json::from_slice::<Lease>(&e.value).ok());
            let written = match (current, held_by) {
                (Some(e), Some(lease)) if lease.sid == *sid => {
                    self.kv.update(&k, self.lease_of(sid), e.revision).await.ok()
                }
                (_, Some(_)) => None,
                (_, None) => self.kv.create(&k, self.lease_of(sid)).await.ok(),
            };
            match written {
                Some(revision) => moved.push((k, revision)),
                None => taken.push(role.clone()),
            }
        }
        if !taken.is_empty() {
            return Err(LeaseError::Held(taken));
        }
        // The record names this pod first, so the old host, letting the
        // session go, sees it moved (and leaves what it parked for here).
        let stored = self.store_record(record).await?;
        // The pod that hosted it lets it go (a dead one does not answer);
        // only then does this pod answer for it, so no frame reaches both.
        if let Ok(client) = self.client(org).await {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(MOVE, "1");
            let asked = client.request_with_headers(subjects::session(sid), headers, "".into());
            if let Ok(Ok(answer)) = tokio::time::timeout(FORWARD_TIMEOUT, asked).await {
                turns = serde_json::from_slice(&answer.payload).unwrap_or_default();
            }
        }
        let inbox = self.inbox(org, sid).await.map_err(LeaseError::Unavailable)?;
        self.keep(record, moved, stored, inbox);
        Ok(turns)
    }

    async fn lookup_now(&self, sid: &Sid) -> Option<SessionRecord> {
        let value = self.records.get(sid.as_str()).await.ok().flatten()?;
        serde_json::from_slice::<Stored>(&value).ok()?.record(sid)
    }

    /// This pod is going away (a rollout, a scale-down): from now on a
    /// session ending here stops being answered for here, and nothing
    /// more. Its record and parked frames stay and its leases lapse unless
    /// another pod adopts it first, so its operator, reconnecting to any
    /// other pod, carries on.
    pub fn leave(&self) {
        self.leaving.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Renews this pod's leases every third of the lease, until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.lease / 3);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let due: Vec<(Sid, String, u64)> = self
                .held
                .lock()
                .iter()
                .flat_map(|(sid, h)| h.roles.iter().map(move |(k, r)| (sid.clone(), k.clone(), *r)))
                .collect();
            for (sid, k, revision) in due {
                let renewed = self.kv.update(&k, self.lease_of(&sid), revision).await;
                let mut held = self.held.lock();
                let Some(h) = held.get_mut(&sid) else { continue };
                match renewed {
                    Ok(next) => {
                        if let Some(slot) = h.roles.iter_mut().find(|(key, _)| *key == k) {
                            slot.1 = next;
                        }
                    }
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                        // It lapsed (this pod was cut off for a lease) and
                        // another session took it: that session has it now.
                        tracing::warn!(sid = %sid, key = %k, "a role lease was lost to another session");
                        h.roles.retain(|(key, _)| *key != k);
                    }
                    Err(e) => tracing::debug!(key = %k, error = %e, "role lease not renewed; trying again"),
                }
            }
            self.renew_records().await;
        }
    }

    /// Renews the records of the sessions this pod hosts (a record another
    /// pod rewrote means it adopted the session: this pod leaves it be).
    async fn renew_records(&self) {
        let due: Vec<(Sid, bytes::Bytes, u64)> = self
            .held
            .lock()
            .iter()
            .map(|(sid, h)| (sid.clone(), h.record.0.clone(), h.record.1))
            .collect();
        for (sid, value, revision) in due {
            let renewed = self.records.update(sid.as_str(), value, revision).await;
            if let (Ok(next), Some(h)) = (renewed, self.held.lock().get_mut(&sid)) {
                h.record.1 = next;
            }
        }
    }
}

/// Deletes the lease `k` if it names the session `sid` (hosted by `pod`,
/// if given); true if it is gone or someone else's.
async fn delete_lease_of(kv: &kv::Store, k: &str, sid: &Sid, pod: Option<&str>) -> bool {
    let current = kv.entry(k.to_owned()).await.ok().flatten();
    let ours = current.as_ref().is_some_and(|e| {
        serde_json::from_slice::<Lease>(&e.value)
            .is_ok_and(|lease| lease.sid == *sid && pod.is_none_or(|p| lease.pod == p))
    });
    match current {
        Some(e) if ours => kv.delete_expect_revision(k, Some(e.revision)).await.is_ok(),
        _ => true,
    }
}

impl RoleLeases for ClusterRoles {
    fn claim<'a>(&'a self, record: &'a SessionRecord) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(self.claim_now(record))
    }

    fn adopt<'a>(
        &'a self,
        record: &'a SessionRecord,
    ) -> BoxFuture<'a, Result<Vec<(TurnId, ChannelName)>, LeaseError>> {
        Box::pin(self.adopt_now(record))
    }

    fn lookup<'a>(&'a self, sid: &'a Sid) -> BoxFuture<'a, Option<SessionRecord>> {
        Box::pin(self.lookup_now(sid))
    }

    fn release(&self, _org: &OrgId, sid: &Sid) {
        let Some(held) = self.held.lock().remove(sid) else {
            return;
        };
        held.inbox.abort();
        if self.leaving.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let (kv, records, sid, pod, parking) = (
            self.kv.clone(),
            self.records.clone(),
            sid.clone(),
            self.pod.clone(),
            Arc::clone(&self.parking),
        );
        tokio::spawn(async move {
            // The record, unless another pod adopted the session meanwhile.
            let (_, revision) = held.record;
            let mut ended = records
                .delete_expect_revision(sid.as_str(), Some(revision))
                .await
                .is_ok();
            if !ended {
                let current = records.entry(sid.to_string()).await.ok().flatten();
                if let Some(e) = current
                    && serde_json::from_slice::<Stored>(&e.value).is_ok_and(|s| s.pod == pod)
                {
                    ended = records
                        .delete_expect_revision(sid.as_str(), Some(e.revision))
                        .await
                        .is_ok();
                }
            }
            // Ended here for good (not moved to another pod): nobody will
            // take what was parked for it.
            if ended {
                parking.discard(&held.org, &sid).await;
            }
            for (k, revision) in held.roles {
                if kv.delete_expect_revision(&k, Some(revision)).await.is_ok() {
                    continue;
                }
                // A renewal may have moved the revision meanwhile: delete
                // what is there if it is still this session's.
                if !delete_lease_of(&kv, &k, &sid, Some(&pod)).await {
                    tracing::debug!(org = %held.org, key = %k, "role lease not deleted; it lapses on its own");
                }
            }
        });
    }

    fn ask<'a>(
        &'a self,
        record: &'a SessionRecord,
        ask: Ask,
    ) -> BoxFuture<'a, Result<SessionInfo, LeaseError>> {
        Box::pin(self.ask_now(record, ask))
    }

    fn park<'a>(&'a self, org: &'a OrgId, sid: &'a Sid, frames: &'a [PreparedFrame]) -> BoxFuture<'a, usize> {
        Box::pin(self.parking.park(org, sid, frames))
    }

    fn unpark<'a>(
        &'a self,
        org: &'a OrgId,
        sid: &'a Sid,
    ) -> BoxFuture<'a, Result<Vec<PreparedFrame>, LeaseError>> {
        Box::pin(async move {
            self.parking
                .unpark(org, sid)
                .await
                .map_err(|e| unavailable("parked frames", e))
        })
    }

    fn forward<'a>(
        &'a self,
        org: &'a OrgId,
        to: &'a Target,
        frame: PreparedFrame,
    ) -> BoxFuture<'a, Forwarded> {
        Box::pin(self.forward_now(org, to, frame))
    }
}
