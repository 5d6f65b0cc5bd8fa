//! Operations endpoints: liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::dto::ops::StatusDto;
use crate::error::{ApiError, Problem};
use crate::AppState;

#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "health_live", responses((status = 200, body = StatusDto)))]
pub async fn healthz() -> axum::Json<StatusDto> {
    axum::Json(StatusDto {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "health_ready",
    responses((status = 200, body = StatusDto), (status = 503, body = Problem)))]
pub async fn readyz(State(app): State<AppState>) -> Response {
    if let Err(e) = app.db.ping().await {
        return ApiError::Unavailable(e.to_string()).into_response();
    }
    match app.runtime.status().await {
        Ok(s)
            if s.iter()
                .all(|c| c.status != "starting" && c.status != "stopped") =>
        {
            axum::Json(StatusDto {
                status: "ready".into(),
            })
            .into_response()
        }
        Ok(_) => ApiError::Unavailable("projections are starting".into()).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics_get", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(app): State<AppState>) -> Response {
    // Refreshes the projection position and lag gauges.
    let _ = app.runtime.status().await;
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}
