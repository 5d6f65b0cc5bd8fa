//! End-to-end tests of invoices and customer balances over HTTP, each on
//! SQLite and on PostgreSQL: the manual lifecycle to the cent, every
//! rejection, gapless numbering under concurrent issues, idempotent
//! payments, rebuild equality of the invoice and balance read models, list
//! filters and pages, the OpenAPI document, and customers: PUT creates then
//! updates, the details an invoice copies when issued, bad input 422.

use std::collections::BTreeSet;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tally_tests::{both_backends, table_rows, Backend, Resp, TestApp};

both_backends!(
    manual_invoice_lifecycle,
    every_rejection,
    concurrent_issues_number_without_gaps,
    payments_are_idempotent,
    settling_payment_retried,
    invoice_rebuild_equals_incremental,
    invoice_lists_filter_and_page,
    openapi_lists_invoice_paths,
    customers_are_put_listed_and_copied_onto_issued_invoices,
    customer_input_is_validated_naming_the_field,
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

fn time_of(v: &Value) -> DateTime<Utc> {
    t(v.as_str().unwrap_or_else(|| panic!("time string: {v:?}")))
}

fn line(description: &str, quantity: &str, unit_price: &str) -> Value {
    json!({"description": description, "quantity": quantity, "unit_price": unit_price})
}

/// Creates a draft and asserts it was created.
async fn draft(app: &TestApp, key: &str, customer: &str, currency: &str, lines: Value) -> Resp {
    let r = app
        .post(
            key,
            "/v1/invoices",
            json!({"customer_id": customer, "currency": currency, "lines": lines}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["status"], "draft");
    r
}

async fn issue(app: &TestApp, key: &str, id: &str) -> Resp {
    app.post(key, &format!("/v1/invoices/{id}/issue"), json!({}))
        .await
}

/// A draft with these lines, issued; asserts it is open.
async fn open_invoice(
    app: &TestApp,
    key: &str,
    customer: &str,
    currency: &str,
    lines: Value,
) -> Resp {
    let id = draft(app, key, customer, currency, lines).await.id();
    let r = issue(app, key, &id).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "open");
    r
}

async fn pay(app: &TestApp, key: &str, id: &str, amount: &str, reference: &str) -> Resp {
    app.post(
        key,
        &format!("/v1/invoices/{id}/payments"),
        json!({"amount": amount, "reference": reference}),
    )
    .await
}

async fn void(app: &TestApp, key: &str, id: &str, reason: &str) -> Resp {
    app.post(
        key,
        &format!("/v1/invoices/{id}/void"),
        json!({"reason": reason}),
    )
    .await
}

async fn mark_uncollectible(app: &TestApp, key: &str, id: &str) -> Resp {
    app.post(
        key,
        &format!("/v1/invoices/{id}/mark-uncollectible"),
        json!({}),
    )
    .await
}

/// The customer's balance in `currency`, read after `position`.
async fn balance(app: &TestApp, key: &str, customer: &str, currency: &str, position: i64) -> Value {
    let r = app
        .get_after(key, &format!("/v1/customers/{customer}/balance"), position)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["customer_id"], customer);
    r.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|b| b["currency"] == currency)
        .unwrap_or_else(|| panic!("no {currency} balance: {:?}", r.body))
        .clone()
}

/// Asserts every figure of a balance, as exact strings.
fn assert_balance(b: &Value, figures: [&str; 6]) {
    let names = [
        "invoiced",
        "paid",
        "voided",
        "written_off",
        "credit",
        "outstanding",
    ];
    for (name, want) in names.iter().zip(figures) {
        assert_eq!(b[*name], want, "{name} of {b:#}");
    }
}

