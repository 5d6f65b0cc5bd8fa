//! Webhook endpoints (admin only): register an endpoint (its secret is shown
//! once), list, get, delete and re-enable endpoints, an endpoint's delivery
//! log, one delivery with every attempt, and manual retry. Delivery itself
//! lives in `tally_commands::webhooks`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tally_commands::ids::{WebhookDeliveryId, WebhookEndpointId};
use tally_commands::webhooks::WebhookError;

use super::{path_id, read_your_writes, PageParams};
use crate::auth::AdminAccess;
use crate::dto::webhooks::{
    CreateWebhookRequest, CreatedWebhookDto, DeliveryDetailDto, DeliveryDto, DeliveryListParams,
    DeliveryPage, WebhookDto, WebhookListParams, WebhookPage,
};
use crate::dto::EmptyRequest;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::AppState;

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Invalid { field, message } => ApiError::field(field, message),
            WebhookError::NotFound => ApiError::NotFound,
            WebhookError::Conflict(m) => ApiError::InvalidTransition(m),
            WebhookError::Config(m) => ApiError::Internal(m),
            WebhookError::Db(e) => e.into(),
        }
    }
}

const DELIVERY_STATUSES: [&str; 5] = ["pending", "delivered", "retrying", "paused", "dead"];

#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", operation_id = "webhooks_create", request_body = CreateWebhookRequest,
    responses((status = 201, body = CreatedWebhookDto), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    AdminAccess(principal): AdminAccess,
    JsonBody(req): JsonBody<CreateWebhookRequest>,
) -> ApiResult<Response> {
    let created = app
        .webhooks
        .create_endpoint(principal.tenant(), &principal.0.id, &req.url, &req.topics)
        .await?;
    let endpoint_id = created.endpoint.id.clone();
    let body = CreatedWebhookDto {
        endpoint: created.endpoint.into(),
        secret: created.secret,
    };
    let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
    // An Idempotency-Key must not keep the secret: it is stored without it
    // and derived again on replay.
    response
        .extensions_mut()
        .insert(crate::middleware::DerivedSecret(endpoint_id));
    Ok(response)
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", operation_id = "webhooks_list", params(WebhookListParams),
    responses((status = 200, body = WebhookPage), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    QueryParams(q): QueryParams<WebhookListParams>,
    AdminAccess(principal): AdminAccess,
) -> ApiResult<axum::Json<WebhookPage>> {
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let result = app
        .webhooks
        .list_endpoints(principal.tenant(), page.limit()?, page.cursor.as_deref())
        .await?;
    Ok(axum::Json(WebhookPage {
        data: result.data.into_iter().map(Into::into).collect(),
        next_cursor: result.next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", operation_id = "webhooks_get", params(("id" = String, Path)),
    responses((status = 200, body = WebhookDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    PathParams(id): PathParams<String>,
    AdminAccess(principal): AdminAccess,
) -> ApiResult<axum::Json<WebhookDto>> {
    let id: WebhookEndpointId = path_id(&id)?;
    let endpoint = app.webhooks.endpoint(principal.tenant(), &id).await?;
    Ok(axum::Json(endpoint.into()))
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", operation_id = "webhooks_delete", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn delete(
    State(app): State<AppState>,
    PathParams(id): PathParams<String>,
    AdminAccess(principal): AdminAccess,
) -> ApiResult<StatusCode> {
    let id: WebhookEndpointId = path_id(&id)?;
    app.webhooks
        .delete_endpoint(principal.tenant(), &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Re-enables an endpoint the server disabled after it kept failing.
#[utoipa::path(post, path = "/v1/webhooks/{id}/enable", tag = "webhooks", operation_id = "webhooks_enable", params(("id" = String, Path)),
    request_body = EmptyRequest, responses((status = 200, body = WebhookDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn enable(
    State(app): State<AppState>,
    PathParams(id): PathParams<String>,
    AdminAccess(principal): AdminAccess,
    JsonBody(_empty): JsonBody<EmptyRequest>,
) -> ApiResult<axum::Json<WebhookDto>> {
    let id: WebhookEndpointId = path_id(&id)?;
    let endpoint = app
        .webhooks
        .enable_endpoint(principal.tenant(), &id)
        .await?;
    Ok(axum::Json(endpoint.into()))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", operation_id = "webhooks_deliveries_list",
    params(("id" = String, Path), DeliveryListParams),
    responses((status = 200, body = DeliveryPage), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn deliveries(
    State(app): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    QueryParams(q): QueryParams<DeliveryListParams>,
    AdminAccess(principal): AdminAccess,
) -> ApiResult<axum::Json<DeliveryPage>> {
    let id: WebhookEndpointId = path_id(&id)?;
    if q.status
        .as_deref()
        .is_some_and(|s| !DELIVERY_STATUSES.contains(&s))
    {
        return Err(ApiError::field(
            "status",
            "must be pending, delivered, retrying, paused or dead",
        ));
    }
    // Deliveries are made by a consumer of the log: X-Min-Position waits for it.
    read_your_writes(&app, &headers).await?;
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let result = app
        .webhooks
        .list_deliveries(
            principal.tenant(),
            &id,
            q.status.as_deref(),
            page.limit()?,
            page.cursor.as_deref(),
        )
        .await?;
    Ok(axum::Json(DeliveryPage {
        data: result.data.into_iter().map(Into::into).collect(),
        next_cursor: result.next_cursor,
    }))
}

#[utoipa::path(get, path = "/v1/webhooks/deliveries/{id}", tag = "webhooks", operation_id = "webhooks_deliveries_get", params(("id" = String, Path)),
    responses((status = 200, body = DeliveryDetailDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn delivery(
    State(app): State<AppState>,
    PathParams(id): PathParams<String>,
    AdminAccess(principal): AdminAccess,
) -> ApiResult<axum::Json<DeliveryDetailDto>> {
    let id: WebhookDeliveryId = path_id(&id)?;
    let (delivery, attempts) = app.webhooks.delivery(principal.tenant(), &id).await?;
    Ok(axum::Json(DeliveryDetailDto {
        delivery: delivery.into(),
        attempt_log: attempts.into_iter().map(Into::into).collect(),
    }))
}

/// Sends a delivery again now: a dead letter gets one more try; a delivered
/// one is sent again (same event id).
#[utoipa::path(post, path = "/v1/webhooks/deliveries/{id}/retry", tag = "webhooks", operation_id = "webhooks_deliveries_retry", params(("id" = String, Path)),
    request_body = EmptyRequest, responses((status = 202, body = DeliveryDto), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn retry(
    State(app): State<AppState>,
    PathParams(id): PathParams<String>,
    AdminAccess(principal): AdminAccess,
    JsonBody(_empty): JsonBody<EmptyRequest>,
) -> ApiResult<Response> {
    let id: WebhookDeliveryId = path_id(&id)?;
    let delivery = app.webhooks.retry(principal.tenant(), &id).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(DeliveryDto::from(delivery)),
    )
        .into_response())
}
