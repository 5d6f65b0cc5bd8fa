//! Given events / when command / then events or error for the `TaxRate`
//! aggregate (every (status, command) pair, every term's validation), and
//! the tax of an invoice at issue: exclusive and inclusive rates rounded per
//! line and rate half away from zero, the precedence line → subscription →
//! plan → customer, a discount lowering the tax, and the totals
//! (`total = subtotal − discount + exclusive tax`).

mod support;

use std::collections::BTreeMap;

use support::*;
use tally_aggregates::tax::{tax_amount, validate_rate_ids, MAX_RATES};
use tally_aggregates::AggregateKind;
use tally_aggregates::{
    AppliedRate, DomainError, Invoice, InvoiceCommand, LineKind, NewLine, TaxRate, TaxRateCommand,
    TaxRateEvent, TaxRateStatus, TaxRateTerms, TaxSources,
};

fn vat() -> TaxRateTerms {
    TaxRateTerms {
        name: "VAT".to_owned(),
        percentage: dec("19"),
        inclusive: false,
        country: Some("DE".to_owned()),
    }
}

fn created() -> TaxRateEvent {
    TaxRateEvent::TaxRateCreated {
        tax_rate_id: "txr_vat".to_owned(),
        terms: vat(),
        created_at: t("2026-01-01T00:00:00Z"),
    }
}

fn rate_in(status: Option<TaxRateStatus>) -> TaxRate {
    let mut r = TaxRate::default();
    let events = match status {
        None => vec![],
        Some(TaxRateStatus::Active) => vec![created()],
        Some(TaxRateStatus::Archived) => vec![
            created(),
            TaxRateEvent::TaxRateArchived {
                archived_at: t("2026-01-02T00:00:00Z"),
            },
        ],
    };
    for e in &events {
        r.evolve(e);
    }
    r
}

