//! The `Ticket` aggregate: a support request from a requester, moving
//! New → Open ⇄ Pending / OnHold → Solved → Closed (terminal), with an
//! assignee, a comment timeline and attachments.
//!
//! The allowed moves of an explicit `Transition` are one table,
//! [`TRANSITIONS`]; the other commands may also move the status (an agent's
//! first action opens a new ticket, the requester's public reply reopens a
//! solved one), always along a row of that table. Every event after the
//! creation carries the requester, the assignee (as of after the event) and the
//! subject, so the inbox projector delivers notifications without a lookup.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::plan::validate_id;
use crate::AggregateKind;
use crate::DomainError;

/// The longest subject, in characters.
pub const MAX_SUBJECT_CHARS: usize = 200;
/// The longest description or comment body, in characters.
pub const MAX_BODY_CHARS: usize = 10_000;
/// The longest requester, assignee or comment author, in characters.
pub const MAX_PRINCIPAL_CHARS: usize = 128;
/// The longest attachment file name, in characters.
pub const MAX_FILE_NAME_CHARS: usize = 255;
/// The longest attachment storage key, in characters.
pub const MAX_STORAGE_KEY_CHARS: usize = 1_024;
/// The largest attachment: 25 MiB.
pub const MAX_ATTACHMENT_BYTES: u64 = 25 * 1024 * 1024;
/// The most attachments one ticket may have.
pub const MAX_ATTACHMENTS: usize = 20;
/// The most comments one ticket may have. The whole timeline is loaded to
/// decide each command, so it must not grow without bound.
pub const MAX_COMMENTS: usize = 1_000;
/// The media types an attachment may have, matched exactly (lowercase, no
/// parameters).
pub const ALLOWED_CONTENT_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "text/plain",
    "text/csv",
    "application/json",
    "application/zip",
];

/// Where a ticket is in its life. `Closed` is terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    New,
    Open,
    Pending,
    OnHold,
    Solved,
    Closed,
}

impl TicketStatus {
    /// Every status, for tests and tables.
    pub const ALL: [TicketStatus; 6] = [
        TicketStatus::New,
        TicketStatus::Open,
        TicketStatus::Pending,
        TicketStatus::OnHold,
        TicketStatus::Solved,
        TicketStatus::Closed,
    ];

    /// The snake_case name ("new", "on_hold", …), as in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            TicketStatus::New => "new",
            TicketStatus::Open => "open",
            TicketStatus::Pending => "pending",
            TicketStatus::OnHold => "on_hold",
            TicketStatus::Solved => "solved",
            TicketStatus::Closed => "closed",
        }
    }

    /// The status named by its snake_case name, or `None`.
    pub fn parse(s: &str) -> Option<TicketStatus> {
        TicketStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
    }
}

/// How urgent a ticket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Normal,
    High,
    Urgent,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Urgent,
    ];

    /// The snake_case name ("low", "urgent", …), as in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }

    /// The priority named by its snake_case name, or `None`.
    pub fn parse(s: &str) -> Option<Priority> {
        Priority::ALL
            .into_iter()
            .find(|priority| priority.as_str() == s)
    }
}

/// The single source of the moves a `Transition` command may make, as
/// `(from, to)`. A status never moves to itself, and nothing leaves `Closed`.
pub const TRANSITIONS: &[(TicketStatus, TicketStatus)] = {
    use TicketStatus::{Closed, New, OnHold, Open, Pending, Solved};
    &[
        (New, Open),
        (Open, Pending),
        (Pending, Open),
        (Open, OnHold),
        (OnHold, Open),
        (Pending, OnHold),
        (OnHold, Pending),
        (New, Solved),
        (Open, Solved),
        (Pending, Solved),
        (OnHold, Solved),
        // Reopening.
        (Solved, Open),
        (Solved, Closed),
    ]
};

/// Whether [`TRANSITIONS`] has the row `(from, to)`.
pub fn can_transition(from: TicketStatus, to: TicketStatus) -> bool {
    TRANSITIONS.contains(&(from, to))
}

/// One comment of a ticket's timeline. An internal comment (`public: false`)
/// is for agents only and notifies no one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comment {
    pub id: String,
    pub author: String,
    pub body: String,
    pub public: bool,
    pub created_at: DateTime<Utc>,
}

/// A file attached to a ticket. The bytes live in object storage under
/// `storage_key`; the ticket only records them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: String,
    pub file_name: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub storage_key: String,
    pub created_at: DateTime<Utc>,
}

