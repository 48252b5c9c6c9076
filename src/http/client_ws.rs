//! `GET /v1/ws`: authenticate, check the origin and the connection limit,
//! answer 101, then hand the raw socket to a connection task. Every refusal
//! happens before the upgrade, as a plain HTTP error.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::header;
use axum::response::Response;
use serde::Deserialize;
use switchboard_actors::{CloseReason, Sink};
use switchboard_proto::ErrorCode;

use super::{ApiError, App};
use crate::auth::{bearer, verify_client_token};
use crate::ws::handshake::{check_upgrade, switching_protocols, take_socket};
use crate::ws::{SocketSink, task};

#[derive(Deserialize)]
struct WsQuery {
    token: Option<String>,
}

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

pub async fn upgrade(State(app): State<Arc<App>>, mut req: Request<Body>) -> Result<Response, ApiError> {
    if !app.is_ready() {
        return Err(ApiError::of(
            ErrorCode::Unavailable,
            "this server is draining; reconnect elsewhere",
        ));
    }
    let key = check_upgrade(&req)?;
    let Query(query) = Query::<WsQuery>::try_from_uri(req.uri())
        .map_err(|e| ApiError::of(ErrorCode::ValidationError, e.body_text()))?;
    let token = query
        .token
        .as_deref()
        .or_else(|| bearer(req.headers()))
        .unwrap_or("");
    let verified = verify_client_token(app.directory.as_ref(), token)?;
    let origin = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if !verified.org.origin_allowed(origin) {
        return Err(ApiError::of(
            ErrorCode::Forbidden,
            "this origin may not connect to this org",
        ));
    }
    let place = take_place(&app).ok_or_else(|| {
        ApiError::of(
            ErrorCode::Unavailable,
            "this server is at its connection limit; retry elsewhere",
        )
    })?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let identity = verified.identity;
    let task_app = Arc::clone(&app);
    app.tasks.spawn(async move {
        let app = task_app;
        let Some((stream, initial)) = take_socket(on_upgrade).await else {
            return;
        };
        let sink = Arc::new(SocketSink::new(
            stream,
            app.services.limits.outbound_queue,
            app.ws.heartbeat,
        ));
        match app.services.open(identity, sink.clone()).await {
            Ok(conn) => {
                let settings = app.ws;
                app.services.run(conn, move |conn| async move {
                    task::run(sink, conn, initial, settings).await;
                    drop(place);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "connection refused after upgrade");
                sink.abort(CloseReason::GoingAway);
            }
        }
    });
    Ok(switching_protocols(&key))
}