/// The customer's whole journal, page by page with `limit`.
async fn journal(app: &TestApp, key: &str, customer: &str, limit: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/customers/{customer}/journal?limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = app.get(key, &path).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let data = r.body["data"].as_array().expect("entries");
        // Both legs of an entry are on one page.
        let events: BTreeSet<&str> = data
            .iter()
            .map(|e| e["event_id"].as_str().expect("event_id"))
            .collect();
        assert_eq!(data.len(), events.len() * 2, "whole entries per page");
        assert!(events.len() <= limit as usize, "{:?}", r.body);
        out.extend(data.iter().cloned());
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Debits equal credits overall and per entry.
fn assert_balanced(entries: &[Value]) {
    let debits: Decimal = entries.iter().map(|e| dec(&e["debit"])).sum();
    let credits: Decimal = entries.iter().map(|e| dec(&e["credit"])).sum();
    assert_eq!(debits, credits, "debits equal credits: {entries:#?}");
    for pair in entries.chunks(2) {
        assert_eq!(pair.len(), 2);
        assert_eq!(pair[0]["event_id"], pair[1]["event_id"]);
        assert_eq!(pair[0]["position"], pair[1]["position"]);
        assert_eq!(dec(&pair[0]["debit"]), dec(&pair[1]["credit"]));
        assert!(dec(&pair[0]["credit"]).is_zero());
        assert!(dec(&pair[1]["debit"]).is_zero());
    }
}

/// (invoice id, account, debit, credit) of each journal row.
fn postings(entries: &[Value]) -> Vec<(String, String, Decimal, Decimal)> {
    entries
        .iter()
        .map(|e| {
            (
                e["invoice_id"].as_str().expect("invoice_id").to_string(),
                e["account"].as_str().expect("account").to_string(),
                dec(&e["debit"]),
                dec(&e["credit"]),
            )
        })
        .collect()
}

fn posting(
    id: &str,
    account: &str,
    debit: &str,
    credit: &str,
) -> (String, String, Decimal, Decimal) {
    (
        id.to_string(),
        account.to_string(),
        Decimal::from_str(debit).expect("debit"),
        Decimal::from_str(credit).expect("credit"),
    )
}

/// `GET /v1/invoices{query}` once the read models reached `position`.
async fn list_after(app: &TestApp, key: &str, query: &str, position: i64) -> Resp {
    let path = format!("/v1/invoices{query}");
    let r = app.get_after(key, &path, position).await;
    assert_eq!(r.status, 200, "{path}: {:?}", r.body);
    r
}

fn ids_of(r: &Resp) -> Vec<String> {
    r.body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("data: {:?}", r.body))
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_string())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn manual_invoice_lifecycle(backend: Backend) {
    let app = TestApp::spawn_manual(backend, t("2026-03-01T09:00:00Z")).await;
    let key = &app.admin_key;
    let created = app
        .post(
            key,
            "/v1/invoices",
            json!({
                "customer_id": "cus_life",
                "currency": "EUR",
                "due_days": 14,
                "lines": [
                    line("Consulting", "3", "0.3333"),
                    {"description": "Seats", "quantity": 2, "unit_price": "12.50", "kind": "recurring"}
                ]
            }),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.id();
    assert!(id.starts_with("inv_"), "{id}");
    let b = &created.body;
    assert_eq!(b["status"], "draft");
    assert_eq!(b["customer_id"], "cus_life");
    assert_eq!(b["currency"], "EUR");
    assert_eq!(b["subscription_id"], Value::Null);
    assert_eq!(b["number"], Value::Null);
    assert_eq!(b["issued_at"], Value::Null);
    assert_eq!(b["due_at"], Value::Null);
    assert_eq!(b["due_days"], 14);
    assert_eq!(b["created_at"], "2026-03-01T09:00:00Z");
    // Created plus one event per line.
    assert_eq!(b["version"], 3);
    assert_eq!(created.header("etag"), Some("\"3\""));
    let lines = b["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 2);
    // 3 × 0.3333 = 0.9999 → 1.00 to the cent.
    assert_eq!(lines[0]["number"], 1);
    assert_eq!(lines[0]["quantity"], "3");
    assert_eq!(lines[0]["unit_price"], "0.3333");
    assert_eq!(lines[0]["kind"], "manual");
    assert_eq!(lines[0]["amount"], "1.00");
    assert_eq!(lines[1]["kind"], "recurring");
    assert_eq!(lines[1]["amount"], "25.00");
    assert_eq!(b["subtotal"], "26.00");

    // A discount: −5.125 rounds half away from zero to −5.13.
    let path = format!("/v1/invoices/{id}/lines");
    let r = app
        .post(key, &path, line("Loyalty discount", "1", "-5.125"))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["version"], 4);
    assert_eq!(r.header("etag"), Some("\"4\""));
    assert_eq!(r.body["lines"][2]["number"], 3);
    assert_eq!(r.body["lines"][2]["unit_price"], "-5.125");
    assert_eq!(r.body["lines"][2]["amount"], "-5.13");
    // 0.5 × 19.99 = 9.995 → 10.00.
    let r = app
        .post(
            key,
            &path,
            json!({"description": "Half a day", "quantity": "0.5", "unit_price": "19.99", "kind": "usage"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["lines"][3]["amount"], "10.00");
    assert_eq!(r.body["lines"][3]["kind"], "usage");
    assert_eq!(r.body["version"], 5);
    assert_eq!(r.body["status"], "draft");

    // A stale If-Match refuses the issue and takes no number.
    let stale = app
        .post_with(
            key,
            &format!("/v1/invoices/{id}/issue"),
            json!({}),
            &[("if-match", "\"4\"".to_string())],
        )
        .await;
    stale.assert_problem(412, "version_mismatch");
    let issued = app
        .post_with(
            key,
            &format!("/v1/invoices/{id}/issue"),
            json!({}),
            &[("if-match", "\"5\"".to_string())],
        )
        .await;
    assert_eq!(issued.status, 200, "{:?}", issued.body);
    let b = &issued.body;
    assert_eq!(b["status"], "open");
    assert_eq!(b["number"], "INV-000001");
    assert_eq!(b["version"], 6);
    assert_eq!(issued.header("etag"), Some("\"6\""));
    assert_eq!(b["issued_at"], "2026-03-01T09:00:00Z");
    assert_eq!(
        time_of(&b["due_at"]),
        time_of(&b["issued_at"]) + Duration::days(14)
    );
    let amounts: Vec<Decimal> = b["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| dec(&l["amount"]))
        .collect();
    assert_eq!(amounts.len(), 4);
    assert_eq!(
        amounts.iter().copied().sum::<Decimal>(),
        dec(&b["total"]),
        "total = sum of the line amounts"
    );
    assert_eq!(b["total"], "30.87");
    assert_eq!(b["subtotal"], "30.87");
    assert_eq!(b["amount_due"], "30.87");
    assert_eq!(b["amount_paid"], "0.00");
    assert_eq!(b["payments"], json!([]));
    // The read model shows what the command answered.
    let got = app
        .get_after(key, &format!("/v1/invoices/{id}"), issued.position())
        .await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(got.body, issued.body);
    assert_eq!(got.header("etag"), Some("\"6\""));
    let bal = balance(&app, key, "cus_life", "EUR", issued.position()).await;
    assert_balance(&bal, ["30.87", "0.00", "0.00", "0.00", "0.00", "30.87"]);

    // A partial payment lowers the amount due.
    let part = pay(&app, key, &id, "10.00", "wire-1").await;
    assert_eq!(part.status, 200, "{:?}", part.body);
    assert_eq!(part.body["status"], "open");
    assert_eq!(part.body["amount_paid"], "10.00");
    assert_eq!(part.body["amount_due"], "20.87");
    assert_eq!(part.body["version"], 7);
    let payments = part.body["payments"].as_array().expect("payments");
    assert_eq!(payments.len(), 1);
    assert!(payments[0]["id"].as_str().expect("id").starts_with("pay_"));
    assert_eq!(payments[0]["amount"], "10.00");
    assert_eq!(payments[0]["reference"], "wire-1");
    assert_eq!(payments[0]["captured_at"], "2026-03-01T09:00:00Z");
    let bal = balance(&app, key, "cus_life", "EUR", part.position()).await;
    assert_balance(&bal, ["30.87", "10.00", "0.00", "0.00", "0.00", "20.87"]);

    // More than due: refused, naming the amount; nothing changes.
    let over = pay(&app, key, &id, "20.88", "wire-2").await;
    over.assert_problem(422, "validation_failed");
    assert_eq!(over.body["errors"][0]["field"], "amount", "{:?}", over.body);
    // More places than the currency has.
    let fine = pay(&app, key, &id, "1.001", "wire-2").await;
    fine.assert_problem(422, "validation_failed");
    assert_eq!(fine.body["errors"][0]["field"], "amount", "{:?}", fine.body);

    // The rest, captured the day before: paid.
    let full = app
        .post(
            key,
            &format!("/v1/invoices/{id}/payments"),
            json!({"amount": "20.87", "reference": "wire-2", "captured_at": "2026-02-28T12:00:00Z"}),
        )
        .await;
    assert_eq!(full.status, 200, "{:?}", full.body);
    assert_eq!(full.body["status"], "paid");
    assert_eq!(full.body["amount_due"], "0.00");
    assert_eq!(full.body["amount_paid"], "30.87");
    assert_eq!(full.body["total"], "30.87");
    assert_eq!(full.body["paid_at"], "2026-03-01T09:00:00Z");
    assert_eq!(
        full.body["payments"][1]["captured_at"],
        "2026-02-28T12:00:00Z"
    );
    assert_eq!(
        full.body["payments"][1]["recorded_at"],
        "2026-03-01T09:00:00Z"
    );
    // Payment recorded, then paid.
    assert_eq!(full.body["version"], 9);
    let got = app
        .get_after(key, &format!("/v1/invoices/{id}"), full.position())
        .await;
    assert_eq!(got.body, full.body);

    let bal = balance(&app, key, "cus_life", "EUR", full.position()).await;
    assert_balance(&bal, ["30.87", "30.87", "0.00", "0.00", "0.00", "0.00"]);
    let all = app.get(key, "/v1/customers/cus_life/balance").await;
    assert_eq!(all.body["data"].as_array().expect("data").len(), 1);

    // The journal: issue, then two payments, in double entry; one entry per page.
    let entries = journal(&app, key, "cus_life", 1).await;
    assert_balanced(&entries);
    assert_eq!(
        postings(&entries),
        vec![
            posting(&id, "receivable", "30.87", "0"),
            posting(&id, "revenue", "0", "30.87"),
            posting(&id, "cash", "10.00", "0"),
            posting(&id, "receivable", "0", "10.00"),
            posting(&id, "cash", "20.87", "0"),
            posting(&id, "receivable", "0", "20.87"),
        ]
    );
    assert!(entries
        .windows(2)
        .all(|w| w[0]["position"].as_i64() <= w[1]["position"].as_i64()));
    assert!(entries.iter().all(|e| e["currency"] == "EUR"));
    // The receivable nets to the outstanding amount.
    let receivable: Decimal = entries
        .iter()
        .filter(|e| e["account"] == "receivable")
        .map(|e| dec(&e["debit"]) - dec(&e["credit"]))
        .sum();
    assert_eq!(receivable, dec(&bal["outstanding"]));
    assert_eq!(journal(&app, key, "cus_life", 200).await, entries);
    // An empty draft has nothing to collect: settled when issued, with the
    // next number, and no money moves.
    let empty = draft(&app, key, "cus_life", "EUR", json!([])).await;
    assert_eq!(empty.body["total"], "0.00");
    let settled = issue(&app, key, &empty.id()).await;
    assert_eq!(settled.status, 200, "{:?}", settled.body);
    assert_eq!(settled.body["status"], "paid");
    assert_eq!(settled.body["number"], "INV-000002");
    assert_eq!(settled.body["amount_due"], "0.00");
    let after = balance(&app, key, "cus_life", "EUR", settled.position()).await;
    assert_eq!(after, bal);
    assert_eq!(journal(&app, key, "cus_life", 200).await, entries);
    // A customer without invoices has no balances and no journal.
    let none = app.get(key, "/v1/customers/cus_nobody/balance").await;
    assert_eq!(none.status, 200, "{:?}", none.body);
    assert_eq!(none.body["data"], json!([]));
    assert!(journal(&app, key, "cus_nobody", 10).await.is_empty());
}

async fn every_rejection(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = &app.admin_key;
    let one = || json!([line("Service", "1", "40.00")]);

    // Lines on an open invoice, issuing twice.
    let a = open_invoice(&app, key, "cus_r", "EUR", one()).await;
    let a_id = a.id();
    let r = app
        .post(
            key,
            &format!("/v1/invoices/{a_id}/lines"),
            line("Late", "1", "1.00"),
        )
        .await;
    r.assert_problem(409, "invalid_transition");
    assert!(
        r.body["detail"].as_str().expect("detail").contains("open"),
        "{:?}",
        r.body
    );
    let r = issue(&app, key, &a_id).await;
    r.assert_problem(409, "invalid_transition");
    assert!(
        r.body["detail"].as_str().expect("detail").contains("open"),
        "{:?}",
        r.body
    );

    // A draft cannot be paid, voided or written off.
    let b_id = draft(&app, key, "cus_r", "EUR", one()).await.id();
    let r = pay(&app, key, &b_id, "1.00", "early").await;
    r.assert_problem(409, "invalid_transition");
    assert!(
        r.body["detail"].as_str().expect("detail").contains("draft"),
        "{:?}",
        r.body
    );
    void(&app, key, &b_id, "mistake")
        .await
        .assert_problem(409, "invalid_transition");
    mark_uncollectible(&app, key, &b_id)
        .await
        .assert_problem(409, "invalid_transition");
    // The client does not choose the number.
    let r = app
        .post(
            key,
            &format!("/v1/invoices/{b_id}/issue"),
            json!({"number": 7}),
        )
        .await;
    r.assert_problem(422, "validation_failed");

    // An invoice with payments cannot be voided; without a reason neither.
    let r = pay(&app, key, &a_id, "15.00", "part").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = void(&app, key, &a_id, "changed our mind").await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "amount_paid", "{:?}", r.body);
    let c = open_invoice(
        &app,
        key,
        "cus_r",
        "EUR",
        json!([line("Setup", "2", "12.25")]),
    )
    .await;
    let c_id = c.id();
    let r = void(&app, key, &c_id, " ").await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "reason", "{:?}", r.body);

    // Voiding an open unpaid invoice takes its total back.
    let voided = void(&app, key, &c_id, "duplicate").await;
    assert_eq!(voided.status, 200, "{:?}", voided.body);
    assert_eq!(voided.body["status"], "void");
    assert_eq!(voided.body["void_reason"], "duplicate");
    assert!(voided.body["voided_at"].is_string());
    assert_eq!(voided.body["amount_due"], "0.00");
    assert_eq!(voided.body["total"], "24.50");
    let bal = balance(&app, key, "cus_r", "EUR", voided.position()).await;
    // 40.00 + 24.50 invoiced, 15.00 paid, 24.50 voided.
    assert_balance(&bal, ["64.50", "15.00", "24.50", "0.00", "0.00", "25.00"]);
    void(&app, key, &c_id, "again")
        .await
        .assert_problem(409, "invalid_transition");
    pay(&app, key, &c_id, "1.00", "after-void")
        .await
        .assert_problem(409, "invalid_transition");
    mark_uncollectible(&app, key, &c_id)
        .await
        .assert_problem(409, "invalid_transition");

    // Writing off writes off what is still due.
    let bad = mark_uncollectible(&app, key, &a_id).await;
    assert_eq!(bad.status, 200, "{:?}", bad.body);
    assert_eq!(bad.body["status"], "uncollectible");
    assert!(bad.body["uncollectible_at"].is_string());
    assert_eq!(bad.body["amount_paid"], "15.00");
    let bal = balance(&app, key, "cus_r", "EUR", bad.position()).await;
    assert_balance(&bal, ["64.50", "15.00", "24.50", "25.00", "0.00", "0.00"]);
    pay(&app, key, &a_id, "1.00", "too-late")
        .await
        .assert_problem(409, "invalid_transition");
    mark_uncollectible(&app, key, &a_id)
        .await
        .assert_problem(409, "invalid_transition");
    void(&app, key, &a_id, "no")
        .await
        .assert_problem(409, "invalid_transition");
    let entries = journal(&app, key, "cus_r", 200).await;
    assert_balanced(&entries);
    assert_eq!(
        postings(&entries),
        vec![
            posting(&a_id, "receivable", "40.00", "0"),
            posting(&a_id, "revenue", "0", "40.00"),
            posting(&a_id, "cash", "15.00", "0"),
            posting(&a_id, "receivable", "0", "15.00"),
            posting(&c_id, "receivable", "24.50", "0"),
            posting(&c_id, "revenue", "0", "24.50"),
            posting(&c_id, "revenue", "24.50", "0"),
            posting(&c_id, "receivable", "0", "24.50"),
            posting(&a_id, "bad_debt", "25.00", "0"),
            posting(&a_id, "receivable", "0", "25.00"),
        ]
    );

    // Bad bodies: 422 with the field, never 500.
    let create = |body: Value| app.post(key, "/v1/invoices", body);
    let r = create(json!({"customer_id": "cus_r", "currency": "XYZ"})).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "currency", "{:?}", r.body);
    let r = create(json!({"customer_id": "cus_r", "currency": "eur"})).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "currency", "{:?}", r.body);
    let r = create(
        json!({"customer_id": "cus_r", "currency": "EUR", "lines": [line("Refund", "-1", "5.00")]}),
    )
    .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(
        r.body["errors"][0]["field"], "lines[0].quantity",
        "{:?}",
        r.body
    );
    let r = app
        .post(
            key,
            &format!("/v1/invoices/{b_id}/lines"),
            json!({"description": "Refund", "quantity": -2, "unit_price": "5.00"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "quantity", "{:?}", r.body);
    let r = app
        .post(
            key,
            &format!("/v1/invoices/{b_id}/lines"),
            line("Refund", "-0.5", "5.00"),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "quantity", "{:?}", r.body);
    let r = app
        .post(
            key,
            &format!("/v1/invoices/{b_id}/lines"),
            line("Odd", "1", "cheap"),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "unit_price", "{:?}", r.body);
    let r = app
        .request(
            reqwest::Method::POST,
            "/v1/invoices",
            Some(key),
            &[],
            Some(b"{\"customer_id\": ".to_vec()),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    let r = app
        .request(
            reqwest::Method::POST,
            &format!("/v1/invoices/{a_id}/payments"),
            Some(key),
            &[],
            Some(b"not json".to_vec()),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    let r = create(json!({"customer_id": "cus_r", "currency": "EUR", "colour": "blue"})).await;
    r.assert_problem(422, "validation_failed");
    assert!(
        r.body["detail"]
            .as_str()
            .expect("detail")
            .contains("colour"),
        "{:?}",
        r.body
    );
    let r = create(json!({"customer_id": "cus_r", "currency": "EUR",
        "lines": [{"description": "x", "quantity": "1", "unit_price": "1", "tax": "20%"}]}))
    .await;
    r.assert_problem(422, "validation_failed");
    assert!(
        r.body["detail"].as_str().expect("detail").contains("tax"),
        "{:?}",
        r.body
    );
    let r = create(json!({"currency": "EUR"})).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "customer_id", "{:?}", r.body);
    let r = create(json!({"customer_id": "cus_r", "currency": "EUR", "due_days": "soon"})).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "due_days", "{:?}", r.body);
    let r = create(json!({"customer_id": "cus_r", "currency": "EUR", "due_days": 400})).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "due_days", "{:?}", r.body);
    let r = create(json!({"customer_id": "cus_r", "currency": "EUR", "lines": [{"description": "x", "quantity": true, "unit_price": "1"}]})).await;
    r.assert_problem(422, "validation_failed");
    let r = create(
        json!({"customer_id": "cus_r", "currency": "EUR", "subscription_id": "sub_doesnotexist"}),
    )
    .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(
        r.body["errors"][0]["field"], "subscription_id",
        "{:?}",
        r.body
    );
    let r =
        create(json!({"customer_id": "cus_r", "currency": "EUR", "subscription_id": "nope"})).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(
        r.body["errors"][0]["field"], "subscription_id",
        "{:?}",
        r.body
    );
    let plan = app.standard_plan().await;
    let sub = app
        .create_subscription(key, json!({"customer_id": "cus_other", "plan_id": plan}))
        .await;
    assert_eq!(sub.status, 201, "{:?}", sub.body);
    let r = create(json!({"customer_id": "cus_r", "currency": "EUR", "subscription_id": sub.id()}))
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(
        r.body["errors"][0]["field"], "subscription_id",
        "{:?}",
        r.body
    );
    let r = app
        .post(
            key,
            &format!("/v1/invoices/{a_id}/payments"),
            json!({"amount": 10.5, "reference": "float"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "amount", "{:?}", r.body);
    let d_open = open_invoice(&app, key, "cus_r", "EUR", one()).await;
    let (d, d_pos) = (d_open.id(), d_open.position());
    for amount in ["0", "-5.00", "ten"] {
        let r = pay(&app, key, &d, amount, "bad-amount").await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], "amount", "{:?}", r.body);
    }
    let r = app
        .post(
            key,
            &format!("/v1/invoices/{d}/payments"),
            json!({"amount": "1.00", "reference": "x", "captured_at": "yesterday"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "captured_at", "{:?}", r.body);
    let r = app
        .post(
            key,
            &format!("/v1/invoices/{d}/payments"),
            json!({"amount": "1.00", "reference": "x", "method": "card"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");

    // Out of bounds: empty text, too many places, too large, too many lines.
    let b_lines = format!("/v1/invoices/{b_id}/lines");
    let add = |body: Value| app.post(key, &b_lines, body);
    for (body, field) in [
        (line(" ", "1", "1.00"), "description"),
        (line("x", "0.0000000000001", "1.00"), "quantity"),
        (line("x", "1", "0.0000000000001"), "unit_price"),
        (line("x", "1", "1000000000000000000"), "unit_price"),
        (line("x", "1000000000", "1000000000"), "quantity"),
    ] {
        let r = add(body).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], field, "{:?}", r.body);
    }
    let many: Vec<Value> = (0..251).map(|i| line(&format!("l{i}"), "1", "1")).collect();
    let r = create(json!({"customer_id": "cus_r", "currency": "EUR", "lines": many})).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "lines", "{:?}", r.body);
    let r =
        create(json!({"customer_id": "cus_r", "currency": "EUR", "lines": [line("", "1", "1")]}))
            .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(
        r.body["errors"][0]["field"], "lines[0].description",
        "{:?}",
        r.body
    );
    let r = create(json!({"customer_id": " ", "currency": "EUR"})).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "customer_id", "{:?}", r.body);
    let r = app
        .post_with(
            key,
            &format!("/v1/invoices/{b_id}/issue"),
            json!({}),
            &[("if-match", "soon".to_string())],
        )
        .await;
    r.assert_problem(422, "validation_failed");
    // The draft took none of them.
    let got = app
        .get_after(key, &format!("/v1/invoices/{b_id}"), d_pos)
        .await;
    assert_eq!(got.body["lines"].as_array().expect("lines").len(), 1);
    assert_eq!(got.body["status"], "draft");

    // Unknown invoices.
    app.get(key, "/v1/invoices/inv_doesnotexist")
        .await
        .assert_problem(404, "not_found");
    app.get(key, "/v1/invoices/nothing")
        .await
        .assert_problem(404, "not_found");
    issue(&app, key, "inv_doesnotexist")
        .await
        .assert_problem(404, "not_found");
    pay(&app, key, "inv_doesnotexist", "1.00", "x")
        .await
        .assert_problem(404, "not_found");
    void(&app, key, "inv_doesnotexist", "x")
        .await
        .assert_problem(404, "not_found");
    mark_uncollectible(&app, key, "inv_doesnotexist")
        .await
        .assert_problem(404, "not_found");
    app.post(
        key,
        "/v1/invoices/inv_doesnotexist/lines",
        line("x", "1", "1"),
    )
    .await
    .assert_problem(404, "not_found");

    // Roles: a reader reads but cannot command.
    let reader = app.key("default", "reader").await;
    let r = app
        .post(
            &reader,
            "/v1/invoices",
            json!({"customer_id": "cus_r", "currency": "EUR"}),
        )
        .await;
    r.assert_problem(403, "forbidden");
    issue(&app, &reader, &b_id)
        .await
        .assert_problem(403, "forbidden");
    pay(&app, &reader, &d, "1.00", "reader")
        .await
        .assert_problem(403, "forbidden");
    void(&app, &reader, &d, "reader")
        .await
        .assert_problem(403, "forbidden");
    mark_uncollectible(&app, &reader, &d)
        .await
        .assert_problem(403, "forbidden");
    let got = app
        .get_after(&reader, &format!("/v1/invoices/{a_id}"), bad.position())
        .await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(got.body["status"], "uncollectible");
    assert_eq!(
        app.get(&reader, "/v1/customers/cus_r/balance").await.status,
        200
    );
    app.request(reqwest::Method::GET, "/v1/invoices", None, &[], None)
        .await
        .assert_problem(401, "unauthorized");

    // Query parameters.
    let r = app.get(key, "/v1/invoices?status=overdue").await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "status", "{:?}", r.body);
    app.get(key, "/v1/invoices?limit=0")
        .await
        .assert_problem(422, "validation_failed");
    app.get(key, "/v1/invoices?limit=201")
        .await
        .assert_problem(422, "validation_failed");
    app.get(key, "/v1/invoices?colour=blue")
        .await
        .assert_problem(422, "validation_failed");
    app.get(key, "/v1/customers/cus_r/journal?cursor=abc")
        .await
        .assert_problem(422, "validation_failed");
    app.get(key, "/v1/customers/cus_r/journal?limit=0")
        .await
        .assert_problem(422, "validation_failed");

    // Another tenant sees nothing and can do nothing.
    let other = app.key("acme", "admin").await;
    app.get_after(&other, &format!("/v1/invoices/{a_id}"), bad.position())
        .await
        .assert_problem(404, "not_found");
    app.get(&other, &format!("/v1/invoices/{d}"))
        .await
        .assert_problem(404, "not_found");
    pay(&app, &other, &d, "1.00", "theirs")
        .await
        .assert_problem(404, "not_found");
    void(&app, &other, &d, "theirs")
        .await
        .assert_problem(404, "not_found");
    issue(&app, &other, &b_id)
        .await
        .assert_problem(404, "not_found");
    let list = app.get(&other, "/v1/invoices").await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    assert_eq!(list.body["data"], json!([]));
    let bal = app.get(&other, "/v1/customers/cus_r/balance").await;
    assert_eq!(bal.body["data"], json!([]));
    assert!(journal(&app, &other, "cus_r", 50).await.is_empty());
    // The owner's invoice is untouched.
    let got = app
        .get_after(key, &format!("/v1/invoices/{d}"), bad.position())
        .await;
    assert_eq!(got.body["status"], "open");
    assert_eq!(got.body["payments"], json!([]));
}

async fn concurrent_issues_number_without_gaps(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = &app.admin_key;
    let mut drafts = Vec::new();
    for i in 0..50 {
        let r = draft(
            &app,
            key,
            &format!("cus_{}", i % 3),
            "EUR",
            json!([line("Item", "1", &format!("{}.00", i + 1))]),
        )
        .await;
        drafts.push(r.id());
    }
    let mut tasks = Vec::new();
    for id in &drafts {
        let (base, client, key, id) = (
            app.base.clone(),
            app.client.clone(),
            app.admin_key.clone(),
            id.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{base}/v1/invoices/{id}/issue"))
                .bearer_auth(key)
                .json(&json!({}))
                .send()
                .await
                .expect("request sent");
            (
                id,
                r.status().as_u16(),
                r.json::<Value>().await.expect("json body"),
            )
        }));
    }
    let mut numbers = BTreeSet::new();
    for task in tasks {
        let (id, status, body) = task.await.expect("task");
        assert_eq!(status, 200, "{body:?}");
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["status"], "open");
        let number = body["number"].as_str().expect("number").to_string();
        assert!(numbers.insert(number.clone()), "{number} given twice");
    }
    let want: BTreeSet<String> = (1..=50).map(|n| format!("INV-{n:06}")).collect();
    assert_eq!(numbers, want, "INV-000001..INV-000050, no gap");

    // The read model agrees: each draft has its own number.
    app.settle().await;
    let mut listed = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/v1/invoices?status=open&limit=200".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = app.get(key, &path).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        for inv in r.body["data"].as_array().expect("data") {
            listed.insert((
                inv["id"].as_str().expect("id").to_string(),
                inv["number"].as_str().expect("number").to_string(),
            ));
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(listed.len(), 50);
    assert_eq!(
        listed
            .iter()
            .map(|(_, n)| n.clone())
            .collect::<BTreeSet<_>>(),
        want
    );
    assert_eq!(
        listed
            .iter()
            .map(|(i, _)| i.clone())
            .collect::<BTreeSet<_>>(),
        drafts.iter().cloned().collect::<BTreeSet<_>>()
    );

    // One draft issued ten times at once: one number, nine refusals.
    let contested = draft(&app, key, "cus_0", "EUR", json!([line("c", "1", "1.00")]))
        .await
        .id();
    let answers = deliver(
        &app,
        &format!("/v1/invoices/{contested}/issue"),
        vec![json!({}); 10],
    )
    .await;
    let won: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    assert_eq!(won[0]["number"], "INV-000051");
    for (status, body) in &answers {
        assert!(
            *status == 200 || (*status == 409 && body["code"] == "invalid_transition"),
            "{status} {body:?}"
        );
    }
    // Refused issues take no number.
    issue(&app, key, &drafts[7])
        .await
        .assert_problem(409, "invalid_transition");
    issue(&app, key, "inv_doesnotexist")
        .await
        .assert_problem(404, "not_found");
    // Numbering is per tenant.
    let acme = app.key("acme", "writer").await;
    let theirs = open_invoice(
        &app,
        &acme,
        "cus_acme",
        "USD",
        json!([line("x", "1", "9.99")]),
    )
    .await;
    assert_eq!(theirs.body["number"], "INV-000001");
    let theirs = open_invoice(
        &app,
        &acme,
        "cus_acme",
        "USD",
        json!([line("y", "1", "1.00")]),
    )
    .await;
    assert_eq!(theirs.body["number"], "INV-000002");
    let ours = open_invoice(&app, key, "cus_0", "EUR", json!([line("z", "1", "1.00")])).await;
    assert_eq!(ours.body["number"], "INV-000052");
}

