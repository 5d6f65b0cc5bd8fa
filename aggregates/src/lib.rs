//! Tally's domain: the `Plan`, `Subscription`, `UsageRecord`, `Ticket` and
//! `Inbox` aggregates, their commands and events, and the money and
//! billing-period arithmetic they rely on.
//!
//! Everything here is pure. Commands carry the time and the new ids, so `decide`
//! and `evolve` never read a clock, generate an id or touch I/O; the `cqrs_es`
//! adapters only forward to them. Money is `rust_decimal` with an ISO 4217
//! currency, never a float.

pub mod error;
pub mod inbox;
pub mod money;
pub mod period;
pub mod plan;
pub mod subscription;
pub mod ticket;
pub mod usage;

pub use error::DomainError;
pub use inbox::{valid_recipient, Inbox, InboxCommand, InboxEvent};
pub use money::{Currency, Money};
pub use period::{Interval, Period};
pub use plan::{
    MeterTerms, Plan, PlanCommand, PlanEvent, PlanStatus, PlanTerms, ResetCadence, SeatLimits,
};
pub use subscription::{
    CancelWhen, PlanRef, ProrationFigures, ProrationMode, Subscription, SubscriptionCommand,
    SubscriptionEvent, SubscriptionStatus, SuspendReason, Suspension,
};
pub use ticket::{
    can_transition, Attachment, Comment, Priority, Ticket, TicketCommand, TicketEvent,
    TicketStatus, ALLOWED_CONTENT_TYPES, MAX_ATTACHMENTS, MAX_ATTACHMENT_BYTES, TRANSITIONS,
};
pub use usage::{
    total_delta, usage_window, SubscriptionContext, TotalDelta, UsageCommand, UsageEvent,
    UsageRecord, UsageStatus, UsageTotals, UsageWindow,
};

/// The `event_version` of every event in this crate. Events are stored forever:
/// a change to an event's shape gets a new version and an upcaster.
pub const EVENT_VERSION: &str = "1.0";
