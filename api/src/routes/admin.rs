//! Admin endpoints: projection status and rebuild, and the manual clock.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Months, Utc};

use crate::auth::AdminAccess;
use crate::dto::ops::{AdvanceClockRequest, ClockDto, ProjectionDto, StatusDto};
use crate::dto::{parse_time, EmptyRequest};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{JsonBody, PathParams};
use crate::AppState;

#[utoipa::path(get, path = "/v1/admin/projections", tag = "admin", operation_id = "projections_list",
    responses((status = 200, body = Vec<ProjectionDto>), (status = 403, body = Problem)), security(("bearer" = [])))]
pub async fn projections(
    State(app): State<AppState>,
    _: AdminAccess,
) -> ApiResult<axum::Json<Vec<ProjectionDto>>> {
    let status = app.runtime.status().await?;
    Ok(axum::Json(
        status
            .into_iter()
            .map(|s| ProjectionDto {
                name: s.name,
                position: s.position,
                log_head: s.log_head,
                lag_events: s.lag_events,
                status: s.status,
                last_error: s.last_error,
                rebuild_position: s.rebuild_position,
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/admin/projections/{name}/rebuild", tag = "admin", operation_id = "projections_rebuild", params(("name" = String, Path)),
    request_body = EmptyRequest, responses((status = 202, body = StatusDto), (status = 404, body = Problem)), security(("bearer" = [])))]
pub async fn rebuild(
    State(app): State<AppState>,
    PathParams(name): PathParams<String>,
    _: AdminAccess,
    JsonBody(_empty): JsonBody<EmptyRequest>,
) -> ApiResult<Response> {
    if !app.runtime.names().contains(&name.as_str()) {
        return Err(ApiError::NotFound);
    }
    app.runtime.rebuild(&name).await.map_err(|e| match e {
        tally_projections::ProjectionError::NotRebuildable(_) => {
            ApiError::InvalidTransition(e.to_string())
        }
        other => ApiError::Internal(other.to_string()),
    })?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(StatusDto {
            status: "rebuilding".into(),
        }),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/admin/clock", tag = "admin", operation_id = "clock_get",
    responses((status = 200, body = ClockDto), (status = 404, description = "The server runs on the system clock", body = Problem)), security(("bearer" = [])))]
pub async fn clock(State(app): State<AppState>, _: AdminAccess) -> ApiResult<axum::Json<ClockDto>> {
    Ok(axum::Json(clock_dto(&app)))
}

fn clock_dto(app: &AppState) -> ClockDto {
    let clock = app.dispatcher.clock();
    ClockDto {
        now: clock.now(),
        mode: if clock.is_manual() {
            "manual"
        } else {
            "system"
        }
        .into(),
    }
}

#[utoipa::path(post, path = "/v1/admin/clock/advance", tag = "admin", operation_id = "clock_advance", request_body = AdvanceClockRequest,
    responses((status = 200, body = ClockDto), (status = 404, description = "The server runs on the system clock", body = Problem), (status = 422, body = Problem)), security(("bearer" = [])))]
pub async fn advance_clock(
    State(app): State<AppState>,
    _: AdminAccess,
    JsonBody(req): JsonBody<AdvanceClockRequest>,
) -> ApiResult<axum::Json<ClockDto>> {
    let clock = app.dispatcher.clock();
    let to = match (req.to.as_deref(), req.by.as_deref()) {
        (Some(to), None) => parse_time("to", to)?,
        (None, Some(by)) => add_iso_duration(clock.now(), by)
            .ok_or_else(|| {
                ApiError::field(
                    "by",
                    "must be an ISO 8601 duration such as P1M, P3DT4H or PT90S",
                )
            })
            .and_then(|to| Ok(tally_aggregates::time::check_accepted("by", to)?))?,
        _ => return Err(ApiError::field("body", "give exactly one of `to` and `by`")),
    };
    match clock.advance_to(to) {
        Some(Ok(_)) => {
            // Renewals, collections and quota resumptions due at the new
            // time happen before the answer, so a test that advances the
            // clock sees them at once (the schedulers would do it later).
            tally_commands::policies::collections::tick(&app.dispatcher, &app.billing).await;
            if let Err(e) = tally_commands::policies::quota::resume_due(&app.dispatcher).await {
                tracing::warn!(error = %e, "quota resume scan failed");
            }
            Ok(axum::Json(clock_dto(&app)))
        }
        Some(Err(now)) => Err(ApiError::field(
            "to",
            format!("the clock never goes back (now {now})"),
        )),
        None => Err(ApiError::NotFound),
    }
}

/// Adds an ISO 8601 duration (`PnYnMnWnDTnHnMnS`, whole numbers) to `t`;
/// years and months are calendar months (end-of-month clamped).
pub fn add_iso_duration(t: DateTime<Utc>, s: &str) -> Option<DateTime<Utc>> {
    let rest = s.strip_prefix('P')?;
    if rest.is_empty() {
        return None;
    }
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, t),
        Some(_) => return None,
        None => (rest, ""),
    };
    let mut out = t;
    let mut num = String::new();
    for c in date.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u32 = num.parse().ok()?;
        num.clear();
        out = match c {
            'Y' => out.checked_add_months(Months::new(n.checked_mul(12)?))?,
            'M' => out.checked_add_months(Months::new(n))?,
            'W' => out.checked_add_signed(Duration::weeks(n as i64))?,
            'D' => out.checked_add_signed(Duration::days(n as i64))?,
            _ => return None,
        };
    }
    if !num.is_empty() {
        return None;
    }
    for c in time.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().ok()?;
        num.clear();
        out = match c {
            'H' => out.checked_add_signed(Duration::hours(n))?,
            'M' => out.checked_add_signed(Duration::minutes(n))?,
            'S' => out.checked_add_signed(Duration::seconds(n))?,
            _ => return None,
        };
    }
    if !num.is_empty() {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn iso_durations() {
        let start = t("2026-01-31T00:00:00Z");
        assert_eq!(
            add_iso_duration(start, "P1M"),
            Some(t("2026-02-28T00:00:00Z"))
        );
        assert_eq!(
            add_iso_duration(start, "P1Y"),
            Some(t("2027-01-31T00:00:00Z"))
        );
        assert_eq!(
            add_iso_duration(start, "P3DT4H"),
            Some(t("2026-02-03T04:00:00Z"))
        );
        assert_eq!(
            add_iso_duration(start, "PT90S"),
            Some(t("2026-01-31T00:01:30Z"))
        );
        assert_eq!(
            add_iso_duration(start, "P1W"),
            Some(t("2026-02-07T00:00:00Z"))
        );
        for bad in ["", "P", "1M", "PT", "P1X", "P1", "PT5", "P-1D"] {
            assert_eq!(add_iso_duration(start, bad), None, "{bad}");
        }
    }
}
