//! The admin API: orgs (admin token), and inside an org its users, API keys,
//! ticket keys and audit log (admin token, an org key with the `admin`
//! scope, or an org user's token: owners and admins write, members read).
//! Secrets are in the response that made them and nowhere else. The user
//! routes are in [`super::users`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use switchboard_actors::CloseReason;
use switchboard_proto::{ErrorCode, OrgId};

use super::{ApiError, App, parse_json, read_body};
use crate::auth::{AuthError, bearer, verify_api_key};
use crate::directory::{JwtKeyConfig, Scope};
use crate::registry::RegistryError;
use crate::registry::admin::{AdminError, NewOrg};
use crate::registry::model::{OrgDoc, OrgLimits, StoredJwtKey};

/// Admin bodies are small: names, origins, a few PEM keys.
pub(super) const MAX_BODY_BYTES: usize = 64 * 1024;

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Exists(what) => ApiError::of(ErrorCode::Conflict, format!("{what} already exists")),
            AdminError::NotFound(what) => ApiError::of(ErrorCode::NotFound, format!("{what} not found")),
            AdminError::Invalid(why) => ApiError::of(ErrorCode::ValidationError, why),
            AdminError::Registry(e) => e.into(),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        tracing::error!(error = %e, "registry operation failed");
        ApiError::of(ErrorCode::Unavailable, "the registry is unavailable; retry")
    }
}

/// Who an admin request comes from, as the audit log names them.
pub(super) enum Actor {
    Admin,
    Key(String),
    User(String),
}

impl Actor {
    pub(super) fn name(&self) -> String {
        match self {
            Actor::Admin => "admin".into(),
            Actor::Key(id) => format!("key:{id}"),
            Actor::User(name) => format!("user:{name}"),
        }
    }
}

fn is_admin(app: &App, presented: Option<&str>) -> bool {
    match (&app.admin_token, presented) {
        (Some(token), Some(p)) => bool::from(token.as_bytes().ct_eq(p.as_bytes())),
        _ => false,
    }
}

/// The server's admin token, and nothing else.
fn admin_only(app: &App, headers: &HeaderMap) -> Result<Actor, ApiError> {
    match bearer(headers) {
        None => Err(AuthError::Missing.into()),
        Some(p) if is_admin(app, Some(p)) => Ok(Actor::Admin),
        Some(_) => Err(AuthError::Invalid.into()),
    }
}

fn org_id(org: &str) -> Result<OrgId, ApiError> {
    OrgId::new(org).map_err(|e| ApiError::of(ErrorCode::ValidationError, e.to_string()))
}

/// Who may act on `org`: the admin token, an org key with the admin scope,
/// or an org user (`write` needs an owner or admin). Another org's key or
/// user token is refused like a wrong one (401).
async fn org_actor(app: &App, headers: &HeaderMap, org: &OrgId, write: bool) -> Result<Actor, ApiError> {
    let presented = bearer(headers)
        .filter(|p| !p.is_empty())
        .ok_or(AuthError::Missing)?;
    if is_admin(app, Some(presented)) {
        if app.registry.org_doc(org).await?.is_none() {
            return Err(ApiError::of(ErrorCode::NotFound, format!("org {org} not found")));
        }
        return Ok(Actor::Admin);
    }
    if presented.starts_with("sbu.") {
        let user = app
            .registry
            .verify_user_token(org, presented)
            .await?
            .ok_or(AuthError::Invalid)?;
        if write && !user.role.manages() {
            return Err(ApiError::of(
                ErrorCode::Forbidden,
                "members may read; owners and admins manage users and keys",
            ));
        }
        return Ok(Actor::User(user.username));
    }
    verify_api_key(app.directory.as_ref(), Some(presented), Some(org), Scope::Admin)?;
    let key_id = presented.split('.').nth(2).unwrap_or_default().to_owned();
    Ok(Actor::Key(key_id))
}

/// An admin request on the org its path names: the org and who asks.
/// `WRITE`: owners and admins only, for a user.
pub struct OnOrg<const WRITE: bool> {
    pub(super) org: OrgId,
    pub(super) actor: Actor,
}

impl<const WRITE: bool> FromRequestParts<Arc<App>> for OnOrg<WRITE> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, app)
            .await
            .map_err(|e| ApiError::of(ErrorCode::ValidationError, e.body_text()))?;
        let org = org_id(params.get("org").map_or("", String::as_str))?;
        let actor = org_actor(app, &parts.headers, &org, WRITE).await?;
        Ok(OnOrg { org, actor })
    }
}

/// A request that reads the org (members may).
pub(super) type Reads = OnOrg<false>;
/// A request that changes the org (owners and admins may).
pub(super) type Writes = OnOrg<true>;

