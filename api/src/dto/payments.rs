//! Request and response shapes of the payment provider endpoints, and their
//! mapping from domain and read-model types.

use serde::{Deserialize, Serialize};
use tally_commands::payments::ProviderView;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigureProviderRequest {
    /// The provider's webhook signing secret (polar: `whsec_` + base64).
    /// Stored sealed; never shown again.
    pub webhook_secret: String,
    /// The provider's API token (required for mercadopago, whose
    /// notifications only name a payment). Stored sealed; never shown again.
    pub access_token: Option<String>,
    /// The provider's API (default: its public one); loopback and private
    /// addresses only when `TALLY_WEBHOOK_ALLOWED_HOSTS` lists them.
    pub api_base_url: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderDto {
    /// stripe | polar | mercadopago
    pub provider: String,
    /// Where the provider posts: `/v1/inbound/<provider>/<token>`.
    pub webhook_url: String,
    pub api_base_url: String,
    pub configured_at: String,
}

impl From<ProviderView> for ProviderDto {
    fn from(v: ProviderView) -> Self {
        ProviderDto {
            provider: v.provider.to_string(),
            webhook_url: v.webhook_url,
            api_base_url: v.api_base_url,
            configured_at: v.configured_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderList {
    pub data: Vec<ProviderDto>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InboundAnswer {
    pub received: bool,
    /// applied | credited | refunded | ignored | duplicate | duplicate_payment | duplicate_refund
    pub outcome: String,
}
