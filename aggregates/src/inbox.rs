//! The `Inbox` aggregate: one per recipient, holding the recipient's own
//! decisions about their inbox items (read, archived, "read all").
//!
//! The inbox items themselves are a read model, derived from the events of
//! other aggregates; a rebuild deletes and re-derives them. What a recipient
//! did with them cannot be derived, so it is recorded here as events, and the
//! inbox projector replays them onto the rebuilt items. The aggregate id is the
//! recipient principal.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::DomainError;

/// The longest inbox item id, in characters.
pub const MAX_ITEM_ID_CHARS: usize = 64;
/// The longest customer id or user name in a recipient, in characters.
pub const MAX_RECIPIENT_NAME_CHARS: usize = 128;
/// The kinds of recipient, as the prefix of a principal (`customer:cus_1`).
pub const RECIPIENT_KINDS: &[&str] = &["customer", "user"];

/// Whether `s` is a recipient principal: `customer:<customer_id>` or
/// `user:<name>`, the id or name 1 to 128 characters without whitespace or
/// control characters.
pub fn valid_recipient(s: &str) -> bool {
    let Some((kind, name)) = s.split_once(':') else {
        return false;
    };
    RECIPIENT_KINDS.contains(&kind)
        && !name.is_empty()
        && name.chars().count() <= MAX_RECIPIENT_NAME_CHARS
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A recipient's decisions about their inbox. `recipient == None` means no
/// command was ever accepted.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inbox {
    pub recipient: Option<String>,
    /// Items marked read one by one.
    pub read: BTreeSet<String>,
    /// Items archived (which the read model also counts as read).
    pub archived: BTreeSet<String>,
    /// How many times the recipient marked everything read.
    pub read_all_count: u64,
}

/// What a recipient can ask of their inbox. Every command carries its time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InboxCommand {
    /// Marks one item read; a no-op when it is read or archived already.
    MarkRead {
        recipient: String,
        item_id: String,
        at: DateTime<Utc>,
    },
    /// Archives one item; a no-op when it is archived already.
    Archive {
        recipient: String,
        item_id: String,
        at: DateTime<Utc>,
    },
    /// Marks every item delivered so far read.
    ReadAll {
        recipient: String,
        at: DateTime<Utc>,
    },
    /// Delivers a notice that no other aggregate's event stands for (the
    /// system telling an operator something, e.g. a webhook endpoint it
    /// disabled). The item's id comes from the event's id.
    Notify {
        recipient: String,
        notice: Notice,
        at: DateTime<Utc>,
    },
}

/// A notice for the recipient's inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// `info`, `warning` or `critical`.
    pub severity: String,
    pub title: String,
    pub body: String,
    /// What it is about: a type (`webhook`) and an id.
    pub subject_type: String,
    pub subject_id: String,
}

/// The severities of inbox items.
pub const SEVERITIES: &[&str] = &["info", "warning", "critical"];
/// The longest notice title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;

impl InboxCommand {
    /// The snake_case command name.
    pub fn name(&self) -> &'static str {
        match self {
            InboxCommand::MarkRead { .. } => "mark_read",
            InboxCommand::Archive { .. } => "archive",
            InboxCommand::ReadAll { .. } => "read_all",
            InboxCommand::Notify { .. } => "notify",
        }
    }
}

/// What a recipient did. Stored forever: see [`EVENT_VERSION`]. Each event
/// names its recipient, so the projector needs nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InboxEvent {
    ItemRead {
        recipient: String,
        item_id: String,
        read_at: DateTime<Utc>,
    },
    ItemArchived {
        recipient: String,
        item_id: String,
        archived_at: DateTime<Utc>,
    },
    /// Every item delivered before this event is read; the projector uses the
    /// event's position in the log as the boundary.
    AllRead {
        recipient: String,
        read_at: DateTime<Utc>,
    },
    /// A notice was delivered to the recipient.
    Notified {
        recipient: String,
        notice: Notice,
        notified_at: DateTime<Utc>,
    },
}

impl InboxEvent {
    /// The variant name, used as the stored event type.
    pub fn name(&self) -> &'static str {
        match self {
            InboxEvent::ItemRead { .. } => "ItemRead",
            InboxEvent::ItemArchived { .. } => "ItemArchived",
            InboxEvent::AllRead { .. } => "AllRead",
            InboxEvent::Notified { .. } => "Notified",
        }
    }

    /// The recipient whose inbox this event belongs to.
    pub fn recipient(&self) -> &str {
        match self {
            InboxEvent::ItemRead { recipient, .. }
            | InboxEvent::ItemArchived { recipient, .. }
            | InboxEvent::AllRead { recipient, .. }
            | InboxEvent::Notified { recipient, .. } => recipient,
        }
    }
}

