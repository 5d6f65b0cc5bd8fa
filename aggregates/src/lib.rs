//! Tally's domain: the `Plan`, `Subscription`, `Customer`, `Coupon`, `TaxRate`, `UsageRecord`, `Invoice`, `AccessKey`,
//! `InvoiceNumbering`, `Ticket`, `Inbox`, `InboundNotice` and `ProviderPayment` aggregates, their
//! commands and events, and the money and
//! billing-period arithmetic they rely on, and the pricing of metered usage.
//!
//! Everything here is pure. Commands carry the time and the new ids, so `decide`
//! and `evolve` never read a clock, generate an id or touch I/O; the `cqrs_es`
//! adapters only forward to them. Money is `rust_decimal` with an ISO 4217
//! currency, never a float.

/// The thin cqrs-es adapter over an aggregate's `decide` / `evolve` (STYLE.md:
/// the framework impl holds no logic): one definition for every aggregate.
/// The event type names itself with `name()`; every event is version
/// [`EVENT_VERSION`] until an upcaster says otherwise. `TYPE`, the stored
/// `aggregate_type`, is the string of the [`AggregateKind`] variant named.
#[macro_export]
macro_rules! cqrs_adapter {
    ($aggregate:ty, $kind:ident, $command:ty, $event:ty) => {
        impl cqrs_es::DomainEvent for $event {
            fn event_type(&self) -> String {
                self.name().to_owned()
            }

            fn event_version(&self) -> String {
                $crate::EVENT_VERSION.to_owned()
            }
        }

        impl cqrs_es::Aggregate for $aggregate {
            const TYPE: &'static str = $crate::AggregateKind::$kind.as_str();
            type Command = $command;
            type Event = $event;
            type Error = $crate::DomainError;
            type Services = ();

            async fn handle(
                &mut self,
                command: Self::Command,
                _services: &Self::Services,
                sink: &cqrs_es::event_sink::EventSink<Self>,
            ) -> Result<(), Self::Error> {
                for event in self.decide(command)? {
                    sink.write(event, self).await;
                }
                Ok(())
            }

            fn apply(&mut self, event: Self::Event) {
                self.evolve(&event);
            }
        }

        impl $crate::Decide for $aggregate {
            fn decide_command(
                &self,
                command: Self::Command,
            ) -> Result<Vec<Self::Event>, $crate::DomainError> {
                self.decide(command)
            }
        }
    };
}

/// An aggregate's `decide` as a trait, so code generic over aggregates (the
/// HTTP edge's one command runner) can run any of them. Implemented by
/// [`cqrs_adapter!`] only; it forwards to the inherent `decide`.
pub trait Decide: cqrs_es::Aggregate {
    fn decide_command(&self, command: Self::Command) -> Result<Vec<Self::Event>, DomainError>;
}

pub mod access_key;
pub mod billing;
pub mod coupon;
pub mod customer;
pub mod error;
pub mod id;
pub mod inbox;
pub mod invoice;
pub mod kind;
pub mod money;
pub mod payment;
pub mod period;
pub mod plan;
pub mod pricing;
pub mod subscription;
pub mod tax;
pub mod ticket;
pub mod time;
pub mod usage;

pub use access_key::{AccessKey, AccessKeyCommand, AccessKeyEvent};
pub use coupon::{
    AppliedDiscount, Coupon, CouponCommand, CouponDuration, CouponEvent, CouponOff, CouponRef,
    CouponStatus, CouponTerms,
};
pub use customer::{
    Address, Customer, CustomerCommand, CustomerDetails, CustomerEvent, CustomerStatus,
};
pub use error::DomainError;
pub use id::{
    AttachmentId, CommentId, CouponId, CreditNoteId, IdError, InvoiceId, KeyId, PaymentId, PlanId,
    SubscriptionId, TaxRateId, TicketId, TypedId, UsageRecordId, WebhookDeliveryId,
    WebhookEndpointId,
};
pub use inbox::{valid_recipient, Inbox, InboxCommand, InboxEvent};
pub use invoice::{
    Invoice, InvoiceCommand, InvoiceEvent, InvoiceLine, InvoiceNumbering, InvoiceStatus, LineKind,
    NewLine, NumberingCommand, NumberingEvent, Payment,
};
pub use kind::AggregateKind;
pub use money::{Currency, Money};
pub use payment::{
    InboundNotice, InboundNoticeCommand, InboundNoticeEvent, ProviderPayment,
    ProviderPaymentCommand, ProviderPaymentEvent,
};
pub use period::{Interval, Period};
pub use plan::{
    MeterTerms, Plan, PlanCommand, PlanEvent, PlanStatus, PlanTerms, ResetCadence, SeatLimits,
};
pub use pricing::{MeterPricing, PriceTier};
pub use subscription::{
    CancelWhen, PlanRef, ProrationFigures, ProrationMode, Subscription, SubscriptionCommand,
    SubscriptionEvent, SubscriptionStatus, SuspendReason, Suspension,
};
pub use tax::{
    AppliedRate, TaxAmount, TaxRate, TaxRateCommand, TaxRateEvent, TaxRateStatus, TaxRateTerms,
    TaxSources,
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
