//! API key administration (admin only): list the tenant's keys, never with
//! their secret, and revoke one; a revocation is effective on every process
//! within a second (`auth::watch_revocations`) and recorded in the log.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use tally_commands::keys::{self, KeyInfo};
use utoipa::{IntoParams, ToSchema};

use super::{check_id, CommandCtx, PageParams};
use crate::auth::{Access, Principal};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{PathParams, QueryParams};
use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyDto {
    pub id: String,
    /// admin | writer | reader | auditor
    pub role: String,
    pub created_at: String,
    /// When the key was revoked; null while it works.
    pub revoked_at: Option<String>,
}

impl From<KeyInfo> for KeyDto {
    fn from(k: KeyInfo) -> Self {
        KeyDto {
            id: k.id,
            role: k.role,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyPage {
    pub data: Vec<KeyDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyListParams {
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/keys", tag = "keys", operation_id = "keys_list", params(KeyListParams),
    responses((status = 200, body = KeyPage), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    principal: Principal,
    QueryParams(q): QueryParams<KeyListParams>,
) -> ApiResult<axum::Json<KeyPage>> {
    principal.require(Access::Admin)?;
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    };
    let result = keys::list(
        &app.db,
        Some(principal.tenant()),
        page.cursor.as_deref(),
        page.limit()?,
    )
    .await?;
    Ok(axum::Json(KeyPage {
        data: result.data.into_iter().map(Into::into).collect(),
        next_cursor: result.next_cursor,
    }))
}

/// Revokes a key of the tenant: it stops authenticating on every process
/// within a second. Revoking it again answers the same.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys", operation_id = "keys_revoke", params(("id" = String, Path)),
    responses((status = 200, body = KeyDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn revoke(
    State(app): State<AppState>,
    ctx: CommandCtx,
    principal: Principal,
    PathParams(id): PathParams<String>,
) -> ApiResult<axum::Json<KeyDto>> {
    principal.require(Access::Admin)?;
    check_id(&id, "key")?;
    let key = keys::revoke(&app.dispatcher, &ctx.meta, Some(principal.tenant()), &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    // This process at once; the others within `REVOCATION_CHECK_EVERY`.
    app.keys.invalidate();
    Ok(axum::Json(key.into()))
}
