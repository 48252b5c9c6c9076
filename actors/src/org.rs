//! `OrgActor`: one per org with live work on this pod. It owns the org's
//! attachment to the backplane: which channels this pod receives, attached on
//! a channel's first local subscriber and detached after its last one left.
//! After a restart it rebuilds that set from the hub, the source of truth for
//! who is subscribed here.

use std::collections::HashSet;
use std::sync::Arc;

use metrics::gauge;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use switchboard_proto::{ChannelName, OrgId};

use crate::backplane::Backplane;
use crate::hub::{ChannelKey, Hub};
use crate::telemetry;

pub enum OrgMsg {
    /// Make sure `channel` is attached before its history is read.
    Attach(ChannelName, RpcReplyPort<Result<(), String>>),
    /// A channel may have lost its last local subscriber: detach it if so.
    Reconcile(ChannelName),
}

pub struct OrgArgs {
    pub org: OrgId,
    pub hub: Arc<Hub>,
    pub backplane: Arc<dyn Backplane>,
}

pub struct OrgState {
    args: OrgArgs,
    attached: HashSet<ChannelName>,
}

impl OrgState {
    fn key(&self, channel: &ChannelName) -> ChannelKey {
        ChannelKey::new(self.args.org.clone(), channel.clone())
    }

    async fn attach(&mut self, channel: &ChannelName) -> Result<(), String> {
        if self.attached.contains(channel) {
            return Ok(());
        }
        let key = self.key(channel);
        self.args
            .backplane
            .attach(&key)
            .await
            .map_err(|e| e.to_string())?;
        self.attached.insert(channel.clone());
        gauge!(telemetry::ATTACHED_CHANNELS).increment(1.0);
        Ok(())
    }

    fn detach(&mut self, channel: &ChannelName) {
        if self.attached.remove(channel) {
            self.args.backplane.detach(&self.key(channel));
            gauge!(telemetry::ATTACHED_CHANNELS).decrement(1.0);
        }
    }
}

pub struct OrgActor;

impl Actor for OrgActor {
    type Msg = OrgMsg;
    type State = OrgState;
    type Arguments = OrgArgs;

    async fn pre_start(&self, _me: ActorRef<OrgMsg>, args: OrgArgs) -> Result<OrgState, ActorProcessingErr> {
        let mut state = OrgState {
            attached: HashSet::new(),
            args,
        };
        // Empty on first start; after a restart, what the failed actor had attached.
        for channel in state.args.hub.channels_of(&state.args.org) {
            state.attach(&channel).await?;
        }
        gauge!(telemetry::ORG_ACTORS).increment(1.0);
        Ok(state)
    }

    async fn post_stop(&self, _me: ActorRef<OrgMsg>, state: &mut OrgState) -> Result<(), ActorProcessingErr> {
        for channel in std::mem::take(&mut state.attached) {
            state.args.backplane.detach(&state.key(&channel));
            gauge!(telemetry::ATTACHED_CHANNELS).decrement(1.0);
        }
        gauge!(telemetry::ORG_ACTORS).decrement(1.0);
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<OrgMsg>,
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
                if !state.args.hub.has_subscribers(&state.key(&channel)) {
                    state.detach(&channel);
                }
            }
        }
        Ok(())
    }
}

/// How a connection reaches its org's actor. It survives the actor being
/// restarted: on a failed call it looks the current actor up again.
pub struct OrgHandle {
    org: OrgId,
    orgs: ActorRef<crate::orgs::OrgsMsg>,
    current: parking_lot::Mutex<ActorRef<OrgMsg>>,
}

impl OrgHandle {
    pub(crate) fn new(org: OrgId, orgs: ActorRef<crate::orgs::OrgsMsg>, actor: ActorRef<OrgMsg>) -> Self {
        Self {
            org,
            orgs,
            current: parking_lot::Mutex::new(actor),
        }
    }

    pub fn org(&self) -> &OrgId {
        &self.org
    }

    /// Attaches `channel` to the backplane (idempotent).
    pub async fn attach(&self, channel: &ChannelName) -> Result<(), String> {
        const ATTEMPTS: usize = 3;
        for _ in 0..ATTEMPTS {
            let actor = self.current.lock().clone();
            match ractor::call!(actor, OrgMsg::Attach, channel.clone()) {
                Ok(result) => return result,
                Err(_) => self.refresh().await,
            }
        }
        Err(format!("org actor for {} is unavailable", self.org))
    }

    /// Asks the org to detach `channel` if nobody here subscribes to it any more.
    pub fn reconcile(&self, channel: &ChannelName) {
        // A dead actor needs no reconciling: its successor rebuilds from the hub.
        let _ = self.current.lock().cast(OrgMsg::Reconcile(channel.clone()));
    }

    async fn refresh(&self) {
        // The supervisor may not have processed the failure yet; give it a moment.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        if let Ok(Some(actor)) = ractor::call!(self.orgs, crate::orgs::OrgsMsg::Lookup, self.org.clone()) {
            *self.current.lock() = actor;
        }
    }
}
