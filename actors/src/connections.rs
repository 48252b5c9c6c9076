//! `Connections`: the supervisor of every client connection on this pod.
//!
//! A connection is not a ractor actor: one measured ~7.8 KiB per actor
//! against ~0.5 KiB per tokio task, and an idle connection must cost under
//! 4 KiB in all. Each connection is one task (its reader, frame handler and
//! writer), spawned on the tree's task tracker and registered here. When the
//! task ends (normally or by panic) its subscriptions are released; a panic
//! closes only that socket (1011, the client reconnects and resumes). This
//! actor also drives the heartbeat sweep and closes every socket on drain.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use metrics::{counter, gauge};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use switchboard_proto::{ChannelName, ConnId, OrgId, Subject};
use tokio_util::task::TaskTracker;

use crate::link::{Match, Supervised};
use crate::sink::CloseReason;
use crate::telemetry;

/// How often every connection's sink gets its heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

pub enum ConnectionsMsg {
    /// A socket's task was spawned.
    Started(Arc<dyn Supervised>),
    /// A connection's task ended; `true` if it panicked.
    Exited(ConnId, bool),
    /// Closes every connection; replies with the tracker to await their end.
    CloseAll(CloseReason, RpcReplyPort<TaskTracker>),
    /// Closes the client connections that match.
    CloseMatching(Match, CloseReason),
    Count(RpcReplyPort<usize>),
    /// The subjects of the org's client connections subscribed to a channel
    /// (one entry per connection).
    Presence(OrgId, ChannelName, RpcReplyPort<Vec<Subject>>),
    Heartbeat,
}

pub struct ConnectionsState {
    live: HashMap<ConnId, Arc<dyn Supervised>>,
    tracker: TaskTracker,
    closing: Option<CloseReason>,
}

pub struct Connections;

impl Actor for Connections {
    type Msg = ConnectionsMsg;
    type State = ConnectionsState;
    type Arguments = TaskTracker;

    async fn pre_start(
        &self,
        me: ActorRef<ConnectionsMsg>,
        tracker: TaskTracker,
    ) -> Result<ConnectionsState, ActorProcessingErr> {
        me.send_interval(HEARTBEAT_EVERY, || ConnectionsMsg::Heartbeat);
        Ok(ConnectionsState {
            live: HashMap::new(),
            tracker,
            closing: None,
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<ConnectionsMsg>,
        msg: ConnectionsMsg,
        state: &mut ConnectionsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConnectionsMsg::Started(shared) => {
                if let Some(reason) = state.closing {
                    // Accepted just before draining began: close it too.
                    shared.sink().close(reason);
                }
                state.live.insert(shared.id(), shared);
                gauge!(telemetry::CONNECTIONS).increment(1.0);
                counter!(telemetry::CONNECTIONS_OPENED).increment(1);
            }
            ConnectionsMsg::Exited(id, panicked) => {
                if state.live.remove(&id).is_some() {
                    gauge!(telemetry::CONNECTIONS).decrement(1.0);
                }
                if panicked {
                    counter!(telemetry::CONNECTION_PANICS).increment(1);
                    tracing::error!(conn = %id, "connection task panicked; its socket was closed");
                }
            }
            ConnectionsMsg::CloseAll(reason, reply) => {
                state.closing = Some(reason);
                for shared in state.live.values() {
                    shared.sink().close(reason);
                }
                state.tracker.close();
                let _ = reply.send(state.tracker.clone());
            }
            ConnectionsMsg::CloseMatching(which, reason) => {
                for shared in state.live.values().filter(|s| which.matches(s.as_ref())) {
                    shared.sink().close(reason);
                }
            }
            ConnectionsMsg::Count(reply) => {
                let _ = reply.send(state.live.len());
            }
            ConnectionsMsg::Presence(org, channel, reply) => {
                let here = state
                    .live
                    .values()
                    .filter(|c| c.org() == Some(&org) && c.subscribed(&channel))
                    .filter_map(|c| c.principal().map(|(subject, _)| subject.clone()))
                    .collect();
                let _ = reply.send(here);
            }
            ConnectionsMsg::Heartbeat => {
                let now = crate::clock::now();
                for shared in state.live.values() {
                    shared.sink().heartbeat(now);
                }
            }
        }
        Ok(())
    }
}

/// Runs a connection's task: whatever way it ends, its subscriptions and
/// org hold are released and the supervisor hears of it; a panic closes the
/// socket with 1011 first.
pub(crate) async fn supervised(
    shared: Arc<dyn Supervised>,
    task: impl std::future::Future<Output = ()>,
    supervisor: ActorRef<ConnectionsMsg>,
) {
    let panicked = AssertUnwindSafe(task).catch_unwind().await.is_err();
    if panicked {
        shared.sink().abort(CloseReason::Internal);
    }
    shared.release();
    // The supervisor outlives its tasks except at shutdown, when there is
    // nobody left to tell.
    let _ = supervisor.cast(ConnectionsMsg::Exited(shared.id(), panicked));
}
