//! Operator sessions over HTTP: mint (`POST /v1/operators`, org API key),
//! list (`GET /v1/operators`), inspect and end (`GET`/`DELETE
//! /v1/operators/:sid`, the session's bearer token) and connect (`GET
//! /v1/operators/:sid/ws`). An unknown sid is 404 before any token is
//! compared; a missing or wrong token is 401.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use switchboard_actors::{CloseReason, LeaseError, MintError, SessionRecord, Sink};
use switchboard_proto::{ErrorCode, RoleName, Sid};

use super::sockets::{Side, switch};
use super::{ApiError, App, parse_json, read_body};
use crate::auth::{bearer, random_token, verify_api_key};
use crate::directory::Scope;
use crate::nats::presence::Hosted;
use crate::ws::handshake::check_upgrade;

/// Roles one session may claim.
const MAX_ROLES: usize = 16;
/// Largest mint body: a handful of role names.
const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MintBody {
    #[serde(default)]
    roles: Vec<RoleName>,
}

#[utoipa::path(post, path = "/v1/operators", tag = "operators", security(("bearer" = [])),
    request_body(content = serde_json::Value, description = "roles to claim: {\"roles\": [..]} (may be empty)"),
    responses((status = 201, description = "the session and its token, shown once", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 409, description = "conflict", body = crate::http::openapi::ErrorBody), (status = 413, description = "body too large", body = crate::http::openapi::ErrorBody), (status = 429, description = "a limit was reached", body = crate::http::openapi::ErrorBody), (status = 503, description = "roles cannot be checked across pods right now", body = crate::http::openapi::ErrorBody)))]
pub async fn mint(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let org = verify_api_key(app.directory.as_ref(), bearer(&headers), None, Scope::Operators)?;
    let bytes = read_body(body, MAX_BODY_BYTES).await?;
    let parsed: MintBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        MintBody::default()
    } else {
        parse_json(&bytes, r#"{"roles": ["<role>", ...]}"#)?
    };
    let mut roles = parsed.roles;
    roles.sort();
    roles.dedup();
    if roles.len() > MAX_ROLES {
        return Err(ApiError::of(
            ErrorCode::ValidationError,
            format!("at most {MAX_ROLES} roles per session"),
        ));
    }
    if let Some(max) = org.limits.max_operator_sessions
        && app.services.sessions.of_org(&org.id).await.len() >= max as usize
    {
        return Err(ApiError::of(
            ErrorCode::LimitExceeded,
            format!("this org holds at most {max} operator sessions"),
        ));
    }
    let sid = Sid::new(&format!("op-{}", uuid::Uuid::new_v4()))
        .map_err(|e| ApiError::of(ErrorCode::InternalError, e.to_string()))?;
    let token =
        random_token(32).map_err(|_| ApiError::of(ErrorCode::InternalError, "no randomness available"))?;
    let record = SessionRecord {
        sid: sid.clone(),
        org: org.id.clone(),
        token_sha256: Sha256::digest(token.as_bytes()).into(),
        roles: roles.clone(),
        rollup: Arc::clone(&org.rollup),
        turns: Vec::new(),
        minted_by: bearer(&headers)
            .and_then(|k| k.split('.').nth(2))
            .map(str::to_owned),
    };
    match app.services.sessions.mint(record).await {
        Ok(()) => Ok((
            StatusCode::CREATED,
            Json(json!({"sid": sid, "token": token, "roles": roles})),
        )
            .into_response()),
        Err(e @ MintError::Conflict(_)) => {
            let message = e.to_string();
            let MintError::Conflict(taken) = e else {
                unreachable!("matched above")
            };
            Err(ApiError::of(ErrorCode::Conflict, message).with("roles", json!(taken)))
        }
        Err(e @ MintError::TooMany(_)) => Err(ApiError::of(ErrorCode::LimitExceeded, e.to_string())),
        Err(MintError::Leases(detail)) => {
            tracing::warn!(error = %detail, "session mint: role leases unavailable");
            Err(ApiError::of(
                ErrorCode::Unavailable,
                "roles cannot be checked across pods right now; retry",
            ))
        }
        Err(MintError::Org(e)) => {
            tracing::error!(error = %e, "session mint failed");
            Err(ApiError::of(e.code(), e.public_message()))
        }
    }
}

#[utoipa::path(get, path = "/v1/operators", tag = "operators", security(("bearer" = [])),
    responses((status = 200, description = "the org's sessions", body = serde_json::Value), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 503, description = "the pods hosting sessions cannot be reached right now", body = crate::http::openapi::ErrorBody)))]
