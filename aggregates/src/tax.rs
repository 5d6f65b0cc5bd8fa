//! The `TaxRate` aggregate (Active → Archived) and the tax arithmetic of an
//! invoice: which rates apply to a line (its own, else the subscription's,
//! else the plan's, else the customer's) and what each takes, rounded per
//! line and rate half away from zero. An exclusive rate adds
//! `round(amount × p / 100)` on top of the line; an inclusive one is already
//! in the line's amount: `round(amount − amount / (1 + p / 100))`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::round_to_minor;
use crate::plan::validate_id;
use crate::AggregateKind;
use crate::{Currency, DomainError};

/// The longest tax rate name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Decimal places of a percentage.
pub const MAX_PERCENTAGE_PLACES: u32 = 4;
/// Tax rates on one line, plan, subscription or customer.
pub const MAX_RATES: usize = 10;

/// What `POST /v1/tax-rates` sets. Immutable: a new rate is a new tax rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxRateTerms {
    pub name: String,
    /// 0 to 100, up to 4 places.
    #[serde(with = "rust_decimal::serde::str")]
    pub percentage: Decimal,
    /// Whether line amounts already hold the tax.
    pub inclusive: bool,
    /// ISO 3166-1 alpha-2, upper case.
    #[serde(default)]
    pub country: Option<String>,
}

impl TaxRateTerms {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), DomainError> {
        if self.name.trim().is_empty() || self.name.chars().count() > MAX_NAME_CHARS {
            return Err(DomainError::validation(
                "name",
                format!("must be 1 to {MAX_NAME_CHARS} characters"),
            ));
        }
        if self.name.chars().any(char::is_control) {
            return Err(DomainError::validation(
                "name",
                "must not contain control characters",
            ));
        }
        if self.percentage < Decimal::ZERO || self.percentage > Decimal::ONE_HUNDRED {
            return Err(DomainError::validation("percentage", "must be 0 to 100"));
        }
        if self.percentage.normalize().scale() > MAX_PERCENTAGE_PLACES {
            return Err(DomainError::validation(
                "percentage",
                format!("at most {MAX_PERCENTAGE_PLACES} decimal places"),
            ));
        }
        if let Some(country) = &self.country {
            if country.len() != 2 || !country.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(DomainError::validation(
                    "country",
                    "must be an ISO 3166-1 alpha-2 code, e.g. DE",
                ));
            }
        }
        Ok(())
    }
}

/// Checks a list of tax rate ids named `field` (`tax_rate_ids`).
pub fn validate_rate_ids(field: &str, ids: &[String]) -> Result<(), DomainError> {
    if ids.len() > MAX_RATES {
        return Err(DomainError::validation(
            field,
            format!("at most {MAX_RATES} tax rates"),
        ));
    }
    for (i, id) in ids.iter().enumerate() {
        let name = format!("{field}[{i}]");
        validate_id(&name, id)?;
        if !id.starts_with("txr_") {
            return Err(DomainError::validation(
                name,
                "must be a tax rate id (txr_…)",
            ));
        }
        if ids[..i].contains(id) {
            return Err(DomainError::validation(name, "named twice"));
        }
    }
    Ok(())
}

/// Where a tax rate is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaxRateStatus {
    Active,
    Archived,
}

impl TaxRateStatus {
    pub const ALL: [TaxRateStatus; 2] = [TaxRateStatus::Active, TaxRateStatus::Archived];

    pub fn as_str(&self) -> &'static str {
        match self {
            TaxRateStatus::Active => "active",
            TaxRateStatus::Archived => "archived",
        }
    }
}

/// A tenant's tax rate. `status == None` means it was never created.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaxRate {
    pub id: Option<String>,
    pub status: Option<TaxRateStatus>,
    pub terms: Option<TaxRateTerms>,
    pub created_at: Option<DateTime<Utc>>,
    pub archived_at: Option<DateTime<Utc>>,
}

/// What can be asked of a tax rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaxRateCommand {
    Create {
        tax_rate_id: String,
        terms: TaxRateTerms,
        at: DateTime<Utc>,
    },
    /// Active → Archived: it can no longer be attached; where it is
    /// attached already it keeps applying.
    Archive { at: DateTime<Utc> },
}

impl TaxRateCommand {
    pub fn name(&self) -> &'static str {
        match self {
            TaxRateCommand::Create { .. } => "create",
            TaxRateCommand::Archive { .. } => "archive",
        }
    }
}

/// What happened to a tax rate. Stored forever: see [`crate::EVENT_VERSION`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaxRateEvent {
    TaxRateCreated {
        tax_rate_id: String,
        terms: TaxRateTerms,
        created_at: DateTime<Utc>,
    },
    TaxRateArchived {
        archived_at: DateTime<Utc>,
    },
}

impl TaxRateEvent {
    pub fn name(&self) -> &'static str {
        match self {
            TaxRateEvent::TaxRateCreated { .. } => "TaxRateCreated",
            TaxRateEvent::TaxRateArchived { .. } => "TaxRateArchived",
        }
    }
}