fn field_of(e: DomainError) -> String {
    match e {
        DomainError::Validation { field, .. } => field,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn every_status_and_command_is_decided_on_purpose() {
    let statuses = [
        None,
        Some(TaxRateStatus::Active),
        Some(TaxRateStatus::Archived),
    ];
    for status in statuses {
        let r = rate_in(status);
        let create = r.decide(TaxRateCommand::Create {
            tax_rate_id: "txr_vat".to_owned(),
            terms: vat(),
            at: t("2026-01-01T00:00:00Z"),
        });
        let archive = r.decide(TaxRateCommand::Archive {
            at: t("2026-01-03T00:00:00Z"),
        });
        match status {
            None => {
                assert_eq!(create.unwrap(), vec![created()]);
                assert_eq!(archive, Err(DomainError::NotFound(AggregateKind::TaxRate)));
            }
            Some(TaxRateStatus::Active) => {
                assert_eq!(
                    create,
                    Err(DomainError::AlreadyExists(AggregateKind::TaxRate))
                );
                assert_eq!(
                    archive.unwrap(),
                    vec![TaxRateEvent::TaxRateArchived {
                        archived_at: t("2026-01-03T00:00:00Z")
                    }]
                );
            }
            Some(TaxRateStatus::Archived) => {
                assert_eq!(
                    create,
                    Err(DomainError::AlreadyExists(AggregateKind::TaxRate))
                );
                assert_eq!(
                    archive,
                    Err(DomainError::InvalidTransition {
                        aggregate: AggregateKind::TaxRate,
                        from: "archived".to_owned(),
                        command: "archive",
                    })
                );
            }
        }
    }
    // An archived rate still applies where it is attached.
    let archived = rate_in(Some(TaxRateStatus::Archived));
    assert_eq!(archived.applied().unwrap().percentage, dec("19"));
    assert_eq!(rate_in(None).applied(), None);
}

#[test]
fn every_term_is_checked_and_named() {
    let cases: Vec<(&str, TaxRateTerms)> = vec![
        (
            "name",
            TaxRateTerms {
                name: " ".into(),
                ..vat()
            },
        ),
        (
            "name",
            TaxRateTerms {
                name: "x".repeat(101),
                ..vat()
            },
        ),
        (
            "percentage",
            TaxRateTerms {
                percentage: dec("-1"),
                ..vat()
            },
        ),
        (
            "percentage",
            TaxRateTerms {
                percentage: dec("100.0001"),
                ..vat()
            },
        ),
        (
            "percentage",
            TaxRateTerms {
                percentage: dec("7.12345"),
                ..vat()
            },
        ),
        (
            "country",
            TaxRateTerms {
                country: Some("de".into()),
                ..vat()
            },
        ),
        (
            "country",
            TaxRateTerms {
                country: Some("DEU".into()),
                ..vat()
            },
        ),
    ];
    for (field, terms) in cases {
        let err = rate_in(None)
            .decide(TaxRateCommand::Create {
                tax_rate_id: "txr_x".into(),
                terms: terms.clone(),
                at: t("2026-01-01T00:00:00Z"),
            })
            .unwrap_err();
        assert_eq!(field_of(err), field, "{terms:?}");
    }
    for percentage in ["0", "100", "7.7", "0.0001"] {
        let terms = TaxRateTerms {
            percentage: dec(percentage),
            country: None,
            ..vat()
        };
        assert!(terms.validate().is_ok(), "{percentage}");
    }
}

#[test]
fn rate_id_lists_are_checked() {
    assert!(validate_rate_ids("tax_rate_ids", &["txr_a".into(), "txr_b".into()]).is_ok());
    let field = |ids: Vec<String>| field_of(validate_rate_ids("tax_rate_ids", &ids).unwrap_err());
    assert_eq!(field(vec!["vat".into()]), "tax_rate_ids[0]");
    assert_eq!(
        field(vec!["txr_a".into(), "txr_a".into()]),
        "tax_rate_ids[1]"
    );
    assert_eq!(
        field((0..=MAX_RATES).map(|i| format!("txr_{i}")).collect()),
        "tax_rate_ids"
    );
}

fn rate(id: &str, percentage: &str, inclusive: bool) -> AppliedRate {
    AppliedRate {
        tax_rate_id: id.to_owned(),
        percentage: dec(percentage),
        inclusive,
    }
}

#[test]
fn exclusive_and_inclusive_tax_round_half_away_from_zero() {
    // 10.05 × 19% = 1.9095 → 1.91
    assert_eq!(
        tax_amount(dec("10.05"), &rate("a", "19", false), eur()),
        dec("1.91")
    );
    // 0.50 × 5% = 0.025 → 0.03; negative −0.025 → −0.03
    assert_eq!(
        tax_amount(dec("0.50"), &rate("a", "5", false), eur()),
        dec("0.03")
    );
    assert_eq!(
        tax_amount(dec("-0.50"), &rate("a", "5", false), eur()),
        dec("-0.03")
    );
    // Inclusive: 119.00 holds 19.00 of 19% VAT; 10.00 holds 10 − 10/1.19 = 1.5966… → 1.60
    assert_eq!(
        tax_amount(dec("119.00"), &rate("a", "19", true), eur()),
        dec("19.00")
    );
    assert_eq!(
        tax_amount(dec("10.00"), &rate("a", "19", true), eur()),
        dec("1.60")
    );
    // JPY: 999 × 10% = 99.9 → 100
    assert_eq!(
        tax_amount(dec("999"), &rate("a", "10", false), jpy()),
        dec("100")
    );
    assert_eq!(
        tax_amount(dec("12.34"), &rate("a", "0", false), eur()),
        dec("0.00")
    );
}

fn sources() -> TaxSources {
    TaxSources {
        subscription: vec![],
        plan: vec!["txr_plan".into()],
        customer: vec!["txr_cust".into()],
        rates: BTreeMap::from([
            ("txr_line".into(), rate("txr_line", "7", false)),
            ("txr_sub".into(), rate("txr_sub", "10", false)),
            ("txr_plan".into(), rate("txr_plan", "19", false)),
            ("txr_cust".into(), rate("txr_cust", "20", true)),
            ("txr_extra".into(), rate("txr_extra", "1.5", false)),
        ]),
    }
}

#[test]
fn precedence_is_line_then_subscription_then_plan_then_customer() {
    let mut s = sources();
    let own = vec!["txr_line".to_owned()];
    assert_eq!(s.rates_for(&own), own.as_slice());
    assert_eq!(s.rates_for(&[]), ["txr_plan".to_owned()]);
    s.subscription = vec!["txr_sub".into()];
    assert_eq!(s.rates_for(&[]), ["txr_sub".to_owned()]);
    s.subscription.clear();
    s.plan.clear();
    assert_eq!(s.rates_for(&[]), ["txr_cust".to_owned()]);
    s.customer.clear();
    assert!(s.rates_for(&[]).is_empty());
    // A rate never created takes nothing.
    let unknown = vec!["txr_gone".to_owned()];
    assert!(s.line_taxes(&unknown, dec("10.00"), eur()).is_empty());
}

fn line(kind: LineKind, unit_price: &str, own: &[&str]) -> NewLine {
    NewLine {
        description: format!("{kind:?}"),
        quantity: dec("1"),
        unit_price: dec(unit_price),
        kind,
        period: None,
        tax_rate_ids: own.iter().map(|s| s.to_string()).collect(),
    }
}

fn issued(lines: Vec<NewLine>, taxes: TaxSources) -> Invoice {
    let mut invoice = Invoice::default();
    let mut events = invoice
        .decide(InvoiceCommand::Create {
            invoice_id: "inv_1".into(),
            customer_id: "cus_1".into(),
            currency: eur(),
            subscription_id: Some("sub_1".into()),
            billing_period: None,
            due_days: None,
            lines,
            at: t("2026-01-05T00:00:00Z"),
        })
        .unwrap();
    for e in &events {
        invoice.evolve(e);
    }
    events = invoice
        .decide(InvoiceCommand::Issue {
            number: 1,
            customer: None,
            available_credit: dec("0"),
            taxes: Box::new(taxes),
            at: t("2026-01-05T00:00:00Z"),
        })
        .unwrap();
    for e in &events {
        invoice.evolve(e);
    }
    invoice
}

#[test]
fn issue_fixes_tax_per_line_and_rate_and_the_totals() {
    let invoice = issued(
        vec![
            // The plan's 19% exclusive: 10.05 → 1.91.
            line(LineKind::Recurring, "10.05", &[]),
            // Its own two rates: 7% → 0.35, 1.5% → 0.075 → 0.08.
            line(LineKind::Manual, "5.00", &["txr_line", "txr_extra"]),
            // The customer's inclusive rate on its own line: 12.00 holds 2.00.
            line(LineKind::Manual, "12.00", &["txr_cust"]),
        ],
        sources(),
    );
    let taxes: Vec<Vec<(String, rust_decimal::Decimal)>> = invoice
        .lines
        .iter()
        .map(|l| {
            l.tax_amounts
                .iter()
                .map(|t| (t.tax_rate_id.clone(), t.amount))
                .collect()
        })
        .collect();
    assert_eq!(
        taxes,
        vec![
            vec![("txr_plan".to_owned(), dec("1.91"))],
            vec![
                ("txr_line".to_owned(), dec("0.35")),
                ("txr_extra".to_owned(), dec("0.08"))
            ],
            vec![("txr_cust".to_owned(), dec("2.00"))],
        ]
    );
    assert_eq!(invoice.subtotal, dec("27.05"));
    assert_eq!(invoice.tax, dec("4.34"));
    // Exclusive tax is added; the inclusive 2.00 is already in the subtotal.
    assert_eq!(invoice.total, dec("29.39"));
    assert_eq!(invoice.amount_due, dec("29.39"));
}

#[test]
fn a_discount_lowers_the_tax_and_total_is_subtotal_minus_discount_plus_exclusive_tax() {
    let invoice = issued(
        vec![
            line(LineKind::Recurring, "100.00", &[]),
            line(LineKind::Discount, "-20.00", &[]),
        ],
        sources(),
    );
    // 19% of 100.00 and of −20.00.
    assert_eq!(invoice.lines[0].tax_amounts[0].amount, dec("19.00"));
    assert_eq!(invoice.lines[1].tax_amounts[0].amount, dec("-3.80"));
    assert_eq!(
        (
            invoice.subtotal,
            invoice.discount,
            invoice.tax,
            invoice.total
        ),
        (dec("100.00"), dec("20.00"), dec("15.20"), dec("95.20"))
    );
}

#[test]
fn without_rates_nothing_is_taxed_and_old_invoice_events_read_without_tax() {
    let invoice = issued(
        vec![line(LineKind::Manual, "10.00", &[])],
        TaxSources::default(),
    );
    assert!(invoice.lines[0].tax_amounts.is_empty());
    assert_eq!((invoice.tax, invoice.total), (dec("0.00"), dec("10.00")));
    let old = serde_json::json!({"InvoiceIssued": {
        "number": "INV-000001", "sequence": 1, "customer_id": "cus_1", "currency": "EUR",
        "subtotal": "10.00", "total": "10.00", "amount_due": "10.00",
        "issued_at": "2026-01-05T00:00:00Z", "due_at": "2026-02-04T00:00:00Z"}});
    let event: tally_aggregates::InvoiceEvent = serde_json::from_value(old).unwrap();
    match event {
        tally_aggregates::InvoiceEvent::InvoiceIssued {
            tax,
            line_taxes,
            discount,
            ..
        } => {
            assert!(tax.is_zero() && discount.is_zero() && line_taxes.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_line_names_at_most_ten_distinct_rates() {
    let mut invoice = Invoice::default();
    let err = invoice
        .decide(InvoiceCommand::Create {
            invoice_id: "inv_1".into(),
            customer_id: "cus_1".into(),
            currency: eur(),
            subscription_id: None,
            billing_period: None,
            due_days: None,
            lines: vec![line(LineKind::Manual, "1.00", &["txr_a", "txr_a"])],
            at: t("2026-01-05T00:00:00Z"),
        })
        .unwrap_err();
    assert_eq!(field_of(err), "lines[0].tax_rate_ids[1]");
    invoice = Invoice::default();
    assert!(invoice
        .decide(InvoiceCommand::Create {
            invoice_id: "inv_1".into(),
            customer_id: "cus_1".into(),
            currency: eur(),
            subscription_id: None,
            billing_period: None,
            due_days: None,
            lines: vec![line(LineKind::Manual, "1.00", &["txr_a"])],
            at: t("2026-01-05T00:00:00Z"),
        })
        .is_ok());
}
