//! Probes and metrics: `/health` (the process answers), `/ready` (it takes
//! new work; false while draining, and in cluster mode while NATS is out of
//! reach), `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchboard_proto::ErrorCode;

use super::{ApiError, App};

#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200, description = "the process answers", body = serde_json::Value)))]
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/ready", tag = "ops", responses((status = 200, description = "taking work", body = serde_json::Value), (status = 503, description = "draining, or NATS out of reach (cluster mode)", body = serde_json::Value)))]
pub async fn ready(State(app): State<Arc<App>>) -> Response {
    let status = if !app.is_ready() {
        "draining"
    } else if app.nats_connected() == Some(false) {
        "nats_unreachable"
    } else {
        return Json(json!({"status": "ready"})).into_response();
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": status }))).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    if let Some(up) = app.nats_connected() {
        metrics::gauge!(switchboard_actors::telemetry::NATS_CONNECTED).set(f64::from(u8::from(up)));
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.prometheus.render(),
    )
        .into_response()
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::of(ErrorCode::NotFound, format!("no route for {}", uri.path()))
}
