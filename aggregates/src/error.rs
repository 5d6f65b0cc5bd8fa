//! The one error type of the domain. Each variant maps to one API error code
//! (`invalid_transition`, `validation_failed`, `seat_limit`, …) at the HTTP edge,
//! so the variants stay few and carry the fields the problem document needs.

/// Why a command was rejected or a value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The state machine does not allow `command` in state `from`.
    /// `from` is the snake_case status, `command` the snake_case command name.
    #[error("cannot {command} a {from} {aggregate}")]
    InvalidTransition {
        aggregate: &'static str,
        from: String,
        command: &'static str,
    },
    /// An input value is malformed or out of range; `field` names it.
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    /// A seat count outside the plan's inclusive limits.
    #[error("seats {seats} outside the plan's limits {min}..={max}")]
    SeatLimit { seats: u32, min: u32, max: u32 },
    /// A create command on an aggregate that was already created.
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    /// A command on an aggregate that was never created.
    #[error("{0} does not exist")]
    NotFound(&'static str),
    /// A coupon code that cannot be redeemed: unknown, archived or expired.
    #[error("{0}")]
    CouponInvalid(String),
    /// A coupon that exists but not for this plan or currency.
    #[error("{0}")]
    CouponNotApplicable(String),
    /// A coupon redeemed `max_redemptions` times already.
    #[error("{0}")]
    CouponExhausted(String),
}

impl DomainError {
    /// Shorthand for a [`DomainError::Validation`].
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        DomainError::Validation {
            field: field.into(),
            message: message.into(),
        }
    }
}
