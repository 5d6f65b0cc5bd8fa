//! Tax rate endpoints: create, archive, list (by status) and detail from the
//! `rm_tax_rates` read model, and the check that a plan, subscription or
//! invoice line names only the tenant's active rates.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tally_aggregates::tax::{
    validate_rate_ids, TaxRate, TaxRateCommand, TaxRateStatus, TaxRateTerms,
};
use tally_commands::ids::{Generate, TaxRateId};

use super::{get_state, list_state, path_id, CommandCtx, PageParams};
use crate::auth::{ReadAccess, WriteAccess};
use crate::dto::tax_rates::{CreateTaxRateRequest, TaxRateDto, TaxRateListParams};
use crate::dto::{parse_decimal, EmptyRequest, ListPage};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{if_match, JsonBody, PathParams, QueryParams};
use crate::AppState;

/// Refuses (422 naming `field[i]`) a list of tax rates with an id that is
/// not one of the tenant's active tax rates: an archived rate keeps
/// applying where it is attached, but is attached nowhere new.
pub async fn check_attachable(
    app: &AppState,
    tenant: &str,
    field: &str,
    tax_rate_ids: &[String],
) -> ApiResult<()> {
    validate_rate_ids(field, tax_rate_ids)?;
    for (i, id) in tax_rate_ids.iter().enumerate() {
        let (rate, _) = app.dispatcher.load::<TaxRate>(tenant, id).await?;
        match rate.status {
            Some(TaxRateStatus::Active) => {}
            Some(TaxRateStatus::Archived) => {
                return Err(ApiError::field(
                    &format!("{field}[{i}]"),
                    "the tax rate is archived",
                ))
            }
            None => {
                return Err(ApiError::field(
                    &format!("{field}[{i}]"),
                    "unknown tax rate",
                ))
            }
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/tax-rates", tag = "tax_rates", operation_id = "tax_rates_create", request_body = CreateTaxRateRequest,
    responses((status = 201, body = TaxRateDto), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    ctx: CommandCtx,
    _: WriteAccess,
    JsonBody(req): JsonBody<CreateTaxRateRequest>,
) -> ApiResult<Response> {
    let terms = TaxRateTerms {
        name: req.name,
        percentage: parse_decimal("percentage", &req.percentage)?,
        inclusive: req.inclusive,
        country: req.country,
    };
    let id = TaxRateId::generate();
    let at = app.dispatcher.clock().now();
    super::run::<TaxRate, _>(
        &app,
        &ctx,
        &id,
        None,
        StatusCode::CREATED,
        || TaxRateCommand::Create {
            tax_rate_id: id.clone().into_string(),
            terms: terms.clone(),
            at,
        },
        TaxRateDto::from_state,
    )
    .await
}

#[utoipa::path(post, path = "/v1/tax-rates/{id}/archive", tag = "tax_rates", operation_id = "tax_rates_archive", params(("id" = String, Path)),
    request_body = EmptyRequest, responses((status = 200, body = TaxRateDto), (status = 404, body = Problem), (status = 409, body = Problem)), security(("bearer" = [])))]
pub async fn archive(
    State(app): State<AppState>,
    ctx: CommandCtx,
    PathParams(id): PathParams<String>,
    headers: HeaderMap,
    _: WriteAccess,
    JsonBody(_empty): JsonBody<EmptyRequest>,
) -> ApiResult<Response> {
    let id: TaxRateId = path_id(&id)?;
    let at = app.dispatcher.clock().now();
    super::run::<TaxRate, _>(
        &app,
        &ctx,
        &id,
        if_match(&headers)?,
        StatusCode::OK,
        || TaxRateCommand::Archive { at },
        TaxRateDto::from_state,
    )
    .await
}

#[utoipa::path(get, path = "/v1/tax-rates", tag = "tax_rates", operation_id = "tax_rates_list", params(TaxRateListParams),
    responses((status = 200, body = ListPage<TaxRateDto>), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<TaxRateListParams>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<axum::Json<ListPage<TaxRateDto>>> {
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    list_state::<TaxRate, _>(
        &app,
        principal.tenant(),
        &headers,
        &[("status", q.status)],
        page,
        |v| TaxRateDto::from_state(&v.id, &v.state, v.version),
    )
    .await
}

#[utoipa::path(get, path = "/v1/tax-rates/{id}", tag = "tax_rates", operation_id = "tax_rates_get", params(("id" = String, Path)),
    responses((status = 200, body = TaxRateDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<Response> {
    get_state::<TaxRate, _, _>(
        &app,
        principal.tenant(),
        &headers,
        &id,
        path_id::<TaxRateId>,
        |v| TaxRateDto::from_state(&v.id, &v.state, v.version),
    )
    .await
}
