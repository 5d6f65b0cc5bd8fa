//! The `Customer` aggregate: who a tenant bills, with the details an invoice
//! needs (name, email, postal address), the currency and tax rates that are
//! the customer's defaults, and free-form metadata. Customer ids are chosen
//! by the client (as `customer_id` everywhere else), so one command, `Put`,
//! creates the customer or replaces its details; putting the same details
//! again changes nothing.
//!
//! Invoices copy the details when they are issued ([`CustomerDetails`] is
//! what `InvoiceIssued` carries), so a later change never rewrites an
//! issued invoice.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::plan::validate_id;
use crate::{Currency, DomainError};

/// The longest name, address line or city, in characters.
pub const MAX_TEXT_CHARS: usize = 200;
/// The longest email address, in characters (RFC 5321's path limit).
pub const MAX_EMAIL_CHARS: usize = 254;
/// The longest postal code, in characters.
pub const MAX_POSTAL_CODE_CHARS: usize = 20;
/// The most default tax rates of a customer.
pub const MAX_TAX_RATES: usize = 10;
/// The most metadata keys, the longest key and the longest value.
pub const MAX_METADATA_KEYS: usize = 50;
pub const MAX_METADATA_KEY_CHARS: usize = 40;
pub const MAX_METADATA_VALUE_CHARS: usize = 500;

/// A postal address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub line1: String,
    #[serde(default)]
    pub line2: Option<String>,
    pub city: String,
    #[serde(default)]
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2, upper case (`DE`).
    pub country: String,
}

/// What a customer is: everything `PUT /v1/customers/{id}` sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerDetails {
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    /// The customer's default currency.
    #[serde(default)]
    pub currency: Option<Currency>,
    #[serde(default)]
    pub address: Option<Address>,
    /// Default tax rates (`txr_…`), the last in the precedence line →
    /// subscription → plan → customer.
    #[serde(default)]
    pub tax_rate_ids: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

fn validate_text(field: &str, value: &str, max_chars: usize) -> Result<(), DomainError> {
    if value.trim().is_empty() {
        return Err(DomainError::validation(field, "must not be empty"));
    }
    validate_optional_text(field, value, max_chars)
}

fn validate_optional_text(field: &str, value: &str, max_chars: usize) -> Result<(), DomainError> {
    if value.chars().count() > max_chars {
        return Err(DomainError::validation(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(DomainError::validation(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A plausible address: one `@` with text on both sides, a dot in the
/// domain, no whitespace. Whether it receives mail is not Tally's to know.
fn validate_email(email: &str) -> Result<(), DomainError> {
    let bad = || DomainError::validation("email", "must be an email address, e.g. ana@example.com");
    validate_text("email", email, MAX_EMAIL_CHARS)?;
    if email.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(bad());
    }
    Ok(())
}

impl Address {
    fn validate(&self) -> Result<(), DomainError> {
        validate_text("address.line1", &self.line1, MAX_TEXT_CHARS)?;
        if let Some(line2) = &self.line2 {
            validate_optional_text("address.line2", line2, MAX_TEXT_CHARS)?;
        }
        validate_text("address.city", &self.city, MAX_TEXT_CHARS)?;
        if let Some(code) = &self.postal_code {
            validate_optional_text("address.postal_code", code, MAX_POSTAL_CODE_CHARS)?;
        }
        if self.country.len() != 2 || !self.country.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(DomainError::validation(
                "address.country",
                "must be an ISO 3166-1 alpha-2 code, e.g. DE",
            ));
        }
        Ok(())
    }
}

impl CustomerDetails {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), DomainError> {
        validate_text("name", &self.name, MAX_TEXT_CHARS)?;
        if let Some(email) = &self.email {
            validate_email(email)?;
        }
        if let Some(address) = &self.address {
            address.validate()?;
        }
        if self.tax_rate_ids.len() > MAX_TAX_RATES {
            return Err(DomainError::validation(
                "tax_rate_ids",
                format!("at most {MAX_TAX_RATES} tax rates"),
            ));
        }
        for (i, id) in self.tax_rate_ids.iter().enumerate() {
            validate_id(&format!("tax_rate_ids[{i}]"), id)?;
            if !id.starts_with("txr_") {
                return Err(DomainError::validation(
                    format!("tax_rate_ids[{i}]"),
                    "must be a tax rate id (txr_…)",
                ));
            }
        }
        if self.metadata.len() > MAX_METADATA_KEYS {
            return Err(DomainError::validation(
                "metadata",
                format!("at most {MAX_METADATA_KEYS} keys"),
            ));
        }
        for (key, value) in &self.metadata {
            validate_text("metadata", key, MAX_METADATA_KEY_CHARS)?;
            validate_optional_text(&format!("metadata.{key}"), value, MAX_METADATA_VALUE_CHARS)?;
        }
        Ok(())
    }
}

/// Where a customer is in its life: it exists, or it was never put.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomerStatus {
    Active,
}

impl CustomerStatus {
    /// Every status, for tests and tables.
    pub const ALL: [CustomerStatus; 1] = [CustomerStatus::Active];

    pub fn as_str(&self) -> &'static str {
        match self {
            CustomerStatus::Active => "active",
        }
    }
}

/// A tenant's customer. `status == None` means it was never put.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub id: Option<String>,
    pub status: Option<CustomerStatus>,
    pub details: Option<CustomerDetails>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// What can be asked of a customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CustomerCommand {
    /// Creates the customer, or replaces its details.
    Put {
        customer_id: String,
        details: CustomerDetails,
        at: DateTime<Utc>,
    },
}