async fn payments_are_idempotent(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = &app.admin_key;
    let inv = open_invoice(
        &app,
        key,
        "cus_idem",
        "EUR",
        json!([line("Plan", "1", "50.00")]),
    )
    .await;
    let id = inv.id();
    let path = format!("/v1/invoices/{id}/payments");
    let body = json!({"amount": "20.00", "reference": "psp-1"});
    let header = [("idempotency-key", "pay-once".to_string())];
    let first = app.post_with(key, &path, body.clone(), &header).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["amount_due"], "30.00");
    let again = app.post_with(key, &path, body.clone(), &header).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.body, first.body, "the first response, replayed");
    assert_eq!(again.header("etag"), first.header("etag"));
    assert_eq!(again.position(), first.position());
    let reused = app
        .post_with(
            key,
            &path,
            json!({"amount": "25.00", "reference": "psp-2"}),
            &header,
        )
        .await;
    reused.assert_problem(422, "idempotency_key_reused");
    // An issue repeated with its key is answered with the same number and
    // takes no other.
    let twice: Vec<String> = {
        let d = draft(
            &app,
            key,
            "cus_issue",
            "EUR",
            json!([line("Extra", "1", "1.00")]),
        )
        .await
        .id();
        let h = [("idempotency-key", format!("issue-{d}"))];
        let mut numbers = Vec::new();
        for _ in 0..2 {
            let r = app
                .post_with(key, &format!("/v1/invoices/{d}/issue"), json!({}), &h)
                .await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            numbers.push(r.body["number"].as_str().expect("number").to_string());
        }
        numbers
    };
    assert_eq!(twice, ["INV-000002", "INV-000002"]);
    let third = open_invoice(
        &app,
        key,
        "cus_other",
        "EUR",
        json!([line("Next", "1", "1.00")]),
    )
    .await;
    assert_eq!(third.body["number"], "INV-000003");

    // A provider's retried notification: same reference and amount, no key.
    let retry = app.post(key, &path, body.clone()).await;
    assert_eq!(retry.status, 200, "{:?}", retry.body);
    assert_eq!(retry.body["version"], first.body["version"], "no event");
    assert_eq!(
        retry.body["payments"].as_array().expect("payments").len(),
        1
    );
    assert_eq!(retry.body["amount_due"], "30.00");
    // The same reference with another amount is a conflict of facts.
    let clash = app
        .post(key, &path, json!({"amount": "5.00", "reference": "psp-1"}))
        .await;
    clash.assert_problem(422, "validation_failed");
    assert_eq!(
        clash.body["errors"][0]["field"], "reference",
        "{:?}",
        clash.body
    );

    // Eight deliveries of one notification at once: one payment.
    let notice = json!({"amount": "10.00", "reference": "psp-3"});
    for (status, body) in deliver(&app, &path, vec![notice; 8]).await {
        assert_eq!(status, 200, "{body:?}");
        assert_eq!(body["status"], "open");
        assert_eq!(body["amount_due"], "20.00");
        assert_eq!(body["payments"].as_array().expect("payments").len(), 2);
    }
    let last = app
        .post(key, &path, json!({"amount": "20.00", "reference": "psp-4"}))
        .await;
    assert_eq!(last.status, 200, "{:?}", last.body);
    assert_eq!(last.body["status"], "paid");

    app.settle().await;
    let got = app.get(key, &format!("/v1/invoices/{id}")).await;
    assert_eq!(got.body["status"], "paid");
    assert_eq!(got.body["amount_paid"], "50.00");
    let refs: Vec<&str> = got.body["payments"]
        .as_array()
        .expect("payments")
        .iter()
        .map(|p| p["reference"].as_str().expect("reference"))
        .collect();
    assert_eq!(
        refs,
        ["psp-1", "psp-3", "psp-4"],
        "each payment recorded once"
    );
    let bal = balance(&app, key, "cus_idem", "EUR", 0).await;
    assert_balance(&bal, ["50.00", "50.00", "0.00", "0.00", "0.00", "0.00"]);
    let entries = journal(&app, key, "cus_idem", 200).await;
    assert_balanced(&entries);
    assert_eq!(
        postings(&entries),
        vec![
            posting(&id, "receivable", "50.00", "0"),
            posting(&id, "revenue", "0", "50.00"),
            posting(&id, "cash", "20.00", "0"),
            posting(&id, "receivable", "0", "20.00"),
            posting(&id, "cash", "10.00", "0"),
            posting(&id, "receivable", "0", "10.00"),
            posting(&id, "cash", "20.00", "0"),
            posting(&id, "receivable", "0", "20.00"),
        ]
    );
    // Five payments of 3.00 at once on 10.00 due: each decides on the
    // invoice as the others left it, so three are recorded and two refused.
    let small = open_invoice(
        &app,
        key,
        "cus_race",
        "EUR",
        json!([line("Race", "1", "10.00")]),
    )
    .await
    .id();
    let bodies = (0..5)
        .map(|i| json!({"amount": "3.00", "reference": format!("race-{i}")}))
        .collect();
    let answers = deliver(&app, &format!("/v1/invoices/{small}/payments"), bodies).await;
    let mut accepted = 0;
    for (status, body) in &answers {
        match status {
            200 => accepted += 1,
            422 => assert_eq!(body["errors"][0]["field"], "amount", "{body:?}"),
            other => panic!("unexpected {other}: {body:?}"),
        }
    }
    assert_eq!(accepted, 3, "{answers:?}");
    app.settle().await;
    let raced = app.get(key, &format!("/v1/invoices/{small}")).await;
    assert_eq!(raced.body["amount_paid"], "9.00");
    assert_eq!(raced.body["amount_due"], "1.00");
    assert_eq!(
        raced.body["payments"].as_array().expect("payments").len(),
        3
    );
    assert_balance(
        &balance(&app, key, "cus_race", "EUR", 0).await,
        ["10.00", "9.00", "0.00", "0.00", "0.00", "1.00"],
    );
    // A payment with a new reference on a paid invoice is refused.
    app.post(key, &path, json!({"amount": "1.00", "reference": "psp-5"}))
        .await
        .assert_problem(409, "invalid_transition");
}

