//! Subscription endpoints: create and every lifecycle command, list and detail.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tally_aggregates::plan::Plan;
use tally_aggregates::subscription::{PlanRef, Subscription, SubscriptionCommand, SuspendReason};
use tally_aggregates::ProrationMode;
use tally_commands::ids::Generate;
use tally_commands::{coupons, CommandMeta};

use super::{get_state, list_state, path_id, read_your_writes, CommandCtx, PageParams};
use crate::auth::{ReadAccess, WriteAccess};
use crate::dto::subscriptions::{
    ActivateRequest, ApplyDiscountRequest, CancelRequest, ChangePlanRequest, ChangeSeatsRequest,
    ClientSuspendReason, CreateSubscriptionRequest, EntitlementDto, EntitlementsDto,
    SubscriptionDto, SubscriptionListParams, SuspendRequest,
};
use crate::dto::{parse_time, EmptyRequest, ListPage};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{if_match, JsonBody, PathParams, QueryParams};
use crate::AppState;
use tally_commands::ids::{PlanId, SubscriptionId};

/// Loads a plan for a subscription command; an unknown plan is a bad field.
async fn plan_ref(app: &AppState, meta: &CommandMeta, plan_id: &str) -> ApiResult<PlanRef> {
    let Ok(plan_id) = PlanId::parse(plan_id) else {
        return Err(ApiError::field("plan_id", "unknown plan"));
    };
    let (plan, _) = app.dispatcher.load::<Plan>(&meta.tenant, &plan_id).await?;
    plan.plan_ref()
        .ok_or_else(|| ApiError::field("plan_id", "unknown plan"))
}

/// The tenant's subscription that a request body names in `field`. Any
/// other id (malformed, unknown, another tenant's: its stream is empty under
/// this tenant) is refused as that field, before it touches the store.
pub async fn tenant_subscription(
    app: &AppState,
    tenant: &str,
    field: &str,
    subscription_id: &str,
) -> ApiResult<Subscription> {
    let Ok(subscription_id) = SubscriptionId::parse(subscription_id) else {
        return Err(ApiError::field(field, "unknown subscription"));
    };
    let (s, _) = app
        .dispatcher
        .load::<Subscription>(tenant, &subscription_id)
        .await?;
    if s.status.is_none() {
        return Err(ApiError::field(field, "unknown subscription"));
    }
    Ok(s)
}

#[utoipa::path(post, path = "/v1/subscriptions", tag = "subscriptions", operation_id = "subscriptions_create", request_body = CreateSubscriptionRequest,
    responses((status = 201, body = SubscriptionDto), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    _: WriteAccess,
    JsonBody(req): JsonBody<CreateSubscriptionRequest>,
) -> ApiResult<Response> {
    let plan = plan_ref(&app, &ctx.meta, &req.plan_id).await?;
    let tax_rate_ids = req.tax_rate_ids.clone().unwrap_or_default();
    super::tax_rates::check_attachable(&app, &ctx.meta.tenant, "tax_rate_ids", &tax_rate_ids)
        .await?;
    let id = SubscriptionId::generate();
    let at = app.dispatcher.clock().now();
    let create = || SubscriptionCommand::Create {
        subscription_id: id.clone().into_string(),
        customer_id: req.customer_id.clone(),
        plan: plan.clone(),
        seats: req.seats,
        trial_days: req.trial_days,
        tax_rate_ids: tax_rate_ids.clone(),
        at,
    };
    let Some(code) = &req.coupon_code else {
        return super::run(
            &app,
            &ctx,
            &id,
            if_match(&headers)?,
            StatusCode::CREATED,
            create,
            SubscriptionDto::from_state,
        )
        .await;
    };
    // Created and redeemed in one append: no subscription without its coupon.
    let (out, _) = coupons::redeem(
        &app.dispatcher,
        &ctx.meta,
        &id,
        if_match(&headers)?,
        code,
        Some(create()),
    )
    .await?;
    super::answer(&out, StatusCode::CREATED, SubscriptionDto::from_state)
}

/// Redeems a coupon for the subscription's next invoices, replacing the
/// discount it had.
#[utoipa::path(post, path = "/v1/subscriptions/{id}/discount", tag = "subscriptions", operation_id = "subscriptions_apply_discount", params(("id" = String, Path)),
    request_body = ApplyDiscountRequest,
    responses((status = 200, body = SubscriptionDto), (status = 404, body = Problem),
        (status = 409, description = "`coupon_exhausted` (redeemed `max_redemptions` times), or `invalid_transition` (canceled)", body = Problem),
        (status = 422, description = "`coupon_invalid` (unknown, archived or expired code), `coupon_not_applicable` (another plan or currency)", body = Problem)),
    security(("bearer" = [])))]
