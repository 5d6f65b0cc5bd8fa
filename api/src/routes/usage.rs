//! Usage endpoints: report one record or a batch, void, list, summary.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_aggregates::subscription::Subscription;
use tally_aggregates::usage::{
    anchor_in_month, usage_window, UsageCommand, UsageRecord, UsageWindow,
};
use tally_commands::usage::{self as ingest, BatchOutcome, Reported, UsageReport, MAX_BATCH};
use tally_projections::{state, usage};
use utoipa::ToSchema;

use super::{read_your_writes, resource, CommandCtx, PageParams};
use crate::auth::{Access, Principal};
use crate::dto::{parse_decimal, parse_time, ListPage};
use crate::error::{ApiError, ApiResult, FieldError, Problem};
use crate::extract::{if_match, parse_json, JsonBody, JsonRecords, PathParams, QueryParams};
use crate::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageRequest {
    pub subscription_id: String,
    pub meter: String,
    /// Non-negative decimal, as a string ("12.5") or an integer.
    pub quantity: QuantityInput,
    /// RFC 3339; at most 5 minutes ahead, at most 35 days old.
    pub timestamp: String,
    /// The client's id of this report: a repeat is recorded once.
    pub transaction_id: String,
    #[schema(value_type = Option<Object>)]
    pub properties: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A decimal string or an integer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum QuantityInput {
    Text(String),
    Integer(i64),
}

impl QuantityInput {
    /// The quantity as a non-negative decimal; errors name `field`.
    pub fn non_negative(self, field: &str) -> Result<Decimal, ApiError> {
        match self {
            QuantityInput::Text(s) => parse_decimal(field, &s),
            QuantityInput::Integer(i) if i >= 0 => Ok(Decimal::from(i)),
            QuantityInput::Integer(_) => Err(ApiError::field(field, "must not be negative")),
        }
    }
}

impl UsageRequest {
    fn into_report(self) -> Result<UsageReport, ApiError> {
        let quantity = self.quantity.non_negative("quantity")?;
        let properties = self.properties.unwrap_or_default();
        if serde_json::to_vec(&properties)
            .map(|b| b.len())
            .unwrap_or(0)
            > 4096
        {
            return Err(ApiError::field("properties", "at most 4 KiB of JSON"));
        }
        Ok(UsageReport {
            subscription_id: self.subscription_id,
            meter: self.meter,
            quantity,
            timestamp: parse_time("timestamp", &self.timestamp)?,
            transaction_id: self.transaction_id,
            properties,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WindowDto {
    pub start: DateTime<Utc>,
    /// Absent for a lifetime meter.
    pub end: Option<DateTime<Utc>>,
}

impl From<&UsageWindow> for WindowDto {
    fn from(w: &UsageWindow) -> Self {
        WindowDto {
            start: w.start,
            end: w.end,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageRecordDto {
    pub id: String,
    pub transaction_id: String,
    pub subscription_id: String,
    pub meter: String,
    pub quantity: String,
    pub timestamp: Option<DateTime<Utc>>,
    pub window: Option<WindowDto>,
    /// recorded | billed | voided
    pub status: String,
    #[schema(value_type = Object)]
    pub properties: serde_json::Map<String, serde_json::Value>,
    pub recorded_at: Option<DateTime<Utc>>,
    pub billed_invoice_id: Option<String>,
    pub voided_at: Option<DateTime<Utc>>,
    pub void_reason: Option<String>,
    /// True when this answers a repeated transaction id with the original record.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    pub version: i64,
}

impl UsageRecordDto {
    pub(crate) fn from_state(
        id: &str,
        r: &UsageRecord,
        version: i64,
        duplicate: bool,
    ) -> Option<Self> {
        Some(UsageRecordDto {
            id: id.to_string(),
            transaction_id: r.transaction_id.clone(),
            subscription_id: r.subscription_id.clone(),
            meter: r.meter.clone(),
            quantity: r.quantity.normalize().to_string(),
            timestamp: r.timestamp,
            window: r.window.as_ref().map(WindowDto::from),
            status: r.status?.as_str().to_string(),
            properties: r.properties.clone(),
            recorded_at: r.recorded_at,
            billed_invoice_id: r.billed_invoice_id.clone(),
            voided_at: r.voided_at,
            void_reason: r.void_reason.clone(),
            duplicate,
            version,
        })
    }
}

#[utoipa::path(post, path = "/v1/usage", tag = "usage", operation_id = "usage_create", request_body = UsageRequest,
    responses((status = 201, body = UsageRecordDto), (status = 200, description = "duplicate transaction id: the original record", body = UsageRecordDto),
        (status = 409, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn report(
    State(app): State<AppState>,
    ctx: CommandCtx,
    principal: Principal,
    JsonBody(req): JsonBody<UsageRequest>,
) -> ApiResult<Response> {
    principal.require(Access::Write)?;
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// At most 1000 records, each shaped like `POST /v1/usage`.
    #[schema(value_type = Vec<UsageRequest>)]
    pub records: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItemError {
    pub code: String,
    pub detail: String,
    pub errors: Vec<FieldError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    pub transaction_id: Option<String>,
    /// created | duplicate | rejected
    pub status: String,
    pub id: Option<String>,
    pub error: Option<BatchItemError>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
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
    principal: Principal,
    JsonRecords(req): JsonRecords<BatchRequest>,
) -> ApiResult<Response> {
    principal.require(Access::Write)?;
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {
    pub reason: String,
}

#[utoipa::path(post, path = "/v1/usage/{id}/void", tag = "usage", operation_id = "usage_void", params(("id" = String, Path)), request_body = VoidRequest,
    responses((status = 200, body = UsageRecordDto), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn void(
    State(app): State<AppState>,
    ctx: CommandCtx,
    principal: Principal,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    JsonBody(req): JsonBody<VoidRequest>,
) -> ApiResult<Response> {
    principal.require(Access::Write)?;
    super::check_id(&id, "use")?;
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageListParams {
    pub subscription_id: Option<String>,
    pub meter: Option<String>,
    /// RFC 3339, inclusive.
    pub from: Option<String>,
    /// RFC 3339, exclusive.
    pub to: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/usage", tag = "usage", operation_id = "usage_list", params(UsageListParams),
    responses((status = 200, body = ListPage<UsageRecordDto>), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    QueryParams(q): QueryParams<UsageListParams>,
) -> ApiResult<axum::Json<ListPage<UsageRecordDto>>> {
    principal.require(Access::Read)?;
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
    principal: Principal,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
) -> ApiResult<Response> {
    principal.require(Access::Read)?;
    read_your_writes(&app, &headers).await?;
    super::check_id(&id, "use")?;
    let v = usage::get(&app.db, principal.tenant(), &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let dto =
        UsageRecordDto::from_state(&v.id, &v.state, v.version, false).ok_or(ApiError::NotFound)?;
    Ok(resource(StatusCode::OK, &dto, v.version, None))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SummaryParams {
    pub subscription_id: String,
    pub meter: String,
    /// `current` (default) or `YYYY-MM`: the window that starts in that month.
    pub window: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SummaryDto {
    pub subscription_id: String,
    pub meter: String,
    pub window: WindowDto,
    pub total: String,
    pub record_count: i64,
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
    principal: Principal,
    headers: HeaderMap,
    QueryParams(q): QueryParams<SummaryParams>,
) -> ApiResult<axum::Json<SummaryDto>> {
    principal.require(Access::Read)?;
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
