//! Operator roles and sessions across pods (cluster mode). A role is a
//! lease in the `roles` key-value bucket of the broker's account: claimed
//! with create-if-absent (of concurrent claims on any pods exactly one
//! wins), renewed by its pod with compare-and-swap every third of the
//! lease, and gone once its pod stops renewing it (the bucket's `max_age`),
//! so a crashed pod never holds a role for longer than a lease. The pod
//! hosting a session answers requests on `op.<sid>` in the org's account;
//! a `send` on another pod resolves the role there and hands the frame over
//! with one request.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::{self, kv, stream};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchboard_actors::backplane::BoxFuture;
use switchboard_actors::{Forwarded, LeaseError, RoleLeases, Services};
use switchboard_proto::{OrgId, PreparedFrame, RoleName, Sid, Target, subjects, ws};
use tokio_util::sync::CancellationToken;

use super::accounts::Accounts;

/// The roles bucket in the broker account.
pub const BUCKET: &str = "roles";
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
    pool: Arc<OnceLock<Arc<Accounts>>>,
    services: OnceLock<Weak<Services>>,
    held: Mutex<HashMap<Sid, Held>>,
}

fn key(org: &OrgId, role: &RoleName) -> String {
    format!("{org}.{role}")
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> LeaseError {
    LeaseError::Unavailable(format!("{what}: {e}"))
}

/// The answers a hosting pod gives a forwarded frame.
fn answer(outcome: Forwarded) -> &'static str {
    match outcome {
        Forwarded::Delivered => "delivered",
        Forwarded::Offline => "offline",
        Forwarded::NotFound => "not_found",
        Forwarded::Unavailable => "unavailable",
    }
}

fn outcome(answer: &[u8]) -> Forwarded {
    match answer {
        b"delivered" => Forwarded::Delivered,
        b"offline" => Forwarded::Offline,
        b"not_found" => Forwarded::NotFound,
        _ => Forwarded::Unavailable,
    }
}

