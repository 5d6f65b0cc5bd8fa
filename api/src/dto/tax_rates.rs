//! Request and response shapes of the tax rate endpoints, and their
//! mapping from domain and read-model types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_aggregates::tax::TaxRate;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaxRateRequest {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Decimal string, 0 to 100, up to 4 places.
    #[schema(pattern = "^\\s*[-+]?[0-9_.]+\\s*$")]
    pub percentage: String,
    /// Whether line amounts already hold the tax.
    pub inclusive: bool,
    /// ISO 3166-1 alpha-2, e.g. "DE".
    #[schema(pattern = "^[A-Z]{2}$")]
    pub country: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaxRateDto {
    /// `txr_…`
    pub id: String,
    pub name: String,
    pub percentage: String,
    pub inclusive: bool,
    pub country: Option<String>,
    /// active | archived
    pub status: String,
    pub created_at: Option<DateTime<Utc>>,
    pub archived_at: Option<DateTime<Utc>>,
    pub version: i64,
}

impl TaxRateDto {
    pub fn from_state(id: &str, r: &TaxRate, version: i64) -> Option<TaxRateDto> {
        let status = r.status?;
        let t = r.terms.as_ref()?;
        Some(TaxRateDto {
            id: id.to_string(),
            name: t.name.clone(),
            percentage: t.percentage.normalize().to_string(),
            inclusive: t.inclusive,
            country: t.country.clone(),
            status: status.as_str().to_string(),
            created_at: r.created_at,
            archived_at: r.archived_at,
            version,
        })
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TaxRateListParams {
    /// active | archived
    pub status: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}
