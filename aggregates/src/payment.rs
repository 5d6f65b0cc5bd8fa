//! What payment providers told Tally, as Tally's own facts. No provider type
//! lives here: the provider is a name, the payload is kept as text for audit,
//! and the translation from a provider's payload happens in
//! `tally_commands::payments`.
//!
//! - `InboundNotice` (stream `ibn_<hash of provider and provider event id>`):
//!   one verified notification, recorded once. The stream is new by
//!   construction, like a usage record's: the same provider event again, or
//!   two deliveries at once, meet on its first sequence and only one is
//!   recorded, with its effect in the same transaction.
//! - `ProviderPayment` (stream `ppy_<hash of provider and payment id>`): a
//!   payment a provider reported, where it went (an invoice, customer
//!   credit), and its refunds, at most the amount received.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::{round_to_minor, MAX_AMOUNT};
use crate::plan::validate_id;
use crate::AggregateKind;
use crate::{Currency, DomainError};

/// The longest raw payload kept for audit, in bytes (the inbound endpoint
/// refuses larger bodies before this).
pub const MAX_RAW_PAYLOAD_BYTES: usize = 256 * 1024;

/// One verified provider notification. `provider == None`: never recorded.
#[derive(Default, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct InboundNotice {
    pub provider: Option<String>,
    pub provider_event_id: String,
    pub event_type: String,
    pub outcome: String,
    pub received_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InboundNoticeCommand {
    /// Records the notification; a second time is a no-op.
    Record {
        provider: String,
        provider_event_id: String,
        event_type: String,
        /// What Tally did with it: `applied`, `credited`, `refunded`,
        /// `ignored`, `duplicate_payment`.
        outcome: String,
        payment_reference: Option<String>,
        raw_payload: String,
        signature_header: String,
        at: DateTime<Utc>,
    },
}

impl InboundNoticeCommand {
    pub fn name(&self) -> &'static str {
        match self {
            InboundNoticeCommand::Record { .. } => "record",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InboundNoticeEvent {
    InboundNoticeRecorded {
        provider: String,
        provider_event_id: String,
        event_type: String,
        outcome: String,
        payment_reference: Option<String>,
        /// The request body exactly as received.
        raw_payload: String,
        /// The signature header(s) exactly as received.
        signature_header: String,
        received_at: DateTime<Utc>,
    },
}

impl InboundNoticeEvent {
    pub fn name(&self) -> &'static str {
        match self {
            InboundNoticeEvent::InboundNoticeRecorded { .. } => "InboundNoticeRecorded",
        }
    }
}

impl InboundNotice {
    pub fn decide(
        &self,
        command: InboundNoticeCommand,
    ) -> Result<Vec<InboundNoticeEvent>, DomainError> {
        match (self.provider.as_ref(), command) {
            (
                None,
                InboundNoticeCommand::Record {
                    provider,
                    provider_event_id,
                    event_type,
                    outcome,
                    payment_reference,
                    raw_payload,
                    signature_header,
                    at,
                },
            ) => {
                validate_id("provider", &provider)?;
                validate_id("id", &provider_event_id)?;
                if raw_payload.len() > MAX_RAW_PAYLOAD_BYTES {
                    return Err(DomainError::validation(
                        "body",
                        format!("at most {MAX_RAW_PAYLOAD_BYTES} bytes"),
                    ));
                }
                Ok(vec![InboundNoticeEvent::InboundNoticeRecorded {
                    provider,
                    provider_event_id,
                    event_type,
                    outcome,
                    payment_reference,
                    raw_payload,
                    signature_header,
                    received_at: at,
                }])
            }
            // The same provider event again: recorded once.
            (Some(_), InboundNoticeCommand::Record { .. }) => Ok(vec![]),
        }
    }