/// A support ticket. `status == None` means it was never created.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: Option<String>,
    pub status: Option<TicketStatus>,
    pub subject: String,
    pub description: String,
    pub requester: String,
    pub priority: Option<Priority>,
    pub subscription_id: Option<String>,
    pub assignee: Option<String>,
    pub comments: Vec<Comment>,
    pub attachments: Vec<Attachment>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// What can be asked of a ticket. Every command carries its time and new ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TicketCommand {
    /// Opens a ticket in status `New`.
    Create {
        ticket_id: String,
        subject: String,
        description: String,
        requester: String,
        priority: Priority,
        subscription_id: Option<String>,
        at: DateTime<Utc>,
    },
    /// Sets the assignee; a `New` ticket becomes `Open`.
    Assign { assignee: String, at: DateTime<Utc> },
    /// Adds a comment; may open a new ticket or reopen a solved one.
    Comment {
        comment_id: String,
        author: String,
        body: String,
        public: bool,
        at: DateTime<Utc>,
    },
    /// Records an attachment already stored under `storage_key`.
    Attach {
        attachment_id: String,
        file_name: String,
        content_type: String,
        size_bytes: u64,
        storage_key: String,
        at: DateTime<Utc>,
    },
    /// Moves the status along a row of [`TRANSITIONS`].
    Transition { to: TicketStatus, at: DateTime<Utc> },
}

impl TicketCommand {
    /// The snake_case command name used in `InvalidTransition`.
    pub fn name(&self) -> &'static str {
        match self {
            TicketCommand::Create { .. } => "create",
            TicketCommand::Assign { .. } => "assign",
            TicketCommand::Comment { .. } => "comment",
            TicketCommand::Attach { .. } => "attach",
            TicketCommand::Transition { .. } => "transition",
        }
    }
}

/// What happened to a ticket. Stored forever: see [`EVENT_VERSION`]. Events
/// after the creation carry the requester, the assignee as of after the event
/// and the subject, so the inbox projector needs no lookup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TicketEvent {
    TicketCreated {
        ticket_id: String,
        subject: String,
        description: String,
        requester: String,
        priority: Priority,
        subscription_id: Option<String>,
        created_at: DateTime<Utc>,
    },
    TicketAssigned {
        assignee: String,
        previous: Option<String>,
        requester: String,
        subject: String,
        assigned_at: DateTime<Utc>,
    },
    CommentAdded {
        comment: Comment,
        requester: String,
        assignee: Option<String>,
        subject: String,
    },
    AttachmentAdded {
        attachment: Attachment,
    },
    TicketStatusChanged {
        from: TicketStatus,
        to: TicketStatus,
        requester: String,
        assignee: Option<String>,
        subject: String,
        changed_at: DateTime<Utc>,
        /// The comment author when a comment caused the change, else `None`.
        by: Option<String>,
    },
}

impl TicketEvent {
    /// The variant name, used as the stored event type.
    pub fn name(&self) -> &'static str {
        match self {
            TicketEvent::TicketCreated { .. } => "TicketCreated",
            TicketEvent::TicketAssigned { .. } => "TicketAssigned",
            TicketEvent::CommentAdded { .. } => "CommentAdded",
            TicketEvent::AttachmentAdded { .. } => "AttachmentAdded",
            TicketEvent::TicketStatusChanged { .. } => "TicketStatusChanged",
        }
    }
}

