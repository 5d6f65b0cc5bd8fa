//! Request and response shapes of the API key endpoints, and their
//! mapping from domain and read-model types.

use serde::{Deserialize, Serialize};
use tally_commands::keys::KeyInfo;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyDto {
    pub id: String,
    /// admin | writer | reader | auditor
    pub role: String,
    pub created_at: String,
    /// When the key was revoked; null while it works.
    pub revoked_at: Option<String>,
}

impl From<KeyInfo> for KeyDto {
    fn from(k: KeyInfo) -> Self {
        KeyDto {
            id: k.id,
            role: k.role,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyPage {
    pub data: Vec<KeyDto>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyListParams {
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}
