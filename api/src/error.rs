//! The one place where errors become HTTP: every layered error maps to an RFC
//! 9457 problem+json response with a stable `code` (API.md lists them). The
//! mapping has no side effects; an internal cause travels in a response
//! extension and the request middleware logs it, so the client never sees it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tally_aggregates::DomainError;
use tally_commands::CommandError;
use tally_projections::DbError;

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Problem details (RFC 9457) as Tally sends them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    Validation {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("not found")]
    NotFound,
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("this key's role may not do that")]
    Forbidden,
    #[error("{0}")]
    InvalidTransition(String),
    #[error("{0}")]
    SeatLimit(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    VersionMismatch(String),
    #[error("the resource kept changing; try again")]
    ConcurrentModification,
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyInFlight,
    #[error("the first request with this Idempotency-Key took effect but its answer was lost; read the resource")]
    IdempotencyKeyApplied,
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the read model has not reached position {0} yet")]
    ProjectionLagging(i64),
    #[error("the database is unavailable")]
    Unavailable(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("too many requests for this API key; retry after {0} s")]
    RateLimited(u64),
    #[error("the request did not finish within {0} ms")]
    Timeout(u64),
    #[error("the server is already handling {0} requests; retry shortly")]
    Overloaded(usize),
    #[error(
        "the signature is missing, does not match the body or is outside the 5-minute tolerance"
    )]
    SignatureInvalid,
    #[error("a refund of a payment Tally has not seen yet; retry after the payment")]
    PaymentUnknown,
    /// A coupon code that cannot be redeemed (unknown, archived, expired).
    #[error("{0}")]
    CouponInvalid(String),
    /// A coupon not for this plan or currency.
    #[error("{0}")]
    CouponNotApplicable(String),
    /// A coupon redeemed as often as it may be.
    #[error("{0}")]
    CouponExhausted(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::Validation {
            detail: format!("{field}: {message}"),
            errors: vec![FieldError::new(field, message)],
        }
    }

    /// The stable error code (API.md).
    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            Validation { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "Validation failed",
            ),
            NotFound => (StatusCode::NOT_FOUND, "not_found", "Not found"),
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            InvalidTransition(_) => (
                StatusCode::CONFLICT,
                "invalid_transition",
                "Invalid transition",
            ),
            SeatLimit(_) => (StatusCode::UNPROCESSABLE_ENTITY, "seat_limit", "Seat limit"),
            AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists", "Already exists"),
            VersionMismatch(_) => (
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                "Version mismatch",
            ),
            ConcurrentModification => (
                StatusCode::CONFLICT,
                "concurrent_modification",
                "Concurrent modification",
            ),
            IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Idempotency key reused",
            ),
            IdempotencyInFlight => (
                StatusCode::CONFLICT,
                "idempotency_key_in_flight",
                "Idempotency key in flight",
            ),
            IdempotencyKeyApplied => (
                StatusCode::CONFLICT,
                "idempotency_key_applied",
                "Idempotency key applied",
            ),
            PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
            ),
            ProjectionLagging(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "projection_lagging",
                "Projection lagging",
            ),
            SignatureInvalid => (
                StatusCode::BAD_REQUEST,
                "signature_invalid",
                "Signature invalid",
            ),
            PaymentUnknown => (StatusCode::CONFLICT, "payment_unknown", "Payment unknown"),
            CouponInvalid(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "coupon_invalid",
                "Coupon invalid",
            ),
            CouponNotApplicable(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "coupon_not_applicable",
                "Coupon not applicable",
            ),
            CouponExhausted(_) => (StatusCode::CONFLICT, "coupon_exhausted", "Coupon exhausted"),
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            ),
            RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
            ),
            Timeout(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "Request timed out",
            ),
            Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", "Overloaded"),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }
}

/// The cause of a 5xx, for the logging middleware.
#[derive(Debug, Clone)]
pub struct InternalCause(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.parts();
        let errors = match &self {
            ApiError::Validation { errors, .. } => errors.clone(),
            ApiError::SeatLimit(m) => vec![FieldError::new("seats", m.clone())],
            ApiError::CouponInvalid(m) | ApiError::CouponNotApplicable(m) => {
                vec![FieldError::new("coupon_code", m.clone())]
            }
            _ => Vec::new(),
        };
        let problem = Problem {
            kind: format!("https://tally.dev/errors/{code}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: code.to_string(),
            errors,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::RateLimited(secs) = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
        }
        if let ApiError::Internal(cause) | ApiError::Unavailable(cause) = self {
            response.extensions_mut().insert(InternalCause(cause));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::InvalidTransition { .. } => ApiError::InvalidTransition(e.to_string()),
            DomainError::Validation { field, message } => ApiError::field(&field, message),
            DomainError::SeatLimit { .. } => ApiError::SeatLimit(e.to_string()),
            DomainError::AlreadyExists(_) => ApiError::AlreadyExists(e.to_string()),
            DomainError::NotFound(_) => ApiError::NotFound,
            DomainError::CouponInvalid(m) => ApiError::CouponInvalid(m),
            DomainError::CouponNotApplicable(m) => ApiError::CouponNotApplicable(m),
            DomainError::CouponExhausted(m) => ApiError::CouponExhausted(m),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Domain(d) => d.into(),
            CommandError::VersionMismatch { .. } => ApiError::VersionMismatch(e.to_string()),
            CommandError::Conflict => ApiError::ConcurrentModification,
            CommandError::Unavailable(m) => ApiError::Unavailable(m),
            CommandError::Store(m) => ApiError::Internal(m),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            ApiError::Unavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
