//! [`RoleLeases`]: who holds an operator role across pods, and how a frame
//! reaches a session another pod hosts. One pod ([`LocalOnly`]) needs
//! neither: its org actor's role table is the whole truth. Cluster mode
//! implements both over NATS in `src`.

use switchboard_proto::{OrgId, PreparedFrame, RoleName, Sid, Target};

use crate::backplane::BoxFuture;

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

pub trait RoleLeases: Send + Sync + 'static {
    /// Claims `roles` for the new session `sid` on every pod, and makes the
    /// session reachable from other pods. Either every role is claimed or
    /// none is.
    fn claim<'a>(
        &'a self,
        org: &'a OrgId,
        sid: &'a Sid,
        roles: &'a [RoleName],
    ) -> BoxFuture<'a, Result<(), LeaseError>>;

    /// Gives back what [`RoleLeases::claim`] took for `sid` (its session ended).
    fn release(&self, org: &OrgId, sid: &Sid);

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
    fn claim<'a>(
        &'a self,
        _: &'a OrgId,
        _: &'a Sid,
        _: &'a [RoleName],
    ) -> BoxFuture<'a, Result<(), LeaseError>> {
        Box::pin(async { Ok(()) })
    }

    fn release(&self, _: &OrgId, _: &Sid) {}

    fn forward<'a>(&'a self, _: &'a OrgId, _: &'a Target, _: PreparedFrame) -> BoxFuture<'a, Forwarded> {
        Box::pin(async { Forwarded::NotFound })
    }
}