pub async fn apply_discount(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(req): JsonBody<ApplyDiscountRequest>,
) -> ApiResult<Response> {
    let id: SubscriptionId = path_id(&id)?;
    let (out, _) = coupons::redeem(
        &app.dispatcher,
        &ctx.meta,
        &id,
        if_match(&headers)?,
        &req.coupon_code,
        None,
    )
    .await?;
    super::answer(&out, StatusCode::OK, SubscriptionDto::from_state)
}

/// Removes the subscription's discount: invoices from now on take none.
#[utoipa::path(delete, path = "/v1/subscriptions/{id}/discount", tag = "subscriptions", operation_id = "subscriptions_remove_discount", params(("id" = String, Path)),
    responses((status = 200, body = SubscriptionDto), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn remove_discount(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
) -> ApiResult<Response> {
    let id: SubscriptionId = path_id(&id)?;
    let at = app.dispatcher.clock().now();
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || SubscriptionCommand::RemoveDiscount { at },
        SubscriptionDto::from_state,
    )
    .await
}

#[utoipa::path(post, path = "/v1/subscriptions/{id}/activate", tag = "subscriptions", operation_id = "subscriptions_activate", params(("id" = String, Path)),
    request_body = ActivateRequest, responses((status = 200, body = SubscriptionDto), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn activate(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(req): JsonBody<ActivateRequest>,
) -> ApiResult<Response> {
    let id: SubscriptionId = path_id(&id)?;
    let now = app.dispatcher.clock().now();
    let at = match req.at.as_deref() {
        Some(s) => parse_time("at", s)?,
        None => now,
    };
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || SubscriptionCommand::Activate { at, now },
        SubscriptionDto::from_state,
    )
    .await
}

/// Ends a trial now: the subscription becomes active with its first period
/// (and first invoice) from now, or is canceled when a cancellation waited
/// for the end of the trial.
#[utoipa::path(post, path = "/v1/subscriptions/{id}/end-trial", tag = "subscriptions", operation_id = "subscriptions_end_trial", params(("id" = String, Path)),
    request_body = EmptyRequest, responses((status = 200, body = SubscriptionDto), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn end_trial(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(_empty): JsonBody<EmptyRequest>,
) -> ApiResult<Response> {
    let id: SubscriptionId = path_id(&id)?;
    let at = app.dispatcher.clock().now();
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || SubscriptionCommand::EndTrial { at },
        SubscriptionDto::from_state,
    )
    .await
}

