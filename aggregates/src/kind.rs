//! [`AggregateKind`]: the aggregate types of the event log, by name.
//!
//! The stored `aggregate_type` of every event is one of these strings, and
//! each aggregate's `cqrs_es::Aggregate::TYPE` is defined from its kind by
//! [`cqrs_adapter!`](crate::cqrs_adapter), so the two cannot drift. Code that
//! branches on a stored event's type parses it into a kind and matches on
//! that; code that needs the string (an SQL bind) uses [`AggregateKind::as_str`].
//! The strings are stored forever: renaming one is a migration, not an edit.

use std::fmt;

/// One aggregate type of the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AggregateKind {
    Plan,
    Subscription,
    Customer,
    Coupon,
    TaxRate,
    Invoice,
    UsageRecord,
    Ticket,
    Inbox,
    /// The tenant's billing ledger: invoice and credit note numbers, customer credit.
    InvoiceNumbering,
    /// An API key (`AccessKey`), stored as `api_key`.
    AccessKey,
    /// What a payment provider said (raw payload and signature header kept).
    InboundNotice,
    /// A payment or refund a provider reported.
    ProviderPayment,
}

impl AggregateKind {
    /// Every kind, in the order the operator CLI lists them.
    pub const ALL: [AggregateKind; 13] = [
        AggregateKind::Plan,
        AggregateKind::Subscription,
        AggregateKind::Customer,
        AggregateKind::Coupon,
        AggregateKind::TaxRate,
        AggregateKind::Invoice,
        AggregateKind::UsageRecord,
        AggregateKind::Ticket,
        AggregateKind::Inbox,
        AggregateKind::InvoiceNumbering,
        AggregateKind::AccessKey,
        AggregateKind::InboundNotice,
        AggregateKind::ProviderPayment,
    ];

    /// The stored `aggregate_type` (also the audit stream type).
    pub const fn as_str(self) -> &'static str {
        match self {
            AggregateKind::Plan => "plan",
            AggregateKind::Subscription => "subscription",
            AggregateKind::Customer => "customer",
            AggregateKind::Coupon => "coupon",
            AggregateKind::TaxRate => "tax_rate",
            AggregateKind::Invoice => "invoice",
            AggregateKind::UsageRecord => "usage_record",
            AggregateKind::Ticket => "ticket",
            AggregateKind::Inbox => "inbox",
            AggregateKind::InvoiceNumbering => "invoice_numbering",
            AggregateKind::AccessKey => "api_key",
            AggregateKind::InboundNotice => "inbound_notice",
            AggregateKind::ProviderPayment => "provider_payment",
        }
    }

    /// The kind in prose, as domain errors name it ("tax rate already
    /// exists"): the stored string except where the words read differently.
    pub const fn noun(self) -> &'static str {
        match self {
            AggregateKind::TaxRate => "tax rate",
            AggregateKind::ProviderPayment => "payment",
            other => other.as_str(),
        }
    }

    /// The kind of a stored `aggregate_type`; `None` for any other string.
    pub fn parse(s: &str) -> Option<AggregateKind> {
        Some(match s {
            "plan" => AggregateKind::Plan,
            "subscription" => AggregateKind::Subscription,
            "customer" => AggregateKind::Customer,
            "coupon" => AggregateKind::Coupon,
            "tax_rate" => AggregateKind::TaxRate,
            "invoice" => AggregateKind::Invoice,
            "usage_record" => AggregateKind::UsageRecord,
            "ticket" => AggregateKind::Ticket,
            "inbox" => AggregateKind::Inbox,
            "invoice_numbering" => AggregateKind::InvoiceNumbering,
            "api_key" => AggregateKind::AccessKey,
            "inbound_notice" => AggregateKind::InboundNotice,
            "provider_payment" => AggregateKind::ProviderPayment,
            _ => return None,
        })
    }
}

impl fmt::Display for AggregateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::AggregateKind;
    use cqrs_es::Aggregate;

    /// The strings in the log, written out: a change here is a change of
    /// storage format.
    #[test]
    fn stored_strings_are_fixed() {
        let strings: Vec<&str> = AggregateKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            strings,
            [
                "plan",
                "subscription",
                "customer",
                "coupon",
                "tax_rate",
                "invoice",
                "usage_record",
                "ticket",
                "inbox",
                "invoice_numbering",
                "api_key",
                "inbound_notice",
                "provider_payment",
            ]
        );
    }

    #[test]
    fn every_kind_round_trips() {
        for kind in AggregateKind::ALL {
            assert_eq!(AggregateKind::parse(kind.as_str()), Some(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        let mut sorted = AggregateKind::ALL.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            AggregateKind::ALL.len(),
            "a kind listed twice"
        );
    }

    /// The words domain errors use (`DomainError::AlreadyExists`'s message
    /// reaches clients as a 409's detail).
    #[test]
    fn nouns_are_fixed() {
        let nouns: Vec<&str> = AggregateKind::ALL.iter().map(|k| k.noun()).collect();
        assert_eq!(
            nouns,
            [
                "plan",
                "subscription",
                "customer",
                "coupon",
                "tax rate",
                "invoice",
                "usage_record",
                "ticket",
                "inbox",
                "invoice_numbering",
                "api_key",
                "inbound_notice",
                "payment",
            ]
        );
    }

    #[test]
    fn unknown_strings_are_no_kind() {
        for s in [
            "",
            "Plan",
            "usage",
            "usage_records",
            "apikey",
            " plan",
            "invoice_numbers",
        ] {
            assert_eq!(AggregateKind::parse(s), None, "{s:?}");
        }
    }

    /// Each aggregate's `TYPE` is its kind's string (by construction in
    /// `cqrs_adapter!`; this names them one by one).
    #[test]
    fn every_aggregate_type_is_its_kind() {
        use crate::*;
        let types = [
            (Plan::TYPE, AggregateKind::Plan),
            (Subscription::TYPE, AggregateKind::Subscription),
            (Customer::TYPE, AggregateKind::Customer),
            (Coupon::TYPE, AggregateKind::Coupon),
            (TaxRate::TYPE, AggregateKind::TaxRate),
            (Invoice::TYPE, AggregateKind::Invoice),
            (UsageRecord::TYPE, AggregateKind::UsageRecord),
            (Ticket::TYPE, AggregateKind::Ticket),
            (Inbox::TYPE, AggregateKind::Inbox),
            (InvoiceNumbering::TYPE, AggregateKind::InvoiceNumbering),
            (AccessKey::TYPE, AggregateKind::AccessKey),
            (InboundNotice::TYPE, AggregateKind::InboundNotice),
            (ProviderPayment::TYPE, AggregateKind::ProviderPayment),
        ];
        assert_eq!(types.len(), AggregateKind::ALL.len());
        for (t, kind) in types {
            assert_eq!(t, kind.as_str());
            assert_eq!(AggregateKind::parse(t), Some(kind));
        }
    }
}
