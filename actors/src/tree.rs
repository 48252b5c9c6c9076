//! The root of the supervision tree and the [`Services`] handle every
//! request path shares: channels (hub, backplane, history), operator
//! sessions, limits and the connection supervisor.
//!
//! Policy: the leaves fail alone (an `OrgActor` is restarted by `Orgs`, a
//! connection's panic closes only that socket). `Orgs` and `Connections` do
//! bookkeeping only; if one of them fails anyway the root stops, and the
//! process exits non-zero so its orchestrator restarts it cleanly.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent};
use switchboard_proto::{ChannelName, ConnId, OrgId, Subject};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::backplane::{Backplane, History};
use crate::channels::Channels;
use crate::connection::{Connection, Identity};
use crate::connections::{Connections, ConnectionsMsg, supervised};
use crate::hub::Hub;
use crate::leases::{LocalOnly, RoleLeases};
use crate::limits::Limits;
use crate::link::{FrameHandler, Match};
use crate::org::{OrgError, OrgHandle};
use crate::orgs::{Orgs, OrgsArgs, OrgsMsg};
use crate::session::SessionLimits;
use crate::session_store::SessionStore;
use crate::sessions::{ConnIds, Sessions};
use crate::sink::{CloseReason, Sink};

/// What every request path needs, built once.
pub struct Services {
    pub channels: Arc<Channels>,
    /// Roles and sessions on other pods.
    pub leases: Arc<dyn RoleLeases>,
    pub sessions: Sessions,
    pub limits: Limits,
    orgs: ActorRef<OrgsMsg>,
    connections: ActorRef<ConnectionsMsg>,
    /// Every connection's task, so draining can wait for them.
    tracker: TaskTracker,
    ids: Arc<ConnIds>,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("actor failed to start: {0}")]
    Spawn(#[from] SpawnErr),
    #[error("the supervision tree is shutting down")]
    Stopped,
    #[error(transparent)]
    Org(#[from] OrgError),
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
            .map_err(|_| TreeError::Stopped)??;
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

    /// Closes every client connection of `org` with `reason`, ends its
    /// operator sessions (their sockets close with 4010) and forgets its
    /// channels: the org is gone.
    pub async fn close_org(&self, org: &OrgId, reason: CloseReason) {
        self.close_matching(Match::org(org.clone()), reason);
        for session in self.sessions.of_org(org).await {
            self.sessions.end(&session.sid).await;
        }
        self.channels.drop_org(org);
    }

    /// Closes the client connections `which` names (a revoked credential's).
    pub fn close_matching(&self, which: Match, reason: CloseReason) {
        // The supervisor outlives the services except at shutdown.
        let _ = self
            .connections
            .cast(ConnectionsMsg::CloseMatching(which, reason));
    }

    /// A fresh id for a socket on this pod.
    pub fn next_conn_id(&self) -> ConnId {
        self.ids.next()
    }

    /// Who is subscribed to `channel` of `org` on this pod: a subject per connection.
    pub async fn presence(&self, org: &OrgId, channel: &ChannelName) -> Vec<Subject> {
        ractor::call!(
            self.connections,
            ConnectionsMsg::Presence,
            org.clone(),
            channel.clone()
        )
        .unwrap_or_default()
    }

    /// Connections open on this pod.
    pub async fn connection_count(&self) -> usize {
        ractor::call!(self.connections, ConnectionsMsg::Count).unwrap_or(0)
    }

    /// Org actors running on this pod.
    pub async fn org_count(&self) -> usize {
        ractor::call!(self.orgs, OrgsMsg::Count).unwrap_or(0)
    }

    /// The actor serving `org` on this pod now, if one runs (it changes
    /// when the org's actor is restarted).
    pub async fn org_actor(&self, org: &OrgId) -> Option<ractor::ActorId> {
        ractor::call!(self.orgs, OrgsMsg::Lookup, org.clone())
            .ok()
            .flatten()
            .map(|a| a.get_id())
    }
}

pub enum RootMsg {
    Children(RpcReplyPort<(ActorRef<OrgsMsg>, ActorRef<ConnectionsMsg>)>),
}

struct RootArgs {
    channels: Arc<Channels>,
    leases: Arc<dyn RoleLeases>,
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
            channels: args.channels,
            leases: args.leases,
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
    /// Starts the tree over a hub and the backplane that feeds it (one pod:
    /// roles and sessions are this pod's alone).
    pub async fn start(
        hub: Arc<Hub>,
        backplane: Arc<dyn Backplane>,
        history: Arc<dyn History>,
        limits: Limits,
    ) -> Result<Tree, TreeError> {
        Self::start_with(hub, backplane, history, limits, Arc::new(LocalOnly)).await
    }

    /// As [`Tree::start`], with roles and sessions shared by pods through `leases`.
    pub async fn start_with(
        hub: Arc<Hub>,
        backplane: Arc<dyn Backplane>,
        history: Arc<dyn History>,
        limits: Limits,
        leases: Arc<dyn RoleLeases>,
    ) -> Result<Tree, TreeError> {
        let tracker = TaskTracker::new();
        let store = Arc::new(SessionStore::default());
        let channels = Arc::new(Channels::new(hub, backplane, history));
        let args = RootArgs {
            channels: Arc::clone(&channels),
            leases: Arc::clone(&leases),
            sessions: Arc::clone(&store),
            session_limits: SessionLimits::from(&limits),
            org_idle: limits.org_idle,
            tracker: tracker.clone(),
        };
        let (root, handle) = Actor::spawn(None, Root, args).await?;
        let (orgs, connections) = ractor::call!(root, RootMsg::Children).map_err(|_| TreeError::Stopped)?;
        let ids = Arc::new(ConnIds::default());
        let services = Arc::new(Services {
            channels,
            sessions: Sessions::new(orgs.clone(), store, Arc::clone(&ids), Arc::clone(&leases)),
            leases,
            limits,
            orgs,
            connections,
            tracker,
            ids,
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
        // Polling it again after [`Tree::stopped`] saw it end would panic.
        if !self.handle.is_finished() {
            let _ = self.handle.await;
        }
    }
}