impl CustomerCommand {
    /// The snake_case command name.
    pub fn name(&self) -> &'static str {
        match self {
            CustomerCommand::Put { .. } => "put",
        }
    }
}

/// What happened to a customer. Stored forever: see [`crate::EVENT_VERSION`].
/// Each event carries the whole resulting details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CustomerEvent {
    CustomerCreated {
        customer_id: String,
        details: CustomerDetails,
        created_at: DateTime<Utc>,
    },
    CustomerUpdated {
        details: CustomerDetails,
        updated_at: DateTime<Utc>,
    },
}

impl CustomerEvent {
    /// The variant name, used as the stored event type.
    pub fn name(&self) -> &'static str {
        match self {
            CustomerEvent::CustomerCreated { .. } => "CustomerCreated",
            CustomerEvent::CustomerUpdated { .. } => "CustomerUpdated",
        }
    }
}

impl Customer {
    /// Decides which events `command` causes, or why it is refused. Every
    /// (status, command) pair is listed on purpose.
    pub fn decide(&self, command: CustomerCommand) -> Result<Vec<CustomerEvent>, DomainError> {
        match (self.status, command) {
            (
                None,
                CustomerCommand::Put {
                    customer_id,
                    details,
                    at,
                },
            ) => {
                crate::subscription::validate_customer_id(&customer_id)?;
                details.validate()?;
                Ok(vec![CustomerEvent::CustomerCreated {
                    customer_id,
                    details,
                    created_at: at,
                }])
            }
            (
                Some(CustomerStatus::Active),
                CustomerCommand::Put {
                    customer_id,
                    details,
                    at,
                },
            ) => {
                if self.id.as_deref() != Some(customer_id.as_str()) {
                    return Err(DomainError::validation(
                        "customer_id",
                        "another customer's stream",
                    ));
                }
                details.validate()?;
                // The same details again (a client's retry): nothing changes.
                if self.details.as_ref() == Some(&details) {
                    return Ok(vec![]);
                }
                Ok(vec![CustomerEvent::CustomerUpdated {
                    details,
                    updated_at: at,
                }])
            }
        }
    }

    /// Applies an event. Events come from `decide`, so an impossible one is a bug.
    pub fn evolve(&mut self, event: &CustomerEvent) {
        match event {
            CustomerEvent::CustomerCreated {
                customer_id,
                details,
                created_at,
            } => {
                assert!(self.status.is_none(), "CustomerCreated twice");
                self.id = Some(customer_id.clone());
                self.status = Some(CustomerStatus::Active);
                self.details = Some(details.clone());
                self.created_at = Some(*created_at);
                self.updated_at = Some(*created_at);
            }
            CustomerEvent::CustomerUpdated {
                details,
                updated_at,
            } => {
                assert_eq!(
                    self.status,
                    Some(CustomerStatus::Active),
                    "CustomerUpdated on a customer that does not exist"
                );
                self.details = Some(details.clone());
                self.updated_at = Some(*updated_at);
            }
        }
    }
}

crate::cqrs_adapter!(Customer, Customer, CustomerCommand, CustomerEvent);
