//! What outlives an operator session's actor: its record (org, token hash,
//! roles, rollup rules, live turns) in a pod-wide store, so a crashed session
//! restarts where it was and the drain knows how many turns are still live.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use switchboard_proto::{ChannelName, ChannelPattern, OrgId, RoleName, Sid, TurnId};

/// Coalesce a turn's tokens on matching channels into one frame per window.
#[derive(Clone, Debug)]
pub struct RollupRule {
    pub channels: ChannelPattern,
    pub window: Duration,
}

/// What outlives a session actor: enough to restart it after a crash.
#[derive(Clone, Debug)]
pub struct SessionRecord {
    pub sid: Sid,
    pub org: OrgId,
    /// SHA-256 of the session's bearer token; the token itself is never kept.
    pub token_sha256: [u8; 32],
    pub roles: Vec<RoleName>,
    pub rollup: Arc<[RollupRule]>,
    /// Live turns, so a restarted session can still finish or fail them.
    pub turns: Vec<(TurnId, ChannelName)>,
    /// The API key that minted it: revoking the key ends the session.
    pub minted_by: Option<String>,
}

/// Every session record of this pod, by sid.
#[derive(Default)]
pub struct SessionStore {
    records: DashMap<Sid, SessionRecord>,
}

impl SessionStore {
    pub fn get(&self, sid: &Sid) -> Option<SessionRecord> {
        self.records.get(sid).map(|r| r.clone())
    }

    pub(crate) fn insert(&self, record: SessionRecord) {
        self.records.insert(record.sid.clone(), record);
    }

    /// Removes a record; true if there was one.
    pub(crate) fn remove(&self, sid: &Sid) -> bool {
        self.records.remove(sid).is_some()
    }

    /// Every session of this pod.
    pub(crate) fn sids(&self) -> Vec<Sid> {
        self.records.iter().map(|r| r.sid.clone()).collect()
    }

    /// Live turns across every session of this pod.
    pub fn live_turns(&self) -> usize {
        self.records.iter().map(|r| r.turns.len()).sum()
    }

    pub(crate) fn of_org(&self, org: &OrgId) -> Vec<SessionRecord> {
        self.records
            .iter()
            .filter(|r| &r.org == org)
            .map(|r| r.clone())
            .collect()
    }

    pub(crate) fn add_turn(&self, sid: &Sid, turn: &TurnId, channel: &ChannelName) {
        if let Some(mut r) = self.records.get_mut(sid) {
            r.turns.push((turn.clone(), channel.clone()));
        }
    }

    pub(crate) fn remove_turn(&self, sid: &Sid, turn: &TurnId) {
        if let Some(mut r) = self.records.get_mut(sid) {
            r.turns.retain(|(t, _)| t != turn);
        }
    }
}
