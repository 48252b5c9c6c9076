//! What both WebSocket routes share after authentication: the readiness and
//! connection-limit checks, the 101 answer, and handing the raw socket, once
//! hyper lets go of it, to a supervised task.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{HeaderValue, Request};
use axum::response::Response;
use switchboard_actors::FrameHandler;
use switchboard_proto::ErrorCode;

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
            drop(place);
        });
    });
    Ok(switching_protocols(key))
}
