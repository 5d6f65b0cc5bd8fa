//! The billing cycle and collections end to end, on the manual clock: 24
//! months of a monthly subscription activated on 31 January, with a plan
//! upgrade, a seat change, usage overage and one late payment, checked to
//! the cent; the billing policy run a second time over every renewal
//! without a second invoice; usage on a graduated meter billed one line per
//! tier; plan prices (12-place unit prices, tiers) refused with 422
//! naming the field; and trials: ended by the clock with the first invoice
//! and the anchor at `trial_end`, ended early, canceled unbilled, their
//! usage never billed.

use std::collections::BTreeSet;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tally_projections::runtime::Projector;
use tally_tests::{both_backends, table_rows, BillingConfig, Resp, TestApp};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(v.as_str().expect("decimal string")).expect("decimal")
}

fn time_of(v: &Value) -> DateTime<Utc> {
    t(v.as_str().expect("time string"))
}

/// What a renewal invoice must say: its closed period and its lines as
/// (kind, quantity, unit price, amount).
struct Expected {
    closed: (&'static str, &'static str),
    lines: Vec<(&'static str, &'static str, &'static str, &'static str)>,
    total: &'static str,
}

const LATE: usize = 10;

/// Plan B at 4 seats after the seat change: 30.00 + 4 × 5.00.
fn plan_b_4_seats() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    vec![
        ("recurring", "1", "30", "30.00"),
        ("recurring", "4", "5", "20.00"),
    ]
}

/// The closed periods: the anchor is 31 January 10:00 UTC, so periods end on
/// the last day of shorter months and come back to the 31st.
const PERIOD_ENDS: [&str; 25] = [
    "2026-01-31",
    "2026-02-28",
    "2026-03-31",
    "2026-04-30",
    "2026-05-31",
    "2026-06-30",
    "2026-07-31",
    "2026-08-31",
    "2026-09-30",
    "2026-10-31",
    "2026-11-30",
    "2026-12-31",
    "2027-01-31",
    "2027-02-28",
    "2027-03-31",
    "2027-04-30",
    "2027-05-31",
    "2027-06-30",
    "2027-07-31",
    "2027-08-31",
    "2027-09-30",
    "2027-10-31",
    "2027-11-30",
    "2027-12-31",
    "2028-01-31",
];

fn expected(renewal: usize) -> Expected {
    let closed = (PERIOD_ENDS[renewal - 1], PERIOD_ENDS[renewal]);
    let (lines, total) = match renewal {
        // Plan A at 2 seats: 10.00 + 2 × 2.50.
        1 | 2 => (
            vec![
                ("recurring", "1", "10", "10.00"),
                ("recurring", "2", "2.5", "5.00"),
            ],
            "15.00",
        ),
        // Upgrade to plan B on 15 April, half-way through a 30-day period:
        // credit half of 15.00, charge half of 40.00.
        3 => (
            vec![
                ("recurring", "1", "30", "30.00"),
                ("recurring", "2", "5", "10.00"),
                ("proration", "1", "-7.5", "-7.50"),
                ("proration", "1", "20", "20.00"),
            ],
            "52.50",
        ),
        // 2 → 4 seats on 16 May with 15 of 31 days left: fraction
        // 0.483870967742; credit round(−40.00 × f) = −19.35, charge
        // round(50.00 × f) = 24.19.
        4 => {
            let mut l = plan_b_4_seats();
            l.push(("proration", "1", "-19.35", "-19.35"));
            l.push(("proration", "1", "24.19", "24.19"));
            (l, "54.84")
        }
        // 1500 api_calls in the closed period, 1000 included: 500 × 0.01.
        7 => {
            let mut l = plan_b_4_seats();
            l.push(("usage", "500", "0.01", "5.00"));
            (l, "55.00")
        }
        _ => (plan_b_4_seats(), "50.00"),
    };
    Expected {
        closed,
        lines,
        total,
    }
}

fn plan_body(code: &str, base: &str, seat: &str) -> Value {
    json!({
        "code": code,
        "name": code,
        "currency": "EUR",
        "interval": "month",
        "base_price": base,
        "seat_price": seat,
        "seats": {"min": 1, "max": 20},
        "meters": [{"key": "api_calls", "included": "1000", "hard_cap": "5000",
                    "overage_unit_price": "0.01", "reset": "monthly"}]
    })
}

