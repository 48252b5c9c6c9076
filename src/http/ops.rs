//! Probes and metrics: `/health` (the process answers), `/ready` (it takes
//! new work; false while draining), `/metrics` (Prometheus text).

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

#[utoipa::path(get, path = "/ready", tag = "ops", responses((status = 200, description = "taking work", body = serde_json::Value), (status = 503, description = "draining", body = serde_json::Value)))]
pub async fn ready(State(app): State<Arc<App>>) -> Response {
    if app.is_ready() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response()
    }
}

#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.prometheus.render(),
    )
        .into_response()
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::of(ErrorCode::NotFound, format!("no route for {}", uri.path()))
}
