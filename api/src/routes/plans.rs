//! Plan catalog endpoints.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tally_aggregates::plan::{Plan, PlanCommand};
use tally_commands::ids::{Generate, PlanId};

use super::{get_state, list_state, path_id, CommandCtx, PageParams};
use crate::auth::{ReadAccess, WriteAccess};
use crate::dto::plans::{CreatePlanRequest, PlanDto, PlanListParams};
use crate::dto::{EmptyRequest, ListPage};
use crate::error::{ApiResult, Problem};
use crate::extract::{if_match, JsonBody, PathParams, QueryParams};
use crate::AppState;

#[utoipa::path(post, path = "/v1/plans", tag = "plans", operation_id = "plans_create", request_body = CreatePlanRequest,
    responses((status = 201, body = PlanDto), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    ctx: CommandCtx,
    _: WriteAccess,
    JsonBody(req): JsonBody<CreatePlanRequest>,
) -> ApiResult<Response> {
    let terms = req.into_terms()?;
    super::tax_rates::check_attachable(&app, &ctx.meta.tenant, "tax_rate_ids", &terms.tax_rate_ids)
        .await?;
    let id = PlanId::generate();
    let at = app.dispatcher.clock().now();
    super::run::<Plan, _>(
        &app,
        &ctx,
        &id,
        None,
        StatusCode::CREATED,
        || PlanCommand::Create {
            plan_id: id.clone().into_string(),
            terms: terms.clone(),
            at,
        },
        PlanDto::from_state,
    )
    .await
}

#[utoipa::path(post, path = "/v1/plans/{id}/archive", tag = "plans", operation_id = "plans_archive", params(("id" = String, Path)),
    request_body = EmptyRequest, responses((status = 200, body = PlanDto), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn archive(
    State(app): State<AppState>,
    ctx: CommandCtx,
    PathParams(id): PathParams<String>,
    headers: HeaderMap,
    _: WriteAccess,
    JsonBody(_empty): JsonBody<EmptyRequest>,
) -> ApiResult<Response> {
    let id: PlanId = path_id(&id)?;
    let at = app.dispatcher.clock().now();
    super::run::<Plan, _>(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || PlanCommand::Archive { at },
        PlanDto::from_state,
    )
    .await
}

#[utoipa::path(get, path = "/v1/plans", tag = "plans", operation_id = "plans_list", params(PlanListParams),
    responses((status = 200, body = ListPage<PlanDto>)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<PlanListParams>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<axum::Json<ListPage<PlanDto>>> {
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    list_state::<Plan, _>(
        &app,
        principal.tenant(),
        &headers,
        &[("code", q.code), ("status", q.status)],
        page,
        |v| PlanDto::from_state(&v.id, &v.state, v.version),
    )
    .await
}

#[utoipa::path(get, path = "/v1/plans/{id}", tag = "plans", operation_id = "plans_get", params(("id" = String, Path)),
    responses((status = 200, body = PlanDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<Response> {
    get_state::<Plan, _, _>(
        &app,
        principal.tenant(),
        &headers,
        &id,
        path_id::<PlanId>,
        |v| PlanDto::from_state(&v.id, &v.state, v.version),
    )
    .await
}
