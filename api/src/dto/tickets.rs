//! Request and response shapes of the ticket endpoints, and their
//! mapping from domain and read-model types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_aggregates::ticket::{Priority, Ticket, TicketStatus};
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTicketRequest {
    pub subject: String,
    pub description: String,
    /// A principal (`customer:<id>`); a bare id is a customer.
    pub requester: String,
    /// low | normal | high | urgent
    #[schema(value_type = String, pattern = "^(low|normal|high|urgent)$")]
    pub priority: Priority,
    pub subscription_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignRequest {
    pub assignee: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentRequest {
    pub author: String,
    pub body: String,
    pub public: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentRequest {
    pub file_name: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub storage_key: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    /// new | open | pending | on_hold | solved | closed
    #[schema(value_type = String, pattern = "^(new|open|pending|on_hold|solved|closed)$")]
    pub to: TicketStatus,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CommentDto {
    pub id: String,
    pub author: String,
    pub body: String,
    pub public: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttachmentDto {
    pub id: String,
    pub file_name: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub storage_key: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TicketDto {
    pub id: String,
    pub subject: String,
    pub description: String,
    pub requester: String,
    pub priority: String,
    /// new | open | pending | on_hold | solved | closed
    pub status: String,
    pub subscription_id: Option<String>,
    pub assignee: Option<String>,
    pub comments: Vec<CommentDto>,
    pub attachments: Vec<AttachmentDto>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub version: i64,
}

impl TicketDto {
    pub(crate) fn from_state(
        id: &str,
        t: &Ticket,
        version: i64,
        internal: bool,
    ) -> Option<TicketDto> {
        Some(TicketDto {
            id: id.to_string(),
            subject: t.subject.clone(),
            description: t.description.clone(),
            requester: t.requester.clone(),
            priority: t.priority?.as_str().to_string(),
            status: t.status?.as_str().to_string(),
            subscription_id: t.subscription_id.clone(),
            assignee: t.assignee.clone(),
            comments: t
                .comments
                .iter()
                .filter(|c| c.public || internal)
                .map(|c| CommentDto {
                    id: c.id.clone(),
                    author: c.author.clone(),
                    body: c.body.clone(),
                    public: c.public,
                    created_at: c.created_at,
                })
                .collect(),
            attachments: t
                .attachments
                .iter()
                .map(|a| AttachmentDto {
                    id: a.id.clone(),
                    file_name: a.file_name.clone(),
                    content_type: a.content_type.clone(),
                    size_bytes: a.size_bytes,
                    storage_key: a.storage_key.clone(),
                    created_at: a.created_at,
                })
                .collect(),
            created_at: t.created_at,
            updated_at: t.updated_at,
            version,
        })
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TicketListParams {
    pub status: Option<String>,
    pub assignee: Option<String>,
    pub requester: Option<String>,
    pub priority: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}