pub async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let org = verify_api_key(app.directory.as_ref(), bearer(&headers), None, Scope::Operators)?;
    let sessions = match &app.accounts {
        Some(accounts) => accounts.sessions(&org.id).await.map_err(|e| {
            tracing::warn!(org = %org.id, error = %e, "operator sessions across pods failed");
            ApiError::of(
                ErrorCode::Unavailable,
                "sessions cannot be listed right now; retry",
            )
        })?,
        None => app
            .services
            .sessions
            .of_org(&org.id)
            .await
            .into_iter()
            .map(Hosted::from)
            .collect(),
    };
    Ok(Json(json!({ "sessions": sessions })).into_response())
}

fn not_found() -> ApiError {
    ApiError::of(ErrorCode::NotFound, "no such operator session")
}

fn host_unavailable(e: LeaseError) -> ApiError {
    tracing::warn!(error = %e, "operator session: its host cannot be reached");
    ApiError::of(
        ErrorCode::Unavailable,
        "the pod hosting the session cannot be reached right now; retry",
    )
}

/// The record of the session `sid` names (hosted by any pod), if its
/// bearer token is right: 404 for an unknown sid (before any token is
/// looked at), 401 for a missing or wrong token.
async fn authorize(app: &App, sid: &str, headers: &HeaderMap) -> Result<SessionRecord, ApiError> {
    let sid = Sid::new(sid).map_err(|_| not_found())?;
    let record = app.services.sessions.lookup(&sid).await.ok_or_else(not_found)?;
    let presented = bearer(headers)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::of(ErrorCode::Unauthorized, "missing or invalid credentials"))?;
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    if !bool::from(digest.ct_eq(&record.token_sha256)) {
        return Err(ApiError::of(
            ErrorCode::Unauthorized,
            "missing or invalid credentials",
        ));
    }
    Ok(record)
}

/// Hosts here the session of `record`, which another pod hosts (or
/// hosted): its operator reconnected to this pod.
async fn adopt(app: &App, record: SessionRecord) -> Result<Sid, ApiError> {
    let sid = record.sid.clone();
    match app.services.sessions.adopt(record).await {
        Ok(()) => Ok(sid),
        Err(e @ MintError::Conflict(_)) => Err(ApiError::of(ErrorCode::Conflict, e.to_string())),
        Err(e) => {
            tracing::warn!(sid = %sid, error = %e, "cannot adopt an operator session");
            Err(ApiError::of(
                ErrorCode::Unavailable,
                "the session cannot move here right now; retry",
            ))
        }
    }
}

#[utoipa::path(get, path = "/v1/operators/{sid}", tag = "operators", security(("bearer" = [])),
    params(("sid" = String, Path)),
    responses((status = 200, description = "the session", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 503, description = "the pods hosting sessions cannot be reached right now", body = crate::http::openapi::ErrorBody)))]
pub async fn get(
    State(app): State<Arc<App>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = authorize(&app, &sid, &headers).await?;
    let info = app
        .services
        .sessions
        .info(&record.sid)
        .await
        .map_err(host_unavailable)?
        .ok_or_else(not_found)?;
    Ok(Json(Hosted::from(info)).into_response())
}

#[utoipa::path(delete, path = "/v1/operators/{sid}", tag = "operators", security(("bearer" = [])),
    params(("sid" = String, Path)),
    responses((status = 204, description = "ended"), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 503, description = "the pods hosting sessions cannot be reached right now", body = crate::http::openapi::ErrorBody)))]
pub async fn delete(
    State(app): State<Arc<App>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = authorize(&app, &sid, &headers).await?;
    let ended = app
        .services
        .sessions
        .end_anywhere(&record.sid)
        .await
        .map_err(host_unavailable)?;
    if !ended {
        return Err(not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/v1/operators/{sid}/ws", tag = "operators", security(("bearer" = [])),
    params(("sid" = String, Path)),
    responses((status = 101, description = "switching to the operator protocol"), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 426, description = "not a WebSocket upgrade", body = crate::http::openapi::ErrorBody), (status = 429, description = "a limit was reached", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn connect(
    State(app): State<Arc<App>>,
    Path(sid): Path<String>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let record = authorize(&app, &sid, req.headers()).await?;
    let sid = match app.services.sessions.record(&record.sid) {
        Some(_) => record.sid,
        // Cluster mode: a session another pod hosts (or hosted) moves here.
        None => adopt(&app, record).await?,
    };
    let key = check_upgrade(&req)?;
    switch(
        &app,
        req,
        &key,
        Side::Operator,
        None,
        move |app, sink| async move {
            let link = app.services.sessions.attach(&sid, sink.clone()).await;
            if link.is_none() {
                sink.abort(CloseReason::SessionEnded);
            }
            link
        },
    )
}