    pub fn evolve(&mut self, event: &InboundNoticeEvent) {
        match event {
            InboundNoticeEvent::InboundNoticeRecorded {
                provider,
                provider_event_id,
                event_type,
                outcome,
                received_at,
                ..
            } => {
                assert!(self.provider.is_none(), "InboundNoticeRecorded twice");
                self.provider = Some(provider.clone());
                self.provider_event_id = provider_event_id.clone();
                self.event_type = event_type.clone();
                self.outcome = outcome.clone();
                self.received_at = Some(*received_at);
            }
        }
    }
}

crate::cqrs_adapter!(
    InboundNotice,
    InboundNotice,
    InboundNoticeCommand,
    InboundNoticeEvent
);

/// A payment a provider reported. `currency == None`: never received.
#[derive(Default, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProviderPayment {
    pub provider: String,
    pub payment_id: String,
    /// `<provider>:<payment id>`: the payment's reference on the invoice.
    pub reference: String,
    pub currency: Option<Currency>,
    pub customer_id: String,
    /// The invoice it was applied to, if any.
    pub invoice_id: Option<String>,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// The part applied to the invoice; the rest became customer credit.
    #[serde(with = "rust_decimal::serde::str")]
    pub applied: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub refunded: Decimal,
    pub refund_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProviderPaymentCommand {
    Receive {
        provider: String,
        payment_id: String,
        currency: Currency,
        customer_id: String,
        invoice_id: Option<String>,
        amount: Decimal,
        applied: Decimal,
        at: DateTime<Utc>,
    },
    /// At most what was received and not refunded; a repeated refund id is a no-op.
    Refund {
        refund_id: String,
        amount: Decimal,
        at: DateTime<Utc>,
    },
}

impl ProviderPaymentCommand {
    pub fn name(&self) -> &'static str {
        match self {
            ProviderPaymentCommand::Receive { .. } => "receive",
            ProviderPaymentCommand::Refund { .. } => "refund",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProviderPaymentEvent {
    ProviderPaymentReceived {
        provider: String,
        payment_id: String,
        reference: String,
        currency: Currency,
        customer_id: String,
        invoice_id: Option<String>,
        #[serde(with = "rust_decimal::serde::str")]
        amount: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        applied: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        credited: Decimal,
        received_at: DateTime<Utc>,
    },
    ProviderPaymentRefunded {
        payment_id: String,
        refund_id: String,
        currency: Currency,
        customer_id: String,
        invoice_id: Option<String>,
        #[serde(with = "rust_decimal::serde::str")]
        amount: Decimal,
        /// What is refunded of the payment after it.
        #[serde(with = "rust_decimal::serde::str")]
        refunded: Decimal,
        refunded_at: DateTime<Utc>,
    },
}

impl ProviderPaymentEvent {
    pub fn name(&self) -> &'static str {
        match self {
            ProviderPaymentEvent::ProviderPaymentReceived { .. } => "ProviderPaymentReceived",
            ProviderPaymentEvent::ProviderPaymentRefunded { .. } => "ProviderPaymentRefunded",
        }
    }
}

/// `<provider>:<payment id>`, the reference a provider's payment carries.
pub fn payment_reference(provider: &str, payment_id: &str) -> String {
    format!("{provider}:{payment_id}")
}

impl ProviderPayment {
    pub fn decide(
        &self,
        command: ProviderPaymentCommand,
    ) -> Result<Vec<ProviderPaymentEvent>, DomainError> {
        use ProviderPaymentCommand as C;
        match (self.currency, command) {
            (
                None,
                C::Receive {
                    provider,
                    payment_id,
                    currency,
                    customer_id,
                    invoice_id,
                    amount,
                    applied,
                    at,
                },
            ) => {
                validate_id("provider", &provider)?;
                validate_id("payment_id", &payment_id)?;
                validate_id("customer_id", &customer_id)?;
                if amount <= Decimal::ZERO || amount > MAX_AMOUNT {
                    return Err(DomainError::validation(
                        "amount",
                        format!("must be greater than 0 and at most {MAX_AMOUNT}"),
                    ));
                }
                if applied < Decimal::ZERO || applied > amount {
                    return Err(DomainError::validation(
                        "amount",
                        "the applied part must be within the amount",
                    ));
                }
                let amount = round_to_minor(amount, currency);
                let applied = round_to_minor(applied, currency);
                Ok(vec![ProviderPaymentEvent::ProviderPaymentReceived {
                    reference: payment_reference(&provider, &payment_id),
                    provider,
                    payment_id,
                    currency,
                    customer_id,
                    invoice_id,
                    credited: round_to_minor(amount - applied, currency),
                    amount,
                    applied,
                    received_at: at,
                }])
            }
            // Another notification of a payment already received.
            (Some(_), C::Receive { .. }) => Ok(vec![]),
            (None, C::Refund { .. }) => Err(DomainError::NotFound(AggregateKind::ProviderPayment)),
            (
                Some(currency),
                C::Refund {
                    refund_id,
                    amount,
                    at,
                },
            ) => {
                validate_id("refund_id", &refund_id)?;
                if self.refund_ids.contains(&refund_id) {
                    return Ok(vec![]);
                }
                if amount <= Decimal::ZERO || amount.normalize().scale() > currency.minor_units() {
                    return Err(DomainError::validation(
                        "amount",
                        format!(
                            "must be greater than 0 with at most {} decimal places",
                            currency.minor_units()
                        ),
                    ));
                }
                let left = round_to_minor(self.amount - self.refunded, currency);
                if amount > left {
                    return Err(DomainError::validation(
                        "amount",
                        format!("at most {left} of the payment is left to refund"),
                    ));
                }
                Ok(vec![ProviderPaymentEvent::ProviderPaymentRefunded {
                    payment_id: self.payment_id.clone(),
                    refund_id,
                    currency,
                    customer_id: self.customer_id.clone(),
                    invoice_id: self.invoice_id.clone(),
                    amount: round_to_minor(amount, currency),
                    refunded: round_to_minor(self.refunded + amount, currency),
                    refunded_at: at,
                }])
            }
        }
    }

