//! `/v1/orgs/:org/publishers`: NATS publishers of an org (cluster mode).
//! Creating one answers its `.creds` file, once; the user in it may only
//! publish on `pub.<channel>` in the org's own NATS account.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use switchboard_proto::{ChannelPattern, ErrorCode, subjects};

use super::admin::{MAX_BODY_BYTES, OnOrg, Reads, Writes};
use super::{ApiError, App, parse_json, read_body};
use crate::nats::accounts::{AccountError, Accounts};
use crate::nats::publishers::PublisherError;

/// Longest publisher name, in bytes.
const MAX_NAME: usize = 64;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreatePublisher {
    /// Letters, digits, `-`, `_` and `.`; unique in the org.
    name: String,
    /// Channel patterns it may publish on (`*` one token, `>` the rest); all channels when left out.
    #[serde(default)]
    channels: Vec<String>,
}

impl From<PublisherError> for ApiError {
    fn from(e: PublisherError) -> Self {
        match e {
            PublisherError::Exists(name) => {
                ApiError::of(ErrorCode::Conflict, format!("publisher {name:?} already exists"))
            }
            PublisherError::NotFound(name) => {
                ApiError::of(ErrorCode::NotFound, format!("publisher {name:?} not found"))
            }
            PublisherError::Account(AccountError::Registry(e)) => e.into(),
            PublisherError::Account(e) => {
                tracing::error!(error = %e, "publisher change not made");
                ApiError::of(ErrorCode::Unavailable, "NATS did not take the change; try again")
            }
        }
    }
}

fn accounts(app: &App) -> Result<&Arc<Accounts>, ApiError> {
    app.accounts.as_ref().ok_or_else(|| {
        ApiError::of(
            ErrorCode::Conflict,
            "publishers on NATS need cluster mode (serve --nats-url URL --nats-dir DIR)",
        )
    })
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::of(
            ErrorCode::ValidationError,
            format!("name: 1 to {MAX_NAME} letters, digits, '-', '_' or '.'"),
        ))
    }
}

#[utoipa::path(post, path = "/v1/orgs/{org}/publishers", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path, description = "the org id", example = "demo")),
    request_body = CreatePublisher,
    responses((status = 201, description = "created; its .creds are shown once", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 409, description = "exists, or not in cluster mode", body = crate::http::openapi::ErrorBody), (status = 413, description = "body too large", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn create(
    State(app): State<Arc<App>>,
    OnOrg { org, actor }: Writes,
    body: Body,
) -> Result<Response, ApiError> {
    let accounts = accounts(&app)?;
    let bytes = read_body(body, MAX_BODY_BYTES).await?;
    let body: CreatePublisher = parse_json(&bytes, r#"{"name", "channels"?: ["<pattern>"]}"#)?;
    check_name(&body.name)?;
    let channels = body
        .channels
        .iter()
        .map(|c| ChannelPattern::new(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::of(ErrorCode::ValidationError, format!("channels: {e}")))?;
    let made = accounts.create_publisher(&org, &body.name, &channels).await?;
    app.registry
        .audit(&org, &actor.name(), "publisher.create", &body.name)
        .await;
    let mut view = json!(made.doc);
    view["creds"] = json!(made.creds);
    view["subject_prefix"] = json!(subjects::PUBLISH_PREFIX);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[utoipa::path(get, path = "/v1/orgs/{org}/publishers", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path, description = "the org id", example = "demo")),
    responses((status = 200, description = "the org's publishers (no secrets)", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 409, description = "not in cluster mode", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn list(State(app): State<Arc<App>>, OnOrg { org, .. }: Reads) -> Result<Response, ApiError> {
    let publishers = accounts(&app)?.publishers(&org).await?;
    Ok(Json(json!({ "publishers": publishers })).into_response())
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/publishers/{name}", tag = "orgs", security(("bearer" = [])),
    params(("org" = String, Path, description = "the org id", example = "demo"), ("name" = String, Path)),
    responses((status = 204, description = "revoked; its NATS connection was cut"), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 409, description = "not in cluster mode", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn revoke(
    State(app): State<Arc<App>>,
    OnOrg { org, actor }: Writes,
    Path((_, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    accounts(&app)?.revoke_publisher(&org, &name).await?;
    app.registry
        .audit(&org, &actor.name(), "publisher.revoke", &name)
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