impl TaxRate {
    /// Decides which events `command` causes, or why it is refused. Every
    /// (status, command) pair is listed on purpose.
    pub fn decide(&self, command: TaxRateCommand) -> Result<Vec<TaxRateEvent>, DomainError> {
        use TaxRateStatus::{Active, Archived};
        let name = command.name();
        match (self.status, command) {
            (
                None,
                TaxRateCommand::Create {
                    tax_rate_id,
                    terms,
                    at,
                },
            ) => {
                validate_id("tax_rate_id", &tax_rate_id)?;
                terms.validate()?;
                Ok(vec![TaxRateEvent::TaxRateCreated {
                    tax_rate_id,
                    terms,
                    created_at: at,
                }])
            }
            (Some(Active | Archived), TaxRateCommand::Create { .. }) => {
                Err(DomainError::AlreadyExists(AggregateKind::TaxRate))
            }
            (None, TaxRateCommand::Archive { .. }) => {
                Err(DomainError::NotFound(AggregateKind::TaxRate))
            }
            (Some(Active), TaxRateCommand::Archive { at }) => {
                Ok(vec![TaxRateEvent::TaxRateArchived { archived_at: at }])
            }
            (Some(from @ Archived), TaxRateCommand::Archive { .. }) => {
                Err(DomainError::InvalidTransition {
                    aggregate: AggregateKind::TaxRate,
                    from: from.as_str().to_owned(),
                    command: name,
                })
            }
        }
    }

    /// Applies an event. Events come from `decide`, so an impossible one is a bug.
    pub fn evolve(&mut self, event: &TaxRateEvent) {
        match event {
            TaxRateEvent::TaxRateCreated {
                tax_rate_id,
                terms,
                created_at,
            } => {
                assert!(self.status.is_none(), "TaxRateCreated twice");
                self.id = Some(tax_rate_id.clone());
                self.status = Some(TaxRateStatus::Active);
                self.terms = Some(terms.clone());
                self.created_at = Some(*created_at);
            }
            TaxRateEvent::TaxRateArchived { archived_at } => {
                assert_eq!(
                    self.status,
                    Some(TaxRateStatus::Active),
                    "TaxRateArchived on a tax rate that is not active"
                );
                self.status = Some(TaxRateStatus::Archived);
                self.archived_at = Some(*archived_at);
            }
        }
    }

    /// The rate as an invoice applies it; `None` when never created.
    pub fn applied(&self) -> Option<AppliedRate> {
        let terms = self.terms.as_ref()?;
        Some(AppliedRate {
            tax_rate_id: self.id.clone()?,
            percentage: terms.percentage,
            inclusive: terms.inclusive,
        })
    }
}

crate::cqrs_adapter!(TaxRate, TaxRate, TaxRateCommand, TaxRateEvent);

/// A rate as an invoice applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRate {
    pub tax_rate_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub percentage: Decimal,
    pub inclusive: bool,
}

/// One rate's tax on one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxAmount {
    pub tax_rate_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub percentage: Decimal,
    pub inclusive: bool,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// What an invoice's tax is decided from at issue: the rates of the lines'
/// sources, in precedence after the line's own, and every rate they name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaxSources {
    pub subscription: Vec<String>,
    pub plan: Vec<String>,
    pub customer: Vec<String>,
    /// The rates named anywhere, by id. An id without a rate here (a
    /// customer put before tax rates existed naming one never created)
    /// takes nothing.
    pub rates: BTreeMap<String, AppliedRate>,
}

impl TaxSources {
    /// The rates of a line: its own, else the subscription's, else the
    /// plan's, else the customer's; the first non-empty list wins.
    pub fn rates_for<'a>(&'a self, own: &'a [String]) -> &'a [String] {
        [own, &self.subscription, &self.plan, &self.customer]
            .into_iter()
            .find(|ids| !ids.is_empty())
            .unwrap_or(&[])
    }

    /// The tax amounts of a line of `amount` with rates `ids`, one per rate,
    /// each rounded half away from zero to the minor unit.
    pub fn line_taxes(
        &self,
        own: &[String],
        amount: Decimal,
        currency: Currency,
    ) -> Vec<TaxAmount> {
        self.rates_for(own)
            .iter()
            .filter_map(|id| self.rates.get(id))
            .map(|rate| TaxAmount {
                tax_rate_id: rate.tax_rate_id.clone(),
                percentage: rate.percentage,
                inclusive: rate.inclusive,
                amount: tax_amount(amount, rate, currency),
            })
            .collect()
    }
}

/// One rate's tax on a line amount: exclusive `round(amount × p / 100)`,
/// inclusive `round(amount − amount / (1 + p / 100))`.
pub fn tax_amount(amount: Decimal, rate: &AppliedRate, currency: Currency) -> Decimal {
    let p = rate.percentage / Decimal::ONE_HUNDRED;
    let tax = if rate.inclusive {
        amount - amount / (Decimal::ONE + p)
    } else {
        amount * p
    };
    round_to_minor(tax, currency)
}
