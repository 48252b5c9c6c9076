//! `/demo`: a chat page that talks to the echo agent through the JavaScript
//! client (`clients/js`, its bundle built into the binary). On in the
//! no-config quick start; elsewhere only with `demo_org`, since
//! `/demo/token` hands a client token of that org to whoever asks.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchboard_proto::{ChannelPattern, ErrorCode, TargetPattern};

use super::{ApiError, App};
use crate::auth::{ClientClaims, now_secs, random_token, sign_hs256};

const PAGE: &str = include_str!("demo/index.html");
/// `npm run build` in `clients/js` writes it; the test script checks it is current.
const CLIENT: &str = include_str!("demo/switchboard.js");
/// A demo visitor's token lasts this long; the page renews it before then.
const TOKEN_TTL_SECS: u64 = 600;
/// What a visitor may do: its rooms, and talk to the agent.
const CHANNELS: &str = "demo.>";
const AGENT: &str = "role:main-ai";

/// The org the demo page signs visitors into, and its HS256 secret.
#[derive(Clone)]
pub struct DemoOrg {
    pub org: String,
    pub secret: String,
}

impl std::fmt::Debug for DemoOrg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret: settings end up in logs.
        f.debug_struct("DemoOrg").field("org", &self.org).finish()
    }
}

fn demo(app: &App) -> Result<&DemoOrg, ApiError> {
    app.demo.as_ref().ok_or_else(|| {
        ApiError::of(
            ErrorCode::NotFound,
            "the demo is off (set demo_org to turn it on)",
        )
    })
}

#[utoipa::path(get, path = "/demo", tag = "ops",
    responses((status = 200, description = "the demo chat page", content_type = "text/html"), (status = 404, description = "the demo is off", body = crate::http::openapi::ErrorBody)))]
pub async fn page(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    demo(&app)?;
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response())
}

#[utoipa::path(get, path = "/demo/switchboard.js", tag = "ops",
    responses((status = 200, description = "the JavaScript client the page uses", content_type = "text/javascript"), (status = 404, description = "the demo is off", body = crate::http::openapi::ErrorBody)))]
pub async fn client(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    demo(&app)?;
    Ok(([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], CLIENT).into_response())
}

/// A fresh visitor's client token.
#[utoipa::path(get, path = "/demo/token", tag = "ops",
    responses((status = 200, description = "a client token for a new visitor of the demo org", body = serde_json::Value), (status = 404, description = "the demo is off", body = crate::http::openapi::ErrorBody)))]
pub async fn token(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let demo = demo(&app)?;
    let internal = |e: String| {
        tracing::error!(error = %e, "cannot mint a demo token");
        ApiError::of(ErrorCode::InternalError, "cannot mint a demo token")
    };
    let visitor = random_token(9).map_err(|e| internal(e.to_string()))?;
    let channels = ChannelPattern::new(CHANNELS).map_err(|e| internal(e.to_string()))?;
    let agent = TargetPattern::parse(AGENT).map_err(|e| internal(e.to_string()))?;
    let now = now_secs();
    let claims = ClientClaims {
        sub: format!("visitor-{visitor}"),
        org: demo.org.clone(),
        exp: now + TOKEN_TTL_SECS,
        iat: Some(now),
        jti: None,
        subscribe: vec![channels.clone()],
        publish: vec![channels],
        send: vec![agent],
    };
    let token = sign_hs256(&demo.secret, &claims).map_err(|e| internal(e.to_string()))?;
    Ok(Json(json!({ "token": token, "expires_at": claims.exp })).into_response())
}
