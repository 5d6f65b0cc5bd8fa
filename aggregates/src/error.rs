//! The one error type of the domain. Each variant maps to one API error code
//! (`invalid_transition`, `validation_failed`, `seat_limit`, …) at the HTTP edge,
//! so the variants stay few and carry the fields the problem document needs.
//! Aggregates are named by their [`AggregateKind`], so each type's name is
//! written once (in `kind.rs`).

use crate::AggregateKind;

/// Why a command was rejected or a value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The state machine does not allow `command` in state `from`.
    /// `from` is the snake_case status, `command` the snake_case command name.
    #[error("cannot {command} a {from} {aggregate}")]
    InvalidTransition {
        aggregate: AggregateKind,
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
    #[error("{} already exists", .0.noun())]
    AlreadyExists(AggregateKind),
    /// A command on an aggregate that was never created.
    #[error("{} does not exist", .0.noun())]
    NotFound(AggregateKind),
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

#[cfg(test)]
mod tests {
    use super::DomainError;
    use crate::AggregateKind;

    /// These messages reach clients as problem details (409
    /// `invalid_transition`, `already_exists`): naming aggregates by kind
    /// must not change a word of them.
    #[test]
    fn messages_name_aggregates_as_before() {
        let cases = [
            (
                DomainError::InvalidTransition {
                    aggregate: AggregateKind::TaxRate,
                    from: "archived".into(),
                    command: "archive",
                },
                "cannot archive a archived tax_rate",
            ),
            (
                DomainError::InvalidTransition {
                    aggregate: AggregateKind::UsageRecord,
                    from: "billed".into(),
                    command: "void",
                },
                "cannot void a billed usage_record",
            ),
            (
                DomainError::AlreadyExists(AggregateKind::TaxRate),
                "tax rate already exists",
            ),
            (
                DomainError::AlreadyExists(AggregateKind::Subscription),
                "subscription already exists",
            ),
            (
                DomainError::NotFound(AggregateKind::ProviderPayment),
                "payment does not exist",
            ),
            (
                DomainError::NotFound(AggregateKind::UsageRecord),
                "usage_record does not exist",
            ),
        ];
        for (e, message) in cases {
            assert_eq!(e.to_string(), message);
        }
    }
}
