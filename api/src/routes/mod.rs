//! HTTP handlers, one module per resource, and the helpers they share:
//! building command metadata, the resource response (ETag, X-Log-Position),
//! read-your-writes (`X-Min-Position`) and list paging.

pub mod admin;
pub mod audit;
pub mod coupons;
pub mod customers;
pub mod inbox;
pub mod invoices;
pub mod keys;
pub mod ops;
pub mod payments;
pub mod plans;
pub mod subscriptions;
pub mod tax_rates;
pub mod tickets;
pub mod usage;
pub mod webhooks;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tally_aggregates::{Decide, TypedId};
use tally_commands::{CommandMeta, Executed};
use tally_projections::state::{self, ProjectedState, Versioned};

use crate::auth::Principal;
use crate::dto::ListPage;
use crate::error::{ApiError, ApiResult};
use crate::middleware::{IdempotencyKey, RequestIds};
use crate::AppState;

/// How long a query waits for `X-Min-Position`.
pub const MIN_POSITION_WAIT: Duration = Duration::from_secs(2);

/// The request-scoped pieces a command needs for its metadata.
#[derive(Debug, Clone)]
pub struct CommandCtx {
    pub meta: CommandMeta,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for CommandCtx {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        s: &S,
    ) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, s).await?;
        let ids = parts
            .extensions
            .get::<RequestIds>()
            .cloned()
            .unwrap_or(RequestIds {
                request_id: uuid::Uuid::new_v4().to_string(),
                correlation_id: String::new(),
            });
        let idempotency_key = parts
            .extensions
            .get::<IdempotencyKey>()
            .map(|k| k.0.clone());
        Ok(CommandCtx {
            meta: CommandMeta {
                tenant: principal.tenant().to_string(),
                actor: principal.0.id.clone(),
                correlation_id: if ids.correlation_id.is_empty() {
                    ids.request_id.clone()
                } else {
                    ids.correlation_id
                },
                request_id: ids.request_id,
                causation_id: None,
                idempotency_key,
            },
        })
    }
}

/// A resource response: JSON body, `ETag: "<version>"`, and
/// `X-Log-Position` when it comes from a command.
pub fn resource<T: Serialize>(
    status: StatusCode,
    body: &T,
    version: i64,
    position: Option<i64>,
) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        headers.insert(header::ETAG, v);
    }
    if let Some(p) = position {
        headers.insert("x-log-position", HeaderValue::from(p));
    }
    response
}

/// The one command runner of the edge: runs `command` on the aggregate `id`
/// (guarded by `If-Match` when `expected_version` is given) and answers with
/// the resource the command left, mapped by `to_dto`.
pub async fn run<A, D>(
    app: &AppState,
    ctx: &CommandCtx,
    id: &str,
    expected_version: Option<i64>,
    status: StatusCode,
    command: impl Fn() -> A::Command,
    to_dto: impl FnOnce(&str, &A, i64) -> Option<D>,
) -> ApiResult<Response>
where
    A: Decide + Clone + 'static,
    D: Serialize,
{
    let out = app
        .dispatcher
        .execute::<A, _>(&ctx.meta, id, expected_version, |a| {
            a.decide_command(command())
        })
        .await?;
    answer(&out, status, to_dto)
}

/// The answer to an executed command: `status`, the resource as `to_dto`
/// maps it, `ETag` and `X-Log-Position`; 404 when there is no resource.
pub fn answer<A, D: Serialize>(
    out: &Executed<A>,
    status: StatusCode,
    to_dto: impl FnOnce(&str, &A, i64) -> Option<D>,
) -> ApiResult<Response> {
    let dto = to_dto(&out.id, &out.state, out.version).ok_or(ApiError::NotFound)?;
    Ok(resource(status, &dto, out.version, Some(out.position)))
}

/// Honors `X-Min-Position`: waits up to 2 s for every read model to reach it.
pub async fn read_your_writes(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(v) = headers.get("x-min-position") else {
        return Ok(());
    };
    let p: i64 = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|p| *p >= 0)
        .ok_or_else(|| ApiError::field("X-Min-Position", "must be a non-negative integer"))?;
    if app
        .runtime
        .wait_for_read_models(p, MIN_POSITION_WAIT)
        .await?
    {
        Ok(())
    } else {
        Err(ApiError::ProjectionLagging(p))
    }
}

/// `?limit=&cursor=` of every list.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

