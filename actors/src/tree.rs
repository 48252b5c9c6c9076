//! The root of the supervision tree and the [`Services`] handle every
//! request path shares: the hub, the backplane, history, limits and the two
//! supervisors.
//!
//! Policy: the leaves fail alone (an `OrgActor` is restarted by `Orgs`, a
//! connection's panic closes only that socket). `Orgs` and `Connections` do
//! bookkeeping only; if one of them fails anyway the root stops, and the
//! process exits non-zero so its orchestrator restarts it cleanly.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use switchboard_proto::{ConnId, OrgId, Sid, Target};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::backplane::{Backplane, History};
use crate::connection::{Connection, Identity};
use crate::connections::{Connections, ConnectionsMsg, supervised};
use crate::hub::Hub;
use crate::limits::Limits;
use crate::link::FrameHandler;
use crate::operator::{OperatorLink, OperatorShared};
use crate::org::OrgHandle;
use crate::org::{MintError, OrgMsg};
use crate::orgs::{Orgs, OrgsArgs, OrgsMsg};
use crate::session::{SessionInfo, SessionLimits, SessionMsg};
use crate::session_store::{SessionRecord, SessionStore};
use crate::sink::{CloseReason, Sink};

/// What every request path needs, built once.
pub struct Services {
    pub hub: Arc<Hub>,
    pub backplane: Arc<dyn Backplane>,
    pub history: Arc<dyn History>,
    pub limits: Limits,
    orgs: ActorRef<OrgsMsg>,
    connections: ActorRef<ConnectionsMsg>,
    /// Every connection's task, so draining can wait for them.
    tracker: TaskTracker,
    sessions: Arc<SessionStore>,
    next_conn: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("actor failed to start: {0}")]
    Spawn(String),
    #[error("the supervision tree is shutting down")]
    Stopped,
}

impl Services {
    /// Opens a connection for a verified identity: takes a hold on its org.
    /// Run it with [`Services::run`].
    pub async fn open(
        self: &Arc<Self>,
        identity: Identity,
        sink: Arc<dyn Sink>,
    ) -> Result<Connection, TreeError> {
        let actor = ractor::call!(self.orgs, OrgsMsg::Checkout, identity.org.clone())
            .map_err(|_| TreeError::Stopped)?
            .map_err(TreeError::Spawn)?;
        let org = OrgHandle::new(identity.org.clone(), self.orgs.clone(), actor);
        Ok(Connection::new(
            self.next_conn_id(),
            identity,
            sink,
            org,
            Arc::clone(self),
        ))
    }

    /// Runs a socket's task (client or operator) under the `Connections` supervisor.
    pub fn run<H, F, Fut>(&self, handler: H, task: F)
    where
        H: FrameHandler,
        F: FnOnce(H) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let shared = handler.supervised();
        // Registered before the task can end, so `Exited` always follows `Started`.
        if self
            .connections
            .cast(ConnectionsMsg::Started(Arc::clone(&shared)))
            .is_err()
        {
            shared.sink().abort(CloseReason::GoingAway);
            shared.release();
            return;
        }
        self.tracker
            .spawn(supervised(shared, task(handler), self.connections.clone()));
    }

    /// A fresh id for a socket on this pod.
    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Turns streaming on this pod now (draining waits for them).
    pub fn live_turns(&self) -> usize {
        self.sessions.live_turns()
    }

    /// The record of a live session (for authenticating its bearer token).
    pub fn session_record(&self, sid: &Sid) -> Option<SessionRecord> {
        self.sessions.get(sid)
    }

    /// The org's actor if it runs, without taking a hold on it.
    async fn org_actor(&self, org: &OrgId) -> Option<ActorRef<OrgMsg>> {
        ractor::call!(self.orgs, OrgsMsg::Lookup, org.clone())
            .ok()
            .flatten()
    }

    async fn session_actor(&self, sid: &Sid) -> Option<ActorRef<SessionMsg>> {
        let record = self.sessions.get(sid)?;
        let org = self.org_actor(&record.org).await?;
        ractor::call!(org, OrgMsg::Resolve, Target::Op(sid.clone()))
            .ok()
            .flatten()
    }

    /// Creates an operator session: its roles are claimed atomically within
    /// the org, and it holds the org until it ends.
    pub async fn mint_session(&self, record: SessionRecord) -> Result<(), MintError> {
        let org = record.org.clone();
        let actor = ractor::call!(self.orgs, OrgsMsg::Checkout, org.clone())
            .map_err(|_| MintError::Failed("shutting down".into()))?
            .map_err(MintError::Failed)?;
        let minted = ractor::call!(actor, OrgMsg::Mint, record)
            .map_err(|_| MintError::Failed("org actor unavailable".into()))
            .and_then(|r| r);
        if minted.is_err() {
            self.release_org(&org);
        }
        minted
    }

    pub async fn session_info(&self, sid: &Sid) -> Option<SessionInfo> {
        let session = self.session_actor(sid).await?;
        ractor::call!(session, SessionMsg::Info).ok()
    }

    /// Ends a session now: its socket closes, its roles are free at once.
    pub async fn end_session(&self, sid: &Sid) -> bool {
        let Some(record) = self.sessions.get(sid) else {
            return false;
        };
        let Some(org) = self.org_actor(&record.org).await else {
            return false;
        };
        ractor::call!(org, OrgMsg::EndSession, sid.clone()).unwrap_or(false)
    }

    /// The org's sessions, for its online list.
    pub async fn org_sessions(&self, org: &OrgId) -> Vec<SessionInfo> {
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
    pub async fn attach_operator(&self, sid: &Sid, sink: Arc<dyn Sink>) -> Option<OperatorLink> {
        let session = self.session_actor(sid).await?;
        let generation = ractor::call!(session, SessionMsg::Attach, Arc::clone(&sink)).ok()?;
        let shared = OperatorShared {
            id: self.next_conn_id(),
            sid: sid.clone(),
            sink,
            session,
            generation,
        };
        Some(OperatorLink {
            shared: Arc::new(shared),
        })
    }

    pub(crate) fn release_org(&self, org: &OrgId) {
        let _ = self.orgs.cast(OrgsMsg::Release(org.clone()));
    }

    /// Connections open on this pod.
    pub async fn connection_count(&self) -> usize {
        ractor::call!(self.connections, ConnectionsMsg::Count).unwrap_or(0)
    }

    /// Org actors running on this pod.
    pub async fn org_count(&self) -> usize {
        ractor::call!(self.orgs, OrgsMsg::Count).unwrap_or(0)
    }
}

