//! Usage endpoints: report one record or a batch, void, list, summary.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tally_aggregates::subscription::Subscription;
use tally_aggregates::usage::{anchor_in_month, usage_window, UsageCommand, UsageRecord};
use tally_commands::ids::UsageRecordId;
use tally_commands::usage::{self as ingest, BatchOutcome, Reported, MAX_BATCH};
use tally_projections::{state, usage};

use super::{path_id, read_your_writes, resource, CommandCtx, PageParams};
use crate::auth::{ReadAccess, WriteAccess};
use crate::dto::usage::{
    BatchItemError, BatchRequest, BatchResponse, BatchResult, SummaryDto, SummaryParams,
    UsageListParams, UsageRecordDto, UsageRequest, VoidRequest, WindowDto,
};
use crate::dto::{parse_time, ListPage};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{if_match, parse_json, JsonBody, JsonRecords, PathParams, QueryParams};
use crate::AppState;

#[utoipa::path(post, path = "/v1/usage", tag = "usage", operation_id = "usage_create", request_body = UsageRequest,
    responses((status = 201, body = UsageRecordDto), (status = 200, description = "duplicate transaction id: the original record", body = UsageRecordDto),
        (status = 409, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn report(
    State(app): State<AppState>,
    ctx: CommandCtx,
    _: WriteAccess,
    JsonBody(req): JsonBody<UsageRequest>,
) -> ApiResult<Response> {
    let report = req.into_report()?;
    let (status, out, duplicate) = match ingest::report(&app.dispatcher, &ctx.meta, &report).await?
    {
        Reported::Created(out) => (StatusCode::CREATED, out, false),
        Reported::Duplicate(out) => (StatusCode::OK, out, true),
    };
    super::answer(&out, status, |id, u, v| {
        UsageRecordDto::from_state(id, u, v, duplicate)
    })
}

fn item_error(e: ApiError) -> BatchItemError {
    let errors = match &e {
        ApiError::Validation { errors, .. } => errors.clone(),
        _ => Vec::new(),
    };
    let code = e.code().to_string();
    BatchItemError {
        code,
        detail: e.to_string(),
        errors,
    }
}

#[utoipa::path(post, path = "/v1/usage/batch", tag = "usage", operation_id = "usage_create_batch", request_body = BatchRequest,
    responses((status = 200, body = BatchResponse,
        headers(("X-Log-Position" = i64, description = "The position of the batch's last new event; the log head when the batch appended nothing"))),
        (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn batch(
    State(app): State<AppState>,
    ctx: CommandCtx,
    _: WriteAccess,
    JsonRecords(req): JsonRecords<BatchRequest>,
) -> ApiResult<Response> {
    if req.records.is_empty() || req.records.len() > MAX_BATCH {
        return Err(ApiError::field(
            "records",
            format!("give 1 to {MAX_BATCH} records"),
        ));
    }
    let mut txids = Vec::with_capacity(req.records.len());
    let reports: Vec<_> = req
        .records
        .into_iter()
        .map(|v| {
            txids.push(
                v.get("transaction_id")
                    .and_then(|t| t.as_str())
                    .map(str::to_string),
            );
            let bytes = serde_json::to_vec(&v).unwrap_or_default();
            parse_json::<UsageRequest>(&bytes).and_then(UsageRequest::into_report)
        })
        .collect();
    let mut parse_errors = Vec::new();
    let reports = reports
        .into_iter()
        .map(|r| match r {
            Ok(r) => {
                parse_errors.push(None);
                Ok(r)
            }
            Err(e) => {
                parse_errors.push(Some(item_error(e)));
                Err(tally_commands::CommandError::Store("rejected".into()))
            }
        })
        .collect();
    let outcomes = ingest::report_batch(&app.dispatcher, &ctx.meta, reports).await;
    let mut results = Vec::with_capacity(outcomes.len());
    let mut last_position = None::<i64>;
    for ((outcome, txid), parse_error) in outcomes.into_iter().zip(txids).zip(parse_errors) {
        results.push(match (outcome, parse_error) {
            (_, Some(error)) => BatchResult {
                transaction_id: txid,
                status: "rejected".into(),
                id: None,
                error: Some(error),
            },
            (BatchOutcome::Created { id, position }, None) => {
                last_position = last_position.max(Some(position));
                BatchResult {
                    transaction_id: txid,
                    status: "created".into(),
                    id: Some(id),
                    error: None,
                }
            }
            (BatchOutcome::Duplicate { id }, None) => BatchResult {
                transaction_id: txid,
                status: "duplicate".into(),
                id: Some(id),
                error: None,
            },
            (BatchOutcome::Rejected { error }, None) => {
                let e = ApiError::from(error);
                if matches!(e, ApiError::Internal(_) | ApiError::Unavailable(_)) {
                    return Err(e);
                }
                BatchResult {
                    transaction_id: txid,
                    status: "rejected".into(),
                    id: None,
                    error: Some(item_error(e)),
                }
            }
        });
    }
    // API.md: the position of the batch's last new event. A batch of
    // duplicates and rejections appended nothing; the log head then is a
    // position that every earlier write (the duplicates' originals included)
    // is at or below, so X-Min-Position with it still reads them.
    let position = match last_position {
        Some(p) => p,
        None => {
            tally_projections::EventLog::new(app.db.clone())
                .head()
                .await?
        }
    };
    let mut response = axum::Json(BatchResponse { results }).into_response();
    response
        .headers_mut()
        .insert("x-log-position", HeaderValue::from(position));
    Ok(response)
}

#[utoipa::path(post, path = "/v1/usage/{id}/void", tag = "usage", operation_id = "usage_void", params(("id" = String, Path)), request_body = VoidRequest,
    responses((status = 200, body = UsageRecordDto), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn void(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(req): JsonBody<VoidRequest>,
) -> ApiResult<Response> {
    let id: UsageRecordId = path_id(&id)?;
    let at = app.dispatcher.clock().now();
    super::run::<UsageRecord, _>(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || UsageCommand::Void {
            reason: req.reason.clone(),
            at,
        },
        |id, s, v| UsageRecordDto::from_state(id, s, v, false),
    )
    .await
}

#[utoipa::path(get, path = "/v1/usage", tag = "usage", operation_id = "usage_list", params(UsageListParams),
    responses((status = 200, body = ListPage<UsageRecordDto>), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<UsageListParams>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<axum::Json<ListPage<UsageRecordDto>>> {
    let filter = usage::RecordFilter {
        subscription_id: q.subscription_id,
        meter: q.meter,
        from: q
            .from
            .as_deref()
            .map(|s| parse_time("from", s))
            .transpose()?,
        to: q.to.as_deref().map(|s| parse_time("to", s)).transpose()?,
    };
    read_your_writes(&app, &headers).await?;
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let result = usage::list(
        &app.db,
        principal.tenant(),
        &filter,
        page.limit()?,
        page.cursor.as_deref(),
    )
    .await?;
    Ok(axum::Json(ListPage {
        data: result
            .data
            .iter()
            .filter_map(|v| UsageRecordDto::from_state(&v.id, &v.state, v.version, false))
            .collect(),
        next_cursor: result.next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/usage/{id}", tag = "usage", operation_id = "usage_get", params(("id" = String, Path)),
    responses((status = 200, body = UsageRecordDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<Response> {
    read_your_writes(&app, &headers).await?;
    let id: UsageRecordId = path_id(&id)?;
    let v = usage::get(&app.db, principal.tenant(), &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let dto =
        UsageRecordDto::from_state(&v.id, &v.state, v.version, false).ok_or(ApiError::NotFound)?;
    Ok(resource(StatusCode::OK, &dto, v.version, None))
}

/// The subscription as the read model has it, with its anchor (active at least once).
async fn anchored(app: &AppState, tenant: &str, id: &str) -> ApiResult<Subscription> {
    state::get::<Subscription>(&app.db, tenant, id)
        .await?
        .map(|v| v.state)
        .ok_or(ApiError::NotFound)
}

#[utoipa::path(get, path = "/v1/usage/summary", tag = "usage", operation_id = "usage_summary_get", params(SummaryParams),
    responses((status = 200, body = SummaryDto), (status = 404, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn summary(
    State(app): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<SummaryParams>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<axum::Json<SummaryDto>> {
    read_your_writes(&app, &headers).await?;
    let sub = anchored(&app, principal.tenant(), &q.subscription_id).await?;
    let terms = sub
        .plan
        .as_ref()
        .and_then(|p| p.meter(&q.meter))
        .ok_or_else(|| ApiError::field("meter", "not a meter of the subscription's plan"))?;
    let anchor = sub.usage_anchor().ok_or_else(|| {
        ApiError::field("subscription_id", "the subscription was never activated")
    })?;
    let at = match q.window.as_deref().unwrap_or("current") {
        "current" => app.dispatcher.clock().now(),
        month => parse_month(month)
            .and_then(|(y, m)| anchor_in_month(anchor, y, m))
            .ok_or_else(|| ApiError::field("window", "must be `current` or YYYY-MM"))?,
    };
    let window = usage_window(anchor, terms.reset, at);
    let t = usage::total(
        &app.db,
        principal.tenant(),
        &q.subscription_id,
        &q.meter,
        window.start,
    )
    .await?;
    Ok(axum::Json(SummaryDto {
        subscription_id: q.subscription_id,
        meter: q.meter,
        window: WindowDto::from(&window),
        total: t.total.normalize().to_string(),
        record_count: t.record_count,
    }))
}

/// `YYYY-MM` as a year and a month number (not checked to be a month).
fn parse_month(text: &str) -> Option<(i32, u32)> {
    let (y, m) = text.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    Some((y.parse().ok()?, m.parse().ok()?))
}