impl ClusterRoles {
    /// Opens the roles bucket (made if missing) over the broker's connection.
    pub async fn open(
        broker: async_nats::Client,
        lease: Duration,
        pool: Arc<OnceLock<Arc<Accounts>>>,
    ) -> anyhow::Result<Arc<ClusterRoles>> {
        let js = jetstream::new(broker);
        // Made directly: async-nats 0.51 cannot parse 2.9's answer to
        // `create_key_value` (as for the registry's bucket).
        js.get_or_create_stream(stream::Config {
            name: format!("KV_{BUCKET}"),
            subjects: vec![format!("$KV.{BUCKET}.>")],
            max_messages_per_subject: 1,
            max_age: lease,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot make the roles bucket: {e}"))?;
        let kv = js
            .get_key_value(BUCKET)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the roles bucket: {e}"))?;
        Ok(Arc::new_cyclic(|me| ClusterRoles {
            me: me.clone(),
            pod: uuid::Uuid::new_v4().simple().to_string(),
            lease,
            kv,
            pool,
            services: OnceLock::new(),
            held: Mutex::new(HashMap::new()),
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

    async fn claim_now(&self, org: &OrgId, sid: &Sid, roles: &[RoleName]) -> Result<(), LeaseError> {
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
        let inbox = match (&failed, taken.is_empty()) {
            (None, true) => match self.inbox(org, sid).await {
                Ok(inbox) => Some(inbox),
                Err(e) => {
                    failed = Some(LeaseError::Unavailable(e));
                    None
                }
            },
            _ => None,
        };
        let Some(inbox) = inbox else {
            // All or nothing: what this claim took goes back.
            for (k, revision) in claimed {
                let _ = self.kv.delete_expect_revision(&k, Some(revision)).await;
            }
            return Err(failed.unwrap_or(LeaseError::Held(taken)));
        };
        let held = Held {
            org: org.clone(),
            roles: claimed,
            inbox,
        };
        if let Some(old) = self.held.lock().insert(sid.clone(), held) {
            old.inbox.abort();
        }
        Ok(())
    }

    /// Subscribes `op.<sid>` in the org's account.
    async fn listen(
        &self,
        org: &OrgId,
        sid: &Sid,
    ) -> Result<(async_nats::Client, async_nats::Subscriber), String> {
        let client = self.client(org).await?;
        let requests = client
            .subscribe(subjects::session(sid))
            .await
            .map_err(|e| e.to_string())?;
        // A round trip, so a send right after the mint finds it (NATS.md,
        // trap 7; `flush` only writes the client's buffer out).
        let _ = tokio::time::timeout(FORWARD_TIMEOUT, client.request(subjects::PING, "".into())).await;
        Ok((client, requests))
    }

    /// Answers `op.<sid>` in the org's account: frames other pods forward
    /// to the session hosted here. Listening when this returns; listens
    /// again if the org's connection is replaced, until aborted.
    async fn inbox(&self, org: &OrgId, sid: &Sid) -> Result<tokio::task::AbortHandle, String> {
        let first = self.listen(org, sid).await?;
        let me = self.me.clone();
        let (org, sid) = (org.clone(), sid.clone());
        let task = tokio::spawn(async move {
            let (mut client, mut requests) = first;
            loop {
                while let Some(request) = requests.next().await {
                    let Some(reply) = request.reply else { continue };
                    let frame = PreparedFrame::from_wire(ws::text_frame(&request.payload));
                    let services = me
                        .upgrade()
                        .and_then(|roles| roles.services.get().and_then(Weak::upgrade));
                    let outcome = match services {
                        Some(services) => services.sessions.deliver(&sid, frame).await,
                        None => Forwarded::Unavailable,
                    };
                    let _ = client.publish(reply, answer(outcome).into()).await;
                }
                // The connection is gone (replaced by the pool): listen on the new one.
                loop {
                    tokio::time::sleep(RELISTEN_PAUSE).await;
                    let Some(roles) = me.upgrade() else { return };
                    if let Ok(next) = roles.listen(&org, &sid).await {
                        (client, requests) = next;
                        break;
                    }
                }
            }
        });
        Ok(task.abort_handle())
    }

    async fn forward_now(&self, org: &OrgId, to: &Target, frame: PreparedFrame) -> Forwarded {
        let sid = match to {
            Target::Op(sid) => sid.clone(),
            Target::Role(role) => match self.kv.get(key(org, role)).await {
                Ok(Some(value)) => match serde_json::from_slice::<Lease>(&value) {
                    Ok(lease) => lease.sid,
                    Err(_) => return Forwarded::NotFound,
                },
                Ok(None) => return Forwarded::NotFound,
                Err(_) => return Forwarded::Unavailable,
            },
        };
        let Ok(client) = self.client(org).await else {
            return Forwarded::Unavailable;
        };
        let request = client.request(subjects::session(&sid), frame.payload());
        match tokio::time::timeout(FORWARD_TIMEOUT, request).await {
            Ok(Ok(reply)) => outcome(&reply.payload),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Forwarded::NotFound,
            _ => Forwarded::Unavailable,
        }
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
        }
    }
}

impl RoleLeases for ClusterRoles {
    fn claim<'a>(
        &'a self,
        org: &'a OrgId,
        sid: &'a Sid,
        roles: &'a [RoleName],
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(self.claim_now(org, sid, roles))
    }

    fn release(&self, _org: &OrgId, sid: &Sid) {
        let Some(held) = self.held.lock().remove(sid) else {
            return;
        };
        held.inbox.abort();
        let (kv, sid) = (self.kv.clone(), sid.clone());
        tokio::spawn(async move {
            for (k, revision) in held.roles {
                if kv.delete_expect_revision(&k, Some(revision)).await.is_ok() {
                    continue;
                }
                // A renewal may have moved the revision meanwhile: delete
                // what is there if it is still this session's.
                let current = kv.entry(k.clone()).await.ok().flatten();
                let ours = current.as_ref().is_some_and(|e| {
                    serde_json::from_slice::<Lease>(&e.value).is_ok_and(|lease| lease.sid == sid)
                });
                let deleted = match current {
                    Some(e) if ours => kv.delete_expect_revision(&k, Some(e.revision)).await.is_ok(),
                    _ => true,
                };
                if !deleted {
                    tracing::debug!(org = %held.org, key = %k, "role lease not deleted; it lapses on its own");
                }
            }
        });
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
