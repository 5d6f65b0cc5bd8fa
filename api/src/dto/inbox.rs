//! Request and response shapes of the inbox endpoints, and their
//! mapping from domain and read-model types.

use serde::{Deserialize, Serialize};
use tally_projections::inbox;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectRef {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InboxItemDto {
    pub id: String,
    pub recipient: String,
    /// info | warning | critical
    pub severity: String,
    pub title: String,
    pub body: String,
    pub subject_ref: SubjectRef,
    /// unread | read | archived
    pub state: String,
    pub created_at: String,
}

impl From<inbox::Item> for InboxItemDto {
    fn from(i: inbox::Item) -> Self {
        InboxItemDto {
            id: i.id,
            recipient: i.recipient,
            severity: i.severity,
            title: i.title,
            body: i.body,
            subject_ref: SubjectRef {
                kind: i.subject_type,
                id: i.subject_id,
            },
            state: i.state,
            created_at: i.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InboxPage {
    pub data: Vec<InboxItemDto>,
    pub unread_count: i64,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InboxParams {
    /// `customer:<id>` or `user:<name>`.
    pub recipient: String,
    /// unread | read | archived
    pub state: Option<String>,
    /// info | warning | critical
    pub severity: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadAllRequest {
    pub recipient: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadAllDto {
    pub recipient: String,
    pub read_all: bool,
}
