//! End-to-end tests of credit notes, customer credit and payments from
//! providers, each on SQLite and on PostgreSQL: credit notes on open and
//! paid invoices (gapless `CN-` numbers, never above the total, refunds),
//! the customer balance's `credited`, `refunded` and `credit`, credit carried
//! to the next renewal invoice, a balanced journal after every movement, and
//! read models equal to a rebuild.

use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tally_tests::{both_backends, Backend, Resp, TestApp};

both_backends!(
    credit_notes_on_open_and_paid_invoices,
    credit_carries_to_the_next_renewal_invoice,
);

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(
        v.as_str()
            .unwrap_or_else(|| panic!("decimal string: {v:?}")),
    )
    .expect("decimal")
}

/// An issued invoice of `amount` for `customer`.
async fn open_invoice(app: &TestApp, customer: &str, currency: &str, amount: &str) -> Resp {
    let r = app
        .post(
            &app.admin_key,
            "/v1/invoices",
            json!({"customer_id": customer, "currency": currency,
                   "lines": [{"description": "Service", "quantity": "1", "unit_price": amount}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.id();
    let r = app
        .post(
            &app.admin_key,
            &format!("/v1/invoices/{id}/issue"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r
}

async fn credit_note(app: &TestApp, invoice: &str, body: Value) -> Resp {
    app.post(
        &app.admin_key,
        &format!("/v1/invoices/{invoice}/credit-notes"),
        body,
    )
    .await
}

/// The customer's balance in `currency`, once the read model has `position`.
async fn balance(app: &TestApp, customer: &str, currency: &str) -> Value {
    app.settle().await;
    let r = app
        .get(&app.admin_key, &format!("/v1/customers/{customer}/balance"))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|b| b["currency"] == currency)
        .cloned()
        .unwrap_or_else(|| panic!("no {currency} balance: {:?}", r.body))
}

/// The tenant's journal: debits equal credits.
async fn assert_journal_balanced(app: &TestApp) {
    app.settle().await;
    let (debits, credits) = tally_projections::balances::journal_totals(&app.state().db, "default")
        .await
        .expect("journal totals");
    assert_eq!(debits, credits, "the journal does not balance");
}

async fn credit_notes_on_open_and_paid_invoices(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let inv = open_invoice(&app, "cus_cn", "EUR", "100.00").await.id();

    // On an open invoice a credit note lowers the amount due.
    let r = credit_note(
        &app,
        &inv,
        json!({"amount": "30.00", "reason": "order_change"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["amount_due"], "70.00");
    assert_eq!(r.body["amount_credited"], "30.00");
    assert_eq!(r.body["credit_notes"][0]["number"], "CN-000001");
    assert_eq!(r.body["credit_notes"][0]["to_amount_due"], "30.00");
    assert_journal_balanced(&app).await;

    // Paid in full, then a credit note becomes customer credit, a refund is
    // recorded as refunded.
    let r = app
        .post(
            &app.admin_key,
            &format!("/v1/invoices/{inv}/payments"),
            json!({"amount": "70.00", "reference": "wire-1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "paid");
    let r = credit_note(
        &app,
        &inv,
        json!({"amount": "20.00", "reason": "product_unsatisfactory"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["credit_notes"][1]["number"], "CN-000002");
    assert_eq!(r.body["credit_notes"][1]["to_credit"], "20.00");
    let r = credit_note(
        &app,
        &inv,
        json!({"amount": "10.00", "reason": "refund", "refund": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["credit_notes"][2]["number"], "CN-000003");
    assert_eq!(r.body["amount_refunded"], "10.00");
    assert_eq!(r.body["status"], "paid");

    // 60.00 credited of 100.00: 40.01 is one cent too many.
    let r = credit_note(
        &app,
        &inv,
        json!({"amount": "40.01", "reason": "duplicate"}),
    )
    .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "amount");
    // A refund beyond what was paid and not refunded (70.00 − 10.00).
    let r = credit_note(
        &app,
        &inv,
        json!({"amount": "60.01", "reason": "refund", "refund": true}),
    )
    .await;
    r.assert_problem(422, "validation_failed");
    // Bad input names the field, never a 500.
    for (body, field) in [
        (json!({"amount": "1.00", "reason": "because"}), "reason"),
        (json!({"amount": "one", "reason": "duplicate"}), "amount"),
        (json!({"amount": "-1.00", "reason": "duplicate"}), "amount"),
        (json!({"amount": "1.001", "reason": "duplicate"}), "amount"),
        (
            json!({"amount": "1.00", "reason": "duplicate", "refund": "yes"}),
            "refund",
        ),
    ] {
        let r = credit_note(&app, &inv, body.clone()).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], field, "{body}: {:?}", r.body);
    }
    // A draft takes no credit note.
    let r = app
        .post(
            &app.admin_key,
            "/v1/invoices",
            json!({"customer_id": "cus_cn", "currency": "EUR"}),
        )
        .await;
    let r = credit_note(
        &app,
        &r.id(),
        json!({"amount": "1.00", "reason": "duplicate"}),
    )
    .await;
    r.assert_problem(409, "invalid_transition");

    let b = balance(&app, "cus_cn", "EUR").await;
    assert_eq!(
        (
            &b["invoiced"],
            &b["paid"],
            &b["credited"],
            &b["refunded"],
            &b["credit"],
            &b["outstanding"]
        ),
        (
            &json!("100.00"),
            &json!("70.00"),
            &json!("60.00"),
            &json!("10.00"),
            &json!("20.00"),
            &json!("0.00")
        ),
        "{b}"
    );
    assert_journal_balanced(&app).await;

    // Concurrent credit notes on many invoices number without gaps.
    let mut invoices = Vec::new();
    for _ in 0..5 {
        invoices.push(open_invoice(&app, "cus_cn2", "EUR", "10.00").await.id());
    }
    let notes = futures::future::join_all(invoices.iter().flat_map(|inv| {
        (0..2).map(|_| credit_note(&app, inv, json!({"amount": "1.00", "reason": "duplicate"})))
    }))
    .await;
    let mut numbers: Vec<String> = Vec::new();
    for r in &notes {
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    app.settle().await;
    for inv in &invoices {
        let r = app
            .get(&app.admin_key, &format!("/v1/invoices/{inv}"))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        for n in r.body["credit_notes"].as_array().expect("credit notes") {
            numbers.push(n["number"].as_str().expect("number").to_owned());
        }
    }
    numbers.sort();
    let want: Vec<String> = (4..=13).map(|n| format!("CN-{n:06}")).collect();
    assert_eq!(numbers, want);
    app.assert_read_models_equal_rebuild().await;
}

async fn credit_carries_to_the_next_renewal_invoice(backend: Backend) {
    let start = t("2026-01-10T09:00:00Z");
    let app = TestApp::spawn_manual(backend, start).await;
    let plan = app.standard_plan().await;
    // 3 seats: 10.00 + 3 × 2.50 = 17.50 a month, invoiced in advance.
    let (sub, _) = app.active_subscription(&plan, 3).await;
    app.settle().await;
    let r = app
        .get(
            &app.admin_key,
            &format!("/v1/invoices?subscription_id={sub}"),
        )
        .await;
    let first = r.body["data"][0].clone();
    assert_eq!(first["total"], "17.50", "{first}");
    let first_id = first["id"].as_str().expect("id").to_owned();
    let r = app
        .post(
            &app.admin_key,
            &format!("/v1/invoices/{first_id}/payments"),
            json!({"amount": "17.50", "reference": "wire-1"}),
        )
        .await;
    assert_eq!(r.body["status"], "paid", "{:?}", r.body);
    let r = credit_note(
        &app,
        &first_id,
        json!({"amount": "5.00", "reason": "order_change"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(balance(&app, "cus_1", "EUR").await["credit"], "5.00");

    // The renewal a month later takes the credit.
    let r = app
        .advance_clock(
            &app.admin_key,
            json!({"to": (start + Duration::days(32)).to_rfc3339()}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.settle().await;
    let r = app
        .get(
            &app.admin_key,
            &format!("/v1/invoices?subscription_id={sub}"),
        )
        .await;
    let renewal = r.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|i| i["id"] != first_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no renewal invoice: {:?}", r.body));
    assert_eq!(renewal["total"], "17.50", "{renewal}");
    assert_eq!(renewal["applied_credit"], "5.00", "{renewal}");
    assert_eq!(renewal["amount_due"], "12.50", "{renewal}");
    assert_eq!(
        dec(&renewal["total"]) - dec(&renewal["applied_credit"]),
        dec(&renewal["amount_due"])
    );
    let b = balance(&app, "cus_1", "EUR").await;
    assert_eq!(b["credit"], "0.00", "{b}");
    assert_eq!(b["outstanding"], "12.50", "{b}");
    assert_journal_balanced(&app).await;

    // A credit larger than the next invoice leaves the rest for later and
    // settles that invoice at issue.
    let r = credit_note(
        &app,
        &first_id,
        json!({"amount": "12.50", "reason": "order_change"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let other = open_invoice(&app, "cus_1", "EUR", "10.00").await;
    assert_eq!(other.body["applied_credit"], "10.00", "{:?}", other.body);
    assert_eq!(other.body["status"], "paid");
    // Credit in EUR does not pay a JPY invoice.
    let yen = open_invoice(&app, "cus_1", "JPY", "1000").await;
    assert_eq!(yen.body["applied_credit"], "0");
    assert_eq!(balance(&app, "cus_1", "EUR").await["credit"], "2.50");
    assert_journal_balanced(&app).await;
    app.assert_read_models_equal_rebuild().await;
}