/// Posts each body to `path`, all at once; (status, body) of each, in order.
async fn deliver(app: &TestApp, path: &str, bodies: Vec<Value>) -> Vec<(u16, Value)> {
    let mut tasks = Vec::new();
    for body in bodies {
        let (base, client, key, path) = (
            app.base.clone(),
            app.client.clone(),
            app.admin_key.clone(),
            path.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{base}{path}"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .expect("request sent");
            (
                r.status().as_u16(),
                r.json::<Value>().await.expect("json body"),
            )
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.expect("task"));
    }
    out
}

/// The retried notification of the payment that settled an invoice (the
/// provider lost the first answer) is the same no-op as a retry of a
/// partial payment: 200 with the invoice, no second payment.
async fn settling_payment_retried(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = &app.admin_key;
    let id = open_invoice(
        &app,
        key,
        "cus_retry",
        "EUR",
        json!([line("Plan", "1", "30.00")]),
    )
    .await
    .id();
    let path = format!("/v1/invoices/{id}/payments");
    let body = json!({"amount": "30.00", "reference": "psp-settle"});
    let first = app.post(key, &path, body.clone()).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["status"], "paid");
    let retry = app.post(key, &path, body.clone()).await;
    assert_eq!(
        retry.status, 200,
        "a retried notification is not an error: {:?}",
        retry.body
    );
    assert_eq!(retry.body["version"], first.body["version"], "no event");
    assert_eq!(
        retry.body["payments"].as_array().expect("payments").len(),
        1
    );
    // The same at once, on a fresh invoice: every delivery answers 200.
    let id = open_invoice(
        &app,
        key,
        "cus_retry",
        "EUR",
        json!([line("Plan", "1", "30.00")]),
    )
    .await
    .id();
    let path = format!("/v1/invoices/{id}/payments");
    for (status, body) in deliver(&app, &path, vec![body; 8]).await {
        assert_eq!(status, 200, "{body:?}");
        assert_eq!(body["status"], "paid");
        assert_eq!(body["payments"].as_array().expect("payments").len(), 1);
    }
}

