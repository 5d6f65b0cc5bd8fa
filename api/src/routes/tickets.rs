//! Support ticket endpoints. Internal comments are shown to `writer` and
//! `admin` keys only.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tally_aggregates::ticket::{Ticket, TicketCommand, TicketStatus};
use tally_commands::ids::{AttachmentId, CommentId, Generate, TicketId};
use tally_commands::keys::Role;

use super::subscriptions::tenant_subscription;
use super::{get_state, list_state, path_id, CommandCtx, PageParams};
use crate::auth::{Principal, ReadAccess, WriteAccess};
use crate::dto::tickets::{
    AssignRequest, AttachmentRequest, CommentRequest, CreateTicketRequest, TicketDto,
    TicketListParams, TransitionRequest,
};
use crate::dto::ListPage;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{if_match, JsonBody, PathParams, QueryParams};
use crate::AppState;

/// Whether this key may see internal comments.
fn sees_internal(p: &Principal) -> bool {
    matches!(p.role(), Role::Admin | Role::Writer)
}

#[utoipa::path(post, path = "/v1/tickets", tag = "tickets", operation_id = "tickets_create", request_body = CreateTicketRequest,
    responses((status = 201, body = TicketDto), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    _: WriteAccess,
    JsonBody(req): JsonBody<CreateTicketRequest>,
) -> ApiResult<Response> {
    // Like an invoice, a ticket may only name one of the tenant's subscriptions.
    if let Some(sub) = &req.subscription_id {
        tenant_subscription(&app, &ctx.meta.tenant, "subscription_id", sub).await?;
    }
    let id = TicketId::generate();
    let at = app.dispatcher.clock().now();
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::CREATED,
        || TicketCommand::Create {
            ticket_id: id.clone().into_string(),
            subject: req.subject.clone(),
            description: req.description.clone(),
            requester: req.requester.clone(),
            priority: req.priority,
            subscription_id: req.subscription_id.clone(),
            at,
        },
        |id, t, v| TicketDto::from_state(id, t, v, true),
    )
    .await
}

#[utoipa::path(post, path = "/v1/tickets/{id}/assign", tag = "tickets", operation_id = "tickets_assign", params(("id" = String, Path)), request_body = AssignRequest,
    responses((status = 200, body = TicketDto), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn assign(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(req): JsonBody<AssignRequest>,
) -> ApiResult<Response> {
    let id: TicketId = path_id(&id)?;
    let at = app.dispatcher.clock().now();
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || TicketCommand::Assign {
            assignee: req.assignee.clone(),
            at,
        },
        |id, t, v| TicketDto::from_state(id, t, v, true),
    )
    .await
}

#[utoipa::path(post, path = "/v1/tickets/{id}/comments", tag = "tickets", operation_id = "tickets_comment", params(("id" = String, Path)), request_body = CommentRequest,
    responses((status = 200, body = TicketDto), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn comment(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(req): JsonBody<CommentRequest>,
) -> ApiResult<Response> {
    let id: TicketId = path_id(&id)?;
    let at = app.dispatcher.clock().now();
    let comment_id = CommentId::generate();
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || TicketCommand::Comment {
            comment_id: comment_id.clone().into_string(),
            author: req.author.clone(),
            body: req.body.clone(),
            public: req.public,
            at,
        },
        |id, t, v| TicketDto::from_state(id, t, v, true),
    )
    .await
}

#[utoipa::path(post, path = "/v1/tickets/{id}/attachments", tag = "tickets", operation_id = "tickets_attach", params(("id" = String, Path)), request_body = AttachmentRequest,
    responses((status = 200, body = TicketDto), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn attach(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(req): JsonBody<AttachmentRequest>,
) -> ApiResult<Response> {
    let id: TicketId = path_id(&id)?;
    let at = app.dispatcher.clock().now();
    let attachment_id = AttachmentId::generate();
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || TicketCommand::Attach {
            attachment_id: attachment_id.clone().into_string(),
            file_name: req.file_name.clone(),
            content_type: req.content_type.clone(),
            size_bytes: req.size_bytes,
            storage_key: req.storage_key.clone(),
            at,
        },
        |id, t, v| TicketDto::from_state(id, t, v, true),
    )
    .await
}

#[utoipa::path(post, path = "/v1/tickets/{id}/transition", tag = "tickets", operation_id = "tickets_transition", params(("id" = String, Path)), request_body = TransitionRequest,
    responses((status = 200, body = TicketDto), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn transition(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(req): JsonBody<TransitionRequest>,
) -> ApiResult<Response> {
    let id: TicketId = path_id(&id)?;
    let at = app.dispatcher.clock().now();
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || TicketCommand::Transition { to: req.to, at },
        |id, t, v| TicketDto::from_state(id, t, v, true),
    )
    .await
}

#[utoipa::path(get, path = "/v1/tickets", tag = "tickets", operation_id = "tickets_list", params(TicketListParams),
    responses((status = 200, body = ListPage<TicketDto>), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<TicketListParams>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<axum::Json<ListPage<TicketDto>>> {
    if q.status
        .as_deref()
        .is_some_and(|s| TicketStatus::parse(s).is_none())
    {
        return Err(ApiError::field(
            "status",
            "must be new, open, pending, on_hold, solved or closed",
        ));
    }
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let internal = sees_internal(&principal);
    list_state::<Ticket, _>(
        &app,
        principal.tenant(),
        &headers,
        &[
            ("assignee", q.assignee),
            ("requester", q.requester),
            ("status", q.status),
            ("priority", q.priority),
        ],
        page,
        |v| TicketDto::from_state(&v.id, &v.state, v.version, internal),
    )
    .await
}

#[utoipa::path(get, path = "/v1/tickets/{id}", tag = "tickets", operation_id = "tickets_get", params(("id" = String, Path)),
    responses((status = 200, body = TicketDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<Response> {
    let internal = sees_internal(&principal);
    get_state::<Ticket, _, _>(
        &app,
        principal.tenant(),
        &headers,
        &id,
        path_id::<TicketId>,
        |v| TicketDto::from_state(&v.id, &v.state, v.version, internal),
    )
    .await
}
