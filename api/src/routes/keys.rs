//! API key administration (admin only): list the tenant's keys, never with
//! their secret, and revoke one; a revocation is effective on every process
//! within a second (`auth::watch_revocations`) and recorded in the log.

use axum::extract::State;
use tally_commands::ids::KeyId;
use tally_commands::keys;

use super::{path_id, CommandCtx, PageParams};
use crate::auth::AdminAccess;
use crate::dto::keys::{KeyDto, KeyListParams, KeyPage};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{PathParams, QueryParams};
use crate::AppState;

#[utoipa::path(get, path = "/v1/keys", tag = "keys", operation_id = "keys_list", params(KeyListParams),
    responses((status = 200, body = KeyPage), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    QueryParams(q): QueryParams<KeyListParams>,
    AdminAccess(principal): AdminAccess,
) -> ApiResult<axum::Json<KeyPage>> {
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
    PathParams(id): PathParams<String>,
    AdminAccess(principal): AdminAccess,
) -> ApiResult<axum::Json<KeyDto>> {
    let id: KeyId = path_id(&id)?;
    let key = keys::revoke(&app.dispatcher, &ctx.meta, Some(principal.tenant()), &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    // This process at once; the others within `REVOCATION_CHECK_EVERY`.
    app.keys.invalidate();
    Ok(axum::Json(key.into()))
}
