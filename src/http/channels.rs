//! `POST /v1/orgs/:org/channels/:channel/publish` and
//! `GET /v1/orgs/:org/channels/:channel/history?since=&limit=`, with an org
//! API key.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use switchboard_actors::ChannelKey;
use switchboard_actors::backplane::Event;
use switchboard_proto::{ChannelName, ErrorCode, OrgId};

use super::{ApiError, App};
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

pub async fn publish(
    State(app): State<Arc<App>>,
    Path((org, channel)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = channel_key(&org, &channel)?;
    authorize(&app, &headers, &key, Scope::Publish)?;
    let max = app.ws.max_frame_bytes;
    let bytes = axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError::of(
            ErrorCode::FrameTooLarge,
            format!("body exceeds the limit of {max} bytes"),
        )
    })?;
    let parsed: PublishBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::of(
            ErrorCode::ValidationError,
            format!("body must be {{\"data\": <JSON>}}: {e}"),
        )
    })?;
    let data = parsed
        .data
        .filter(|d| d.get() != "null")
        .ok_or_else(|| ApiError::of(ErrorCode::ValidationError, "missing field data"))?;
    let published = app
        .services
        .backplane
        .publish(&key, Event::Message(data))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "publish failed");
            ApiError::of(ErrorCode::Unavailable, "publish failed; retry")
        })?;
    Ok(Json(json!({"offset": published.offset, "epoch": published.epoch})).into_response())
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

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
    let read = app
        .services
        .history
        .read(&key, Some(q.since.unwrap_or(0)), limit)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "history read failed");
            ApiError::of(ErrorCode::Unavailable, "history is unavailable; retry")
        })?;
    // The stored frames' payloads are the message JSON: splice them in as is.
    let mut body = Vec::with_capacity(96 + read.messages.iter().map(|(_, f)| f.len() + 1).sum::<usize>());
    body.extend_from_slice(
        format!(
            r#"{{"epoch":"{}","top":{},"complete":{},"more":{},"messages":["#,
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
