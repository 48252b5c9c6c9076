//! `OrgActor`: one per org with live work on this pod. It owns the org's
//! attachment to the backplane (which channels this pod receives: attached on
//! a channel's first local subscriber, detached after its last one left) and
//! the org's operator sessions with their role table: claiming roles is one
//! step in this mailbox, so of concurrent mints for a role exactly one wins.
//! After a restart it rebuilds attachments from the hub and sessions from
//! the session store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use metrics::{counter, gauge};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent};
use switchboard_proto::{ChannelName, ErrorCode, OrgId, RoleName, Sid, Target};

use crate::backplane::BackplaneError;
use crate::channels::Channels;
use crate::hub::ChannelKey;
use crate::leases::RoleLeases;
use crate::orgs::OrgsMsg;
use crate::session::{OperatorSession, SessionArgs, SessionLimits, SessionMsg};
use crate::session_store::{SessionRecord, SessionStore};
use crate::telemetry;

pub enum OrgMsg {
    /// Make sure `channel` is attached before its history is read.
    Attach(ChannelName, RpcReplyPort<Result<(), BackplaneError>>),
    /// A channel may have lost its last local subscriber: detach it if so.
    Reconcile(ChannelName),
    /// Creates a session if none of its roles is held by a live session.
    Mint(SessionRecord, RpcReplyPort<Result<(), MintError>>),
    /// The session a role or sid names.
    Resolve(Target, RpcReplyPort<Option<ActorRef<SessionMsg>>>),
    /// Ends a session now, releasing its roles; false if there was none.
    EndSession(Sid, RpcReplyPort<bool>),
    /// Every session of the org.
    Sessions(RpcReplyPort<Vec<ActorRef<SessionMsg>>>),
}

