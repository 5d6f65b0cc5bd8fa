//! Invoice endpoints: create a draft, add lines, issue, record payments,
//! credit notes, void, mark uncollectible, list and detail; and the customer balance and
//! journal (the accounts-receivable read model).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_aggregates::invoice::{
    CreditReason, Invoice, InvoiceCommand, InvoiceStatus, LineKind, NewLine, MAX_LINES,
};
use tally_aggregates::Currency;
use tally_commands::invoices::{self, CreditNoteRequest as CreditNoteOrder, PaymentNotice};
use tally_commands::{ids, Executed};
use tally_projections::balances;
use utoipa::ToSchema;

use super::subscriptions::tenant_subscription;
use super::usage::QuantityInput;
use super::{check_id, get_state, list_state, read_your_writes, resource, CommandCtx, PageParams};
use crate::auth::{Access, Principal};
use crate::dto::{parse_time, EmptyRequest, ListPage, PeriodDto};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{if_match, JsonBody, PathParams, QueryParams};
use crate::AppState;

// ---------- bodies ----------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    pub description: String,
    /// Non-negative decimal, as a string ("1.5") or an integer.
    pub quantity: QuantityInput,
    /// Decimal string; negative for a credit or discount line.
    #[schema(pattern = "^\\s*[-+]?[0-9_.]+\\s*$")]
    pub unit_price: String,
    /// recurring | usage | proration | discount | manual (default). A
    /// discount line is negative, one per invoice, at most the recurring,
    /// usage and proration lines before it.
    #[schema(value_type = Option<String>, pattern = "^(recurring|usage|proration|discount|manual)$")]
    pub kind: Option<LineKind>,
    /// The line's own tax rates (`txr_…`, active), before the
    /// subscription's, the plan's and the customer's.
    pub tax_rate_ids: Option<Vec<String>>,
}

