//! [`RoleLeases`]: who holds an operator role across pods, and how a frame
//! reaches a session another pod hosts. One pod ([`LocalOnly`]) needs
//! neither: its org actor's role table is the whole truth. Cluster mode
//! implements both over NATS in `src`.

use switchboard_proto::{ChannelName, OrgId, PreparedFrame, RoleName, Sid, Target, TurnId};

use crate::backplane::BoxFuture;
use crate::session::SessionInfo;
use crate::session_store::SessionRecord;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Held by a live session (on this pod or another).
    #[error("roles already held by a live session")]
    Held(Vec<RoleName>),
    /// The lease store cannot be reached; retryable.
    #[error("role leases unavailable: {0}")]
    Unavailable(String),
}

/// What became of a frame handed to another pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarded {
    /// The session took it (its socket or its buffer).
    Delivered,
    /// The session is away and its buffer is full.
    Offline,
    /// No live session for the target anywhere.
    NotFound,
    /// The other pod could not be reached.
    Unavailable,
}

/// What one pod asks of the pod hosting a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    Info,
    End,
}

pub trait RoleLeases: Send + Sync + 'static {
    /// Claims the roles of the new session `record` on every pod, and makes
    /// the session reachable (and adoptable) from other pods. Either every
    /// role is claimed or none is.
    fn claim<'a>(&'a self, record: &'a SessionRecord) -> BoxFuture<'a, Result<(), LeaseError>>;

    /// Moves the session `record` (hosted by another pod, or by a pod that
    /// died) here: its roles' leases follow it, and the pod that hosted it
    /// lets it go, handing over its live turns (returned).
    fn adopt<'a>(
        &'a self,
        record: &'a SessionRecord,
    ) -> BoxFuture<'a, Result<Vec<(TurnId, ChannelName)>, LeaseError>>;

    /// The record of a session hosted by any pod.
    fn lookup<'a>(&'a self, sid: &'a Sid) -> BoxFuture<'a, Option<SessionRecord>>;

    /// Gives back what [`RoleLeases::claim`] took for `sid` (its session ended).
    fn release(&self, org: &OrgId, sid: &Sid);

    /// Asks the pod hosting the session `record` names for its state, or
    /// to end it; a session whose pod died is answered for (and ended)
    /// from its record.
    fn ask<'a>(
        &'a self,
        record: &'a SessionRecord,
        ask: Ask,
    ) -> BoxFuture<'a, Result<SessionInfo, LeaseError>>;

    /// Keeps `frames` for the session `sid` while its operator is away,
    /// where whichever pod it reconnects to finds them; returns how many
    /// of them, from the first, were kept (the caller keeps the rest).
    fn park<'a>(&'a self, org: &'a OrgId, sid: &'a Sid, frames: &'a [PreparedFrame]) -> BoxFuture<'a, usize>;

    /// Takes what was parked for `sid`, oldest first.
    fn unpark<'a>(
        &'a self,
        org: &'a OrgId,
        sid: &'a Sid,
    ) -> BoxFuture<'a, Result<Vec<PreparedFrame>, LeaseError>>;

    /// Hands `frame` to the session `to` names on another pod.
    fn forward<'a>(
        &'a self,
        org: &'a OrgId,
        to: &'a Target,
        frame: PreparedFrame,
    ) -> BoxFuture<'a, Forwarded>;
}

/// One pod: roles are the org actor's alone, and nothing is elsewhere.
pub struct LocalOnly;

impl RoleLeases for LocalOnly {
    fn claim<'a>(&'a self, _: &'a SessionRecord) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async { Ok(()) })
    }

    fn adopt<'a>(
        &'a self,
        _: &'a SessionRecord,
    ) -> BoxFuture<'a, Result<Vec<(TurnId, ChannelName)>, LeaseError>> {
        Box::pin(async { Err(LeaseError::Unavailable("one pod: nothing to adopt from".into())) })
    }

    fn lookup<'a>(&'a self, _: &'a Sid) -> BoxFuture<'a, Option<SessionRecord>> {
        Box::pin(async { None })
    }

    fn release(&self, _: &OrgId, _: &Sid) {}

    fn ask<'a>(&'a self, _: &'a SessionRecord, _: Ask) -> BoxFuture<'a, Result<SessionInfo, LeaseError>> {
        Box::pin(async { Err(LeaseError::Unavailable("one pod: no other host".into())) })
    }

    /// Its sessions keep their frames in memory: nobody else could take them.
    fn park<'a>(&'a self, _: &'a OrgId, _: &'a Sid, _: &'a [PreparedFrame]) -> BoxFuture<'a, usize> {
        Box::pin(async { 0 })
    }

    fn unpark<'a>(
        &'a self,
        _: &'a OrgId,
        _: &'a Sid,
    ) -> BoxFuture<'a, Result<Vec<PreparedFrame>, LeaseError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn forward<'a>(&'a self, _: &'a OrgId, _: &'a Target, _: PreparedFrame) -> BoxFuture<'a, Forwarded> {
        Box::pin(async { Forwarded::NotFound })
    }
}
