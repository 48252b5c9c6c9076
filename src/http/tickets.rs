//! `POST /v1/orgs/:org/tickets` with an org API key (`tickets` scope): a
//! short-lived ticket a browser connects with (`/v1/ws?ticket=`), for one
//! subject and its channel grants.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use switchboard_proto::{ChannelPattern, ErrorCode, Grants, OrgId, Subject, TargetPattern};

use super::{ApiError, App, parse_json, read_body};
use crate::auth::{bearer, now_secs, verify_api_key};
use crate::directory::Scope;
use crate::tickets::{DEFAULT_TTL_SECS, TTL_SECS, TicketClaims};

/// Largest request body: grants are a handful of patterns.
const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TicketBody {
    sub: Subject,
    #[serde(default)]
    subscribe: Vec<ChannelPattern>,
    #[serde(default)]
    publish: Vec<ChannelPattern>,
    #[serde(default)]
    send: Vec<TargetPattern>,
    ttl_s: Option<u64>,
    /// Good for one connection only.
    #[serde(default)]
    single_use: bool,
}

#[utoipa::path(post, path = "/v1/orgs/{org}/tickets", tag = "clients", security(("bearer" = [])), params(("org" = String, Path, description = "the org id", example = "demo")),
    request_body(content = serde_json::Value, description = "{\"sub\", \"subscribe\"?, \"publish\"?, \"send\"?, \"ttl_s\"?, \"single_use\"?}"),
    responses((status = 201, description = "the ticket", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 413, description = "body too large", body = crate::http::openapi::ErrorBody), (status = 500, description = "internal error", body = crate::http::openapi::ErrorBody)))]
pub async fn mint(
    State(app): State<Arc<App>>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let org = OrgId::new(&org).map_err(|e| ApiError::of(ErrorCode::ValidationError, e.to_string()))?;
    let record = verify_api_key(
        app.directory.as_ref(),
        bearer(&headers),
        Some(&org),
        Scope::Tickets,
    )?;
    let bytes = read_body(body, MAX_BODY_BYTES).await?;
    let body: TicketBody = parse_json(
        &bytes,
        r#"{"sub", "subscribe"?, "publish"?, "send"?, "ttl_s"?, "single_use"?}"#,
    )?;
    let ttl = body.ttl_s.unwrap_or(DEFAULT_TTL_SECS);
    if !TTL_SECS.contains(&ttl) {
        return Err(ApiError::of(
            ErrorCode::ValidationError,
            format!(
                "ttl_s must be between {} and {} seconds",
                TTL_SECS.start(),
                TTL_SECS.end()
            ),
        ));
    }
    let expires_at = now_secs() + ttl;
    let claims = TicketClaims {
        org,
        sub: body.sub,
        grants: Grants {
            subscribe: body.subscribe,
            publish: body.publish,
            send: body.send,
        },
        id: uuid::Uuid::new_v4().simple().to_string(),
        iat: now_secs(),
        once: body.single_use,
    };
    let ticket = crate::tickets::mint(&record, &claims, expires_at).map_err(|e| {
        tracing::error!(error = %e, "ticket mint failed");
        ApiError::of(ErrorCode::InternalError, "the ticket could not be made")
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"ticket": ticket, "id": claims.id, "expires_at": expires_at})),
    )
        .into_response())
}
