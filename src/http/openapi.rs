//! The OpenAPI 3.1 document of every route, generated from the handlers'
//! annotations and the request and response types (`GET /v1/openapi.json`).

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{admin, channels, client_ws, demo, operators, ops, publishers, tickets, users};

/// Every error: `{"error":{"code","message"}}` (409 on roles adds `roles`).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code: VALIDATION_ERROR, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, CONFLICT, ...
    pub code: String,
    pub message: String,
    /// The roles a live session holds (409 on `POST /v1/operators`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard",
        description = "Multi-tenant realtime message broker: the HTTP API. The client protocol on /v1/ws is described in the README."
    ),
    paths(
        client_ws::upgrade,
        operators::mint, operators::list, operators::get, operators::delete, operators::connect,
        admin::create_org, admin::list_orgs, admin::get_org, admin::delete_org, admin::rotate_ticket_key,
        users::create_user, users::list_users, users::get_user, users::delete_user,
        admin::create_key, admin::list_keys, admin::revoke_key,
        admin::audit, admin::revoke, admin::revocations,
        tickets::mint,
        publishers::create, publishers::list, publishers::revoke,
        channels::publish, channels::history, channels::presence,
        ops::health, ops::ready, ops::metrics, openapi,
        demo::page, demo::client, demo::token,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Bearer),
    tags(
        (name = "orgs", description = "Orgs, users, keys, revocations and the audit log"),
        (name = "channels", description = "Publish and read history"),
        (name = "operators", description = "Operator sessions"),
        (name = "clients", description = "Client connections and tickets"),
        (name = "ops", description = "Probes, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "ops",
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/v1/ws",
            "/v1/operators",
            "/v1/operators/{sid}",
            "/v1/operators/{sid}/ws",
            "/v1/orgs",
            "/v1/orgs/{org}",
            "/v1/orgs/{org}/ticket-keys",
            "/v1/orgs/{org}/users",
            "/v1/orgs/{org}/users/{user}",
            "/v1/orgs/{org}/keys",
            "/v1/orgs/{org}/keys/{id}",
            "/v1/orgs/{org}/audit",
            "/v1/orgs/{org}/revocations",
            "/v1/orgs/{org}/tickets",
            "/v1/orgs/{org}/publishers",
            "/v1/orgs/{org}/publishers/{name}",
            "/v1/orgs/{org}/channels/{channel}/publish",
            "/v1/orgs/{org}/channels/{channel}/history",
            "/v1/orgs/{org}/channels/{channel}/presence",
            "/health",
            "/ready",
            "/metrics",
            "/v1/openapi.json",
            "/demo",
            "/demo/switchboard.js",
            "/demo/token",
        ] {
            assert!(paths.contains_key(path), "{path} is not documented");
        }
        assert_eq!(paths.len(), 26, "a route was added without being listed here");
    }
}