impl LineRequest {
    fn into_line(self, prefix: &str) -> Result<NewLine, ApiError> {
        let field = |name: &str| format!("{prefix}{name}");
        let unit_price: Decimal = self.unit_price.trim().parse().map_err(|_| {
            ApiError::field(
                &field("unit_price"),
                "must be a decimal string, e.g. \"12.50\"",
            )
        })?;
        Ok(NewLine {
            description: self.description,
            quantity: self.quantity.non_negative(&field("quantity"))?,
            unit_price,
            kind: self.kind.unwrap_or_default(),
            period: None,
            tax_rate_ids: self.tax_rate_ids.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvoiceRequest {
    pub customer_id: String,
    /// ISO 4217 code, e.g. "EUR".
    #[schema(
        pattern = "^(AUD|BHD|BRL|CAD|CHF|CLP|CNY|CZK|DKK|EUR|GBP|HKD|HUF|INR|ISK|JOD|JPY|KRW|KWD|MXN|NOK|NZD|PLN|SEK|SGD|TND|USD|ZAR)$"
    )]
    pub currency: String,
    pub subscription_id: Option<String>,
    /// Days from issue to due date (0–365, default 30).
    pub due_days: Option<u32>,
    pub lines: Option<Vec<LineRequest>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    /// Decimal string, more than 0 and at most the amount due.
    #[schema(pattern = "^\\s*[-+]?[0-9_.]+\\s*$")]
    pub amount: String,
    /// The payment's reference at its source (bank transfer id, …).
    pub reference: String,
    /// RFC 3339; defaults to now.
    pub captured_at: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditNoteRequest {
    /// Decimal string, more than 0; with the invoice's other credit notes at
    /// most its total; with `refund`, at most what was paid and not refunded.
    #[schema(pattern = "^\\s*[-+]?[0-9_.]+\\s*$")]
    pub amount: String,
    /// duplicate | fraudulent | order_change | product_unsatisfactory | refund
    #[schema(pattern = "^(duplicate|fraudulent|order_change|product_unsatisfactory|refund)$")]
    pub reason: String,
    /// Pays the amount back instead of crediting it (default false).
    pub refund: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LineDto {
    pub number: u32,
    pub description: String,
    pub quantity: String,
    pub unit_price: String,
    pub kind: String,
    pub period: Option<PeriodDto>,
    pub amount: String,
    /// The line's own tax rates.
    pub tax_rate_ids: Vec<String>,
    /// Each rate's tax on the line, fixed at issue (empty before).
    pub tax_amounts: Vec<TaxAmountDto>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaxAmountDto {
    pub tax_rate_id: String,
    pub percentage: String,
    pub inclusive: bool,
    pub amount: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentDto {
    pub id: String,
    pub amount: String,
    pub reference: String,
    pub captured_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreditNoteDto {
    pub id: String,
    /// `CN-000001`, gapless per tenant.
    pub number: String,
    pub amount: String,
    /// duplicate | fraudulent | order_change | product_unsatisfactory | refund
    pub reason: String,
    pub refund: bool,
    /// The part that lowered the amount due.
    pub to_amount_due: String,
    /// The part that became customer credit.
    pub to_credit: String,
    /// The part paid back.
    pub refunded: String,
    /// The source's reference (a payment provider's refund), if any.
    pub reference: Option<String>,
    pub issued_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvoiceDto {
    pub id: String,
    /// `INV-000042` once issued.
    pub number: Option<String>,
    pub customer_id: String,
    pub subscription_id: Option<String>,
    /// draft | open | paid | void | uncollectible
    pub status: String,
    pub currency: String,
    /// For a renewal invoice: the closed period it rates.
    pub billing_period: Option<PeriodDto>,
    pub lines: Vec<LineDto>,
    /// Every line but the discount.
    pub subtotal: String,
    /// What the discount line takes off, positive.
    pub discount: String,
    /// Every line's tax, inclusive and exclusive.
    pub tax: String,
    /// `subtotal − discount + exclusive tax`.
    pub total: String,
    /// Customer credit applied when it was issued.
    pub applied_credit: String,
    pub amount_paid: String,
    /// The sum of its credit notes (refunds included).
    pub amount_credited: String,
    /// The part of its credit notes paid back.
    pub amount_refunded: String,
    pub amount_due: String,
    pub payments: Vec<PaymentDto>,
    pub credit_notes: Vec<CreditNoteDto>,
    pub due_days: u32,
    pub created_at: Option<DateTime<Utc>>,
    pub issued_at: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub voided_at: Option<DateTime<Utc>>,
    pub void_reason: Option<String>,
    pub uncollectible_at: Option<DateTime<Utc>>,
    /// The customer's name, email and address as they were when the invoice
    /// was issued; null before issue and for a customer never put.
    pub customer_details: Option<crate::dto::CustomerDetailsDto>,
    pub version: i64,
}

fn period_dto(p: &tally_aggregates::Period) -> PeriodDto {
    PeriodDto {
        start: p.start,
        end: p.end,
    }
}

impl InvoiceDto {
    pub fn from_state(id: &str, s: &Invoice, version: i64) -> Option<InvoiceDto> {
        let status = s.status?;
        let currency = s.currency?;
        Some(InvoiceDto {
            id: id.to_string(),
            number: s.number.clone(),
            customer_id: s.customer_id.clone(),
            subscription_id: s.subscription_id.clone(),
            status: status.as_str().to_string(),
            currency: currency.code().to_string(),
            billing_period: s.billing_period.as_ref().map(period_dto),
            lines: s
                .lines
                .iter()
                .map(|l| LineDto {
                    number: l.number,
                    description: l.description.clone(),
                    quantity: l.quantity.normalize().to_string(),
                    unit_price: l.unit_price.normalize().to_string(),
                    kind: serde_json::to_value(l.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    period: l.period.as_ref().map(period_dto),
                    amount: l.amount.to_string(),
                    tax_rate_ids: l.tax_rate_ids.clone(),
                    tax_amounts: l
                        .tax_amounts
                        .iter()
                        .map(|t| TaxAmountDto {
                            tax_rate_id: t.tax_rate_id.clone(),
                            percentage: t.percentage.normalize().to_string(),
                            inclusive: t.inclusive,
                            amount: t.amount.to_string(),
                        })
                        .collect(),
                })
                .collect(),
            subtotal: s.subtotal.to_string(),
            discount: tally_aggregates::money::round_to_minor(s.discount, currency).to_string(),
            tax: tally_aggregates::money::round_to_minor(s.tax, currency).to_string(),
            total: s.total.to_string(),
            applied_credit: s.applied_credit.to_string(),
            amount_paid: s.amount_paid.to_string(),
            amount_credited: s.amount_credited.to_string(),
            amount_refunded: s.amount_refunded.to_string(),
            amount_due: s.amount_due.to_string(),
            payments: s
                .payments
                .iter()
                .map(|p| PaymentDto {
                    id: p.payment_id.clone(),
                    amount: p.amount.to_string(),
                    reference: p.reference.clone(),
                    captured_at: p.captured_at,
                    recorded_at: p.recorded_at,
                })
                .collect(),
            credit_notes: s
                .credit_notes
                .iter()
                .map(|n| CreditNoteDto {
                    id: n.credit_note_id.clone(),
                    number: n.number.clone(),
                    amount: n.amount.to_string(),
                    reason: n.reason.as_str().to_string(),
                    refund: n.refund,
                    to_amount_due: n.to_amount_due.to_string(),
                    to_credit: n.to_credit.to_string(),
                    refunded: n.refunded.to_string(),
                    reference: n.reference.clone(),
                    issued_at: n.issued_at,
                })
                .collect(),
            due_days: s.due_days,
            created_at: s.created_at,
            issued_at: s.issued_at,
            due_at: s.due_at,
            paid_at: s.paid_at,
            voided_at: s.voided_at,
            void_reason: s.void_reason.clone(),
            uncollectible_at: s.uncollectible_at,
            customer_details: s
                .customer_details
                .as_ref()
                .map(crate::dto::CustomerDetailsDto::from_details),
            version,
        })
    }
}

// ---------- commands ----------

#[utoipa::path(post, path = "/v1/invoices", tag = "invoices", operation_id = "invoices_create", request_body = CreateInvoiceRequest,
    responses((status = 201, body = InvoiceDto), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    ctx: CommandCtx,
    principal: Principal,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateInvoiceRequest>,
) -> ApiResult<Response> {
    principal.require(Access::Write)?;
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
    let id = ids::new_id("inv");
    let at = app.dispatcher.clock().now();
    super::run(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::CREATED,
        || InvoiceCommand::Create {
            invoice_id: id.clone(),
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
    principal: Principal,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    JsonBody(req): JsonBody<LineRequest>,
) -> ApiResult<Response> {
    principal.require(Access::Write)?;
    check_id(&id, "inv")?;
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
    principal: Principal,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    JsonBody(_empty): JsonBody<EmptyRequest>,
) -> ApiResult<Response> {
    principal.require(Access::Write)?;
    check_id(&id, "inv")?;
    let out = invoices::issue(&app.dispatcher, &ctx.meta, &id, if_match(&headers)?).await?;
    super::answer(&out, StatusCode::OK, InvoiceDto::from_state)
}

#[utoipa::path(post, path = "/v1/invoices/{id}/payments", tag = "invoices", operation_id = "invoices_pay", params(("id" = String, Path)),
    request_body = PaymentRequest, responses((status = 200, body = InvoiceDto), (status = 409, body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn pay(
    State(app): State<AppState>,
    ctx: CommandCtx,
    principal: Principal,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    JsonBody(req): JsonBody<PaymentRequest>,
) -> ApiResult<Response> {
    principal.require(Access::Write)?;
    check_id(&id, "inv")?;
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
        invoice_id: id,
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
    principal: Principal,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    JsonBody(req): JsonBody<CreditNoteRequest>,
) -> ApiResult<Response> {
    principal.require(Access::Write)?;
    check_id(&id, "inv")?;
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
        invoice_id: id,
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
    principal: Principal,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    JsonBody(req): JsonBody<VoidRequest>,
) -> ApiResult<Response> {
    principal.require(Access::Write)?;
    check_id(&id, "inv")?;
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
    principal: Principal,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    JsonBody(_empty): JsonBody<EmptyRequest>,
) -> ApiResult<Response> {
    principal.require(Access::Write)?;
    check_id(&id, "inv")?;
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

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InvoiceListParams {
    pub status: Option<String>,
    pub customer_id: Option<String>,
    pub subscription_id: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/invoices", tag = "invoices", operation_id = "invoices_list",
    params(("status" = Option<String>, Query), ("customer_id" = Option<String>, Query), ("subscription_id" = Option<String>, Query),
        ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = ListPage<InvoiceDto>), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    QueryParams(q): QueryParams<InvoiceListParams>,
) -> ApiResult<axum::Json<ListPage<InvoiceDto>>> {
    principal.require(Access::Read)?;
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
    principal: Principal,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
) -> ApiResult<Response> {
    principal.require(Access::Read)?;
    get_state::<Invoice, _>(&app, principal.tenant(), &headers, &id, "inv", |v| {
        InvoiceDto::from_state(&v.id, &v.state, v.version)
    })
    .await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BalanceDto {
    pub currency: String,
    /// Totals of issued invoices.
    pub invoiced: String,
    pub paid: String,
    pub voided: String,
    /// Amounts due written off as uncollectible.
    pub written_off: String,
    /// The sum of credit notes (refunds included).
    pub credited: String,
    /// The part of credit notes paid back.
    pub refunded: String,
    /// Money the customer has with us (unapplied payments, overpayments,
    /// credit notes to balance, negative invoices), applied to their next
    /// invoices in this currency when those are issued.
    pub credit: String,
    /// What issued invoices still ask for.
    pub outstanding: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerBalanceDto {
    pub customer_id: String,
    /// One entry per currency the customer was invoiced in.
    pub data: Vec<BalanceDto>,
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
    principal: Principal,
    headers: HeaderMap,
    PathParams(customer_id): PathParams<String>,
) -> ApiResult<axum::Json<CustomerBalanceDto>> {
    principal.require(Access::Read)?;
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

#[derive(Debug, Serialize, ToSchema)]
pub struct JournalEntryDto {
    pub event_id: String,
    pub position: i64,
    pub invoice_id: String,
    pub currency: String,
    /// receivable | revenue | cash | bad_debt | customer_credit | credit_notes
    pub account: String,
    pub debit: String,
    pub credit: String,
    pub recorded_at: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JournalParams {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// The customer's double-entry journal, oldest first; both legs of an entry
/// are on the same page.
#[utoipa::path(get, path = "/v1/customers/{customer_id}/journal", tag = "invoices", operation_id = "customers_journal_get", params(("customer_id" = String, Path),
        ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = ListPage<JournalEntryDto>)), security(("bearer" = [])))]
pub async fn journal(
    State(app): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    PathParams(customer_id): PathParams<String>,
    QueryParams(q): QueryParams<JournalParams>,
) -> ApiResult<axum::Json<ListPage<JournalEntryDto>>> {
    principal.require(Access::Read)?;
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
