//! Support ticket endpoints. Internal comments are shown to `writer` and
//! `admin` keys only.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_aggregates::ticket::{Priority, Ticket, TicketCommand, TicketStatus};
use tally_commands::ids;
use tally_commands::keys::Role;
use utoipa::ToSchema;

use super::subscriptions::tenant_subscription;
use super::{check_id, get_state, list_state, resource, CommandCtx, PageParams};
use crate::auth::{Access, Principal};
use crate::dto::ListPage;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{if_match, JsonBody, PathParams, QueryParams};
use crate::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTicketRequest {
    pub subject: String,
    pub description: String,
    /// A principal (`customer:<id>`); a bare id is a customer.
    pub requester: String,
    /// low | normal | high | urgent
    #[schema(value_type = String, pattern = "^(low|normal|high|urgent)$")]
    pub priority: Priority,
    pub subscription_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignRequest {
    pub assignee: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentRequest {
    pub author: String,
    pub body: String,
    pub public: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentRequest {
    pub file_name: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub storage_key: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    /// new | open | pending | on_hold | solved | closed
    #[schema(value_type = String, pattern = "^(new|open|pending|on_hold|solved|closed)$")]
    pub to: TicketStatus,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CommentDto {
    pub id: String,
    pub author: String,
    pub body: String,
    pub public: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttachmentDto {
    pub id: String,
    pub file_name: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub storage_key: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TicketDto {
    pub id: String,
    pub subject: String,
    pub description: String,
    pub requester: String,
    pub priority: String,
    /// new | open | pending | on_hold | solved | closed
    pub status: String,
    pub subscription_id: Option<String>,
    pub assignee: Option<String>,
    pub comments: Vec<CommentDto>,
    pub attachments: Vec<AttachmentDto>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub version: i64,
}

impl TicketDto {
    pub(crate) fn from_state(
        id: &str,
        t: &Ticket,
        version: i64,
        internal: bool,
    ) -> Option<TicketDto> {
        Some(TicketDto {
            id: id.to_string(),
            subject: t.subject.clone(),
            description: t.description.clone(),
            requester: t.requester.clone(),
            priority: t.priority?.as_str().to_string(),
            status: t.status?.as_str().to_string(),
            subscription_id: t.subscription_id.clone(),
            assignee: t.assignee.clone(),
            comments: t
                .comments
                .iter()
                .filter(|c| c.public || internal)
                .map(|c| CommentDto {
                    id: c.id.clone(),
                    author: c.author.clone(),
                    body: c.body.clone(),
                    public: c.public,
                    created_at: c.created_at,
                })
                .collect(),
            attachments: t
                .attachments
                .iter()
                .map(|a| AttachmentDto {
                    id: a.id.clone(),
                    file_name: a.file_name.clone(),
                    content_type: a.content_type.clone(),
                    size_bytes: a.size_bytes,
                    storage_key: a.storage_key.clone(),
                    created_at: a.created_at,
                })
                .collect(),
            created_at: t.created_at,
            updated_at: t.updated_at,
            version,
        })
    }
}

/// Whether this key may see internal comments.
fn sees_internal(p: &Principal) -> bool {
    matches!(p.role(), Role::Admin | Role::Writer)
}

#[utoipa::path(post, path = "/v1/tickets", tag = "tickets", operation_id = "tickets_create", request_body = CreateTicketRequest,
    responses((status = 201, body = TicketDto), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    ctx: CommandCtx,
    principal: Principal,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateTicketRequest>,
) -> ApiResult<Response> {
    principal.require(Access::Write)?;
    // Like an invoice, a ticket may only name one of the tenant's subscriptions.
    if let Some(sub) = &req.subscription_id {
        tenant_subscription(&app, &ctx.meta.tenant, "subscription_id", sub).await?;
    }
    let id = ids::new_id("tkt");
    let at = app.dispatcher.clock().now();
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::CREATED,
        || TicketCommand::Create {
            ticket_id: id.clone(),
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
    principal: Principal,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    JsonBody(req): JsonBody<AssignRequest>,
) -> ApiResult<Response> {
    principal.require(Access::Write)?;
    check_id(&id, "tkt")?;
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
    principal: Principal,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    JsonBody(req): JsonBody<CommentRequest>,
) -> ApiResult<Response> {
    principal.require(Access::Write)?;
    check_id(&id, "tkt")?;
    let at = app.dispatcher.clock().now();
    let comment_id = ids::new_id("cmt");
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || TicketCommand::Comment {
            comment_id: comment_id.clone(),
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
    principal: Principal,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    JsonBody(req): JsonBody<AttachmentRequest>,
) -> ApiResult<Response> {
    principal.require(Access::Write)?;
    check_id(&id, "tkt")?;
    let at = app.dispatcher.clock().now();
    let attachment_id = ids::new_id("att");
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || TicketCommand::Attach {
            attachment_id: attachment_id.clone(),
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
    principal: Principal,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    JsonBody(req): JsonBody<TransitionRequest>,
) -> ApiResult<Response> {
    principal.require(Access::Write)?;
    check_id(&id, "tkt")?;
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TicketListParams {
    pub status: Option<String>,
    pub assignee: Option<String>,
    pub requester: Option<String>,
    pub priority: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/tickets", tag = "tickets", operation_id = "tickets_list", params(TicketListParams),
    responses((status = 200, body = ListPage<TicketDto>), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    QueryParams(q): QueryParams<TicketListParams>,
) -> ApiResult<axum::Json<ListPage<TicketDto>>> {
    principal.require(Access::Read)?;
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
    principal: Principal,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
) -> ApiResult<Response> {
    principal.require(Access::Read)?;
    let internal = sees_internal(&principal);
    get_state::<Ticket, _>(&app, principal.tenant(), &headers, &id, "tkt", |v| {
        TicketDto::from_state(&v.id, &v.state, v.version, internal)
    })
    .await
}