/// Why an org's actor could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum OrgError {
    /// Its actor would not start.
    #[error("the org actor failed to start: {0}")]
    Spawn(#[from] SpawnErr),
    /// Its actor stopped answering (the tree is stopping, or it keeps failing).
    #[error("the org actor is unavailable")]
    Unavailable,
    #[error(transparent)]
    Backplane(#[from] BackplaneError),
}

impl OrgError {
    pub fn code(&self) -> ErrorCode {
        match self {
            OrgError::Backplane(e) => e.code(),
            OrgError::Spawn(_) | OrgError::Unavailable => ErrorCode::Unavailable,
        }
    }

    /// What a caller may be told.
    pub fn public_message(&self) -> String {
        match self {
            OrgError::Backplane(e) => e.public_message(),
            OrgError::Spawn(_) | OrgError::Unavailable => "the org is unavailable right now; retry".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("roles already held by a live session: {}", .0.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "))]
    Conflict(Vec<RoleName>),
    #[error("the org already has {0} operator sessions")]
    TooMany(usize),
    /// Roles across pods could not be checked; retryable.
    #[error("{0}")]
    Leases(String),
    #[error(transparent)]
    Org(#[from] OrgError),
}

pub struct OrgArgs {
    pub org: OrgId,
    pub channels: Arc<Channels>,
    /// Gives a finished session's roles back on every pod.
    pub leases: Arc<dyn RoleLeases>,
    pub sessions: Arc<SessionStore>,
    pub session_limits: SessionLimits,
    /// To give back a session's hold on the org when it ends.
    pub orgs: ActorRef<OrgsMsg>,
}

pub struct OrgState {
    args: OrgArgs,
    attached: HashSet<ChannelName>,
    roles: HashMap<RoleName, Sid>,
    sessions: HashMap<Sid, ActorRef<SessionMsg>>,
    by_actor: HashMap<ActorId, Sid>,
}

impl OrgState {
    fn key(&self, channel: &ChannelName) -> ChannelKey {
        ChannelKey::of(&self.args.org, channel)
    }

    async fn attach(&mut self, channel: &ChannelName) -> Result<(), BackplaneError> {
        if self.attached.contains(channel) {
            return Ok(());
        }
        self.args.channels.attach(&self.key(channel)).await?;
        self.attached.insert(channel.clone());
        gauge!(telemetry::ATTACHED_CHANNELS).increment(1.0);
        Ok(())
    }

    fn detach(&mut self, channel: &ChannelName) {
        if self.attached.remove(channel) {
            self.args.channels.detach(&self.key(channel));
            gauge!(telemetry::ATTACHED_CHANNELS).decrement(1.0);
        }
    }

    async fn spawn_session(&mut self, me: &ActorRef<OrgMsg>, record: SessionRecord) -> Result<(), SpawnErr> {
        let sid = record.sid.clone();
        let args = SessionArgs {
            record,
            channels: Arc::clone(&self.args.channels),
            store: Arc::clone(&self.args.sessions),
            limits: self.args.session_limits,
            leases: Arc::clone(&self.args.leases),
        };
        let (actor, _) = Actor::spawn_linked(None, OperatorSession, args, me.get_cell()).await?;
        self.by_actor.insert(actor.get_id(), sid.clone());
        self.sessions.insert(sid, actor);
        Ok(())
    }

    /// Forgets a session: its roles, its record, its hold on the org (once).
    /// Returns its actor if it was running.
    fn forget_session(&mut self, sid: &Sid) -> Option<ActorRef<SessionMsg>> {
        let actor = self.sessions.remove(sid);
        if let Some(a) = &actor {
            self.by_actor.remove(&a.get_id());
        }
        self.roles.retain(|_, holder| holder != sid);
        if self.args.sessions.remove(sid) {
            self.args.leases.release(&self.args.org, sid);
            let _ = self.args.orgs.cast(OrgsMsg::Release(self.args.org.clone()));
        }
        actor
    }
}

pub struct OrgActor;

impl Actor for OrgActor {
    type Msg = OrgMsg;
    type State = OrgState;
    type Arguments = OrgArgs;

    async fn pre_start(&self, me: ActorRef<OrgMsg>, args: OrgArgs) -> Result<OrgState, ActorProcessingErr> {
        let mut state = OrgState {
            attached: HashSet::new(),
            roles: HashMap::new(),
            sessions: HashMap::new(),
            by_actor: HashMap::new(),
            args,
        };
        // Empty on first start; after a restart, what the failed actor held.
        for channel in state.args.channels.hub().channels_of(&state.args.org) {
            state.attach(&channel).await?;
        }
        for record in state.args.sessions.of_org(&state.args.org) {
            for role in &record.roles {
                state.roles.insert(role.clone(), record.sid.clone());
            }
            state.spawn_session(&me, record).await?;
        }
        gauge!(telemetry::ORG_ACTORS).increment(1.0);
        Ok(state)
    }

    async fn post_stop(&self, _me: ActorRef<OrgMsg>, state: &mut OrgState) -> Result<(), ActorProcessingErr> {
        for channel in std::mem::take(&mut state.attached) {
            state.args.channels.detach(&state.key(&channel));
            gauge!(telemetry::ATTACHED_CHANNELS).decrement(1.0);
        }
        gauge!(telemetry::ORG_ACTORS).decrement(1.0);
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<OrgMsg>,
        msg: OrgMsg,
        state: &mut OrgState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            OrgMsg::Attach(channel, reply) => {
                let result = state.attach(&channel).await;
                // The caller may have given up (its connection closed); nothing to tell then.
                let _ = reply.send(result);
            }
            OrgMsg::Reconcile(channel) => {
                if !state.args.channels.hub().has_subscribers(&state.key(&channel)) {
                    state.detach(&channel);
                }
            }
            OrgMsg::Mint(record, reply) => {
                let max = state.args.session_limits.max_sessions;
                if state.sessions.len() >= max {
                    let _ = reply.send(Err(MintError::TooMany(max)));
                    return Ok(());
                }
                let taken: Vec<RoleName> = record
                    .roles
                    .iter()
                    .filter(|r| state.roles.contains_key(*r))
                    .cloned()
                    .collect();
                if !taken.is_empty() {
                    let _ = reply.send(Err(MintError::Conflict(taken)));
                    return Ok(());
                }
                let sid = record.sid.clone();
                let roles = record.roles.clone();
                state.args.sessions.insert(record.clone());
                let result = match state.spawn_session(&me, record).await {
                    Ok(()) => {
                        for role in roles {
                            state.roles.insert(role, sid.clone());
                        }
                        Ok(())
                    }
                    Err(e) => {
                        // Not a session yet, so no hold of its own to give back.
                        state.args.sessions.remove(&sid);
                        Err(MintError::Org(OrgError::Spawn(e)))
                    }
                };
                let _ = reply.send(result);
            }
            OrgMsg::Resolve(target, reply) => {
                let sid = match &target {
                    Target::Role(role) => state.roles.get(role),
                    Target::Op(sid) => Some(sid),
                };
                let _ = reply.send(sid.and_then(|s| state.sessions.get(s)).cloned());
            }
            OrgMsg::EndSession(sid, reply) => {
                let existed = state.args.sessions.get(&sid).is_some();
                if let Some(actor) = state.forget_session(&sid) {
                    actor.stop(Some("deleted".into()));
                }
                let _ = reply.send(existed);
            }
            OrgMsg::Sessions(reply) => {
                let _ = reply.send(state.sessions.values().cloned().collect());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<OrgMsg>,
        event: SupervisionEvent,
        state: &mut OrgState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                // Expired by itself (deleted sessions were forgotten already).
                if let Some(sid) = state.by_actor.get(&cell.get_id()).cloned() {
                    state.forget_session(&sid);
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(sid) = state.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                state.sessions.remove(&sid);
                counter!(telemetry::SESSION_RESTARTS).increment(1);
                tracing::error!(%sid, error = %err, "operator session failed; restarting it");
                let restarted = match state.args.sessions.get(&sid) {
                    Some(record) => state.spawn_session(&me, record).await,
                    None => {
                        tracing::error!(%sid, "operator session record is gone; not restarting it");
                        Ok(())
                    }
                };
                if let Err(e) = restarted {
                    tracing::error!(%sid, error = %e, "operator session restart failed; ending it");
                    state.forget_session(&sid);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// How a connection reaches its org's actor. It survives the actor being
/// restarted: on a failed call it looks the current actor up again.
pub struct OrgHandle {
    org: OrgId,
    orgs: ActorRef<OrgsMsg>,
    current: parking_lot::Mutex<ActorRef<OrgMsg>>,
}

impl OrgHandle {
    pub(crate) fn new(org: OrgId, orgs: ActorRef<OrgsMsg>, actor: ActorRef<OrgMsg>) -> Self {
        Self {
            org,
            orgs,
            current: parking_lot::Mutex::new(actor),
        }
    }

    pub fn org(&self) -> &OrgId {
        &self.org
    }

    /// `channel` in this org.
    pub fn key(&self, channel: &ChannelName) -> ChannelKey {
        ChannelKey::of(&self.org, channel)
    }

    /// Asks the org actor, looking it up again (a few times) if it was restarted.
    async fn ask<T: Send + 'static>(&self, make: impl Fn(RpcReplyPort<T>) -> OrgMsg) -> Result<T, OrgError> {
        const ATTEMPTS: usize = 3;
        for _ in 0..ATTEMPTS {
            let actor = self.current.lock().clone();
            match ractor::call!(actor, &make) {
                Ok(answer) => return Ok(answer),
                Err(_) => self.refresh().await,
            }
        }
        Err(OrgError::Unavailable)
    }

    /// Attaches `channel` to the backplane (idempotent).
    pub async fn attach(&self, channel: &ChannelName) -> Result<(), OrgError> {
        Ok(self.ask(|port| OrgMsg::Attach(channel.clone(), port)).await??)
    }

    /// Gives back this handle's hold on the org (once, when its connection ends).
    pub fn release(&self) {
        // The supervisor outlives its holders except at shutdown.
        let _ = self.orgs.cast(OrgsMsg::Release(self.org.clone()));
    }

    /// The live session a role or sid names.
    pub async fn resolve(&self, target: &Target) -> Option<ActorRef<SessionMsg>> {
        self.ask(|port| OrgMsg::Resolve(target.clone(), port))
            .await
            .ok()
            .flatten()
    }

    /// Asks the org to detach `channel` if nobody here subscribes to it any more.
    pub fn reconcile(&self, channel: &ChannelName) {
        // A dead actor needs no reconciling: its successor rebuilds from the hub.
        let _ = self.current.lock().cast(OrgMsg::Reconcile(channel.clone()));
    }

    async fn refresh(&self) {
        // The supervisor may not have processed the failure yet; give it a moment.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        if let Ok(Some(actor)) = ractor::call!(self.orgs, OrgsMsg::Lookup, self.org.clone()) {
            *self.current.lock() = actor;
        }
    }
}
