//! Payments from providers: the admin's provider configuration (secrets
//! taken once, never shown again) and the inbound endpoint a provider posts
//! its signed webhooks to (no API key: the URL's token names the tenant's
//! configuration, the signature proves the sender). Verification and
//! translation live in `tally_commands::payments`.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use std::collections::HashMap;
use tally_commands::payments::{Inbound, InboundError, Provider};

use crate::auth::AdminAccess;
use crate::dto::payments::{ConfigureProviderRequest, InboundAnswer, ProviderDto, ProviderList};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{JsonBody, PathParams, MAX_BODY_BYTES};
use crate::middleware::RequestIds;
use crate::AppState;

impl From<InboundError> for ApiError {
    fn from(e: InboundError) -> Self {
        match e {
            InboundError::NotFound => ApiError::NotFound,
            InboundError::SignatureInvalid => ApiError::SignatureInvalid,
            InboundError::PaymentUnknown => ApiError::PaymentUnknown,
            InboundError::Invalid { field, message } => ApiError::field(&field, message),
            // The provider retries a notification that was not accepted.
            InboundError::Upstream(m) => ApiError::Unavailable(m),
            InboundError::Command(e) => e.into(),
        }
    }
}

fn provider(name: &str) -> Result<Provider, ApiError> {
    Provider::parse(name).ok_or(ApiError::NotFound)
}

/// Configures a payment provider for the key's tenant (admin).
#[utoipa::path(put, path = "/v1/payment-providers/{provider}", tag = "payments", operation_id = "payment_providers_configure",
    params(("provider" = String, Path, description = "stripe | polar | mercadopago")),
    request_body = ConfigureProviderRequest, responses((status = 200, body = ProviderDto), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn configure(
    State(app): State<AppState>,
    PathParams(name): PathParams<String>,
    AdminAccess(principal): AdminAccess,
    JsonBody(req): JsonBody<ConfigureProviderRequest>,
) -> ApiResult<axum::Json<ProviderDto>> {
    let provider = provider(&name)?;
    let view = app
        .payments
        .configure(
            principal.tenant(),
            provider,
            &principal.0.id,
            &req.webhook_secret,
            req.access_token.as_deref(),
            req.api_base_url.as_deref(),
        )
        .await?;
    Ok(axum::Json(view.into()))
}

/// The tenant's payment providers, never their secrets (admin).
#[utoipa::path(get, path = "/v1/payment-providers", tag = "payments", operation_id = "payment_providers_list",
    responses((status = 200, body = ProviderList)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    AdminAccess(principal): AdminAccess,
) -> ApiResult<axum::Json<ProviderList>> {
    let data = app
        .payments
        .list(principal.tenant())
        .await?
        .into_iter()
        .map(ProviderDto::from)
        .collect();
    Ok(axum::Json(ProviderList { data }))
}

/// A provider's signed webhook. No API key: a bad, missing or stale signature
/// is 400 `signature_invalid` and nothing is recorded; the same provider
/// event again is 200 with no second effect; a refund of a payment not seen
/// yet is 409 `payment_unknown` (the provider retries it).
#[utoipa::path(post, path = "/v1/inbound/{provider}/{token}", tag = "payments", operation_id = "inbound_receive",
    params(("provider" = String, Path, description = "stripe | polar | mercadopago"), ("token" = String, Path)),
    request_body(content = String, description = "the provider's JSON payload, byte for byte", content_type = "application/json"),
    responses((status = 200, body = InboundAnswer), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 413, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
pub async fn receive(
    State(app): State<AppState>,
    PathParams((name, token)): PathParams<(String, String)>,
    headers: HeaderMap,
    ids: Option<axum::Extension<RequestIds>>,
    body: Body,
) -> ApiResult<axum::Json<InboundAnswer>> {
    let provider = provider(&name)?;
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(MAX_BODY_BYTES))?;
    let headers: HashMap<String, String> = headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.as_str().to_ascii_lowercase(),
                v.to_str().ok()?.to_string(),
            ))
        })
        .collect();
    let request_id = ids
        .map(|axum::Extension(ids)| ids.request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let inbound = Inbound {
        headers: &headers,
        body: &body,
    };
    let received = app
        .payments
        .receive(provider, &token, &inbound, &request_id)
        .await?;
    Ok(axum::Json(InboundAnswer {
        received: true,
        outcome: received.outcome,
    }))
}