async fn invoice_rebuild_equals_incremental(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = &app.admin_key;
    // cus_a in EUR: partly paid, paid, void, uncollectible, draft, a credit.
    let a1 = open_invoice(
        &app,
        key,
        "cus_a",
        "EUR",
        json!([line("A1", "3", "33.3333")]),
    )
    .await
    .id();
    assert_eq!(pay(&app, key, &a1, "40.00", "a1-1").await.status, 200);
    let a2 = open_invoice(
        &app,
        key,
        "cus_a",
        "EUR",
        json!([line("A2", "2", "10.005")]),
    )
    .await
    .id();
    assert_eq!(pay(&app, key, &a2, "20.01", "a2-1").await.status, 200);
    let a3 = open_invoice(&app, key, "cus_a", "EUR", json!([line("A3", "1", "7.50")]))
        .await
        .id();
    assert_eq!(void(&app, key, &a3, "duplicate").await.status, 200);
    let a4 = open_invoice(&app, key, "cus_a", "EUR", json!([line("A4", "4", "2.50")]))
        .await
        .id();
    assert_eq!(pay(&app, key, &a4, "3.00", "a4-1").await.status, 200);
    assert_eq!(mark_uncollectible(&app, key, &a4).await.status, 200);
    draft(&app, key, "cus_a", "EUR", json!([line("A5", "1", "99.00")])).await;
    let credit_id = draft(
        &app,
        key,
        "cus_a",
        "EUR",
        json!([line("Goodwill", "1", "-5.00")]),
    )
    .await
    .id();
    let credit = issue(&app, key, &credit_id).await;
    assert_eq!(credit.status, 200, "{:?}", credit.body);
    assert_eq!(credit.body["number"], "INV-000005");
    assert_eq!(credit.body["status"], "paid", "nothing to collect: settled");
    assert_eq!(credit.body["total"], "-5.00");
    assert_eq!(credit.body["amount_due"], "0.00");
    // cus_a in USD, cus_b in USD and JPY.
    open_invoice(&app, key, "cus_a", "USD", json!([line("A6", "1", "12.34")])).await;
    let b1 = open_invoice(&app, key, "cus_b", "USD", json!([line("B1", "10", "0.99")]))
        .await
        .id();
    assert_eq!(pay(&app, key, &b1, "9.90", "b1-1").await.status, 200);
    let b2 = open_invoice(&app, key, "cus_b", "USD", json!([line("B2", "1", "100")]))
        .await
        .id();
    assert_eq!(mark_uncollectible(&app, key, &b2).await.status, 200);
    // 1.5 × 333 = 499.5 yen → 500.
    let b3 = open_invoice(&app, key, "cus_b", "JPY", json!([line("B3", "1.5", "333")])).await;
    assert_eq!(b3.body["total"], "500");
    assert_eq!(b3.body["amount_due"], "500");
    // Another tenant's invoices are in the same tables.
    let acme = app.key("acme", "writer").await;
    let c1 = open_invoice(
        &app,
        &acme,
        "cus_a",
        "EUR",
        json!([line("C1", "1", "1.00")]),
    )
    .await
    .id();
    assert_eq!(pay(&app, &acme, &c1, "1.00", "c1-1").await.status, 200);
    app.settle().await;

    // The balances, exactly.
    assert_balance(
        &balance(&app, key, "cus_a", "EUR", 0).await,
        ["137.51", "63.01", "7.50", "7.00", "5.00", "60.00"],
    );
    assert_balance(
        &balance(&app, key, "cus_a", "USD", 0).await,
        ["12.34", "0.00", "0.00", "0.00", "0.00", "12.34"],
    );
    assert_balance(
        &balance(&app, key, "cus_b", "USD", 0).await,
        ["109.90", "9.90", "0.00", "100.00", "0.00", "0.00"],
    );
    assert_balance(
        &balance(&app, key, "cus_b", "JPY", 0).await,
        ["500", "0", "0", "0", "0", "500"],
    );
    assert_balance(
        &balance(&app, &acme, "cus_a", "EUR", 0).await,
        ["1.00", "1.00", "0.00", "0.00", "0.00", "0.00"],
    );
    for customer in ["cus_a", "cus_b"] {
        assert_balanced(&journal(&app, key, customer, 3).await);
    }
    let credit_entries: Vec<_> = journal(&app, key, "cus_a", 200)
        .await
        .into_iter()
        .filter(|e| e["invoice_id"] == credit.id().as_str())
        .collect();
    assert_eq!(
        postings(&credit_entries),
        vec![
            posting(&credit.id(), "revenue", "5.00", "0"),
            posting(&credit.id(), "customer_credit", "0", "5.00"),
        ]
    );

    let db = &app.state().db;
    let tables = [
        (
            "rm_invoices",
            "tenant, id, customer_id, subscription_id, status, number, due_at, body, version",
        ),
        (
            "rm_journal",
            "tenant, event_id, leg, position, customer_id, currency, invoice_id, account, debit, credit, recorded_at",
        ),
        ("rm_balances", "tenant, customer_id, currency, body"),
    ];
    let mut before = Vec::new();
    for (table, cols) in tables {
        before.push(table_rows(db, table, cols).await);
    }
    // 11 invoices; 18 money events of two legs each; 5 balances.
    assert_eq!(before[0].len(), 11);
    assert_eq!(before[1].len(), 36);
    assert_eq!(before[2].len(), 5);
    let consumers = app.projections(key).await;
    for name in ["invoices", "balances"] {
        let c = consumers
            .body
            .as_array()
            .expect("consumers")
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no consumer {name}: {:?}", consumers.body))
            .clone();
        assert_eq!(c["status"], "running", "{c:?}");
        assert_eq!(c["position"], c["log_head"], "{c:?}");
    }
    for name in ["invoices", "balances"] {
        let r = app.rebuild(key, name).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    app.settle().await;
    for ((table, cols), rows) in tables.iter().zip(before) {
        assert_eq!(table_rows(db, table, cols).await, rows, "{table}");
    }
    assert_balance(
        &balance(&app, key, "cus_a", "EUR", 0).await,
        ["137.51", "63.01", "7.50", "7.00", "5.00", "60.00"],
    );
}

async fn invoice_lists_filter_and_page(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = &app.admin_key;
    let plan = app.standard_plan().await;
    let sub = app
        .create_subscription(key, json!({"customer_id": "cus_x", "plan_id": plan}))
        .await;
    assert_eq!(sub.status, 201, "{:?}", sub.body);
    let sub = sub.id();
    let with_sub = |n: &str| {
        json!({"customer_id": "cus_x", "currency": "EUR", "subscription_id": sub,
               "lines": [line(n, "1", "10.00")]})
    };
    let r = app.post(key, "/v1/invoices", with_sub("x1")).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["subscription_id"], sub.as_str());
    let x1 = r.id();
    let x1_open = issue(&app, key, &x1).await;
    assert_eq!(x1_open.body["status"], "open");
    let r = app.post(key, "/v1/invoices", with_sub("x2")).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let x2 = r.id();
    let x3 = open_invoice(&app, key, "cus_x", "EUR", json!([line("x3", "1", "5.00")]))
        .await
        .id();
    assert_eq!(
        pay(&app, key, &x3, "5.00", "x3").await.body["status"],
        "paid"
    );
    let y1 = open_invoice(&app, key, "cus_y", "USD", json!([line("y1", "1", "5.00")]))
        .await
        .id();
    let y2 = open_invoice(&app, key, "cus_y", "USD", json!([line("y2", "1", "5.00")]))
        .await
        .id();
    let last = void(&app, key, &y2, "wrong customer").await;
    assert_eq!(last.status, 200, "{:?}", last.body);
    let every = vec![x1.clone(), x2.clone(), x3.clone(), y1.clone(), y2.clone()];

    let at = last.position();
    let all = list_after(&app, key, "", at).await;
    assert_eq!(ids_of(&all), sorted(every.clone()), "in id order");
    assert_eq!(all.body["next_cursor"], Value::Null);
    let cases = [
        ("?status=open", vec![&x1, &y1]),
        ("?status=draft", vec![&x2]),
        ("?status=paid", vec![&x3]),
        ("?status=void", vec![&y2]),
        ("?status=uncollectible", vec![]),
        ("?customer_id=cus_x", vec![&x1, &x2, &x3]),
        ("?customer_id=cus_y", vec![&y1, &y2]),
        ("?customer_id=cus_z", vec![]),
        ("?status=open&customer_id=cus_x", vec![&x1]),
        ("?status=draft&customer_id=cus_y", vec![]),
    ];
    for (q, want) in cases {
        let want = sorted(want.into_iter().cloned().collect());
        assert_eq!(ids_of(&list_after(&app, key, q, at).await), want, "{q}");
    }
    let by_sub = list_after(&app, key, &format!("?subscription_id={sub}"), at).await;
    assert_eq!(ids_of(&by_sub), sorted(vec![x1.clone(), x2.clone()]));
    assert!(by_sub.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .all(|i| i["subscription_id"] == sub.as_str()));
    let by_sub_open = list_after(
        &app,
        key,
        &format!("?subscription_id={sub}&status=open"),
        at,
    )
    .await;
    assert_eq!(ids_of(&by_sub_open), vec![x1.clone()]);
    // A listed invoice is shaped like its GET.
    let one = by_sub_open.body["data"][0].clone();
    assert_eq!(one, app.get(key, &format!("/v1/invoices/{x1}")).await.body);
    assert_eq!(one, x1_open.body);

    // limit=2 pages through all five, in id order, without overlap.
    let mut paged: Vec<String> = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = "?limit=2".to_string();
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let page = list_after(&app, key, &q, at).await;
        let ids = ids_of(&page);
        sizes.push(ids.len());
        paged.extend(ids);
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(paged, sorted(every.clone()));
    // Pages of a filtered list.
    let page1 = list_after(&app, key, "?customer_id=cus_x&limit=2", at).await;
    assert_eq!(ids_of(&page1).len(), 2);
    let cursor = page1.body["next_cursor"].as_str().expect("next_cursor");
    let page2 = list_after(
        &app,
        key,
        &format!("?customer_id=cus_x&limit=2&cursor={cursor}"),
        at,
    )
    .await;
    assert_eq!(page2.body["next_cursor"], Value::Null);
    let mut both = ids_of(&page1);
    both.extend(ids_of(&page2));
    assert_eq!(both, sorted(vec![x1, x2, x3]));
}