    pub fn evolve(&mut self, event: &ProviderPaymentEvent) {
        match event {
            ProviderPaymentEvent::ProviderPaymentReceived {
                provider,
                payment_id,
                reference,
                currency,
                customer_id,
                invoice_id,
                amount,
                applied,
                ..
            } => {
                assert!(self.currency.is_none(), "ProviderPaymentReceived twice");
                self.provider = provider.clone();
                self.payment_id = payment_id.clone();
                self.reference = reference.clone();
                self.currency = Some(*currency);
                self.customer_id = customer_id.clone();
                self.invoice_id = invoice_id.clone();
                self.amount = *amount;
                self.applied = *applied;
                self.refunded = round_to_minor(Decimal::ZERO, *currency);
            }
            ProviderPaymentEvent::ProviderPaymentRefunded {
                refund_id,
                refunded,
                ..
            } => {
                assert!(self.currency.is_some(), "a refund of no payment");
                self.refund_ids.push(refund_id.clone());
                self.refunded = *refunded;
            }
        }
    }
}

crate::cqrs_adapter!(
    ProviderPayment,
    ProviderPayment,
    ProviderPaymentCommand,
    ProviderPaymentEvent
);

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    fn receive(amount: &str, applied: &str) -> ProviderPaymentCommand {
        ProviderPaymentCommand::Receive {
            provider: "stripe".into(),
            payment_id: "pi_1".into(),
            currency: eur(),
            customer_id: "cus_1".into(),
            invoice_id: Some("inv_1".into()),
            amount: amount.parse().unwrap(),
            applied: applied.parse().unwrap(),
            at: at(),
        }
    }

    fn refund(id: &str, amount: &str) -> ProviderPaymentCommand {
        ProviderPaymentCommand::Refund {
            refund_id: id.into(),
            amount: amount.parse().unwrap(),
            at: at(),
        }
    }

    fn run(p: &mut ProviderPayment, c: ProviderPaymentCommand) -> Result<usize, DomainError> {
        let events = p.decide(c)?;
        events.iter().for_each(|e| p.evolve(e));
        Ok(events.len())
    }

    #[test]
    fn every_state_and_command_pair_is_decided() {
        // Never received: a refund is of an unknown payment.
        let mut p = ProviderPayment::default();
        assert!(matches!(
            p.decide(refund("re_1", "1.00")),
            Err(DomainError::NotFound(AggregateKind::ProviderPayment))
        ));
        assert_eq!(run(&mut p, receive("30.00", "25.00")).unwrap(), 1);
        assert_eq!(p.reference, "stripe:pi_1");
        // Received: another notice of it changes nothing.
        assert_eq!(run(&mut p, receive("30.00", "25.00")).unwrap(), 0);
        // Refunds up to what was received, each refund id once.
        assert_eq!(run(&mut p, refund("re_1", "20.00")).unwrap(), 1);
        assert_eq!(run(&mut p, refund("re_1", "20.00")).unwrap(), 0);
        assert!(matches!(
            p.decide(refund("re_2", "10.01")),
            Err(DomainError::Validation { .. })
        ));
        assert_eq!(run(&mut p, refund("re_2", "10.00")).unwrap(), 1);
        assert_eq!(p.refunded.to_string(), "30.00");
    }

    #[test]
    fn a_notice_is_recorded_once() {
        let record = || InboundNoticeCommand::Record {
            provider: "polar".into(),
            provider_event_id: "msg_1".into(),
            event_type: "order.paid".into(),
            outcome: "applied".into(),
            payment_reference: Some("polar:ord_1".into()),
            raw_payload: "{}".into(),
            signature_header: "v1,abc".into(),
            at: at(),
        };
        let mut n = InboundNotice::default();
        let events = n.decide(record()).unwrap();
        assert_eq!(events.len(), 1);
        events.iter().for_each(|e| n.evolve(e));
        assert_eq!(n.decide(record()).unwrap(), vec![]);
    }
}