fn validate_item_id(item_id: &str) -> Result<(), DomainError> {
    if item_id.is_empty() || item_id.chars().count() > MAX_ITEM_ID_CHARS {
        return Err(DomainError::validation(
            "item_id",
            format!("must be 1 to {MAX_ITEM_ID_CHARS} characters"),
        ));
    }
    if item_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(DomainError::validation(
            "item_id",
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

impl Inbox {
    /// Checks the command's recipient: a valid principal, and the owner of this
    /// inbox once it has one.
    fn check_recipient(&self, recipient: &str) -> Result<(), DomainError> {
        if !valid_recipient(recipient) {
            return Err(DomainError::validation(
                "recipient",
                format!(
                    "must be customer:<id> or user:<name>, the id or name 1 to \
                     {MAX_RECIPIENT_NAME_CHARS} characters without whitespace"
                ),
            ));
        }
        match &self.recipient {
            Some(owner) if owner != recipient => Err(DomainError::validation(
                "recipient",
                "this inbox belongs to another recipient",
            )),
            Some(_) | None => Ok(()),
        }
    }

    /// Decides which events `command` causes, or why it is refused. There is no
    /// status: the inbox exists from its first event, and every command is
    /// accepted in either case.
    pub fn decide(&self, command: InboxCommand) -> Result<Vec<InboxEvent>, DomainError> {
        match command {
            InboxCommand::MarkRead {
                recipient,
                item_id,
                at,
            } => {
                self.check_recipient(&recipient)?;
                validate_item_id(&item_id)?;
                // An archived item is read as far as the read model goes.
                if self.read.contains(&item_id) || self.archived.contains(&item_id) {
                    return Ok(vec![]);
                }
                Ok(vec![InboxEvent::ItemRead {
                    recipient,
                    item_id,
                    read_at: at,
                }])
            }
            InboxCommand::Archive {
                recipient,
                item_id,
                at,
            } => {
                self.check_recipient(&recipient)?;
                validate_item_id(&item_id)?;
                if self.archived.contains(&item_id) {
                    return Ok(vec![]);
                }
                Ok(vec![InboxEvent::ItemArchived {
                    recipient,
                    item_id,
                    archived_at: at,
                }])
            }
            // Always an event: items delivered since the last one are unread,
            // and only the event's position tells the projector which they are.
            InboxCommand::ReadAll { recipient, at } => {
                self.check_recipient(&recipient)?;
                Ok(vec![InboxEvent::AllRead {
                    recipient,
                    read_at: at,
                }])
            }
            InboxCommand::Notify {
                recipient,
                notice,
                at,
            } => {
                self.check_recipient(&recipient)?;
                if !SEVERITIES.contains(&notice.severity.as_str()) {
                    return Err(DomainError::validation(
                        "severity",
                        "must be info, warning or critical",
                    ));
                }
                let title_chars = notice.title.trim().chars().count();
                if title_chars == 0 || title_chars > MAX_TITLE_CHARS {
                    return Err(DomainError::validation(
                        "title",
                        format!("must be 1 to {MAX_TITLE_CHARS} characters"),
                    ));
                }
                Ok(vec![InboxEvent::Notified {
                    recipient,
                    notice,
                    notified_at: at,
                }])
            }
        }
    }

    /// Applies an event. Events come from `decide`, so an impossible one is a bug.
    pub fn evolve(&mut self, event: &InboxEvent) {
        let recipient = event.recipient();
        match &self.recipient {
            Some(owner) => assert_eq!(
                owner,
                recipient,
                "{} for another recipient's inbox",
                event.name()
            ),
            None => self.recipient = Some(recipient.to_owned()),
        }
        match event {
            InboxEvent::ItemRead { item_id, .. } => {
                self.read.insert(item_id.clone());
            }
            InboxEvent::ItemArchived { item_id, .. } => {
                self.archived.insert(item_id.clone());
            }
            InboxEvent::AllRead { .. } => {
                self.read_all_count += 1;
            }
            // The item itself is read-model state.
            InboxEvent::Notified { .. } => {}
        }
    }
}

crate::cqrs_adapter!(Inbox, Inbox, InboxCommand, InboxEvent);
