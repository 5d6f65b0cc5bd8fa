//! Notification inbox endpoints. Read, archive and read-all are commands on
//! the recipient's `Inbox` aggregate, so a rebuild of the inbox keeps them.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tally_aggregates::inbox::{Inbox, InboxCommand};
use tally_projections::inbox;

use super::{read_your_writes, resource, CommandCtx, PageParams};
use crate::auth::{ReadAccess, WriteAccess};
use crate::dto::inbox::{InboxItemDto, InboxPage, InboxParams, ReadAllDto, ReadAllRequest};
use crate::dto::EmptyRequest;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::AppState;

#[utoipa::path(get, path = "/v1/inbox", tag = "inbox", operation_id = "inbox_list", params(InboxParams),
    responses((status = 200, body = InboxPage), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<InboxParams>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<axum::Json<InboxPage>> {
    if !tally_aggregates::inbox::valid_recipient(&q.recipient) {
        return Err(ApiError::field(
            "recipient",
            "must be customer:<id> or user:<name>",
        ));
    }
    if q.state
        .as_deref()
        .is_some_and(|s| !["unread", "read", "archived"].contains(&s))
    {
        return Err(ApiError::field("state", "must be unread, read or archived"));
    }
    if q.severity
        .as_deref()
        .is_some_and(|s| !["info", "warning", "critical"].contains(&s))
    {
        return Err(ApiError::field(
            "severity",
            "must be info, warning or critical",
        ));
    }
    let cursor = match &q.cursor {
        None => None,
        Some(c) => Some(
            c.parse::<i64>()
                .map_err(|_| ApiError::field("cursor", "invalid cursor"))?,
        ),
    };
    read_your_writes(&app, &headers).await?;
    let page = PageParams {
        limit: q.limit,
        cursor: None,
    };
    let (items, next_cursor, unread_count) = inbox::list(
        &app.db,
        principal.tenant(),
        &q.recipient,
        q.state.as_deref(),
        q.severity.as_deref(),
        page.limit()?,
        cursor,
    )
    .await?;
    Ok(axum::Json(InboxPage {
        data: items.into_iter().map(Into::into).collect(),
        unread_count,
        next_cursor,
    }))
}

async fn item_command(
    app: &AppState,
    ctx: &CommandCtx,
    item_id: &str,
    state: &str,
    command: impl Fn(String) -> InboxCommand,
) -> ApiResult<Response> {
    let mut item = inbox::get(&app.db, &ctx.meta.tenant, item_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let recipient = item.recipient.clone();
    let out = app
        .dispatcher
        .execute::<Inbox, _>(&ctx.meta, &recipient, None, |i| {
            i.decide(command(recipient.clone()))
        })
        .await?;
    // The read model catches up on its own; answer with the item as the command left it.
    if item.state != "archived" {
        item.state = state.to_string();
    }
    Ok(resource(
        StatusCode::OK,
        &InboxItemDto::from(item),
        out.version,
        Some(out.position),
    ))
}

#[utoipa::path(post, path = "/v1/inbox/{item_id}/read", tag = "inbox", operation_id = "inbox_read", params(("item_id" = String, Path)),
    request_body = EmptyRequest, responses((status = 200, body = InboxItemDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn read(
    State(app): State<AppState>,
    ctx: CommandCtx,
    PathParams(item_id): PathParams<String>,
    _: WriteAccess,
    JsonBody(_empty): JsonBody<EmptyRequest>,
) -> ApiResult<Response> {
    let at = app.dispatcher.clock().now();
    item_command(&app, &ctx, &item_id, "read", |recipient| {
        InboxCommand::MarkRead {
            recipient,
            item_id: item_id.clone(),
            at,
        }
    })
    .await
}

#[utoipa::path(post, path = "/v1/inbox/{item_id}/archive", tag = "inbox", operation_id = "inbox_archive", params(("item_id" = String, Path)),
    request_body = EmptyRequest, responses((status = 200, body = InboxItemDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn archive(
    State(app): State<AppState>,
    ctx: CommandCtx,
    PathParams(item_id): PathParams<String>,
    _: WriteAccess,
    JsonBody(_empty): JsonBody<EmptyRequest>,
) -> ApiResult<Response> {
    let at = app.dispatcher.clock().now();
    item_command(&app, &ctx, &item_id, "archived", |recipient| {
        InboxCommand::Archive {
            recipient,
            item_id: item_id.clone(),
            at,
        }
    })
    .await
}

#[utoipa::path(post, path = "/v1/inbox/read-all", tag = "inbox", operation_id = "inbox_read_all", request_body = ReadAllRequest,
    responses((status = 200, body = ReadAllDto), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn read_all(
    State(app): State<AppState>,
    ctx: CommandCtx,
    _: WriteAccess,
    JsonBody(req): JsonBody<ReadAllRequest>,
) -> ApiResult<Response> {
    // The recipient names the stream, so it is checked before the stream is
    // loaded: a NUL byte in a stream id is an error on PostgreSQL (a 500).
    if !tally_aggregates::inbox::valid_recipient(&req.recipient) {
        return Err(ApiError::field(
            "recipient",
            "must be customer:<id> or user:<name>",
        ));
    }
    let at = app.dispatcher.clock().now();
    let out = app
        .dispatcher
        .execute::<Inbox, _>(&ctx.meta, &req.recipient, None, |i| {
            i.decide(InboxCommand::ReadAll {
                recipient: req.recipient.clone(),
                at,
            })
        })
        .await?;
    Ok(resource(
        StatusCode::OK,
        &ReadAllDto {
            recipient: req.recipient,
            read_all: true,
        },
        out.version,
        Some(out.position),
    ))
}
