//! Given events / when command / then events or error for the `Customer`
//! aggregate: every (status, command) pair, every field's validation, a
//! repeated put that changes nothing, and the copy of the details an
//! invoice takes when it is issued.

mod support;

use std::collections::BTreeMap;

use support::*;
use tally_aggregates::customer::MAX_TAX_RATES;
use tally_aggregates::{
    Address, Customer, CustomerCommand, CustomerDetails, CustomerEvent, CustomerStatus,
    DomainError, Invoice, InvoiceCommand, InvoiceEvent, LineKind, NewLine,
};

const PUT_AT: &str = "2026-01-05T09:00:00Z";
const LATER: &str = "2026-02-01T09:00:00Z";

fn details() -> CustomerDetails {
    CustomerDetails {
        name: "Ana Lima".to_owned(),
        email: Some("ana@example.com".to_owned()),
        currency: Some(eur()),
        address: Some(Address {
            line1: "Rua Augusta 1".to_owned(),
            line2: None,
            city: "Lisboa".to_owned(),
            postal_code: Some("1100-048".to_owned()),
            country: "PT".to_owned(),
        }),
        tax_rate_ids: vec!["txr_vat".to_owned()],
        metadata: BTreeMap::from([("crm".to_owned(), "42".to_owned())]),
    }
}

fn put(details: CustomerDetails, at: &str) -> CustomerCommand {
    CustomerCommand::Put {
        customer_id: "cus_42".to_owned(),
        details,
        at: t(at),
    }
}

fn created() -> CustomerEvent {
    CustomerEvent::CustomerCreated {
        customer_id: "cus_42".to_owned(),
        details: details(),
        created_at: t(PUT_AT),
    }
}

fn given(events: &[CustomerEvent]) -> Customer {
    let mut customer = Customer::default();
    for e in events {
        customer.evolve(e);
    }
    customer
}

#[test]
fn every_status_and_command_pair_is_decided_as_the_table_says() {
    let statuses = std::iter::once(None).chain(CustomerStatus::ALL.map(Some));
    let mut pairs = 0;
    for status in statuses {
        pairs += 1;
        let (history, want): (Vec<CustomerEvent>, &str) = match status {
            None => (vec![], "CustomerCreated"),
            Some(CustomerStatus::Active) => (vec![created()], "CustomerUpdated"),
        };
        let before = given(&history);
        assert_eq!(before.status, status);
        let mut changed = details();
        changed.name = "Ana L. Lima".to_owned();
        let events = before.decide(put(changed.clone(), LATER)).unwrap();
        let names: Vec<&str> = events.iter().map(|e| e.name()).collect();
        assert_eq!(names, [want], "{status:?}");
        let mut after = before.clone();
        for e in &events {
            after.evolve(e);
        }
        assert_eq!(after.status, Some(CustomerStatus::Active));
        assert_eq!(after.details, Some(changed));
    }
    assert_eq!(pairs, 2);
}

#[test]
fn a_first_put_creates_the_customer() {
    let events = Customer::default().decide(put(details(), PUT_AT)).unwrap();
    assert_eq!(events, vec![created()]);
    let customer = given(&events);
    assert_eq!(customer.id.as_deref(), Some("cus_42"));
    assert_eq!(customer.created_at, Some(t(PUT_AT)));
    assert_eq!(customer.updated_at, Some(t(PUT_AT)));
}

#[test]
fn a_later_put_replaces_every_field_and_the_same_details_change_nothing() {
    let customer = given(&[created()]);
    assert_eq!(customer.decide(put(details(), LATER)), Ok(vec![]));
    let cleared = CustomerDetails {
        name: "Ana Lima".to_owned(),
        email: None,
        currency: None,
        address: None,
        tax_rate_ids: vec![],
        metadata: BTreeMap::new(),
    };
    let events = customer.decide(put(cleared.clone(), LATER)).unwrap();
    assert_eq!(
        events,
        vec![CustomerEvent::CustomerUpdated {
            details: cleared.clone(),
            updated_at: t(LATER),
        }]
    );
    let mut after = customer.clone();
    after.evolve(&events[0]);
    assert_eq!(after.details, Some(cleared));
    assert_eq!(after.created_at, Some(t(PUT_AT)));
    assert_eq!(after.updated_at, Some(t(LATER)));
}

