//! Invoice endpoints: create a draft, add lines, issue, record payments,
//! credit notes, void, mark uncollectible, list and detail; and the customer balance and
//! journal (the accounts-receivable read model).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use rust_decimal::Decimal;
use tally_aggregates::invoice::{CreditReason, Invoice, InvoiceCommand, InvoiceStatus, MAX_LINES};
use tally_aggregates::Currency;
use tally_commands::ids::{Generate, InvoiceId};
use tally_commands::invoices::{self, CreditNoteRequest as CreditNoteOrder, PaymentNotice};
use tally_projections::balances;

use super::subscriptions::tenant_subscription;
use super::{get_state, list_state, path_id, read_your_writes, CommandCtx, PageParams};
use crate::auth::{ReadAccess, WriteAccess};
use crate::dto::invoices::{
    BalanceDto, CreateInvoiceRequest, CreditNoteRequest, CustomerBalanceDto, InvoiceDto,
    InvoiceListParams, JournalEntryDto, JournalParams, LineRequest, PaymentRequest, VoidRequest,
};
use crate::dto::{parse_time, EmptyRequest, ListPage};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{if_match, JsonBody, PathParams, QueryParams};
use crate::AppState;

// ---------- bodies ----------

// ---------- commands ----------

#[utoipa::path(post, path = "/v1/invoices", tag = "invoices", operation_id = "invoices_create", request_body = CreateInvoiceRequest,
    responses((status = 201, body = InvoiceDto), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    _: WriteAccess,
    JsonBody(req): JsonBody<CreateInvoiceRequest>,
) -> ApiResult<Response> {
    let currency = Currency::parse(&req.currency)
        .map_err(|_| ApiError::field("currency", "unknown ISO 4217 currency"))?;
    let requested = req.lines.unwrap_or_default();
    if requested.len() > MAX_LINES {
        return Err(ApiError::field(
            "lines",
            format!("an invoice has at most {MAX_LINES} lines"),
        ));
    }
    let lines = requested
        .into_iter()
        .enumerate()
        .map(|(i, l)| l.into_line(&format!("lines[{i}].")))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, line) in lines.iter().enumerate() {
        let field = format!("lines[{i}].tax_rate_ids");
        super::tax_rates::check_attachable(&app, &ctx.meta.tenant, &field, &line.tax_rate_ids)
            .await?;
    }
    if let Some(sub) = &req.subscription_id {
        let s = tenant_subscription(&app, &ctx.meta.tenant, "subscription_id", sub).await?;
        if s.customer_id != req.customer_id {
            return Err(ApiError::field(
                "subscription_id",
                "the subscription belongs to another customer",
            ));
        }
    }
    let id = InvoiceId::generate();
    let at = app.dispatcher.clock().now();
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::CREATED,
        || InvoiceCommand::Create {
            invoice_id: id.clone().into_string(),
            customer_id: req.customer_id.clone(),
            currency,
            subscription_id: req.subscription_id.clone(),
            billing_period: None,
            due_days: req.due_days,
            lines: lines.clone(),
            at,
        },
        InvoiceDto::from_state,
    )
    .await
}

