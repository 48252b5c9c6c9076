//! What both WebSocket routes share after authentication: the readiness and
//! connection-limit checks, the 101 answer, and handing the raw socket, once
//! hyper lets go of it, to a supervised task.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{HeaderValue, Request};
use axum::response::Response;
use parking_lot::Mutex;
use switchboard_actors::FrameHandler;
use switchboard_proto::{ErrorCode, OrgId, Subject};

use crate::registry::model::OrgLimits;

use super::{ApiError, App};
use crate::ws::handshake::{switching_protocols, take_socket};
use crate::ws::{Socket, task};

/// Holds one of `max_connections` places until dropped.
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Live client connections per org and per subject, for the org's limits.
#[derive(Default)]
pub struct OrgConns {
    counts: Mutex<HashMap<(OrgId, Option<Subject>), u32>>,
}

impl OrgConns {
    /// Whether `org` has a client connection open here.
    pub fn has(&self, org: &OrgId) -> bool {
        self.counts.lock().contains_key(&(org.clone(), None))
    }
}

/// Holds a connection's place in its org's counts until dropped.
pub(super) struct OrgPlace {
    conns: Arc<OrgConns>,
    org: OrgId,
    subject: Subject,
}

impl Drop for OrgPlace {
    fn drop(&mut self) {
        let mut counts = self.conns.counts.lock();
        for key in [
            (self.org.clone(), None),
            (self.org.clone(), Some(self.subject.clone())),
        ] {
            if let Some(n) = counts.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&key);
                }
            }
        }
    }
}

/// Takes a place for `subject` in `org`, within the org's limits.
pub(super) fn take_org_place(
    app: &App,
    org: &OrgId,
    subject: &Subject,
    limits: &OrgLimits,
) -> Result<OrgPlace, ApiError> {
    let mut counts = app.org_conns.counts.lock();
    let in_org = counts.get(&(org.clone(), None)).copied().unwrap_or(0);
    let by_subject_key = (org.clone(), Some(subject.clone()));
    let of_subject = counts.get(&by_subject_key).copied().unwrap_or(0);
    if let Some(max) = limits.max_connections.filter(|max| in_org >= *max) {
        return Err(ApiError::of(
            ErrorCode::LimitExceeded,
            format!("this org allows {max} connections at once"),
        ));
    }
    if let Some(max) = limits
        .max_connections_per_subject
        .filter(|max| of_subject >= *max)
    {
        return Err(ApiError::of(
            ErrorCode::LimitExceeded,
            format!("this subject may hold {max} connections at once"),
        ));
    }
    counts.insert((org.clone(), None), in_org + 1);
    counts.insert(by_subject_key, of_subject + 1);
    Ok(OrgPlace {
        conns: Arc::clone(&app.org_conns),
        org: org.clone(),
        subject: subject.clone(),
    })
}

fn take_place(app: &App) -> Option<Place> {
    let taken = app.sockets.fetch_add(1, Ordering::AcqRel);
    let place = Place(Arc::clone(&app.sockets));
    (taken < app.max_connections).then_some(place)
}

/// Which side of the protocol a socket serves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Client,
    /// An operator socket: what it never writes goes back to its session.
    Operator,
}

/// Answers 101 and, once the socket is ours, runs `open` to get its frame
/// handler (`None` refuses it; `open` has closed the socket) and then the
/// socket's task under supervision.
pub(super) fn switch<H, F, Fut>(
    app: &Arc<App>,
    mut req: Request<Body>,
    key: &HeaderValue,
    side: Side,
    org_place: Option<OrgPlace>,
    open: F,
) -> Result<Response, ApiError>
where
    H: FrameHandler,
    F: FnOnce(Arc<App>, Arc<Socket>) -> Fut + Send + 'static,
    Fut: Future<Output = Option<H>> + Send,
{
    if !app.is_ready() {
        return Err(ApiError::of(
            ErrorCode::Unavailable,
            "this server is draining; reconnect elsewhere",
        ));
    }
    let place = take_place(app).ok_or_else(|| {
        ApiError::of(
            ErrorCode::Unavailable,
            "this server is at its connection limit; retry elsewhere",
        )
    })?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let app = Arc::clone(app);
    app.clone().tasks.spawn(async move {
        let Some((stream, initial)) = take_socket(on_upgrade).await else {
            return;
        };
        let sink = Socket::new(
            stream,
            app.services.limits.outbound_queue_bytes,
            app.ws.heartbeat,
            side == Side::Operator,
        );
        let Some(handler) = open(Arc::clone(&app), Arc::clone(&sink)).await else {
            return;
        };
        let settings = app.ws;
        app.services.run(handler, move |handler| async move {
            task::run(sink, handler, initial, settings).await;
            drop((place, org_place));
        });
    });
    Ok(switching_protocols(key))
}
