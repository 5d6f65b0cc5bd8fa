//! Audit endpoints: the full history of one stream, with metadata.

use axum::extract::{Path, State};
use serde::Deserialize;
use tally_projections::stream_key;

use crate::auth::{Access, Principal};
use crate::dto::{AuditEventDto, AuditEventsDto};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::QueryParams;
use crate::AppState;

/// The stream types of API.md § Audit and their id prefixes.
pub const STREAM_TYPES: [(&str, &str); 6] = [
    ("plan", "plan"),
    ("subscription", "sub"),
    ("invoice", "inv"),
    ("usage_record", "use"),
    ("ticket", "tkt"),
    ("inbox", "inbox"),
];

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StreamEventsParams {
    /// Page size, 1-1000 (default 1000).
    pub limit: Option<String>,
    /// The sequence to continue after (`next_cursor` of the previous page).
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit/streams/{type}/{id}/events", tag = "audit",
    params(("type" = String, Path), ("id" = String, Path), StreamEventsParams),
    responses((status = 200, body = AuditEventsDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn stream_events(
    State(app): State<AppState>,
    principal: Principal,
    Path((kind, id)): Path<(String, String)>,
    QueryParams(q): QueryParams<StreamEventsParams>,
) -> ApiResult<axum::Json<AuditEventsDto>> {
    principal.require(Access::Audit)?;
    if !STREAM_TYPES.iter().any(|(t, _)| *t == kind) {
        return Err(ApiError::NotFound);
    }
    let limit: i64 = match &q.limit {
        None => 1000,
        Some(s) => s
            .parse()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::field("limit", "must be an integer from 1 to 1000"))?,
    };
    let after: i64 = match &q.cursor {
        None => 0,
        Some(s) => s
            .parse()
            .ok()
            .filter(|c| *c >= 0)
            .ok_or_else(|| ApiError::field("cursor", "invalid cursor"))?,
    };
    let events = app
        .dispatcher
        .log()
        .read_stream(
            &kind,
            &stream_key(principal.tenant(), &id),
            after,
            limit + 1,
        )
        .await?;
    if events.is_empty() && after == 0 {
        return Err(ApiError::NotFound);
    }
    let more = events.len() as i64 > limit;
    let data: Vec<AuditEventDto> = events
        .into_iter()
        .take(limit as usize)
        .map(|e| AuditEventDto {
            position: e.position,
            sequence: e.sequence,
            event_id: e.event_id,
            event_type: e.event_type,
            event_version: e.event_version,
            payload: e.payload,
            metadata: e.metadata,
            recorded_at: e.recorded_at,
        })
        .collect();
    let next_cursor = if more {
        data.last().map(|e| e.sequence.to_string())
    } else {
        None
    };
    Ok(axum::Json(AuditEventsDto { data, next_cursor }))
}