#[test]
fn every_bad_field_is_refused_by_name() {
    type Edit = fn(&mut CustomerDetails);
    let cases: Vec<(&str, Edit)> = vec![
        ("name", |d| d.name = "  ".to_owned()),
        ("name", |d| d.name = "n".repeat(201)),
        ("name", |d| d.name = "a\u{7}b".to_owned()),
        ("email", |d| d.email = Some("ana".to_owned())),
        ("email", |d| d.email = Some("ana@example".to_owned())),
        ("email", |d| d.email = Some("a b@example.com".to_owned())),
        ("email", |d| d.email = Some("a@b@example.com".to_owned())),
        ("email", |d| d.email = Some("".to_owned())),
        ("address.line1", |d| {
            d.address.as_mut().unwrap().line1 = String::new()
        }),
        ("address.city", |d| {
            d.address.as_mut().unwrap().city = "c".repeat(201)
        }),
        ("address.postal_code", |d| {
            d.address.as_mut().unwrap().postal_code = Some("1".repeat(21))
        }),
        ("address.country", |d| {
            d.address.as_mut().unwrap().country = "pt".to_owned()
        }),
        ("address.country", |d| {
            d.address.as_mut().unwrap().country = "PRT".to_owned()
        }),
        ("tax_rate_ids", |d| {
            d.tax_rate_ids = (0..=MAX_TAX_RATES).map(|i| format!("txr_{i}")).collect()
        }),
        ("tax_rate_ids[0]", |d| {
            d.tax_rate_ids = vec!["vat".to_owned()]
        }),
        ("metadata", |d| {
            d.metadata = (0..51).map(|i| (format!("k{i}"), String::new())).collect()
        }),
        ("metadata", |d| {
            d.metadata = BTreeMap::from([("k".repeat(41), String::new())])
        }),
        ("metadata.crm", |d| {
            d.metadata = BTreeMap::from([("crm".to_owned(), "v".repeat(501))])
        }),
    ];
    for (field, edit) in cases {
        let mut d = details();
        edit(&mut d);
        for before in [Customer::default(), given(&[created()])] {
            let err = before.decide(put(d.clone(), LATER)).unwrap_err();
            assert!(
                matches!(&err, DomainError::Validation { field: f, .. } if f == field),
                "{field}: {err:?}"
            );
        }
    }
    for bad_id in ["", " ", "a\u{0}b", &"c".repeat(129)] {
        let err = Customer::default()
            .decide(CustomerCommand::Put {
                customer_id: bad_id.to_owned(),
                details: details(),
                at: t(PUT_AT),
            })
            .unwrap_err();
        assert!(
            matches!(&err, DomainError::Validation { field, .. } if field == "customer_id"),
            "{bad_id:?}: {err:?}"
        );
    }
}

#[test]
fn events_read_with_the_fields_they_left_out() {
    let event: CustomerEvent = serde_json::from_value(serde_json::json!({
        "CustomerCreated": {"customer_id": "cus_1", "details": {"name": "Bo"},
                            "created_at": "2026-01-05T09:00:00Z"}
    }))
    .unwrap();
    let CustomerEvent::CustomerCreated { details, .. } = event else {
        panic!("{event:?}")
    };
    assert_eq!(details.email, None);
    assert!(details.tax_rate_ids.is_empty() && details.metadata.is_empty());
}

fn draft() -> Invoice {
    let mut invoice = Invoice::default();
    for e in invoice
        .decide(InvoiceCommand::Create {
            invoice_id: "inv_1".to_owned(),
            customer_id: "cus_42".to_owned(),
            currency: eur(),
            subscription_id: None,
            billing_period: None,
            due_days: None,
            lines: vec![NewLine {
                description: "Setup".to_owned(),
                quantity: dec("1"),
                unit_price: dec("50.00"),
                kind: LineKind::Manual,
                period: None,
                tax_rate_ids: vec![],
            }],
            at: t(PUT_AT),
        })
        .unwrap()
    {
        invoice.evolve(&e);
    }
    invoice
}

#[test]
fn an_invoice_keeps_the_details_it_was_issued_with() {
    let mut invoice = draft();
    let events = invoice
        .decide(InvoiceCommand::Issue {
            number: 1,
            customer: Some(details()),
            available_credit: rust_decimal::Decimal::ZERO,
            at: t(LATER),
            taxes: Default::default(),
        })
        .unwrap();
    assert!(matches!(
        &events[0],
        InvoiceEvent::InvoiceIssued { customer_details: Some(d), .. } if **d == details()
    ));
    for e in &events {
        invoice.evolve(e);
    }
    assert_eq!(invoice.customer_details, Some(details()));
    // Issued for a customer never put: no details, and none are written.
    let mut invoice = draft();
    let events = invoice
        .decide(InvoiceCommand::Issue {
            number: 2,
            customer: None,
            available_credit: rust_decimal::Decimal::ZERO,
            at: t(LATER),
            taxes: Default::default(),
        })
        .unwrap();
    let text = serde_json::to_string(&events[0]).unwrap();
    assert!(!text.contains("customer_details"), "{text}");
    for e in &events {
        invoice.evolve(e);
    }
    assert_eq!(invoice.customer_details, None);
}
