//! Request and response shapes of the customer endpoints, and their
//! mapping from domain and read-model types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_aggregates::customer::{Address, Customer, CustomerDetails};
use tally_aggregates::Currency;
use utoipa::ToSchema;

use crate::error::ApiError;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressDto {
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2, upper case, e.g. "DE".
    #[schema(pattern = "^[A-Z]{2}$")]
    pub country: String,
}

impl AddressDto {
    fn into_address(self) -> Address {
        Address {
            line1: self.line1,
            line2: self.line2,
            city: self.city,
            postal_code: self.postal_code,
            country: self.country,
        }
    }

    fn from_address(a: &Address) -> AddressDto {
        AddressDto {
            line1: a.line1.clone(),
            line2: a.line2.clone(),
            city: a.city.clone(),
            postal_code: a.postal_code.clone(),
            country: a.country.clone(),
        }
    }
}

/// The body of `PUT /v1/customers/{customer_id}`: every field the customer
/// has; a field left out is cleared.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutCustomerRequest {
    /// Not blank, at most 200 characters.
    #[schema(max_length = 200)]
    pub name: String,
    pub email: Option<String>,
    /// The customer's default currency (ISO 4217).
    #[schema(
        pattern = "^(AUD|BHD|BRL|CAD|CHF|CLP|CNY|CZK|DKK|EUR|GBP|HKD|HUF|INR|ISK|JOD|JPY|KRW|KWD|MXN|NOK|NZD|PLN|SEK|SGD|TND|USD|ZAR)$"
    )]
    pub currency: Option<String>,
    pub address: Option<AddressDto>,
    /// Default tax rates (`txr_…`), at most 10.
    pub tax_rate_ids: Option<Vec<String>>,
    /// Up to 50 string values.
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
}

impl PutCustomerRequest {
    pub fn into_details(self) -> Result<CustomerDetails, ApiError> {
        let currency = self
            .currency
            .as_deref()
            .map(|c| {
                Currency::parse(c)
                    .map_err(|_| ApiError::field("currency", "unknown ISO 4217 currency"))
            })
            .transpose()?;
        let details = CustomerDetails {
            name: self.name,
            email: self.email,
            currency,
            address: self.address.map(AddressDto::into_address),
            tax_rate_ids: self.tax_rate_ids.unwrap_or_default(),
            metadata: self.metadata.unwrap_or_default(),
        };
        details.validate()?;
        Ok(details)
    }
}

/// A customer's details as an invoice copied them when it was issued.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerDetailsDto {
    pub name: String,
    pub email: Option<String>,
    pub address: Option<AddressDto>,
}

impl CustomerDetailsDto {
    pub fn from_details(d: &CustomerDetails) -> CustomerDetailsDto {
        CustomerDetailsDto {
            name: d.name.clone(),
            email: d.email.clone(),
            address: d.address.as_ref().map(AddressDto::from_address),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerDto {
    /// The client's own id for the customer.
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub currency: Option<String>,
    pub address: Option<AddressDto>,
    pub tax_rate_ids: Vec<String>,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub version: i64,
}

impl CustomerDto {
    pub fn from_state(id: &str, c: &Customer, version: i64) -> Option<CustomerDto> {
        let d = c.details.as_ref()?;
        Some(CustomerDto {
            id: id.to_string(),
            name: d.name.clone(),
            email: d.email.clone(),
            currency: d.currency.map(|c| c.code().to_string()),
            address: d.address.as_ref().map(AddressDto::from_address),
            tax_rate_ids: d.tax_rate_ids.clone(),
            metadata: d.metadata.clone(),
            created_at: c.created_at,
            updated_at: c.updated_at,
            version,
        })
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CustomerListParams {
    /// Exactly this email address.
    pub email: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}
