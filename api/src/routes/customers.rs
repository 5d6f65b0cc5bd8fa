//! Customer endpoints: `PUT` creates or updates (the client chooses the id),
//! list (by email) and detail from the `rm_customers` read model.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tally_aggregates::customer::{Customer, CustomerCommand};

use super::{customer_id, get_state, list_state, CommandCtx, PageParams};
use crate::auth::{ReadAccess, WriteAccess};
use crate::dto::customers::{CustomerDto, CustomerListParams, PutCustomerRequest};
use crate::dto::ListPage;
use crate::error::{ApiResult, Problem};
use crate::extract::{if_match, JsonBody, PathParams, QueryParams};
use crate::AppState;

#[utoipa::path(put, path = "/v1/customers/{customer_id}", tag = "customers", operation_id = "customers_put",
    params(("customer_id" = String, Path), ("If-Match" = Option<String>, Header, description = "`\"<version>\"` (the customer's ETag): the update runs only on that version, else 412 `version_mismatch`")),
    request_body = PutCustomerRequest,
    responses((status = 201, description = "Created", body = CustomerDto), (status = 200, description = "Updated (or unchanged)", body = CustomerDto), (status = 412, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn put(
    State(app): State<AppState>,
    ctx: CommandCtx,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    _: WriteAccess,
    JsonBody(req): JsonBody<PutCustomerRequest>,
) -> ApiResult<Response> {
    let details = req.into_details()?;
    let at = app.dispatcher.clock().now();
    let out = app
        .dispatcher
        .execute::<Customer, _>(&ctx.meta, &id, if_match(&headers)?, |c| {
            c.decide(CustomerCommand::Put {
                customer_id: id.clone(),
                details: details.clone(),
                at,
            })
        })
        .await?;
    // New exactly when this command wrote the stream's first events.
    let created = out.appended > 0 && out.version == out.appended as i64;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    super::answer(&out, status, CustomerDto::from_state)
}

#[utoipa::path(get, path = "/v1/customers", tag = "customers", operation_id = "customers_list", params(CustomerListParams),
    responses((status = 200, body = ListPage<CustomerDto>), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<CustomerListParams>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<axum::Json<ListPage<CustomerDto>>> {
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    list_state::<Customer, _>(
        &app,
        principal.tenant(),
        &headers,
        &[("email", q.email)],
        page,
        |v| CustomerDto::from_state(&v.id, &v.state, v.version),
    )
    .await
}

#[utoipa::path(get, path = "/v1/customers/{customer_id}", tag = "customers", operation_id = "customers_get", params(("customer_id" = String, Path)),
    responses((status = 200, body = CustomerDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    ReadAccess(principal): ReadAccess,
) -> ApiResult<Response> {
    get_state::<Customer, _, _>(&app, principal.tenant(), &headers, &id, customer_id, |v| {
        CustomerDto::from_state(&v.id, &v.state, v.version)
    })
    .await
}