#[utoipa::path(post, path = "/v1/invoices/{id}/lines", tag = "invoices", operation_id = "invoices_add_line", params(("id" = String, Path)),
    request_body = LineRequest, responses((status = 200, body = InvoiceDto), (status = 409, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn add_line(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(req): JsonBody<LineRequest>,
) -> ApiResult<Response> {
    let id: InvoiceId = path_id(&id)?;
    let line = req.into_line("")?;
    super::tax_rates::check_attachable(&app, &ctx.meta.tenant, "tax_rate_ids", &line.tax_rate_ids)
        .await?;
    let at = app.dispatcher.clock().now();
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || InvoiceCommand::AddLine {
            line: line.clone(),
            at,
        },
        InvoiceDto::from_state,
    )
    .await
}

#[utoipa::path(post, path = "/v1/invoices/{id}/issue", tag = "invoices", operation_id = "invoices_issue", params(("id" = String, Path)),
    request_body = EmptyRequest, responses((status = 200, body = InvoiceDto), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn issue(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(_empty): JsonBody<EmptyRequest>,
) -> ApiResult<Response> {
    let id: InvoiceId = path_id(&id)?;
    let out = invoices::issue(&app.dispatcher, &ctx.meta, &id, if_match(&headers)?).await?;
    super::answer(&out, StatusCode::OK, InvoiceDto::from_state)
}

#[utoipa::path(post, path = "/v1/invoices/{id}/payments", tag = "invoices", operation_id = "invoices_pay", params(("id" = String, Path)),
    request_body = PaymentRequest, responses((status = 200, body = InvoiceDto), (status = 409, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn pay(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(req): JsonBody<PaymentRequest>,
) -> ApiResult<Response> {
    let id: InvoiceId = path_id(&id)?;
    let amount: Decimal = req
        .amount
        .trim()
        .parse()
        .map_err(|_| ApiError::field("amount", "must be a decimal string, e.g. \"12.50\""))?;
    let captured_at = req
        .captured_at
        .as_deref()
        .map(|s| parse_time("captured_at", s))
        .transpose()?;
    let notice = PaymentNotice {
        invoice_id: id.into_string(),
        amount,
        reference: req.reference,
        captured_at,
    };
    let out =
        invoices::record_payment(&app.dispatcher, &ctx.meta, notice, if_match(&headers)?).await?;
    super::answer(&out, StatusCode::OK, InvoiceDto::from_state)
}

/// A credit note on an open or paid invoice (`CN-` numbers, gapless per tenant).
#[utoipa::path(post, path = "/v1/invoices/{id}/credit-notes", tag = "invoices", operation_id = "invoices_credit_note", params(("id" = String, Path)),
    request_body = CreditNoteRequest, responses((status = 200, body = InvoiceDto), (status = 409, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn credit_note(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(req): JsonBody<CreditNoteRequest>,
) -> ApiResult<Response> {
    let id: InvoiceId = path_id(&id)?;
    let amount: Decimal = req
        .amount
        .trim()
        .parse()
        .map_err(|_| ApiError::field("amount", "must be a decimal string, e.g. \"12.50\""))?;
    let reason = CreditReason::parse(&req.reason).ok_or_else(|| {
        let all: Vec<&str> = CreditReason::ALL.iter().map(|r| r.as_str()).collect();
        ApiError::field("reason", format!("must be one of {}", all.join(", ")))
    })?;
    let order = CreditNoteOrder {
        invoice_id: id.into_string(),
        amount,
        reason,
        refund: req.refund.unwrap_or(false),
        reference: None,
    };
    let out =
        invoices::issue_credit_note(&app.dispatcher, &ctx.meta, order, if_match(&headers)?).await?;
    super::answer(&out, StatusCode::OK, InvoiceDto::from_state)
}

#[utoipa::path(post, path = "/v1/invoices/{id}/void", tag = "invoices", operation_id = "invoices_void", params(("id" = String, Path)),
    request_body = VoidRequest, responses((status = 200, body = InvoiceDto), (status = 409, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn void(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(req): JsonBody<VoidRequest>,
) -> ApiResult<Response> {
    let id: InvoiceId = path_id(&id)?;
    let at = app.dispatcher.clock().now();
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || InvoiceCommand::Void {
            reason: req.reason.clone(),
            at,
        },
        InvoiceDto::from_state,
    )
    .await
}

#[utoipa::path(post, path = "/v1/invoices/{id}/mark-uncollectible", tag = "invoices", operation_id = "invoices_mark_uncollectible", params(("id" = String, Path)),
    request_body = EmptyRequest, responses((status = 200, body = InvoiceDto), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn mark_uncollectible(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(_empty): JsonBody<EmptyRequest>,
) -> ApiResult<Response> {
    let id: InvoiceId = path_id(&id)?;
    let at = app.dispatcher.clock().now();
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || InvoiceCommand::MarkUncollectible { at },
        InvoiceDto::from_state,
    )
    .await
}

// ---------- queries ----------

#[utoipa::path(get, path = "/v1/invoices", tag = "invoices", operation_id = "invoices_list",
    params(("status" = Option<String>, Query), ("customer_id" = Option<String>, Query), ("subscription_id" = Option<String>, Query),
        ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = ListPage<InvoiceDto>), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<InvoiceListParams>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<axum::Json<ListPage<InvoiceDto>>> {
    if let Some(s) = &q.status {
        if InvoiceStatus::parse(s).is_none() {
            let all: Vec<&str> = InvoiceStatus::ALL.iter().map(|s| s.as_str()).collect();
            return Err(ApiError::field(
                "status",
                format!("must be one of {}", all.join(", ")),
            ));
        }
    }
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    list_state::<Invoice, _>(
        &app,
        principal.tenant(),
        &headers,
        &[
            ("customer_id", q.customer_id),
            ("subscription_id", q.subscription_id),
            ("status", q.status),
        ],
        page,
        |v| InvoiceDto::from_state(&v.id, &v.state, v.version),
    )
    .await
}

#[utoipa::path(get, path = "/v1/invoices/{id}", tag = "invoices", operation_id = "invoices_get", params(("id" = String, Path)),
    responses((status = 200, body = InvoiceDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<Response> {
    get_state::<Invoice, _, _>(
        &app,
        principal.tenant(),
        &headers,
        &id,
        path_id::<InvoiceId>,
        |v| InvoiceDto::from_state(&v.id, &v.state, v.version),
    )
    .await
}

fn check_customer(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.chars().count() > 500 || id.chars().any(char::is_control) {
        return Err(ApiError::NotFound);
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/customers/{customer_id}/balance", tag = "invoices", operation_id = "customers_balance_get", params(("customer_id" = String, Path)),
    responses((status = 200, body = CustomerBalanceDto)), security(("bearer" = [])))]
pub async fn balance(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParams(customer_id): PathParams<String>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<axum::Json<CustomerBalanceDto>> {
    read_your_writes(&app, &headers).await?;
    check_customer(&customer_id)?;
    let data = balances::balances(&app.db, principal.tenant(), &customer_id)
        .await?
        .into_iter()
        .map(|b| BalanceDto {
            currency: b.currency.code().to_string(),
            invoiced: b.invoiced.to_string(),
            paid: b.paid.to_string(),
            voided: b.voided.to_string(),
            written_off: b.written_off.to_string(),
            credited: b.credited.to_string(),
            refunded: b.refunded.to_string(),
            credit: b.credit.to_string(),
            outstanding: b.outstanding.to_string(),
        })
        .collect();
    Ok(axum::Json(CustomerBalanceDto { customer_id, data }))
}

/// The customer's double-entry journal, oldest first; both legs of an entry
/// are on the same page.
#[utoipa::path(get, path = "/v1/customers/{customer_id}/journal", tag = "invoices", operation_id = "customers_journal_get", params(("customer_id" = String, Path),
        ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = ListPage<JournalEntryDto>)), security(("bearer" = [])))]
pub async fn journal(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParams(customer_id): PathParams<String>,
    QueryParams(q): QueryParams<JournalParams>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<axum::Json<ListPage<JournalEntryDto>>> {
    read_your_writes(&app, &headers).await?;
    check_customer(&customer_id)?;
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let cursor = page
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::field("cursor", "not a cursor of this list"))
        })
        .transpose()?;
    let result = balances::journal(
        &app.db,
        principal.tenant(),
        &customer_id,
        page.limit()?,
        cursor,
    )
    .await?;
    Ok(axum::Json(ListPage {
        data: result
            .data
            .into_iter()
            .map(|e| JournalEntryDto {
                event_id: e.event_id,
                position: e.position,
                invoice_id: e.invoice_id,
                currency: e.currency,
                account: e.account,
                debit: e.debit,
                credit: e.credit,
                recorded_at: e.recorded_at,
            })
            .collect(),
        next_cursor: result.next_cursor,
    }))
}
