//! `Connections`: the supervisor of every client connection on this pod.
//!
//! A connection is not a ractor actor: one measured ~7.8 KiB per actor
//! against ~0.5 KiB per tokio task, and an idle connection must cost under
//! 4 KiB in all. Each connection is one task (its reader, frame handler and
//! writer) that this actor starts, tracks and watches: when the task ends
//! (normally or by panic) its subscriptions are released here, a panic closes
//! only that socket (1011, the client reconnects and resumes), and draining
//! closes every socket with 1001.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use metrics::{counter, gauge};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use switchboard_proto::ConnId;
use tokio_util::task::TaskTracker;

use crate::backplane::BoxFuture;
use crate::connection::ConnShared;
use crate::sink::CloseReason;
use crate::telemetry;

pub enum ConnectionsMsg {
    /// Runs a connection's task under supervision.
    Start(Arc<ConnShared>, BoxFuture<'static, ()>),
    /// A connection's task ended.
    Exited(ConnId, bool),
    /// Closes every connection; replies with the tracker to await their end.
    CloseAll(CloseReason, RpcReplyPort<TaskTracker>),
    Count(RpcReplyPort<usize>),
}

pub struct ConnectionsState {
    live: HashMap<ConnId, Arc<ConnShared>>,
    tracker: TaskTracker,
    closing: Option<CloseReason>,
}

pub struct Connections;

impl Actor for Connections {
    type Msg = ConnectionsMsg;
    type State = ConnectionsState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _me: ActorRef<ConnectionsMsg>,
        _: (),
    ) -> Result<ConnectionsState, ActorProcessingErr> {
        Ok(ConnectionsState {
            live: HashMap::new(),
            tracker: TaskTracker::new(),
            closing: None,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<ConnectionsMsg>,
        msg: ConnectionsMsg,
        state: &mut ConnectionsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConnectionsMsg::Start(shared, task) => {
                let id = shared.id;
                if let Some(reason) = state.closing {
                    // Accepted just before draining began: close it too.
                    shared.sink.close(reason);
                }
                state.live.insert(id, Arc::clone(&shared));
                gauge!(telemetry::CONNECTIONS).increment(1.0);
                counter!(telemetry::CONNECTIONS_OPENED).increment(1);
                state.tracker.spawn(async move {
                    let panicked = AssertUnwindSafe(task).catch_unwind().await.is_err();
                    if panicked {
                        shared.sink.abort(CloseReason::Internal);
                    }
                    shared.release();
                    // The supervisor outlives its tasks except at shutdown,
                    // when there is nobody left to tell.
                    let _ = me.cast(ConnectionsMsg::Exited(id, panicked));
                });
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
                    shared.sink.close(reason);
                }
                state.tracker.close();
                let _ = reply.send(state.tracker.clone());
            }
            ConnectionsMsg::Count(reply) => {
                let _ = reply.send(state.live.len());
            }
        }
        Ok(())
    }
}