async fn advance_to(app: &TestApp, to: DateTime<Utc>) {
    let r = app
        .advance_clock(&app.admin_key, json!({"to": to.to_rfc3339()}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.settle().await;
}

async fn subscription(app: &TestApp, id: &str) -> Value {
    app.settle().await;
    let r = app
        .get(&app.admin_key, &format!("/v1/subscriptions/{id}"))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

/// Every invoice of the subscription, through all pages.
async fn invoices_of(app: &TestApp, sub: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/invoices?subscription_id={sub}&limit=7");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r: Resp = app.get(&app.admin_key, &path).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        out.extend(r.body["data"].as_array().expect("data").iter().cloned());
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

fn check_invoice(inv: &Value, renewal: usize) {
    let want = expected(renewal);
    let period = &inv["billing_period"];
    assert_eq!(
        time_of(&period["start"]),
        t(&format!("{}T10:00:00Z", want.closed.0)),
        "renewal {renewal}: {inv:#}"
    );
    assert_eq!(
        time_of(&period["end"]),
        t(&format!("{}T10:00:00Z", want.closed.1))
    );
    let lines = inv["lines"].as_array().expect("lines");
    let got: Vec<(String, Decimal, Decimal, String)> = lines
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().expect("kind").to_string(),
                dec(&l["quantity"]),
                dec(&l["unit_price"]),
                l["amount"].as_str().expect("amount").to_string(),
            )
        })
        .collect();
    let want_lines: Vec<(String, Decimal, Decimal, String)> = want
        .lines
        .iter()
        .map(|(k, q, p, a)| {
            (
                k.to_string(),
                Decimal::from_str(q).expect("q"),
                Decimal::from_str(p).expect("p"),
                a.to_string(),
            )
        })
        .collect();
    assert_eq!(got, want_lines, "renewal {renewal} lines: {inv:#}");
    assert_eq!(inv["total"], want.total, "renewal {renewal}");
    let sum: Decimal = lines.iter().map(|l| dec(&l["amount"])).sum();
    assert_eq!(sum, dec(&inv["total"]), "total = sum of rounded lines");
    // The recurring lines cover the new period, in advance.
    for l in lines.iter().filter(|l| l["kind"] == "recurring") {
        assert_eq!(
            time_of(&l["period"]["start"]),
            t(&format!("{}T10:00:00Z", want.closed.1))
        );
    }
}

async fn pay(app: &TestApp, inv: &Value) -> Resp {
    let id = inv["id"].as_str().expect("id");
    let r = app
        .post(
            &app.admin_key,
            &format!("/v1/invoices/{id}/payments"),
            json!({"amount": inv["amount_due"], "reference": format!("wire-{id}")}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "paid");
    r
}

async fn twenty_four_months(backend: tally_tests::Backend) {
    let app = TestApp::spawn_billing(
        backend,
        t("2026-01-31T10:00:00Z"),
        BillingConfig {
            due_days: 10,
            grace: Duration::days(7),
        },
    )
    .await;
    let _tdb = &app.db;
    let key = app.admin_key.clone();
    let plan_a = app
        .create_plan(&key, plan_body("a", "10.00", "2.50"))
        .await
        .id();
    let plan_b = app
        .create_plan(&key, plan_body("b", "30.00", "5.00"))
        .await
        .id();
    let r = app
        .create_subscription(
            &key,
            json!({"customer_id": "cus_acme", "plan_id": plan_a, "seats": 2}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let sub = r.id();
    let r = app.activate(&key, &sub, json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // Activation bills the first period in advance.
    app.settle().await;
    let first = invoices_of(&app, &sub).await;
    assert_eq!(first.len(), 1, "{first:#?}");
    let inv = &first[0];
    assert_eq!(inv["number"], "INV-000001");
    assert!(inv["billing_period"].is_null(), "not a renewal");
    assert_eq!(inv["total"], "15.00");
    assert_eq!(inv["lines"].as_array().expect("lines").len(), 2);
    assert_eq!(
        time_of(&inv["lines"][0]["period"]["end"]),
        t("2026-02-28T10:00:00Z")
    );
    let mut paid_total = dec(&inv["total"]);
    pay(&app, inv).await;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    seen.insert(inv["id"].as_str().expect("id").to_string());
    for (renewal, period_end) in PERIOD_ENDS.iter().enumerate().skip(1) {
        // What happens inside the period that this renewal closes.
        match renewal {
            3 => {
                advance_to(&app, t("2026-04-15T10:00:00Z")).await;
                let r = app
                    .change_plan(
                        &key,
                        &sub,
                        json!({"plan_id": plan_b, "proration": "prorate"}),
                    )
                    .await;
                assert_eq!(r.status, 200, "{:?}", r.body);
            }
            4 => {
                advance_to(&app, t("2026-05-16T10:00:00Z")).await;
                let r = app
                    .change_seats(&key, &sub, json!({"seats": 4, "proration": "prorate"}))
                    .await;
                assert_eq!(r.status, 200, "{:?}", r.body);
            }
            6 => {
                // Within the included quantity: no overage line.
                advance_to(&app, t("2026-07-10T10:00:00Z")).await;
                report_usage(&app, &sub, "jul", 800).await;
            }
            7 => {
                advance_to(&app, t("2026-08-10T10:00:00Z")).await;
                report_usage(&app, &sub, "aug-1", 900).await;
                report_usage(&app, &sub, "aug-2", 600).await;
            }
            _ => {}
        }
        let end = time_of(&subscription(&app, &sub).await["current_period"]["end"]);
        assert_eq!(end, t(&format!("{period_end}T10:00:00Z")));
        advance_to(&app, end).await;
        let all = invoices_of(&app, &sub).await;
        assert_eq!(
            all.len(),
            renewal + 1,
            "the first invoice and one per renewal so far"
        );
        let new: Vec<&Value> = all
            .iter()
            .filter(|i| !seen.contains(i["id"].as_str().expect("id")))
            .collect();
        assert_eq!(new.len(), 1, "exactly one new invoice at renewal {renewal}");
        let inv = new[0].clone();
        seen.insert(inv["id"].as_str().expect("id").to_string());
        assert_eq!(inv["status"], "open", "issued automatically");
        assert_eq!(inv["number"], format!("INV-{:06}", renewal + 1));
        check_invoice(&inv, renewal);
        paid_total += dec(&inv["total"]);

        if renewal == LATE {
            late_payment(&app, &sub, &inv).await;
        } else {
            pay(&app, &inv).await;
        }
    }
    app.settle().await;

    // Usage billed on the overage invoice is Billed, on that invoice.
    let usage = app
        .get(
            &key,
            &format!("/v1/usage?subscription_id={sub}&meter=api_calls"),
        )
        .await;
    for rec in usage.body["data"].as_array().expect("records") {
        assert_eq!(rec["status"], "billed", "{rec:#}");
    }

    // The balance journal.
    let b = app.get(&key, "/v1/customers/cus_acme/balance").await;
    assert_eq!(b.status, 200, "{:?}", b.body);
    let eur = &b.body["data"][0];
    assert_eq!(eur["currency"], "EUR");
    assert_eq!(dec(&eur["invoiced"]), paid_total);
    assert_eq!(dec(&eur["paid"]), paid_total);
    assert_eq!(eur["outstanding"], "0.00");
    assert_eq!(eur["voided"], "0.00");
    let mut debits = Decimal::ZERO;
    let mut credits = Decimal::ZERO;
    let mut cursor: Option<String> = None;
    let mut entries = 0;
    loop {
        let mut path = "/v1/customers/cus_acme/journal?limit=200".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let j = app.get(&key, &path).await;
        assert_eq!(j.status, 200, "{:?}", j.body);
        for e in j.body["data"].as_array().expect("entries") {
            debits += dec(&e["debit"]);
            credits += dec(&e["credit"]);
            entries += 1;
        }
        match j.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(debits, credits, "debits equal credits");
    assert_eq!(
        debits,
        paid_total * Decimal::from(2),
        "issue + payment per invoice"
    );
    assert_eq!(
        entries,
        25 * 4,
        "two legs for the issue, two for the payment"
    );

    // The inbox of the customer has the invoice notices.
    let inbox = app
        .get(&key, "/v1/inbox?recipient=customer:cus_acme&limit=200")
        .await;
    let titles: Vec<&str> = inbox.body["data"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["title"].as_str())
        .collect();
    assert_eq!(titles.iter().filter(|t| t.ends_with(" issued")).count(), 25);
    assert_eq!(titles.iter().filter(|t| **t == "Invoice paid").count(), 25);
    assert_eq!(
        titles.iter().filter(|t| **t == "Invoice past due").count(),
        1
    );

    // The billing policy runs again over every renewal: no second invoice,
    // no new invoice or usage events.
    let invoice_rows = table_rows(&app.state().db, "rm_invoices", "id, status, version").await;
    let log = app.state().dispatcher.log();
    let head = log.head().await.expect("head");
    let mut renewals = Vec::new();
    let mut at = 0;
    while at < head {
        let batch = log.read_after(at, 10_000).await.expect("log");
        at = batch.last().map_or(head, |e| e.position);
        renewals.extend(batch.into_iter().filter(|e| {
            matches!(
                e.event_type.as_str(),
                "PeriodRenewed" | "SubscriptionActivated"
            )
        }));
    }
    assert_eq!(renewals.len(), 25);
    let policy = tally_commands::policies::billing::BillingPolicy::new(
        app.state().dispatcher.clone(),
        app.state().billing.clone(),
    );
    let renewals: Vec<&_> = renewals.iter().collect();
    policy.effects(&renewals).await.expect("second run");
    assert_eq!(
        app.state().dispatcher.log().head().await.expect("head"),
        head
    );
    app.settle().await;
    assert_eq!(
        table_rows(&app.state().db, "rm_invoices", "id, status, version").await,
        invoice_rows
    );

    // Rebuilding the invoice and balance read models gives the same tables.
    let tables = [
        ("rm_invoices", "tenant, id, customer_id, subscription_id, status, number, due_at, body, version"),
        ("rm_journal", "tenant, event_id, leg, position, customer_id, currency, invoice_id, account, debit, credit, recorded_at"),
        ("rm_balances", "tenant, customer_id, currency, body"),
    ];
    let mut before = Vec::new();
    for (table, cols) in tables {
        before.push(table_rows(&app.state().db, table, cols).await);
    }
    for name in ["invoices", "balances"] {
        let r = app.rebuild(&key, name).await;
        assert!(r.status < 300, "{:?}", r.body);
    }
    app.settle().await;
    for ((table, cols), rows) in tables.iter().zip(before) {
        assert_eq!(
            table_rows(&app.state().db, table, cols).await,
            rows,
            "{table}"
        );
    }
}

async fn report_usage(app: &TestApp, sub: &str, tx: &str, quantity: u32) {
    let now = app.state().dispatcher.clock().now();
    let r = app
        .post(
            &app.admin_key,
            "/v1/usage",
            json!({"subscription_id": sub, "meter": "api_calls", "quantity": quantity,
                   "timestamp": now.to_rfc3339(), "transaction_id": tx}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
}

/// The late invoice: past its due date the subscription is past_due, after
/// the grace period suspended for non-payment, and paying it resumes it.
async fn late_payment(app: &TestApp, sub: &str, inv: &Value) {
    let due = time_of(&inv["due_at"]);
    assert_eq!(due, time_of(&inv["issued_at"]) + Duration::days(10));
    advance_to(app, due).await;
    assert_eq!(
        subscription(app, sub).await["status"],
        "active",
        "due, not past due"
    );
    advance_to(app, due + Duration::seconds(1)).await;
    assert_eq!(subscription(app, sub).await["status"], "past_due");
    advance_to(app, due + Duration::days(7)).await;
    let s = subscription(app, sub).await;
    assert_eq!(s["status"], "suspended", "{s:#}");
    assert_eq!(s["suspension"]["reason"], "non_payment");
    let r = pay(app, inv).await;
    assert_eq!(r.body["amount_due"], "0.00");
    advance_to(app, due + Duration::days(7) + Duration::seconds(1)).await;
    let s = subscription(app, sub).await;
    assert_eq!(s["status"], "active", "{s:#}");
    assert!(s["suspension"].is_null());
}

/// A graduated meter with a flat fee on its second tier, 1 000 units
/// included; usage of one month is billed at the renewal one line per tier,
/// each line its rounded product, the total their sum.
async fn graduated_usage_is_billed_per_tier(backend: tally_tests::Backend) {
    let app =
        TestApp::spawn_billing(backend, t("2026-03-01T00:00:00Z"), BillingConfig::default()).await;
    let key = app.admin_key.clone();
    let r = app
        .create_plan(
            &key,
            json!({
                "code": "metered", "name": "Metered", "currency": "EUR", "interval": "month",
                "base_price": "10.00",
                "meters": [{"key": "api_calls", "included": "1000", "reset": "monthly",
                    "pricing": {"model": "graduated", "tiers": [
                        {"up_to": "10000", "unit_price": "0.002", "flat_fee": "0"},
                        {"up_to": "50000", "unit_price": "0.0015", "flat_fee": "5.00"},
                        {"up_to": null, "unit_price": "0.001"}
                    ]}}]
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(
        r.body["meters"][0]["pricing"],
        json!({"model": "graduated", "tiers": [
            {"up_to": "10000", "unit_price": "0.002", "flat_fee": "0.00"},
            {"up_to": "50000", "unit_price": "0.0015", "flat_fee": "5.00"},
            {"up_to": null, "unit_price": "0.001", "flat_fee": "0.00"}
        ]})
    );
    assert!(r.body["meters"][0]["overage_unit_price"].is_null());
    let plan = r.id();
    let r = app
        .create_subscription(&key, json!({"customer_id": "cus_tiers", "plan_id": plan}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let sub = r.id();
    let r = app.activate(&key, &sub, json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    advance_to(&app, t("2026-03-10T00:00:00Z")).await;
    report_usage(&app, &sub, "tiers-1", 50_000).await;
    advance_to(&app, t("2026-03-20T00:00:00Z")).await;
    report_usage(&app, &sub, "tiers-2", 26_333).await;
    advance_to(&app, t("2026-04-01T00:00:00Z")).await;

    let invoices = invoices_of(&app, &sub).await;
    assert_eq!(
        invoices.len(),
        2,
        "activation and one renewal: {invoices:#?}"
    );
    let renewal = invoices
        .iter()
        .find(|inv| !inv["billing_period"].is_null())
        .expect("the renewal invoice");
    assert_eq!(
        time_of(&renewal["billing_period"]["end"]),
        t("2026-04-01T00:00:00Z")
    );
    // 76 333 used, 75 333 billable: 10 000 × 0.002, 40 000 × 0.0015 and the
    // tier's 5.00, 25 333 × 0.001 = 25.333 → 25.33.
    let got: Vec<(String, String, String, String, String)> = renewal["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            let text = |f: &str| l[f].as_str().expect(f).to_string();
            (
                text("kind"),
                text("description"),
                text("quantity"),
                text("unit_price"),
                text("amount"),
            )
        })
        .collect();
    let want: Vec<(String, String, String, String, String)> = [
        ("recurring", "Metered (month)", "1", "10", "10.00"),
        (
            "usage",
            "Overage: api_calls, tier 1 (up to 10000)",
            "10000",
            "0.002",
            "20.00",
        ),
        (
            "usage",
            "Overage: api_calls, tier 2 (above 10000 up to 50000)",
            "40000",
            "0.0015",
            "60.00",
        ),
        (
            "usage",
            "Overage: api_calls, tier 2 flat fee",
            "1",
            "5",
            "5.00",
        ),
        (
            "usage",
            "Overage: api_calls, tier 3 (above 50000)",
            "25333",
            "0.001",
            "25.33",
        ),
    ]
    .iter()
    .map(|(k, d, q, p, a)| {
        (
            k.to_string(),
            d.to_string(),
            q.to_string(),
            p.to_string(),
            a.to_string(),
        )
    })
    .collect();
    assert_eq!(got, want, "{renewal:#}");
    assert_eq!(renewal["total"], "120.33");
    assert_eq!(renewal["amount_due"], "120.33");
    for l in renewal["lines"].as_array().expect("lines").iter().skip(1) {
        assert_eq!(time_of(&l["period"]["start"]), t("2026-03-01T00:00:00Z"));
        assert_eq!(time_of(&l["period"]["end"]), t("2026-04-01T00:00:00Z"));
    }
}

/// Issue 17: a sub-cent unit price in EUR was refused ("EUR allows at most 2
/// decimal places"). Unit prices take 12 places, amounts the minor unit;
/// bad tiers are 422 naming the field, never a 500.
async fn plan_prices_are_validated_naming_the_field(backend: tally_tests::Backend) {
    let app = TestApp::spawn(backend).await;
    let key = app.admin_key.clone();
    let plan = |meter: Value| {
        json!({"code": "p", "name": "P", "currency": "EUR", "interval": "month",
               "base_price": "10.00", "seat_price": "0.125", "meters": [meter]})
    };
    let r = app
        .create_plan(
            &key,
            plan(json!({"key": "api_calls", "overage_unit_price": "0.002", "reset": "monthly"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["meters"][0]["overage_unit_price"], "0.002");
    assert_eq!(
        r.body["meters"][0]["pricing"],
        json!({"model": "per_unit", "unit_price": "0.002"})
    );
    assert_eq!(r.body["seat_price"], "0.125");
    let r = app
        .create_plan(
            &key,
            plan(json!({"key": "api_calls", "reset": "monthly",
                        "pricing": {"model": "package", "package_size": "1000", "package_price": "0.000000000001"}})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(
        r.body["meters"][0]["pricing"],
        json!({"model": "package", "package_size": "1000", "package_price": "0.000000000001"})
    );

    let tiers = |tiers: Value| json!({"model": "volume", "tiers": tiers});
    for (meter, field) in [
        (
            json!({"overage_unit_price": "0.0000000000001"}),
            "meters[0].overage_unit_price",
        ),
        (
            json!({"pricing": {"model": "per_unit", "unit_price": "0.0000000000001"}}),
            "meters[0].pricing.unit_price",
        ),
        (
            json!({"overage_unit_price": "0.01", "pricing": {"model": "per_unit", "unit_price": "0.01"}}),
            "meters[0].pricing",
        ),
        (
            json!({"pricing": {"model": "stepped", "unit_price": "0.01"}}),
            "meters[0].pricing.model",
        ),
        (
            json!({"pricing": {"model": "graduated"}}),
            "meters[0].pricing.tiers",
        ),
        (
            json!({"pricing": {"model": "graduated", "tiers": [], "unit_price": "1"}}),
            "meters[0].pricing.unit_price",
        ),
        (
            json!({"pricing": tiers(json!([]))}),
            "meters[0].pricing.tiers",
        ),
        (
            json!({"pricing": tiers(json!([{"up_to": "100", "unit_price": "1"}]))}),
            "meters[0].pricing.tiers[0].up_to",
        ),
        (
            json!({"pricing": tiers(json!([{"up_to": "100", "unit_price": "1"},
                                           {"up_to": "50", "unit_price": "1"},
                                           {"up_to": null, "unit_price": "1"}]))}),
            "meters[0].pricing.tiers[1].up_to",
        ),
        (
            json!({"pricing": tiers(json!([{"up_to": null, "unit_price": "1"},
                                           {"up_to": null, "unit_price": "1"}]))}),
            "meters[0].pricing.tiers[0].up_to",
        ),
        (
            json!({"pricing": tiers(json!([{"up_to": "ten", "unit_price": "1"},
                                           {"up_to": null, "unit_price": "1"}]))}),
            "meters[0].pricing.tiers[0].up_to",
        ),
        (
            json!({"pricing": tiers(json!([{"up_to": null, "unit_price": "1", "flat_fee": "0.001"}]))}),
            "meters[0].pricing.tiers[0].flat_fee",
        ),
        (
            json!({"pricing": tiers(json!([{"up_to": null, "unit_price": "1", "cap": "1"}]))}),
            "meters[0].pricing.tiers[0]",
        ),
        (
            json!({"pricing": {"model": "package", "package_size": "0.5", "package_price": "1"}}),
            "meters[0].pricing.package_size",
        ),
        (
            json!({"pricing": {"model": "package", "package_size": "10"}}),
            "meters[0].pricing.package_price",
        ),
    ] {
        let mut meter = meter;
        meter["key"] = json!("api_calls");
        meter["reset"] = json!("monthly");
        let r = app.create_plan(&key, plan(meter.clone())).await;
        r.assert_problem(422, "validation_failed");
        let got = r.body["errors"][0]["field"].as_str().unwrap_or_default();
        assert!(got.starts_with(field), "{meter}: {:?}", r.body);
    }
    let mut body = plan(json!({"key": "api_calls", "reset": "monthly"}));
    body["seat_price"] = json!("0.1250000000001");
    let r = app.create_plan(&key, body).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "seat_price");
    assert_eq!(r.body["errors"][0]["message"], "at most 12 decimal places");
    let mut body = plan(json!({"key": "api_calls", "reset": "monthly"}));
    body["base_price"] = json!("10.001");
    let r = app.create_plan(&key, body).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "base_price");
}

/// A monthly plan with a 14-day trial: 10.00 EUR, 1 000 api_calls included,
/// 0.01 per call beyond.
async fn trial_plan(app: &TestApp, trial_days: u32) -> String {
    let r = app
        .create_plan(
            &app.admin_key,
            json!({
                "code": format!("trial{trial_days}"), "name": "Trial", "currency": "EUR",
                "interval": "month", "base_price": "10.00", "trial_days": trial_days,
                "meters": [{"key": "api_calls", "included": "1000",
                            "overage_unit_price": "0.01", "reset": "monthly"}]
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["trial_days"], trial_days);
    r.id()
}

/// A subscription on `plan`, activated now; `body` adds to the create body.
async fn activated(app: &TestApp, plan: &str, customer: &str, body: Value) -> (String, Resp) {
    let mut create = json!({"customer_id": customer, "plan_id": plan});
    if let (Some(create), Some(extra)) = (create.as_object_mut(), body.as_object()) {
        create.extend(extra.clone());
    }
    let r = app.create_subscription(&app.admin_key, create).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.id();
    let r = app.activate(&app.admin_key, &id, json!({})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    (id, r)
}

/// Issue 17, item 3: activated into a 14-day trial, nothing is billed; at
/// `trial_end` the server's clock ends it, the first period and the first
/// invoice start there; usage of the trial is recorded but never billed.
async fn a_trial_ends_by_the_clock_and_bills_from_trial_end(backend: tally_tests::Backend) {
    let app =
        TestApp::spawn_billing(backend, t("2026-03-01T00:00:00Z"), BillingConfig::default()).await;
    let plan = trial_plan(&app, 14).await;
    let (sub, r) = activated(&app, &plan, "cus_trial", json!({})).await;
    assert_eq!(r.body["status"], "trialing", "{:#}", r.body);
    assert_eq!(time_of(&r.body["trial_start"]), t("2026-03-01T00:00:00Z"));
    assert_eq!(time_of(&r.body["trial_end"]), t("2026-03-15T00:00:00Z"));
    assert!(r.body["current_period"].is_null());
    assert!(r.body["activated_at"].is_null());

    // Usage during the trial: recorded (and counted), never billed.
    advance_to(&app, t("2026-03-05T00:00:00Z")).await;
    report_usage(&app, &sub, "trial-1", 3_000).await;
    app.settle().await;
    let r = app
        .get(
            &app.admin_key,
            &format!("/v1/usage/summary?subscription_id={sub}&meter=api_calls"),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["total"], "3000");
    advance_to(&app, t("2026-03-14T23:59:59Z")).await;
    assert_eq!(subscription(&app, &sub).await["status"], "trialing");
    assert_eq!(invoices_of(&app, &sub).await, Vec::<Value>::new());

    // The clock passes trial_end: active, anchored at trial_end (not at the
    // time the scheduler noticed), the first invoice for that period.
    advance_to(&app, t("2026-03-15T06:00:00Z")).await;
    let s = subscription(&app, &sub).await;
    assert_eq!(s["status"], "active", "{s:#}");
    assert_eq!(
        time_of(&s["current_period"]["start"]),
        t("2026-03-15T00:00:00Z")
    );
    assert_eq!(
        time_of(&s["current_period"]["end"]),
        t("2026-04-15T00:00:00Z")
    );
    assert_eq!(time_of(&s["activated_at"]), t("2026-03-15T00:00:00Z"));
    let invoices = invoices_of(&app, &sub).await;
    assert_eq!(invoices.len(), 1, "{invoices:#?}");
    let first = &invoices[0];
    assert_eq!(first["status"], "open");
    assert_eq!(first["total"], "10.00");
    assert_eq!(
        time_of(&first["lines"][0]["period"]["start"]),
        t("2026-03-15T00:00:00Z")
    );
    pay(&app, first).await;

    // The first renewal bills the next period and no usage: the trial's
    // 3 000 calls lie before the first period.
    advance_to(&app, t("2026-04-15T00:00:00Z")).await;
    let invoices = invoices_of(&app, &sub).await;
    assert_eq!(invoices.len(), 2, "{invoices:#?}");
    let renewal = invoices
        .iter()
        .find(|inv| !inv["billing_period"].is_null())
        .expect("the renewal invoice");
    let kinds: Vec<&str> = renewal["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["recurring"], "{renewal:#}");
    assert_eq!(renewal["total"], "10.00");

    // The log tells the story, and the read models equal a rebuild.
    let r = app
        .stream_events(&app.admin_key, "subscription", &sub)
        .await;
    let types: Vec<&str> = r.body["data"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        [
            "SubscriptionCreated",
            "TrialStarted",
            "TrialEnded",
            "SubscriptionActivated",
            "PeriodRenewed"
        ]
    );
    app.assert_read_models_equal_rebuild().await;
}

/// `end-trial` ends a trial now: active from now, invoiced at once; the
/// subscription's own `trial_days` replace the plan's (here: none).
async fn ending_a_trial_early_bills_from_then(backend: tally_tests::Backend) {
    let app =
        TestApp::spawn_billing(backend, t("2026-03-01T00:00:00Z"), BillingConfig::default()).await;
    let plan = trial_plan(&app, 0).await;
    let (sub, r) = activated(&app, &plan, "cus_early", json!({"trial_days": 30})).await;
    assert_eq!(r.body["status"], "trialing");
    assert_eq!(r.body["trial_days"], 30);
    assert_eq!(time_of(&r.body["trial_end"]), t("2026-03-31T00:00:00Z"));
    advance_to(&app, t("2026-03-10T12:00:00Z")).await;
    let r = app.end_trial(&app.admin_key, &sub).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "active");
    assert_eq!(time_of(&r.body["trial_end"]), t("2026-03-10T12:00:00Z"));
    assert_eq!(
        time_of(&r.body["current_period"]["start"]),
        t("2026-03-10T12:00:00Z")
    );
    app.settle().await;
    let invoices = invoices_of(&app, &sub).await;
    assert_eq!(invoices.len(), 1, "{invoices:#?}");
    assert_eq!(invoices[0]["total"], "10.00");
    // Once only: the trial is over.
    app.end_trial(&app.admin_key, &sub)
        .await
        .assert_problem(409, "invalid_transition");
    // Nor on a subscription without a trial.
    let (plain, r) = activated(&app, &plan, "cus_plain", json!({})).await;
    assert_eq!(r.body["status"], "active");
    assert!(r.body["trial_end"].is_null());
    let r = app.end_trial(&app.admin_key, &plain).await;
    r.assert_problem(409, "invalid_transition");
    assert!(
        r.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("end_trial") && d.contains("active")),
        "{:?}",
        r.body
    );
}

/// Canceled during its trial, now or at the trial's end, a subscription is
/// never billed.
async fn canceling_during_a_trial_bills_nothing(backend: tally_tests::Backend) {
    let app =
        TestApp::spawn_billing(backend, t("2026-03-01T00:00:00Z"), BillingConfig::default()).await;
    let plan = trial_plan(&app, 14).await;
    let (now, _) = activated(&app, &plan, "cus_now", json!({})).await;
    let (later, _) = activated(&app, &plan, "cus_later", json!({})).await;
    advance_to(&app, t("2026-03-05T00:00:00Z")).await;
    let r = app.cancel(&app.admin_key, &now, json!({"at": "now"})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "canceled");
    let r = app
        .cancel(&app.admin_key, &later, json!({"at": "period_end"}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "trialing");
    assert_eq!(r.body["cancel_at_period_end"], true);
    advance_to(&app, t("2026-05-01T00:00:00Z")).await;
    let s = subscription(&app, &later).await;
    assert_eq!(s["status"], "canceled", "{s:#}");
    assert_eq!(time_of(&s["canceled_at"]), t("2026-03-15T00:00:00Z"));
    assert!(s["current_period"].is_null());
    for sub in [&now, &later] {
        assert_eq!(invoices_of(&app, sub).await, Vec::<Value>::new(), "{sub}");
    }
    app.end_trial(&app.admin_key, &later)
        .await
        .assert_problem(409, "invalid_transition");
}

/// Bad trial input is 422 naming the field, never a 500.
async fn trial_input_is_validated_naming_the_field(backend: tally_tests::Backend) {
    let app = TestApp::spawn(backend).await;
    let key = app.admin_key.clone();
    let mut body = json!({"code": "t", "name": "T", "currency": "EUR", "interval": "month",
                          "base_price": "10.00", "trial_days": 731});
    let r = app.create_plan(&key, body.clone()).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "trial_days");
    for bad in [json!(-1), json!("14"), json!(1.5)] {
        body["trial_days"] = bad.clone();
        let r = app.create_plan(&key, body.clone()).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], "trial_days", "{bad}");
    }
    let plan = app.standard_plan().await;
    let r = app
        .create_subscription(
            &key,
            json!({"customer_id": "cus_1", "plan_id": plan, "trial_days": 731}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "trial_days");
    let r = app
        .create_subscription(&key, json!({"customer_id": "cus_1", "plan_id": plan}))
        .await;
    let sub = r.id();
    app.end_trial(&key, &sub)
        .await
        .assert_problem(409, "invalid_transition");
    let r = app
        .post(
            &key,
            &format!("/v1/subscriptions/{sub}/end-trial"),
            json!({"at": "now"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    let r = app.get(&key, "/v1/subscriptions?status=trialing").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

both_backends!(
    twenty_four_months,
    graduated_usage_is_billed_per_tier,
    plan_prices_are_validated_naming_the_field,
    a_trial_ends_by_the_clock_and_bills_from_trial_end,
    ending_a_trial_early_bills_from_then,
    canceling_during_a_trial_bills_nothing,
    trial_input_is_validated_naming_the_field
);