fn org_view(doc: &OrgDoc) -> serde_json::Value {
    let jwt_keys: Vec<_> = doc
        .jwt_keys
        .iter()
        .map(|k| match k {
            StoredJwtKey::HS256 { kid, .. } => json!({"alg": "HS256", "kid": kid}),
            StoredJwtKey::RS256 { kid, .. } => json!({"alg": "RS256", "kid": kid}),
            StoredJwtKey::EdDSA { kid, .. } => json!({"alg": "EdDSA", "kid": kid}),
        })
        .collect();
    let ticket_keys: Vec<_> = doc
        .ticket_keys
        .iter()
        .map(|k| json!({"id": k.id, "created_at": k.created_at, "retired": k.retired}))
        .collect();
    json!({
        "id": doc.id,
        "name": doc.name,
        "created_at": doc.created_at,
        "allowed_origins": doc.allowed_origins,
        "jwt_keys": jwt_keys,
        "ticket_keys": ticket_keys,
        "limits": doc.limits,
        "jwks_url": doc.jwks_url,
        "jwt_audience": doc.jwt_audience,
        "jwt_issuer": doc.jwt_issuer,
        "from_config": doc.from_config,
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateOrg {
    id: String,
    name: Option<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    /// RS256 / EdDSA public keys (PEM) beside the generated HS256 secret.
    #[serde(default)]
    public_keys: Vec<JwtKeyConfig>,
    /// Where the org's identity provider publishes more client-JWT keys.
    jwks_url: Option<String>,
    /// The `aud` client JWTs must carry, if any.
    jwt_audience: Option<String>,
    /// The `iss` client JWTs must carry, if any.
    jwt_issuer: Option<String>,
    #[serde(default)]
    limits: OrgLimits,
}

#[utoipa::path(post, path = "/v1/orgs", tag = "orgs", security(("bearer" = [])),
    request_body = CreateOrg,
    responses((status = 201, description = "created; its HS256 secret is shown once", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 409, description = "conflict", body = crate::http::openapi::ErrorBody), (status = 413, description = "body too large", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn create_org(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let actor = admin_only(&app, &headers)?;
    let bytes = read_body(body, MAX_BODY_BYTES).await?;
    let body: CreateOrg = parse_json(
        &bytes,
        r#"{"id", "name"?, "allowed_origins"?, "public_keys"?, "limits"?}"#,
    )?;
    let id = org_id(&body.id)?;
    let created = app
        .registry
        .create_org(
            NewOrg {
                id,
                name: body.name,
                allowed_origins: body.allowed_origins,
                public_keys: body.public_keys,
                jwks_url: body.jwks_url,
                jwt_audience: body.jwt_audience,
                jwt_issuer: body.jwt_issuer,
                limits: body.limits,
            },
            &actor.name(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(json!(created))).into_response())
}

#[utoipa::path(get, path = "/v1/orgs", tag = "orgs", security(("bearer" = [])),
    responses((status = 200, description = "every org", body = serde_json::Value), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn list_orgs(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    admin_only(&app, &headers)?;
    let orgs: Vec<_> = app
        .registry
        .org_docs()
        .await?
        .iter()
        .map(|d| json!({"id": d.id, "name": d.name, "created_at": d.created_at}))
        .collect();
    Ok(Json(json!({ "orgs": orgs })).into_response())
}

#[utoipa::path(get, path = "/v1/orgs/{org}", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path, description = "the org id", example = "demo")),
    responses((status = 200, description = "the org, without secrets", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn get_org(State(app): State<Arc<App>>, OnOrg { org, .. }: Reads) -> Result<Response, ApiError> {
    let doc = app
        .registry
        .org_doc(&org)
        .await?
        .ok_or_else(|| ApiError::of(ErrorCode::NotFound, format!("org {org} not found")))?;
    Ok(Json(org_view(&doc)).into_response())
}

/// Deletes the org: its clients are disconnected (4003) and its operator
/// sessions ended at once, its registry data removed.
#[utoipa::path(delete, path = "/v1/orgs/{org}", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path, description = "the org id", example = "demo")),
    responses((status = 204, description = "deleted; its clients were disconnected"), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn delete_org(
    State(app): State<Arc<App>>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admin_only(&app, &headers)?;
    let org = org_id(&org)?;
    if app.directory.get(&org).is_none() {
        return Err(ApiError::of(ErrorCode::NotFound, format!("org {org} not found")));
    }
    // First, so a failure leaves the org whole: NATS cuts every connection
    // in the org's account (pods', publishers') before its data goes.
    if let Some(accounts) = &app.accounts {
        accounts.retire(&org).await.map_err(|e| {
            tracing::error!(org = %org, error = %e, "cannot retire the org's NATS account");
            ApiError::of(
                ErrorCode::Unavailable,
                "NATS did not take the change; the org was not deleted, try again",
            )
        })?;
    }
    app.registry.delete_org(&org).await?;
    app.jwks.forget(&org);
    app.services.close_org(&org, CloseReason::Revoked).await;
    tracing::info!(org = %org, "org deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/v1/orgs/{org}/ticket-keys", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path, description = "the org id", example = "demo")),
    responses((status = 201, description = "the new key's id", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn rotate_ticket_key(
    State(app): State<Arc<App>>,
    OnOrg { org, actor }: Writes,
) -> Result<Response, ApiError> {
    let id = app.registry.rotate_ticket_key(&org, &actor.name()).await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateKey {
    name: Option<String>,
    /// Default: every scope but `admin`.
    scopes: Option<Vec<Scope>>,
}

#[utoipa::path(post, path = "/v1/orgs/{org}/keys", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path, description = "the org id", example = "demo")),
    request_body = CreateKey,
    responses((status = 201, description = "created; the key is shown once", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 413, description = "body too large", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn create_key(
    State(app): State<Arc<App>>,
    OnOrg { org, actor }: Writes,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, MAX_BODY_BYTES).await?;
    let body: CreateKey = if bytes.is_empty() {
        CreateKey {
            name: None,
            scopes: None,
        }
    } else {
        parse_json(
            &bytes,
            r#"{"name"?, "scopes"?: ["publish" | "history" | "tickets" | "operators" | "admin"]}"#,
        )?
    };
    let scopes = body.scopes.unwrap_or_else(Scope::unprivileged);
    let (view, key) = app
        .registry
        .create_key(&org, body.name, scopes, &actor.name())
        .await?;
    let mut out = json!(view);
    out["key"] = json!(key);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

#[utoipa::path(get, path = "/v1/orgs/{org}/keys", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path, description = "the org id", example = "demo")),
    responses((status = 200, description = "the org's keys, without secrets", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn list_keys(State(app): State<Arc<App>>, OnOrg { org, .. }: Reads) -> Result<Response, ApiError> {
    Ok(Json(json!({"keys": app.registry.keys(&org).await?})).into_response())
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/keys/{id}", tag = "orgs", security(("bearer" = [])),
    params(("org" = String, Path, description = "the org id", example = "demo"), ("id" = String, Path, description = "the key id")),
    responses((status = 204, description = "revoked"), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn revoke_key(
    State(app): State<Arc<App>>,
    OnOrg { org, actor }: Writes,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    app.registry.revoke_key(&org, &id, &actor.name()).await?;
    // Operator sessions it minted live on its authority: they end too.
    app.services.sessions.end_minted_by(&org, &id).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/v1/orgs/{org}/audit", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path, description = "the org id", example = "demo")),
    responses((status = 200, description = "every admin action, oldest first", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn audit(State(app): State<Arc<App>>, OnOrg { org, .. }: Reads) -> Result<Response, ApiError> {
    Ok(Json(json!({"entries": app.registry.audit_log(&org).await?})).into_response())
}

/// Revoked credentials matter until they expire; a day covers the tokens
/// and tickets a backend usually hands out.
const DEFAULT_REVOCATION_SECS: u64 = 24 * 3600;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeBody {
    jti: Option<String>,
    sub: Option<String>,
    ticket: Option<String>,
    /// Unix seconds until which it is refused (default: a day from now).
    until: Option<u64>,
}

/// Revokes a client JWT (by `jti`), every credential of a subject issued
/// so far, or a ticket (by id); live connections that used it close (4003).
#[utoipa::path(post, path = "/v1/orgs/{org}/revocations", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path, description = "the org id", example = "demo")),
    request_body = RevokeBody,
    responses((status = 201, description = "revoked; live connections that used it close", body = crate::registry::model::RevocationDoc), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 413, description = "body too large", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn revoke(
    State(app): State<Arc<App>>,
    OnOrg { org, actor }: Writes,
    body: Body,
) -> Result<Response, ApiError> {
    use crate::registry::model::Revoke;
    let bytes = read_body(body, MAX_BODY_BYTES).await?;
    let shape = r#"{"jti" | "sub" | "ticket": "<id>", "until"?: <unix secs>}"#;
    let body: RevokeBody = parse_json(&bytes, shape)?;
    let (what, id) = match (body.jti, body.sub, body.ticket) {
        (Some(id), None, None) => (Revoke::Jti, id),
        (None, Some(id), None) => (Revoke::Sub, id),
        (None, None, Some(id)) => (Revoke::Ticket, id),
        _ => {
            return Err(ApiError::of(
                ErrorCode::ValidationError,
                format!("body must be {shape}, with exactly one of jti, sub, ticket"),
            ));
        }
    };
    let until = body
        .until
        .unwrap_or_else(|| crate::auth::now_secs() + DEFAULT_REVOCATION_SECS);
    let doc = app.registry.revoke(&org, what, &id, until, &actor.name()).await?;
    if let Some(which) = crate::enforce::revocation_match(&org, what, &id) {
        app.services.close_matching(which, CloseReason::Revoked);
    }
    Ok((StatusCode::CREATED, Json(json!(doc))).into_response())
}

#[utoipa::path(get, path = "/v1/orgs/{org}/revocations", tag = "orgs", security(("bearer" = [])), params(("org" = String, Path, description = "the org id", example = "demo")),
    responses((status = 200, description = "the org's revocations", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 404, description = "not found", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn revocations(
    State(app): State<Arc<App>>,
    OnOrg { org, .. }: Reads,
) -> Result<Response, ApiError> {
    Ok(Json(json!({"revocations": app.registry.revocations(&org).await?})).into_response())
}