#[utoipa::path(post, path = "/v1/subscriptions/{id}/change-plan", tag = "subscriptions", operation_id = "subscriptions_change_plan", params(("id" = String, Path)),
    request_body = ChangePlanRequest, responses((status = 200, body = SubscriptionDto), (status = 409, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn change_plan(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(req): JsonBody<ChangePlanRequest>,
) -> ApiResult<Response> {
    let id: SubscriptionId = path_id(&id)?;
    let plan = plan_ref(&app, &ctx.meta, &req.plan_id).await?;
    let at = app.dispatcher.clock().now();
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || SubscriptionCommand::ChangePlan {
            plan: plan.clone(),
            proration: req.proration,
            at,
        },
        SubscriptionDto::from_state,
    )
    .await
}

#[utoipa::path(post, path = "/v1/subscriptions/{id}/change-seats", tag = "subscriptions", operation_id = "subscriptions_change_seats", params(("id" = String, Path)),
    request_body = ChangeSeatsRequest, responses((status = 200, body = SubscriptionDto), (status = 409, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn change_seats(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(req): JsonBody<ChangeSeatsRequest>,
) -> ApiResult<Response> {
    let id: SubscriptionId = path_id(&id)?;
    let at = app.dispatcher.clock().now();
    let proration = req.proration.unwrap_or(ProrationMode::Prorate);
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || SubscriptionCommand::ChangeSeats {
            seats: req.seats,
            proration,
            at,
        },
        SubscriptionDto::from_state,
    )
    .await
}

#[utoipa::path(post, path = "/v1/subscriptions/{id}/suspend", tag = "subscriptions", operation_id = "subscriptions_suspend", params(("id" = String, Path)),
    request_body = SuspendRequest, responses((status = 200, body = SubscriptionDto), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn suspend(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(req): JsonBody<SuspendRequest>,
) -> ApiResult<Response> {
    let id: SubscriptionId = path_id(&id)?;
    if req.note.as_ref().is_some_and(|n| n.chars().count() > 1000) {
        return Err(ApiError::field("note", "at most 1000 characters"));
    }
    let at = app.dispatcher.clock().now();
    let reason = match req.reason {
        ClientSuspendReason::Manual => SuspendReason::Manual {
            note: req.note.clone(),
        },
        ClientSuspendReason::NonPayment => SuspendReason::NonPayment,
    };
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || SubscriptionCommand::Suspend {
            reason: reason.clone(),
            at,
        },
        SubscriptionDto::from_state,
    )
    .await
}

#[utoipa::path(post, path = "/v1/subscriptions/{id}/resume", tag = "subscriptions", operation_id = "subscriptions_resume", params(("id" = String, Path)),
    request_body = EmptyRequest, responses((status = 200, body = SubscriptionDto), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn resume(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(_empty): JsonBody<EmptyRequest>,
) -> ApiResult<Response> {
    let id: SubscriptionId = path_id(&id)?;
    let at = app.dispatcher.clock().now();
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || SubscriptionCommand::Resume { at },
        SubscriptionDto::from_state,
    )
    .await
}

#[utoipa::path(post, path = "/v1/subscriptions/{id}/cancel", tag = "subscriptions", operation_id = "subscriptions_cancel", params(("id" = String, Path)),
    request_body = CancelRequest, responses((status = 200, body = SubscriptionDto), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn cancel(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(req): JsonBody<CancelRequest>,
) -> ApiResult<Response> {
    let id: SubscriptionId = path_id(&id)?;
    if req
        .reason
        .as_ref()
        .is_some_and(|n| n.chars().count() > 1000)
    {
        return Err(ApiError::field("reason", "at most 1000 characters"));
    }
    let at = app.dispatcher.clock().now();
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || SubscriptionCommand::Cancel {
            when: req.at,
            reason: req.reason.clone(),
            at,
        },
        SubscriptionDto::from_state,
    )
    .await
}

const STATUSES: [&str; 6] = [
    "draft",
    "trialing",
    "active",
    "past_due",
    "suspended",
    "canceled",
];

#[utoipa::path(get, path = "/v1/subscriptions", tag = "subscriptions", operation_id = "subscriptions_list", params(SubscriptionListParams),
    responses((status = 200, body = ListPage<SubscriptionDto>), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<SubscriptionListParams>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<axum::Json<ListPage<SubscriptionDto>>> {
    if let Some(s) = &q.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(ApiError::field(
                "status",
                format!("must be one of {}", STATUSES.join(", ")),
            ));
        }
    }
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    list_state::<Subscription, _>(
        &app,
        principal.tenant(),
        &headers,
        &[
            ("customer_id", q.customer_id),
            ("plan_id", q.plan_id),
            ("status", q.status),
        ],
        page,
        |v| SubscriptionDto::from_state(&v.id, &v.state, v.version),
    )
    .await
}

#[utoipa::path(get, path = "/v1/subscriptions/{id}", tag = "subscriptions", operation_id = "subscriptions_get", params(("id" = String, Path)),
    responses((status = 200, body = SubscriptionDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<Response> {
    get_state::<Subscription, _, _>(
        &app,
        principal.tenant(),
        &headers,
        &id,
        path_id::<SubscriptionId>,
        |v| SubscriptionDto::from_state(&v.id, &v.state, v.version),
    )
    .await
}

/// Per-meter usage of the current window against the plan's hard caps
/// (empty for a subscription that was never activated).
#[utoipa::path(get, path = "/v1/subscriptions/{id}/entitlements", tag = "subscriptions", operation_id = "subscriptions_entitlements_get", params(("id" = String, Path)),
    responses((status = 200, body = EntitlementsDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn entitlements(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<axum::Json<EntitlementsDto>> {
    read_your_writes(&app, &headers).await?;
    let id: SubscriptionId = path_id(&id)?;
    let now = app.dispatcher.clock().now();
    let found = tally_projections::usage::entitlements(&app.db, principal.tenant(), &id, now)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(axum::Json(EntitlementsDto {
        subscription_id: id.into_string(),
        data: found.iter().map(EntitlementDto::from).collect(),
    }))
}
