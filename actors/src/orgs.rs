//! `Orgs`: the supervisor of every `OrgActor`. It starts an org's actor on
//! first use, keeps it while connections of the org hold it (checkout /
//! release), stops it after `org_idle` without any, and restarts it when it
//! fails. Check-out and idle stop both go through this mailbox, so a caller
//! is never handed an actor that is about to stop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use switchboard_proto::OrgId;

use crate::channels::Channels;
use crate::leases::RoleLeases;
use crate::org::{OrgActor, OrgArgs, OrgError, OrgMsg};
use crate::session::SessionLimits;
use crate::session_store::SessionStore;
use crate::telemetry;

pub enum OrgsMsg {
    /// The org's actor, started if needed; the caller holds it until `Release`.
    Checkout(OrgId, RpcReplyPort<Result<ActorRef<OrgMsg>, OrgError>>),
    Release(OrgId),
    /// The org's current actor without taking a hold (after a restart).
    Lookup(OrgId, RpcReplyPort<Option<ActorRef<OrgMsg>>>),
    /// Sent to itself `org_idle` after an org's last release.
    IdleCheck(OrgId, u64),
    /// How many org actors run (tests, metrics).
    Count(RpcReplyPort<usize>),
}

pub struct OrgsArgs {
    pub channels: Arc<Channels>,
    pub leases: Arc<dyn RoleLeases>,
    pub sessions: Arc<SessionStore>,
    pub session_limits: SessionLimits,
    pub idle: Duration,
}

struct Running {
    actor: ActorRef<OrgMsg>,
    holders: usize,
    /// Bumped on every release to zero, so a stale idle check is ignored.
    idle_generation: u64,
}

pub struct OrgsState {
    args: OrgsArgs,
    running: HashMap<OrgId, Running>,
    by_actor: HashMap<ActorId, OrgId>,
}

impl OrgsState {
    async fn spawn(&mut self, me: &ActorRef<OrgsMsg>, org: &OrgId) -> Result<ActorRef<OrgMsg>, OrgError> {
        let args = OrgArgs {
            org: org.clone(),
            channels: Arc::clone(&self.args.channels),
            leases: Arc::clone(&self.args.leases),
            sessions: Arc::clone(&self.args.sessions),
            session_limits: self.args.session_limits,
            orgs: me.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, OrgActor, args, me.get_cell()).await?;
        self.by_actor.insert(actor.get_id(), org.clone());
        Ok(actor)
    }

    fn forget(&mut self, cell: &ActorCell) -> Option<(OrgId, Running)> {
        let org = self.by_actor.remove(&cell.get_id())?;
        let running = self.running.remove(&org)?;
        Some((org, running))
    }
}

pub struct Orgs;

impl Actor for Orgs {
    type Msg = OrgsMsg;
    type State = OrgsState;
    type Arguments = OrgsArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<OrgsMsg>,
        args: OrgsArgs,
    ) -> Result<OrgsState, ActorProcessingErr> {
        Ok(OrgsState {
            args,
            running: HashMap::new(),
            by_actor: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        me: ActorRef<OrgsMsg>,
        msg: OrgsMsg,
        state: &mut OrgsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            OrgsMsg::Checkout(org, reply) => {
                let result = match state.running.get_mut(&org) {
                    Some(running) => {
                        running.holders += 1;
                        Ok(running.actor.clone())
                    }
                    None => match state.spawn(&me, &org).await {
                        Ok(actor) => {
                            state.running.insert(
                                org,
                                Running {
                                    actor: actor.clone(),
                                    holders: 1,
                                    idle_generation: 0,
                                },
                            );
                            Ok(actor)
                        }
                        Err(e) => {
                            tracing::error!(%org, error = %e, "org actor failed to start");
                            Err(e)
                        }
                    },
                };
                let _ = reply.send(result);
            }
            OrgsMsg::Release(org) => {
                if let Some(running) = state.running.get_mut(&org) {
                    running.holders = running.holders.saturating_sub(1);
                    if running.holders == 0 {
                        running.idle_generation += 1;
                        let generation = running.idle_generation;
                        me.send_after(state.args.idle, move || OrgsMsg::IdleCheck(org, generation));
                    }
                }
            }
            OrgsMsg::IdleCheck(org, generation) => {
                let idle = state
                    .running
                    .get(&org)
                    .is_some_and(|r| r.holders == 0 && r.idle_generation == generation);
                if idle && let Some(running) = state.running.remove(&org) {
                    state.by_actor.remove(&running.actor.get_id());
                    running.actor.stop(Some("idle".into()));
                    tracing::debug!(%org, "org actor stopped: idle");
                }
            }
            OrgsMsg::Lookup(org, reply) => {
                let _ = reply.send(state.running.get(&org).map(|r| r.actor.clone()));
            }
            OrgsMsg::Count(reply) => {
                let _ = reply.send(state.running.len());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<OrgsMsg>,
        event: SupervisionEvent,
        state: &mut OrgsState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some((org, old)) = state.forget(&cell) else {
                    return Ok(());
                };
                counter!(telemetry::ORG_RESTARTS).increment(1);
                tracing::error!(%org, error = %err, "org actor failed; restarting it");
                match state.spawn(&me, &org).await {
                    Ok(actor) => {
                        state.running.insert(org, Running { actor, ..old });
                    }
                    // Its holders will get errors from the dead actor and the
                    // next checkout tries again.
                    Err(e) => tracing::error!(%org, error = %e, "org actor restart failed"),
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.forget(&cell);
            }
            _ => {}
        }
        Ok(())
    }
}