async fn openapi_lists_invoice_paths(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let spec = app
        .request(reqwest::Method::GET, "/openapi.json", None, &[], None)
        .await;
    assert_eq!(spec.status, 200);
    let paths = spec.body["paths"].as_object().expect("paths");
    for (p, method) in [
        ("/v1/invoices", "post"),
        ("/v1/invoices", "get"),
        ("/v1/invoices/{id}", "get"),
        ("/v1/invoices/{id}/lines", "post"),
        ("/v1/invoices/{id}/issue", "post"),
        ("/v1/invoices/{id}/payments", "post"),
        ("/v1/invoices/{id}/credit-notes", "post"),
        ("/v1/invoices/{id}/void", "post"),
        ("/v1/invoices/{id}/mark-uncollectible", "post"),
        ("/v1/customers/{customer_id}/balance", "get"),
        ("/v1/customers/{customer_id}/journal", "get"),
    ] {
        assert!(
            paths.get(p).and_then(|o| o.get(method)).is_some(),
            "OpenAPI lacks {method} {p}"
        );
    }
    let schemas = spec.body["components"]["schemas"]
        .as_object()
        .expect("schemas");
    for s in [
        "InvoiceDto",
        "CreateInvoiceRequest",
        "PaymentRequest",
        "CreditNoteRequest",
        "CustomerBalanceDto",
    ] {
        assert!(schemas.contains_key(s), "OpenAPI lacks schema {s}");
    }
}