/// Checks free text: at most `max_chars` characters, not blank when
/// `required`, and no control characters other than line breaks and tabs
/// when `multiline` (none at all otherwise).
fn validate_text(
    field: &str,
    value: &str,
    max_chars: usize,
    required: bool,
    multiline: bool,
) -> Result<(), DomainError> {
    if required && value.trim().is_empty() {
        return Err(DomainError::validation(
            field,
            format!("must be 1 to {max_chars} characters, not only whitespace"),
        ));
    }
    if value.chars().count() > max_chars {
        return Err(DomainError::validation(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    let allowed = |c: char| multiline && matches!(c, '\n' | '\r' | '\t');
    if value.chars().any(|c| c.is_control() && !allowed(c)) {
        return Err(DomainError::validation(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A requester, assignee or comment author: 1 to 128 characters, not only
/// whitespace, no control characters.
fn validate_principal(field: &str, value: &str) -> Result<(), DomainError> {
    validate_text(field, value, MAX_PRINCIPAL_CHARS, true, false)
}

impl Ticket {
    fn invalid(status: TicketStatus, command: &'static str) -> DomainError {
        DomainError::InvalidTransition {
            aggregate: AggregateKind::Ticket,
            from: status.as_str().to_owned(),
            command,
        }
    }

    fn status_changed(
        &self,
        from: TicketStatus,
        to: TicketStatus,
        assignee: Option<String>,
        at: DateTime<Utc>,
        by: Option<String>,
    ) -> TicketEvent {
        debug_assert!(can_transition(from, to), "{from:?} → {to:?} is no row");
        TicketEvent::TicketStatusChanged {
            from,
            to,
            requester: self.requester.clone(),
            assignee,
            subject: self.subject.clone(),
            changed_at: at,
            by,
        }
    }

    /// Decides which events `command` causes, or why it is refused. Every
    /// (status, command) pair is listed on purpose.
    pub fn decide(&self, command: TicketCommand) -> Result<Vec<TicketEvent>, DomainError> {
        use TicketCommand as C;
        use TicketStatus::{Closed, New, OnHold, Open, Pending, Solved};
        let name = command.name();
        match (self.status, command) {
            (
                None,
                C::Create {
                    ticket_id,
                    subject,
                    description,
                    requester,
                    priority,
                    subscription_id,
                    at,
                },
            ) => {
                validate_id("ticket_id", &ticket_id)?;
                validate_text("subject", &subject, MAX_SUBJECT_CHARS, true, false)?;
                validate_text("description", &description, MAX_BODY_CHARS, false, true)?;
                validate_principal("requester", &requester)?;
                if let Some(subscription_id) = &subscription_id {
                    validate_id("subscription_id", subscription_id)?;
                }
                Ok(vec![TicketEvent::TicketCreated {
                    ticket_id,
                    subject,
                    description,
                    requester,
                    priority,
                    subscription_id,
                    created_at: at,
                }])
            }
            (Some(New | Open | Pending | OnHold | Solved | Closed), C::Create { .. }) => {
                Err(DomainError::AlreadyExists(AggregateKind::Ticket))
            }
            (
                None,
                C::Assign { .. } | C::Comment { .. } | C::Attach { .. } | C::Transition { .. },
            ) => Err(DomainError::NotFound(AggregateKind::Ticket)),

            (Some(New), C::Assign { assignee, at }) => {
                validate_principal("assignee", &assignee)?;
                let assigned = self.assigned(assignee.clone(), at);
                Ok(vec![
                    assigned,
                    self.status_changed(New, Open, Some(assignee), at, None),
                ])
            }
            (Some(Open | Pending | OnHold | Solved), C::Assign { assignee, at }) => {
                validate_principal("assignee", &assignee)?;
                // Assigning the same agent again changes nothing and notifies no one.
                if self.assignee.as_deref() == Some(assignee.as_str()) {
                    return Ok(vec![]);
                }
                Ok(vec![self.assigned(assignee, at)])
            }
            (Some(status @ Closed), C::Assign { .. }) => Err(Self::invalid(status, name)),

            (
                Some(status @ (New | Open | Pending | OnHold | Solved)),
                C::Comment {
                    comment_id,
                    author,
                    body,
                    public,
                    at,
                },
            ) => self.comment(status, comment_id, author, body, public, at),
            (Some(status @ Closed), C::Comment { .. }) => Err(Self::invalid(status, name)),

            (
                Some(New | Open | Pending | OnHold | Solved),
                C::Attach {
                    attachment_id,
                    file_name,
                    content_type,
                    size_bytes,
                    storage_key,
                    at,
                },
            ) => self.attach(Attachment {
                id: attachment_id,
                file_name,
                content_type,
                size_bytes,
                storage_key,
                created_at: at,
            }),
            (Some(status @ Closed), C::Attach { .. }) => Err(Self::invalid(status, name)),

            // Which moves are allowed is the table's business, not the match's:
            // a new row needs no new arm.
            (
                Some(from @ (New | Open | Pending | OnHold | Solved | Closed)),
                C::Transition { to, at },
            ) => {
                if !can_transition(from, to) {
                    return Err(Self::invalid(from, name));
                }
                Ok(vec![self.status_changed(
                    from,
                    to,
                    self.assignee.clone(),
                    at,
                    None,
                )])
            }
        }
    }

    fn assigned(&self, assignee: String, at: DateTime<Utc>) -> TicketEvent {
        TicketEvent::TicketAssigned {
            assignee,
            previous: self.assignee.clone(),
            requester: self.requester.clone(),
            subject: self.subject.clone(),
            assigned_at: at,
        }
    }

    fn comment(
        &self,
        status: TicketStatus,
        comment_id: String,
        author: String,
        body: String,
        public: bool,
        at: DateTime<Utc>,
    ) -> Result<Vec<TicketEvent>, DomainError> {
        use TicketStatus::{Closed, New, OnHold, Open, Pending, Solved};
        validate_id("comment_id", &comment_id)?;
        validate_principal("author", &author)?;
        validate_text("body", &body, MAX_BODY_CHARS, true, true)?;
        if self.comments.iter().any(|c| c.id == comment_id) {
            return Err(DomainError::validation(
                "comment_id",
                "the ticket already has a comment with this id",
            ));
        }
        if self.comments.len() >= MAX_COMMENTS {
            return Err(DomainError::validation(
                "comments",
                format!("a ticket has at most {MAX_COMMENTS} comments"),
            ));
        }
        let by_requester = author == self.requester;
        let reopen_to = match status {
            // The first comment of an agent is the first agent action.
            New if !by_requester => Some(Open),
            // The requester answering in public means the solution did not hold;
            // an internal note (which a requester should not be writing) does not.
            Solved if public && by_requester => Some(Open),
            // Pending waits on the requester: their public reply puts the
            // ticket back in the agents' queue (on-hold waits on a third
            // party and stays).
            Pending if public && by_requester => Some(Open),
            New | Open | Pending | OnHold | Solved => None,
            Closed => unreachable!("a closed ticket takes no comments"),
        };
        let mut events = vec![TicketEvent::CommentAdded {
            comment: Comment {
                id: comment_id,
                author: author.clone(),
                body,
                public,
                created_at: at,
            },
            requester: self.requester.clone(),
            assignee: self.assignee.clone(),
            subject: self.subject.clone(),
        }];
        if let Some(to) = reopen_to {
            events.push(self.status_changed(status, to, self.assignee.clone(), at, Some(author)));
        }
        Ok(events)
    }

    fn attach(&self, attachment: Attachment) -> Result<Vec<TicketEvent>, DomainError> {
        validate_id("attachment_id", &attachment.id)?;
        validate_text(
            "file_name",
            &attachment.file_name,
            MAX_FILE_NAME_CHARS,
            true,
            false,
        )?;
        if !ALLOWED_CONTENT_TYPES.contains(&attachment.content_type.as_str()) {
            return Err(DomainError::validation(
                "content_type",
                format!("must be one of {}", ALLOWED_CONTENT_TYPES.join(", ")),
            ));
        }
        if attachment.size_bytes == 0 || attachment.size_bytes > MAX_ATTACHMENT_BYTES {
            return Err(DomainError::validation(
                "size_bytes",
                format!("must be 1 to {MAX_ATTACHMENT_BYTES} bytes"),
            ));
        }
        validate_text(
            "storage_key",
            &attachment.storage_key,
            MAX_STORAGE_KEY_CHARS,
            true,
            false,
        )?;
        if self.attachments.iter().any(|a| a.id == attachment.id) {
            return Err(DomainError::validation(
                "attachment_id",
                "the ticket already has an attachment with this id",
            ));
        }
        if self.attachments.len() >= MAX_ATTACHMENTS {
            return Err(DomainError::validation(
                "attachments",
                format!("a ticket has at most {MAX_ATTACHMENTS} attachments"),
            ));
        }
        Ok(vec![TicketEvent::AttachmentAdded { attachment }])
    }

    fn expect_open_for_changes(&self, event: &TicketEvent) {
        assert!(
            self.status
                .is_some_and(|status| status != TicketStatus::Closed),
            "{} on a ticket in status {:?}",
            event.name(),
            self.status
        );
    }

    /// Applies an event. Events come from `decide`, so an impossible one is a bug.
    pub fn evolve(&mut self, event: &TicketEvent) {
        match event {
            TicketEvent::TicketCreated {
                ticket_id,
                subject,
                description,
                requester,
                priority,
                subscription_id,
                created_at,
            } => {
                assert!(self.status.is_none(), "TicketCreated twice");
                self.id = Some(ticket_id.clone());
                self.status = Some(TicketStatus::New);
                self.subject = subject.clone();
                self.description = description.clone();
                self.requester = requester.clone();
                self.priority = Some(*priority);
                self.subscription_id = subscription_id.clone();
                self.created_at = Some(*created_at);
                self.updated_at = Some(*created_at);
            }
            TicketEvent::TicketAssigned {
                assignee,
                assigned_at,
                ..
            } => {
                self.expect_open_for_changes(event);
                self.assignee = Some(assignee.clone());
                self.updated_at = Some(*assigned_at);
            }
            TicketEvent::CommentAdded { comment, .. } => {
                self.expect_open_for_changes(event);
                self.updated_at = Some(comment.created_at);
                self.comments.push(comment.clone());
            }
            TicketEvent::AttachmentAdded { attachment } => {
                self.expect_open_for_changes(event);
                self.updated_at = Some(attachment.created_at);
                self.attachments.push(attachment.clone());
            }
            TicketEvent::TicketStatusChanged {
                from,
                to,
                changed_at,
                ..
            } => {
                assert_eq!(
                    self.status,
                    Some(*from),
                    "TicketStatusChanged from {from:?} on a ticket in status {:?}",
                    self.status
                );
                assert!(can_transition(*from, *to), "{from:?} → {to:?} is no row");
                self.status = Some(*to);
                self.updated_at = Some(*changed_at);
            }
        }
    }
}

crate::cqrs_adapter!(Ticket, Ticket, TicketCommand, TicketEvent);
