//! Coupon endpoints: create, archive, list (by code and status) and detail
//! from the `rm_coupons` read model. Redeeming is a subscription command
//! (`subscriptions::apply_discount`, or `coupon_code` at creation).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tally_aggregates::coupon::{Coupon, CouponCommand};
use tally_commands::coupons::coupon_id;
use tally_commands::ids::CouponId;

use super::{get_state, list_state, path_id, CommandCtx, PageParams};
use crate::auth::{ReadAccess, WriteAccess};
use crate::dto::coupons::{CouponDto, CouponListParams, CreateCouponRequest};
use crate::dto::{EmptyRequest, ListPage};
use crate::error::{ApiResult, Problem};
use crate::extract::{if_match, JsonBody, PathParams, QueryParams};
use crate::AppState;

#[utoipa::path(post, path = "/v1/coupons", tag = "coupons", operation_id = "coupons_create", request_body = CreateCouponRequest,
    responses((status = 201, body = CouponDto), (status = 409, description = "A coupon with this code exists", body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    ctx: CommandCtx,
    _: WriteAccess,
    JsonBody(req): JsonBody<CreateCouponRequest>,
) -> ApiResult<Response> {
    let terms = req.into_terms()?;
    let at = app.dispatcher.clock().now();
    // The syntax first: the id is derived from a valid code only.
    terms.validate(at)?;
    let id = coupon_id(&terms.code);
    super::run::<Coupon, _>(
        &app,
        &ctx,
        &id,
        None,
        StatusCode::CREATED,
        || CouponCommand::Create {
            coupon_id: id.clone().into_string(),
            terms: terms.clone(),
            at,
        },
        |id, s, v| CouponDto::from_state(id, s, v, at),
    )
    .await
}

#[utoipa::path(post, path = "/v1/coupons/{id}/archive", tag = "coupons", operation_id = "coupons_archive", params(("id" = String, Path)),
    request_body = EmptyRequest, responses((status = 200, body = CouponDto), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn archive(
    State(app): State<AppState>,
    ctx: CommandCtx,
    PathParams(id): PathParams<String>,
    headers: HeaderMap,
    _: WriteAccess,
    JsonBody(_empty): JsonBody<EmptyRequest>,
) -> ApiResult<Response> {
    let id: CouponId = path_id(&id)?;
    let at = app.dispatcher.clock().now();
    super::run::<Coupon, _>(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || CouponCommand::Archive { at },
        |id, s, v| CouponDto::from_state(id, s, v, at),
    )
    .await
}

#[utoipa::path(get, path = "/v1/coupons", tag = "coupons", operation_id = "coupons_list", params(CouponListParams),
    responses((status = 200, body = ListPage<CouponDto>), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<CouponListParams>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<axum::Json<ListPage<CouponDto>>> {
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let now = app.dispatcher.clock().now();
    list_state::<Coupon, _>(
        &app,
        principal.tenant(),
        &headers,
        &[("code", q.code), ("status", q.status)],
        page,
        |v| CouponDto::from_state(&v.id, &v.state, v.version, now),
    )
    .await
}

#[utoipa::path(get, path = "/v1/coupons/{id}", tag = "coupons", operation_id = "coupons_get", params(("id" = String, Path)),
    responses((status = 200, body = CouponDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<Response> {
    let now = app.dispatcher.clock().now();
    get_state::<Coupon, _, _>(
        &app,
        principal.tenant(),
        &headers,
        &id,
        path_id::<CouponId>,
        |v| CouponDto::from_state(&v.id, &v.state, v.version, now),
    )
    .await
}