pub enum RootMsg {
    Children(RpcReplyPort<(ActorRef<OrgsMsg>, ActorRef<ConnectionsMsg>)>),
}

struct RootArgs {
    hub: Arc<Hub>,
    backplane: Arc<dyn Backplane>,
    sessions: Arc<SessionStore>,
    session_limits: SessionLimits,
    org_idle: Duration,
    tracker: TaskTracker,
}

struct RootState {
    orgs: ActorRef<OrgsMsg>,
    connections: ActorRef<ConnectionsMsg>,
}

struct Root;

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        me: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let orgs_args = OrgsArgs {
            hub: args.hub,
            backplane: args.backplane,
            sessions: args.sessions,
            session_limits: args.session_limits,
            idle: args.org_idle,
        };
        let (orgs, _) = Actor::spawn_linked(None, Orgs, orgs_args, me.get_cell()).await?;
        let (connections, _) = Actor::spawn_linked(None, Connections, args.tracker, me.get_cell()).await?;
        Ok(RootState { orgs, connections })
    }

    async fn post_stop(
        &self,
        me: ActorRef<RootMsg>,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        // Org actors detach from the backplane in their own post_stop.
        state
            .orgs
            .stop_children_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        me.stop_children_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Children(reply) => {
                let _ = reply.send((state.orgs.clone(), state.connections.clone()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<RootMsg>,
        event: SupervisionEvent,
        _state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(actor = ?cell.get_id(), error = %err, "a supervisor failed; stopping");
                me.stop(Some("supervisor failed".into()));
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                tracing::error!(actor = ?cell.get_id(), ?reason, "a supervisor stopped; stopping");
                me.stop(Some("supervisor stopped".into()));
            }
            _ => {}
        }
        Ok(())
    }
}

/// A running supervision tree.
pub struct Tree {
    services: Arc<Services>,
    root: ActorRef<RootMsg>,
    handle: JoinHandle<()>,
}

impl Tree {
    pub async fn start(
        hub: Arc<Hub>,
        backplane: Arc<dyn Backplane>,
        history: Arc<dyn History>,
        limits: Limits,
    ) -> Result<Tree, TreeError> {
        let tracker = TaskTracker::new();
        let sessions = Arc::new(SessionStore::default());
        let args = RootArgs {
            hub: Arc::clone(&hub),
            backplane: Arc::clone(&backplane),
            sessions: Arc::clone(&sessions),
            session_limits: SessionLimits {
                expiry: limits.session_expiry,
                turn_grace: limits.turn_grace,
                buffer: limits.operator_buffer,
                max_turn_bytes: limits.max_turn_bytes,
            },
            org_idle: limits.org_idle,
            tracker: tracker.clone(),
        };
        let (root, handle) = Actor::spawn(None, Root, args)
            .await
            .map_err(|e| TreeError::Spawn(e.to_string()))?;
        let (orgs, connections) = ractor::call!(root, RootMsg::Children).map_err(|_| TreeError::Stopped)?;
        let services = Arc::new(Services {
            hub,
            backplane,
            history,
            limits,
            orgs,
            connections,
            tracker,
            sessions,
            next_conn: AtomicU64::new(1),
        });
        Ok(Tree {
            services,
            root,
            handle,
        })
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Closes every connection with `reason` and waits up to `grace` for
    /// their tasks to end. Returns whether they all ended in time.
    pub async fn close_connections(&self, reason: CloseReason, grace: Duration) -> bool {
        let Ok(tracker) = ractor::call!(self.services.connections, ConnectionsMsg::CloseAll, reason) else {
            return true;
        };
        tokio::time::timeout(grace, tracker.wait()).await.is_ok()
    }

    /// Resolves if the tree stops by itself (a supervisor failed).
    pub fn stopped(&mut self) -> &mut JoinHandle<()> {
        &mut self.handle
    }

    /// Stops every actor and waits for them.
    pub async fn stop(self) {
        self.root.stop(None);
        let _ = self.handle.await;
    }
}
