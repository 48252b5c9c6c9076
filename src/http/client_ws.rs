//! `GET /v1/ws`: authenticate, check the origin and the connection limit,
//! answer 101, then hand the raw socket to a connection task. Every refusal
//! happens before the upgrade, as a plain HTTP error.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::Response;
use switchboard_actors::{CloseReason, Sink};
use switchboard_proto::ErrorCode;

use super::sockets::{Side, switch, take_org_place};
use super::{ApiError, App};
use crate::auth::{
    AuthError, LEEWAY_SECS, Verified, claimed_org, verify_client_token, verify_client_token_with,
};
use crate::ws::handshake::{Credential, check_upgrade, credential};

/// Verifies a client JWT with its org's keys, fetching the keys the org
/// publishes (JWKS) when the token is signed with none of the others.
async fn verify_token(app: &App, token: &str) -> Result<Verified, AuthError> {
    let first = verify_client_token(app.directory.as_ref(), token);
    let Err(AuthError::Invalid) = first else {
        return first;
    };
    let Some(org) = claimed_org(token).and_then(|o| app.directory.get(&o)) else {
        return first;
    };
    if org.jwks_url.is_none() {
        return first;
    }
    let kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid);
    let published = app.jwks.keys(&org, kid.as_deref()).await;
    verify_client_token_with(app.directory.as_ref(), token, &published)
}

#[utoipa::path(get, path = "/v1/ws", tag = "clients",
    params(("token" = Option<String>, Query, description = "a client JWT"), ("ticket" = Option<String>, Query, description = "a ticket")),
    responses((status = 101, description = "switching to the client protocol"), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 426, description = "not a WebSocket upgrade", body = crate::http::openapi::ErrorBody), (status = 429, description = "a limit was reached", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn upgrade(State(app): State<Arc<App>>, req: Request<Body>) -> Result<Response, ApiError> {
    let key = check_upgrade(&req)?;
    // A JWT bounds the connection's life; a ticket only its start (it is
    // minted for seconds, to open one connection).
    let (verified, close_at) = match credential(&req)? {
        Credential::Ticket(ticket) => (crate::tickets::verify(app.directory.as_ref(), &ticket)?, None),
        Credential::Token(token) => {
            let verified = verify_token(&app, &token).await?;
            let close_at = verified.expires_at.saturating_add(LEEWAY_SECS);
            (verified, Some(close_at))
        }
    };
    let origin = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if !verified.org.origin_allowed(origin) {
        return Err(ApiError::of(
            ErrorCode::Forbidden,
            "this origin may not connect to this org",
        ));
    }
    let identity = verified.identity;
    let org_place = take_org_place(&app, &identity.org, &identity.subject, &verified.org.limits)?;
    if let Some(id) = &verified.single_use {
        // Last, so a refused attempt does not use it up: the first connect
        // with a single-use ticket marks it used, on every pod.
        match app
            .registry
            .use_ticket(&identity.org, id, verified.expires_at)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Err(crate::auth::refuse("single-use ticket used again").into()),
            Err(e) => return Err(e.into()),
        }
    }
    app.open_org(&identity.org).await;
    switch(
        &app,
        req,
        &key,
        Side::Client,
        Some(org_place),
        move |app, sink| async move {
            if let Some(at) = close_at {
                sink.expire_at(at);
            }
            match app.services.open(identity, sink.clone()).await {
                Ok(conn) => Some(conn),
                Err(e) => {
                    tracing::warn!(error = %e, "connection refused after upgrade");
                    sink.abort(CloseReason::GoingAway);
                    None
                }
            }
        },
    )
}
