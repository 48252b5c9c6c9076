//! [`Sessions`]: how request paths reach operator sessions (mint, inspect,
//! list, end, attach a socket) without knowing which org actor holds them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ractor::ActorRef;
use switchboard_proto::{ChannelName, ConnId, OrgId, PreparedFrame, Sid, Target, TurnId};

use crate::leases::{Ask, Forwarded, LeaseError, RoleLeases};
use crate::operator::{OperatorLink, OperatorShared};
use crate::org::{MintError, OrgError, OrgMsg};
use crate::orgs::OrgsMsg;
use crate::session::{SessionInfo, SessionMsg};
use crate::session_store::{SessionRecord, SessionStore};
use crate::sink::Sink;

fn lease_error(e: LeaseError) -> MintError {
    match e {
        LeaseError::Held(roles) => MintError::Conflict(roles),
        LeaseError::Unavailable(detail) => MintError::Leases(detail),
    }
}

/// Socket ids, unique on this pod (client and operator sockets alike).
#[derive(Default)]
pub struct ConnIds(AtomicU64);

impl ConnIds {
    pub fn next(&self) -> ConnId {
        ConnId(self.0.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

pub struct Sessions {
    orgs: ActorRef<OrgsMsg>,
    store: Arc<SessionStore>,
    ids: Arc<ConnIds>,
    leases: Arc<dyn RoleLeases>,
}

impl Sessions {
    pub(crate) fn new(
        orgs: ActorRef<OrgsMsg>,
        store: Arc<SessionStore>,
        ids: Arc<ConnIds>,
        leases: Arc<dyn RoleLeases>,
    ) -> Self {
        Self {
            orgs,
            store,
            ids,
            leases,
        }
    }

    /// The pod is shutting down: each operator socket closes (1001) as soon
    /// as its session has no live turn.
    pub async fn drain(&self) {
        for sid in self.store.sids() {
            if let Some(session) = self.actor(&sid).await {
                let _ = session.cast(SessionMsg::Drain);
            }
        }
    }

    /// Operator sockets attached on this pod now (draining waits for their
    /// sessions to let them go).
    pub async fn connected(&self) -> usize {
        let mut connected = 0;
        for sid in self.store.sids() {
            if let Some(session) = self.actor(&sid).await
                && ractor::call!(session, SessionMsg::Info).is_ok_and(|i| i.connected)
            {
                connected += 1;
            }
        }
        connected
    }

    /// Turns streaming on this pod now (draining waits for them).
    pub fn live_turns(&self) -> usize {
        self.store.live_turns()
    }

    /// The record of a live session (for authenticating its bearer token).
    pub fn record(&self, sid: &Sid) -> Option<SessionRecord> {
        self.store.get(sid)
    }

    /// The org's actor if it runs, without taking a hold on it.
    async fn org_actor(&self, org: &OrgId) -> Option<ActorRef<OrgMsg>> {
        ractor::call!(self.orgs, OrgsMsg::Lookup, org.clone())
            .ok()
            .flatten()
    }

    async fn actor(&self, sid: &Sid) -> Option<ActorRef<SessionMsg>> {
        let record = self.store.get(sid)?;
        let org = self.org_actor(&record.org).await?;
        ractor::call!(org, OrgMsg::Resolve, Target::Op(sid.clone()))
            .ok()
            .flatten()
    }

    /// Creates an operator session: its roles are claimed atomically on
    /// every pod (then within the org on this one), and it holds the org
    /// until it ends.
    pub async fn mint(&self, record: SessionRecord) -> Result<(), MintError> {
        self.leases.claim(&record).await.map_err(lease_error)?;
        self.start(record).await
    }

    /// Hosts here a session another pod minted (its operator reconnected to
    /// this pod): its roles follow it, the other pod lets it go.
    pub async fn adopt(&self, mut record: SessionRecord) -> Result<(), MintError> {
        record.turns = self.leases.adopt(&record).await.map_err(lease_error)?;
        self.start(record).await
    }

    /// Lets the session `sid` go to the pod its operator reconnected to:
    /// its live turns' waiting text is published and the turns go along
    /// (returned) rather than fail; ending it is the caller's next step.
    pub async fn hand_off(&self, sid: &Sid) -> Vec<(TurnId, ChannelName)> {
        let Some(session) = self.actor(sid).await else {
            return Vec::new();
        };
        ractor::call!(session, SessionMsg::HandOff).unwrap_or_default()
    }

    /// The record of a session hosted by any pod (this one first).
    pub async fn lookup(&self, sid: &Sid) -> Option<SessionRecord> {
        match self.store.get(sid) {
            Some(record) => Some(record),
            None => self.leases.lookup(sid).await,
        }
    }

    /// Starts a session whose roles are claimed; gives them back if it
    /// cannot start.
    async fn start(&self, record: SessionRecord) -> Result<(), MintError> {
        let (org, sid) = (record.org.clone(), record.sid.clone());
        let checked_out = ractor::call!(self.orgs, OrgsMsg::Checkout, org.clone())
            .map_err(|_| MintError::Org(OrgError::Unavailable))
            .and_then(|r| r.map_err(MintError::Org));
        let minted = match checked_out {
            Ok(actor) => {
                let minted = ractor::call!(actor, OrgMsg::Mint, record)
                    .map_err(|_| MintError::Org(OrgError::Unavailable))
                    .and_then(|r| r);
                if minted.is_err() {
                    let _ = self.orgs.cast(OrgsMsg::Release(org.clone()));
                }
                minted
            }
            Err(e) => Err(e),
        };
        if minted.is_err() {
            self.leases.release(&org, &sid);
        }
        minted
    }

    /// Hands a frame from another pod to the session `sid` hosted here.
    pub async fn deliver(&self, sid: &Sid, frame: PreparedFrame) -> Forwarded {
        let Some(session) = self.actor(sid).await else {
            return Forwarded::NotFound;
        };
        match ractor::call!(session, SessionMsg::FromClient, frame) {
            Ok(Ok(())) => Forwarded::Delivered,
            Ok(Err(_)) => Forwarded::Offline,
            Err(_) => Forwarded::NotFound,
        }
    }

    /// A session's state, from whichever pod hosts it.
    pub async fn info(&self, sid: &Sid) -> Result<Option<SessionInfo>, LeaseError> {
        if self.store.get(sid).is_none() {
            return self.ask_host(sid, Ask::Info).await;
        }
        let Some(session) = self.actor(sid).await else {
            return Ok(None);
        };
        Ok(ractor::call!(session, SessionMsg::Info).ok())
    }

    async fn ask_host(&self, sid: &Sid, ask: Ask) -> Result<Option<SessionInfo>, LeaseError> {
        match self.leases.lookup(sid).await {
            Some(record) => self.leases.ask(&record, ask).await.map(Some),
            None => Ok(None),
        }
    }

    /// Ends a session now, on whichever pod hosts it: its socket closes,
    /// its roles are free at once.
    pub async fn end_anywhere(&self, sid: &Sid) -> Result<bool, LeaseError> {
        if self.store.get(sid).is_some() {
            return Ok(self.end(sid).await);
        }
        Ok(self.ask_host(sid, Ask::End).await?.is_some())
    }

    /// Ends a session hosted here now: its socket closes, its roles are
    /// free at once.
    pub async fn end(&self, sid: &Sid) -> bool {
        let Some(record) = self.store.get(sid) else {
            return false;
        };
        let Some(org) = self.org_actor(&record.org).await else {
            return false;
        };
        ractor::call!(org, OrgMsg::EndSession, sid.clone()).unwrap_or(false)
    }

    /// The org's sessions, for its online list.
    /// Ends the sessions of `org` that the API key `key` minted; returns how many.
    pub async fn end_minted_by(&self, org: &OrgId, key: &str) -> usize {
        let mut ended = 0;
        for info in self.of_org(org).await {
            let minted = self
                .record(&info.sid)
                .is_some_and(|r| r.minted_by.as_deref() == Some(key));
            if minted && self.end(&info.sid).await {
                ended += 1;
            }
        }
        ended
    }

    pub async fn of_org(&self, org: &OrgId) -> Vec<SessionInfo> {
        let Some(actor) = self.org_actor(org).await else {
            return Vec::new();
        };
        let sessions = ractor::call!(actor, OrgMsg::Sessions).unwrap_or_default();
        let mut infos = Vec::with_capacity(sessions.len());
        for session in sessions {
            if let Ok(info) = ractor::call!(session, SessionMsg::Info) {
                infos.push(info);
            }
        }
        infos.sort_by(|a, b| a.sid.cmp(&b.sid));
        infos
    }

    /// Attaches an operator's socket to its session; buffered frames are
    /// written to it first. `None` if the session is gone.
    pub async fn attach(&self, sid: &Sid, sink: Arc<dyn Sink>) -> Option<OperatorLink> {
        let session = self.actor(sid).await?;
        let generation = ractor::call!(session, SessionMsg::Attach, Arc::clone(&sink)).ok()?;
        let shared = OperatorShared {
            id: self.ids.next(),
            sink,
            session,
            generation,
        };
        Some(OperatorLink {
            shared: Arc::new(shared),
        })
    }
}