impl PageParams {
    pub fn limit(&self) -> Result<i64, ApiError> {
        match &self.limit {
            None => Ok(50),
            Some(s) => s
                .parse::<i64>()
                .ok()
                .filter(|l| (1..=tally_projections::MAX_PAGE_LIMIT).contains(l))
                .ok_or_else(|| ApiError::field("limit", "must be an integer from 1 to 200")),
        }
    }
}

/// An id in a request path, parsed into its type before it touches the
/// store; a malformed id is simply not found (404), like an unknown one.
pub fn path_id<I: TypedId>(raw: &str) -> ApiResult<I> {
    I::parse(raw).map_err(|_| ApiError::NotFound)
}

/// A customer's id in a path: the client chose it, so any text of 1 to
/// `MAX_CUSTOMER_ID_CHARS` characters; anything else is not found.
pub fn customer_id(raw: &str) -> ApiResult<String> {
    if !raw.is_empty()
        && raw.chars().count() <= tally_aggregates::subscription::MAX_CUSTOMER_ID_CHARS
    {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::NotFound)
    }
}

/// A list endpoint over a folded-state read model: honors `X-Min-Position`,
/// pages with `?limit=&cursor=`, filters by equality, and maps each row to
/// its response shape (`None` drops a row that is not a resource yet).
pub async fn list_state<S, D>(
    app: &AppState,
    tenant: &str,
    headers: &HeaderMap,
    filters: &[(&str, Option<String>)],
    page: PageParams,
    to_dto: impl Fn(&Versioned<S>) -> Option<D>,
) -> ApiResult<axum::Json<ListPage<D>>>
where
    S: ProjectedState,
{
    read_your_writes(app, headers).await?;
    let result = state::list::<S>(
        &app.db,
        tenant,
        filters,
        page.limit()?,
        page.cursor.as_deref(),
    )
    .await?;
    Ok(axum::Json(ListPage {
        data: result.data.iter().filter_map(to_dto).collect(),
        next_cursor: result.next_cursor,
    }))
}

/// A detail endpoint over a folded-state read model: honors
/// `X-Min-Position`, then parses the id with `parse` (`path_id` or
/// `customer_id`), answers with `ETag`.
pub async fn get_state<S, D, I>(
    app: &AppState,
    tenant: &str,
    headers: &HeaderMap,
    id: &str,
    parse: fn(&str) -> ApiResult<I>,
    to_dto: impl Fn(&Versioned<S>) -> Option<D>,
) -> ApiResult<Response>
where
    S: ProjectedState,
    D: Serialize,
    I: std::ops::Deref<Target = str>,
{
    read_your_writes(app, headers).await?;
    let id = parse(id)?;
    let v = state::get::<S>(&app.db, tenant, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let dto = to_dto(&v).ok_or(ApiError::NotFound)?;
    Ok(resource(StatusCode::OK, &dto, v.version, None))
}

#[cfg(test)]
mod tests {
    use super::{customer_id, path_id};
    use crate::error::ApiError;
    use tally_aggregates::subscription::MAX_CUSTOMER_ID_CHARS;
    use tally_commands::ids::{PlanId, SubscriptionId};

    /// A path id of the wrong shape names no resource: 404, like an unknown
    /// id (`tests/hostile.rs` pins the HTTP answer).
    #[test]
    fn a_malformed_path_id_is_not_found() {
        let id: SubscriptionId = path_id("sub_0190f0a1").unwrap();
        assert_eq!(id.as_str(), "sub_0190f0a1");
        for raw in ["", "sub", "sub_", "plan_1", "sub_1-2", "sub_é", "SUB_1"] {
            assert!(
                matches!(path_id::<SubscriptionId>(raw), Err(ApiError::NotFound)),
                "{raw:?}"
            );
        }
        assert!(matches!(
            path_id::<PlanId>("sub_1"),
            Err(ApiError::NotFound)
        ));
    }

    /// A customer's id is the client's: any text of 1 to the limit of
    /// characters (counted as characters, not bytes).
    #[test]
    fn a_customer_id_is_any_short_text() {
        assert_eq!(customer_id("cus 1/é").unwrap(), "cus 1/é");
        let longest = "é".repeat(MAX_CUSTOMER_ID_CHARS);
        assert_eq!(customer_id(&longest).unwrap(), longest);
        for raw in [String::new(), format!("{longest}x")] {
            assert!(matches!(customer_id(&raw), Err(ApiError::NotFound)));
        }
    }
}