fn customer_body(name: &str, email: &str) -> Value {
    json!({
        "name": name, "email": email, "currency": "EUR",
        "address": {"line1": "Rua Augusta 1", "city": "Lisboa", "postal_code": "1100-048",
                    "country": "PT"},
        "tax_rate_ids": ["txr_vat"], "metadata": {"crm": "42"}
    })
}

/// Issue 17, item 6: `PUT` creates (201) then updates (200) a customer with
/// the client's id; the same body again changes nothing; reads and the
/// email filter come from the read model; an invoice copies the details as
/// they are when it is issued, and keeps them after a later change.
async fn customers_are_put_listed_and_copied_onto_issued_invoices(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = app.admin_key.clone();
    let before = draft(
        &app,
        &key,
        "cus_ana",
        "EUR",
        json!([line("Setup", "1", "50.00")]),
    )
    .await
    .id();

    let r = app
        .put_customer(
            &key,
            "cus_ana",
            customer_body("Ana Lima", "ana@example.com"),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.header("etag"), Some("\"1\""));
    assert_eq!(r.body["id"], "cus_ana");
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["currency"], "EUR");
    assert_eq!(r.body["address"]["country"], "PT");
    assert!(r.body["address"]["line2"].is_null());
    assert_eq!(r.body["tax_rate_ids"], json!(["txr_vat"]));
    assert_eq!(r.body["metadata"], json!({"crm": "42"}));
    let r = app
        .put_customer(
            &key,
            "cus_ana",
            customer_body("Ana Lima", "ana@example.com"),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["version"], 1, "the same details change nothing");

    // Issued now: the invoice copies the details.
    let r = issue(&app, &key, &before).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body["customer_details"],
        json!({"name": "Ana Lima", "email": "ana@example.com",
               "address": {"line1": "Rua Augusta 1", "line2": null, "city": "Lisboa",
                           "postal_code": "1100-048", "country": "PT"}})
    );

    // Updated: 200, the next invoice has the new details, the first keeps its own.
    let r = app
        .put_customer(
            &key,
            "cus_ana",
            json!({"name": "Ana L. Lima", "email": "ana.lima@example.com"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["version"], 2);
    assert!(r.body["address"].is_null(), "a field left out is cleared");
    let position = r.position();
    let next = open_invoice(
        &app,
        &key,
        "cus_ana",
        "EUR",
        json!([line("Extra", "1", "5.00")]),
    )
    .await;
    assert_eq!(
        next.body["customer_details"],
        json!({"name": "Ana L. Lima", "email": "ana.lima@example.com", "address": null})
    );
    let r = app
        .get_after(&key, &format!("/v1/invoices/{before}"), next.position())
        .await;
    assert_eq!(r.body["customer_details"]["name"], "Ana Lima");

    // Reads: detail, the email filter, 404 for an unknown id.
    let r = app.get_after(&key, "/v1/customers/cus_ana", position).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["name"], "Ana L. Lima");
    assert_eq!(r.header("etag"), Some("\"2\""));
    let r = app
        .put_customer(&key, "cus_bo", json!({"name": "Bo"}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = app
        .get_after(
            &key,
            "/v1/customers?email=ana.lima@example.com",
            r.position(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let ids: Vec<&str> = r.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|c| c["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["cus_ana"]);
    let r = app.get(&key, "/v1/customers?limit=1").await;
    assert_eq!(r.body["data"].as_array().expect("data").len(), 1);
    assert!(r.body["next_cursor"].is_string());
    app.get(&key, "/v1/customers/cus_nobody")
        .await
        .assert_problem(404, "not_found");
    // Another tenant sees none of them.
    let other = app.key("other", "admin").await;
    app.get(&other, "/v1/customers/cus_ana")
        .await
        .assert_problem(404, "not_found");

    // If-Match: a stale version is refused.
    let r = app
        .request(
            reqwest::Method::PUT,
            "/v1/customers/cus_ana",
            Some(&key),
            &[("if-match", "\"1\"".to_string())],
            Some(json!({"name": "Stale"}).to_string().into_bytes()),
        )
        .await;
    r.assert_problem(412, "version_mismatch");

    // The audit API folds the customer as of a time, like its GET.
    let r = app
        .get(
            &app.admin_key,
            "/v1/audit/streams/customer/cus_ana/state?sequence=1",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["state"]["name"], "Ana Lima");
    assert_eq!(r.body["state"]["version"], 1);
    let r = app
        .stream_events(&app.admin_key, "customer", "cus_ana")
        .await;
    let types: Vec<&str> = r.body["data"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["CustomerCreated", "CustomerUpdated"]);
    app.assert_read_models_equal_rebuild().await;
}

/// Bad customer input is 422 naming the field, never a 500.
async fn customer_input_is_validated_naming_the_field(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = app.admin_key.clone();
    let cases = [
        (json!({}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": 7}), "name"),
        (json!({"name": "A", "email": "nope"}), "email"),
        (json!({"name": "A", "currency": "XXX"}), "currency"),
        (
            json!({"name": "A", "address": {"line1": "x", "city": "y", "country": "pt"}}),
            "address.country",
        ),
        (
            json!({"name": "A", "address": {"line1": "x", "country": "PT"}}),
            "address.city",
        ),
        (
            json!({"name": "A", "address": {"line1": "x", "city": "y", "country": "PT", "zip": "1"}}),
            "address.zip",
        ),
        (
            json!({"name": "A", "tax_rate_ids": ["vat"]}),
            "tax_rate_ids[0]",
        ),
        (json!({"name": "A", "metadata": {"k": 1}}), "metadata.k"),
        (json!({"name": "A", "nickname": "B"}), "nickname"),
    ];
    for (body, field) in cases {
        let r = app.put_customer(&key, "cus_1", body.clone()).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], field, "{body}: {:?}", r.body);
    }
    let r = app
        .put_customer(&key, &"c".repeat(129), json!({"name": "A"}))
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "customer_id");
    let reader = app.key("default", "reader").await;
    app.put_customer(&reader, "cus_1", json!({"name": "A"}))
        .await
        .assert_problem(403, "forbidden");
    app.get(&key, "/v1/customers?colour=red")
        .await
        .assert_problem(422, "validation_failed");
}
