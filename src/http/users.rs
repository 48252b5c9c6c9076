//! `/v1/orgs/:org/users`: an org's users over HTTP. Creating one is
//! idempotent (an existing user is returned as it is, with no secret); its
//! initial password and token are in the answer that made it, once.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use switchboard_proto::ErrorCode;

use super::admin::{MAX_BODY_BYTES, OnOrg, Reads, Writes};
use super::{ApiError, App, parse_json, read_body};
use crate::registry::model::Role;
use crate::registry::users::{NewUser, UserView};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUser {
    username: String,
    display_name: Option<String>,
    email: Option<String>,
    #[serde(default)]
    role: Role,
}

#[utoipa::path(post, path = "/v1/orgs/{org}/users", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path, description = "the org id", example = "demo")),
    request_body = CreateUser,
    responses((status = 201, description = "created; its password and token are shown once", body = serde_json::Value),
        (status = 200, description = "it existed: returned as it is, no secret", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 413, description = "body too large", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn create_user(
    State(app): State<Arc<App>>,
    OnOrg { org, actor }: Writes,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, MAX_BODY_BYTES).await?;
    let body: CreateUser = parse_json(&bytes, r#"{"username", "display_name"?, "email"?, "role"?}"#)?;
    let made = app
        .registry
        .create_user(
            &org,
            NewUser {
                username: body.username,
                display_name: body.display_name,
                email: body.email,
                role: body.role,
            },
            &actor.name(),
        )
        .await?;
    let mut view = json!(made.user);
    Ok(match made.secrets {
        Some((password, token)) => {
            view["initial_password"] = json!(password);
            view["token"] = json!(token);
            view["token_set"] = json!(true);
            view["created"] = json!(true);
            (StatusCode::CREATED, Json(view)).into_response()
        }
        None => {
            view["created"] = json!(false);
            (StatusCode::OK, Json(view)).into_response()
        }
    })
}

#[derive(Deserialize)]
pub struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/orgs/{org}/users", tag = "orgs", security(("bearer" = [])),
    params(("org" = String, Path, description = "the org id", example = "demo"), ("after" = Option<String>, Query, description = "the last username of the previous page"), ("limit" = Option<usize>, Query, description = "at most 1000; default 100")),
    responses((status = 200, description = "users in username order", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn list_users(
    State(app): State<Arc<App>>,
    OnOrg { org, .. }: Reads,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::of(ErrorCode::ValidationError, e.body_text()))?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let users = app.registry.users(&org, page.after.as_deref(), limit).await?;
    let next = (users.len() == limit)
        .then(|| users.last().map(|u| u.username.clone()))
        .flatten();
    Ok(Json(json!({"users": users, "next": next})).into_response())
}

#[utoipa::path(get, path = "/v1/orgs/{org}/users/{user}", tag = "orgs", security(("bearer" = [])),
    params(("org" = String, Path, description = "the org id", example = "demo"), ("user" = String, Path, description = "the user id")),
    responses((status = 200, description = "the user", body = UserView), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn get_user(
    State(app): State<Arc<App>>,
    OnOrg { org, .. }: Reads,
    Path((_, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let user = app
        .registry
        .user(&org, &user)
        .await?
        .ok_or_else(|| ApiError::of(ErrorCode::NotFound, format!("user {user} not found")))?;
    Ok(Json(json!(UserView::from(&user))).into_response())
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/users/{user}", tag = "orgs", security(("bearer" = [])),
    params(("org" = String, Path, description = "the org id", example = "demo"), ("user" = String, Path, description = "the user id")),
    responses((status = 204, description = "deleted; its token is refused"), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn delete_user(
    State(app): State<Arc<App>>,
    OnOrg { org, actor }: Writes,
    Path((_, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    app.registry.delete_user(&org, &user, &actor.name()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
