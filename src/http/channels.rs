//! `POST /v1/orgs/:org/channels/:channel/publish`,
//! `GET /v1/orgs/:org/channels/:channel/history?since=&limit=` and
//! `GET /v1/orgs/:org/channels/:channel/presence`, with an org API key.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use switchboard_actors::{ChannelKey, Event, Position};
use switchboard_proto::{ChannelName, ErrorCode, OrgId};

use super::{ApiError, App, parse_json, read_body};
use crate::auth::{bearer, verify_api_key};
use crate::directory::Scope;

/// Most messages one history request returns.
const MAX_HISTORY_LIMIT: usize = 1000;
const DEFAULT_HISTORY_LIMIT: usize = 100;

fn channel_key(org: &str, channel: &str) -> Result<ChannelKey, ApiError> {
    let invalid =
        |e: switchboard_proto::ids::InvalidId| ApiError::of(ErrorCode::ValidationError, e.to_string());
    Ok(ChannelKey::new(
        OrgId::new(org).map_err(invalid)?,
        ChannelName::new(channel).map_err(invalid)?,
    ))
}

fn authorize(app: &App, headers: &HeaderMap, key: &ChannelKey, scope: Scope) -> Result<(), ApiError> {
    verify_api_key(app.directory.as_ref(), bearer(headers), Some(&key.org), scope)?;
    Ok(())
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[utoipa::path(post, path = "/v1/orgs/{org}/channels/{channel}/publish", tag = "channels", security(("bearer" = [])),
    params(("org" = String, Path, description = "the org id", example = "demo"), ("channel" = String, Path, example = "chat.1")),
    request_body(content = serde_json::Value, description = "{\"data\": <JSON>}"),
    responses((status = 200, description = "its offset and epoch", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 409, description = "conflict", body = crate::http::openapi::ErrorBody), (status = 413, description = "body too large", body = crate::http::openapi::ErrorBody), (status = 429, description = "a limit was reached", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn publish(
    State(app): State<Arc<App>>,
    Path((org, channel)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = channel_key(&org, &channel)?;
    authorize(&app, &headers, &key, Scope::Publish)?;
    let bytes = read_body(body, app.ws.max_frame_bytes).await?;
    let parsed: PublishBody = parse_json(&bytes, r#"{"data": <JSON>}"#)?;
    let data = parsed
        .data
        .filter(|d| d.get() != "null")
        .ok_or_else(|| ApiError::of(ErrorCode::ValidationError, "missing field data"))?;
    let published = app.services.channels.publish(&key, Event::Message(data)).await?;
    Ok(Json(json!({"offset": published.offset, "epoch": published.epoch})).into_response())
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/orgs/{org}/channels/{channel}/history", tag = "channels", security(("bearer" = [])),
    params(("org" = String, Path, description = "the org id", example = "demo"), ("channel" = String, Path, example = "chat.1"), ("since" = Option<u64>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, description = "what the channel retained", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 503, description = "draining, full or unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn history(
    State(app): State<Arc<App>>,
    Path((org, channel)): Path<(String, String)>,
    headers: HeaderMap,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let key = channel_key(&org, &channel)?;
    authorize(&app, &headers, &key, Scope::History)?;
    let Query(q) = query.map_err(|e| ApiError::of(ErrorCode::ValidationError, e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_HISTORY_LIMIT).min(MAX_HISTORY_LIMIT);
    // Without `since`, the newest retained messages: what a page shows first.
    let from = q.since.map_or(Position::Tail, Position::After);
    let read = app.services.channels.read(&key, from, limit).await?;
    // The stored frames' payloads are the message JSON: splice them in as is.
    let mut body = Vec::with_capacity(128 + read.messages.iter().map(|(_, f)| f.len() + 1).sum::<usize>());
    let first = read.first.map_or_else(|| "null".to_owned(), |f| f.to_string());
    body.extend_from_slice(
        format!(
            r#"{{"epoch":"{}","top":{},"first":{first},"complete":{},"more":{},"messages":["#,
            read.epoch, read.top, read.complete, read.more
        )
        .as_bytes(),
    );
    for (i, (_, frame)) in read.messages.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&frame.payload());
    }
    body.extend_from_slice(b"]}");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[utoipa::path(get, path = "/v1/orgs/{org}/channels/{channel}/presence", tag = "channels", security(("bearer" = [])),
    params(("org" = String, Path, description = "the org id", example = "demo"), ("channel" = String, Path, example = "chat.1")),
    responses((status = 200, description = "who is subscribed, on every pod", body = serde_json::Value), (status = 400, description = "invalid input", body = crate::http::openapi::ErrorBody), (status = 401, description = "missing or invalid credentials", body = crate::http::openapi::ErrorBody), (status = 403, description = "not allowed", body = crate::http::openapi::ErrorBody), (status = 503, description = "unavailable", body = crate::http::openapi::ErrorBody)))]
pub async fn presence(
    State(app): State<Arc<App>>,
    Path((org, channel)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = channel_key(&org, &channel)?;
    authorize(&app, &headers, &key, Scope::History)?;
    let (subscribers, pods) = match &app.accounts {
        Some(accounts) => accounts.presence(&key.org, &key.channel).await.map_err(|e| {
            tracing::warn!(org = %key.org, error = %e, "presence across pods failed");
            ApiError::of(ErrorCode::Unavailable, "presence is unavailable right now; retry")
        })?,
        None => (
            crate::nats::presence::count(app.services.presence(&key.org, &key.channel).await),
            1,
        ),
    };
    let subscribers: Vec<_> = subscribers
        .into_iter()
        .map(|(sub, connections)| json!({"sub": sub, "connections": connections}))
        .collect();
    Ok(Json(json!({"channel": key.channel, "subscribers": subscribers, "pods": pods})).into_response())
}
