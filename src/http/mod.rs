//! The HTTP surface: one [`router`] over shared [`App`] state, JSON errors
//! everywhere (`{"error":{"code","message"}}`), one mapping from error to
//! status.

mod admin;
mod channels;
mod client_ws;
pub mod demo;
pub mod openapi;
mod operators;
mod ops;
mod publishers;
mod sockets;
mod tickets;
mod users;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;
use switchboard_actors::{BackplaneError, Services};
use switchboard_proto::ErrorCode;
use tokio_util::task::TaskTracker;

use crate::auth::AuthError;
use crate::directory::OrgDirectory;
use crate::registry::Registry;
use crate::ws::WsSettings;

/// Everything a request handler may need, built once at start-up.
pub struct App {
    pub services: Arc<Services>,
    /// Orgs for the connect and request paths: the registry's live view.
    pub directory: Arc<dyn OrgDirectory>,
    /// Orgs, users, keys and the audit log, durable.
    pub registry: Arc<Registry>,
    /// The token of the admin API (org management); none: only org keys and users.
    pub admin_token: Option<String>,
    /// Client-JWT keys orgs publish at their JWKS URLs.
    pub jwks: crate::jwks::Jwks,
    pub ws: WsSettings,
    pub max_connections: usize,
    pub prometheus: PrometheusHandle,
    /// False while starting and once draining: `/ready` and new upgrades say no.
    pub ready: AtomicBool,
    /// Client sockets open now (upgrades included), for `max_connections`.
    pub sockets: Arc<AtomicUsize>,
    /// Client sockets open now per org and subject, for the orgs' limits.
    pub org_conns: Arc<sockets::OrgConns>,
    /// Tasks that take over upgraded sockets.
    pub tasks: TaskTracker,
    /// Cluster mode: the orgs' NATS accounts.
    pub accounts: Option<Arc<crate::nats::accounts::Accounts>>,
    /// The demo page's org, when the demo is on.
    pub demo: Option<demo::DemoOrg>,
}

impl App {
    /// In cluster mode, whether the pod's connection to NATS (the broker
    /// user's, which carries the registry) is up; `None` on a pod of its own.
    pub fn nats_connected(&self) -> Option<bool> {
        self.accounts.as_ref().map(|a| a.nats_connected())
    }

    /// In cluster mode, opens this pod's connection into `org`'s NATS
    /// account (making the account on the org's first use anywhere). Data
    /// still flows through this pod without it, so a failure is logged.
    pub async fn open_org(&self, org: &switchboard_proto::OrgId) {
        if let Some(accounts) = &self.accounts
            && let Err(e) = accounts.open(org).await
        {
            tracing::warn!(org = %org, error = %e, "cannot open the org's NATS account");
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/ws", get(client_ws::upgrade))
        .route("/v1/operators", post(operators::mint).get(operators::list))
        .route(
            "/v1/operators/{sid}",
            get(operators::get).delete(operators::delete),
        )
        .route("/v1/operators/{sid}/ws", get(operators::connect))
        .route("/v1/orgs", post(admin::create_org).get(admin::list_orgs))
        .route("/v1/orgs/{org}", get(admin::get_org).delete(admin::delete_org))
        .route("/v1/orgs/{org}/ticket-keys", post(admin::rotate_ticket_key))
        .route(
            "/v1/orgs/{org}/users",
            post(users::create_user).get(users::list_users),
        )
        .route(
            "/v1/orgs/{org}/users/{user}",
            get(users::get_user).delete(users::delete_user),
        )
        .route(
            "/v1/orgs/{org}/keys",
            post(admin::create_key).get(admin::list_keys),
        )
        .route("/v1/orgs/{org}/keys/{id}", delete(admin::revoke_key))
        .route("/v1/orgs/{org}/audit", get(admin::audit))
        .route(
            "/v1/orgs/{org}/revocations",
            post(admin::revoke).get(admin::revocations),
        )
        .route("/v1/orgs/{org}/tickets", post(tickets::mint))
        .route(
            "/v1/orgs/{org}/publishers",
            post(publishers::create).get(publishers::list),
        )
        .route("/v1/orgs/{org}/publishers/{name}", delete(publishers::revoke))
        .route(
            "/v1/orgs/{org}/channels/{channel}/publish",
            post(channels::publish),
        )
        .route(
            "/v1/orgs/{org}/channels/{channel}/history",
            get(channels::history),
        )
        .route(
            "/v1/orgs/{org}/channels/{channel}/presence",
            get(channels::presence),
        )
        .route("/v1/openapi.json", get(openapi::openapi))
        .route("/demo", get(demo::page))
        .route("/demo/switchboard.js", get(demo::client))
        .route("/demo/token", get(demo::token))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .with_state(app)
}

/// An error as the HTTP API reports it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// More fields for the error object (e.g. the conflicting `roles`).
    pub extra: Option<(&'static str, serde_json::Value)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }

    /// Adds a field to the error object.
    pub fn with(mut self, name: &'static str, value: serde_json::Value) -> Self {
        self.extra = Some((name, value));
        self
    }

    /// The status the code usually travels with.
    pub fn of(code: ErrorCode, message: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::new(status, code, message)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing | AuthError::Invalid => {
                ApiError::of(ErrorCode::Unauthorized, "missing or invalid credentials")
            }
            AuthError::Scope => ApiError::of(ErrorCode::Forbidden, "this key is not allowed to do that"),
        }
    }
}

impl From<BackplaneError> for ApiError {
    fn from(e: BackplaneError) -> Self {
        ApiError::of(e.code(), e.public_message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let (Some((name, value)), Some(object)) = (self.extra, error.as_object_mut()) {
            object.insert(name.into(), value);
        }
        let body = json!({ "error": error });
        let mut res = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UPGRADE_REQUIRED {
            // RFC 7231 §6.5.15 and RFC 6455 §4.4: say what to upgrade to.
            let h = res.headers_mut();
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        res
    }
}

/// Reads a request body of at most `max` bytes.
pub(crate) async fn read_body(body: Body, max: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError::of(
            ErrorCode::FrameTooLarge,
            format!("body exceeds the limit of {max} bytes"),
        )
    })
}

/// Parses a JSON body; `shape` tells the caller what was expected.
pub(crate) fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::of(ErrorCode::ValidationError, format!("body must be {shape}: {e}")))
}
