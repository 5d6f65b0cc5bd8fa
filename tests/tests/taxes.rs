//! Taxes end to end, both backends (issue 17, item 5): tax rates created,
//! listed, archived; exclusive and inclusive rates on the invoices of a
//! plan, a subscription and a customer in the precedence line →
//! subscription → plan → customer, rounded per line and rate, with a
//! coupon's discount lowering the tax; `subtotal − discount + exclusive
//! tax = total`; bad input and archived or unknown rates 422 naming the
//! field; the audit state of a rate; read models equal to a rebuild.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tally_tests::{both_backends, BillingConfig, Resp, TestApp};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn ok(r: &Resp, status: u16) -> Value {
    assert_eq!(r.status, status, "{:#}", r.body);
    r.body.clone()
}

async fn tax_rate(app: &TestApp, name: &str, percentage: &str, inclusive: bool) -> String {
    let r = app
        .post(
            &app.admin_key,
            "/v1/tax-rates",
            json!({"name": name, "percentage": percentage, "inclusive": inclusive, "country": "DE"}),
        )
        .await;
    let body = ok(&r, 201);
    assert_eq!(body["status"], "active");
    body["id"].as_str().expect("id").to_string()
}

/// (kind, amount, [tax amounts]) of each line.
fn lines(inv: &Value) -> Vec<(String, String, Vec<String>)> {
    inv["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().expect("kind").to_string(),
                l["amount"].as_str().expect("amount").to_string(),
                l["tax_amounts"]
                    .as_array()
                    .expect("tax_amounts")
                    .iter()
                    .map(|t| t["amount"].as_str().expect("amount").to_string())
                    .collect(),
            )
        })
        .collect()
}

fn s(v: &str) -> String {
    v.to_string()
}

async fn first_invoice(app: &TestApp, sub: &str) -> Value {
    app.settle().await;
    let r = app
        .get(
            &app.admin_key,
            &format!("/v1/invoices?subscription_id={sub}"),
        )
        .await;
    let data = ok(&r, 200)["data"].as_array().expect("data").clone();
    assert_eq!(data.len(), 1, "{data:#?}");
    data[0].clone()
}

/// The plan's exclusive 19% with a 10% coupon: the discount line is taxed
/// too, each line and rate rounded on its own.
async fn plan_subscription_and_customer_rates_in_precedence(backend: tally_tests::Backend) {
    let app =
        TestApp::spawn_billing(backend, t("2026-01-10T00:00:00Z"), BillingConfig::default()).await;
    let key = &app.admin_key;
    let vat = tax_rate(&app, "VAT", "19", false).await;
    let included = tax_rate(&app, "MwSt incl.", "20", true).await;
    let reduced = tax_rate(&app, "Reduced", "7", false).await;
    let mut body = tally_tests::standard_plan_body("taxed");
    body["tax_rate_ids"] = json!([vat]);
    let plan = ok(&app.create_plan(key, body).await, 201);
    assert_eq!(plan["tax_rate_ids"], json!([vat]));
    let plan = plan["id"].as_str().expect("id").to_string();
    ok(
        &app.post(
            key,
            "/v1/coupons",
            json!({"code": "TEN", "percent_off": "10", "duration": "forever"}),
        )
        .await,
        201,
    );

    // The plan's rate: 10.00 → 1.90, 2.50 → 0.475 → 0.48, −1.25 → −0.2375 → −0.24.
    let r = app
        .create_subscription(
            key,
            json!({"customer_id": "cus_plan", "plan_id": plan, "coupon_code": "TEN"}),
        )
        .await;
    let sub = ok(&r, 201)["id"].as_str().expect("id").to_string();
    ok(&app.activate(key, &sub, json!({})).await, 200);
    let inv = first_invoice(&app, &sub).await;
    assert_eq!(
        lines(&inv),
        [
            (s("recurring"), s("10.00"), vec![s("1.90")]),
            (s("recurring"), s("2.50"), vec![s("0.48")]),
            (s("discount"), s("-1.25"), vec![s("-0.24")]),
        ],
        "{inv:#}"
    );
    assert_eq!(
        (
            &inv["subtotal"],
            &inv["discount"],
            &inv["tax"],
            &inv["total"]
        ),
        (
            &json!("12.50"),
            &json!("1.25"),
            &json!("2.14"),
            &json!("13.39")
        )
    );
    assert_eq!(inv["amount_due"], "13.39");
    assert_eq!(inv["lines"][0]["tax_amounts"][0]["tax_rate_id"], json!(vat));

    // The subscription's own inclusive rate wins over the plan's: 10.00
    // holds 1.67, 2.50 holds 0.42; nothing is added.
    let r = app
        .create_subscription(
            key,
            json!({"customer_id": "cus_sub", "plan_id": plan, "tax_rate_ids": [included]}),
        )
        .await;
    let created = ok(&r, 201);
    assert_eq!(created["tax_rate_ids"], json!([included]));
    let sub = created["id"].as_str().expect("id").to_string();
    ok(&app.activate(key, &sub, json!({})).await, 200);
    let inv = first_invoice(&app, &sub).await;
    assert_eq!(
        lines(&inv),
        [
            (s("recurring"), s("10.00"), vec![s("1.67")]),
            (s("recurring"), s("2.50"), vec![s("0.42")]),
        ]
    );
    assert_eq!(
        (&inv["subtotal"], &inv["tax"], &inv["total"]),
        (&json!("12.50"), &json!("2.09"), &json!("12.50"))
    );

    // A manual invoice: the customer's default rate, unless a line has its own.
    let r = app
        .put_customer(
            key,
            "cus_tax",
            json!({"name": "Taxed GmbH", "tax_rate_ids": [vat]}),
        )
        .await;
    ok(&r, 201);
    let r = app
        .post(
            key,
            "/v1/invoices",
            json!({"customer_id": "cus_tax", "currency": "EUR", "lines": [
                {"description": "Consulting", "quantity": "3", "unit_price": "33.335"},
                {"description": "Books", "quantity": "1", "unit_price": "20.00", "tax_rate_ids": [reduced]}]}),
        )
        .await;
    let id = ok(&r, 201)["id"].as_str().expect("id").to_string();
    assert_eq!(r.body["tax"], "0.00", "no tax before issue");
    let inv = ok(
        &app.post(key, &format!("/v1/invoices/{id}/issue"), json!({}))
            .await,
        200,
    );
    // 3 × 33.335 = 100.005 → 100.01; 19% = 19.0019 → 19.00; 7% of 20.00 = 1.40.
    assert_eq!(
        lines(&inv),
        [
            (s("manual"), s("100.01"), vec![s("19.00")]),
            (s("manual"), s("20.00"), vec![s("1.40")]),
        ]
    );
    assert_eq!(
        (&inv["subtotal"], &inv["tax"], &inv["total"]),
        (&json!("120.01"), &json!("20.40"), &json!("140.41"))
    );
    app.assert_read_models_equal_rebuild().await;
}

/// Bad tax rates and bad references are 422 naming the field; an archived
/// rate is attached nowhere new; lists, detail and audit state.
async fn tax_rates_are_validated_archived_and_audited(backend: tally_tests::Backend) {
    let app = TestApp::spawn(backend).await;
    let key = &app.admin_key;
    let bad = [
        (
            json!({"name": "X", "percentage": "101", "inclusive": false}),
            "percentage",
        ),
        (
            json!({"name": "X", "percentage": "-1", "inclusive": false}),
            "percentage",
        ),
        (
            json!({"name": "X", "percentage": "abc", "inclusive": false}),
            "percentage",
        ),
        (
            json!({"name": "X", "percentage": "7.12345", "inclusive": false}),
            "percentage",
        ),
        (
            json!({"name": " ", "percentage": "7", "inclusive": false}),
            "name",
        ),
        (
            json!({"name": "X", "percentage": "7", "inclusive": false, "country": "de"}),
            "country",
        ),
    ];
    for (body, field) in bad {
        let r = app.post(key, "/v1/tax-rates", body.clone()).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], field, "{body}");
    }
    for body in [
        json!({"name": "X", "percentage": 7, "inclusive": false}),
        json!({"name": "X", "percentage": "7"}),
        json!({"name": "X", "percentage": "7", "inclusive": false, "rate": 1}),
    ] {
        app.post(key, "/v1/tax-rates", body)
            .await
            .assert_problem(422, "validation_failed");
    }
    let old = tax_rate(&app, "Old VAT", "16", false).await;
    let r = app
        .post(key, &format!("/v1/tax-rates/{old}/archive"), json!({}))
        .await;
    assert_eq!(ok(&r, 200)["status"], "archived");
    app.post(key, &format!("/v1/tax-rates/{old}/archive"), json!({}))
        .await
        .assert_problem(409, "invalid_transition");
    let mut body = tally_tests::standard_plan_body("old");
    body["tax_rate_ids"] = json!([old]);
    let r = app.create_plan(key, body).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "tax_rate_ids[0]");
    let plan = app.standard_plan().await;
    for ids in [
        json!(["txr_0000000000000000000000000000000a"]),
        json!(["vat"]),
    ] {
        let r = app
            .create_subscription(
                key,
                json!({"customer_id": "cus_1", "plan_id": plan, "tax_rate_ids": ids}),
            )
            .await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], "tax_rate_ids[0]", "{ids}");
    }
    let r = app
        .post(
            key,
            "/v1/invoices",
            json!({"customer_id": "cus_1", "currency": "EUR", "lines": [
                {"description": "x", "quantity": "1", "unit_price": "1", "tax_rate_ids": [old]}]}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "lines[0].tax_rate_ids[0]");

    app.settle().await;
    let r = ok(&app.get(key, "/v1/tax-rates?status=archived").await, 200);
    assert_eq!(r["data"].as_array().expect("data").len(), 1);
    assert_eq!(r["data"][0]["id"], json!(old));
    let r = ok(&app.get(key, &format!("/v1/tax-rates/{old}")).await, 200);
    assert_eq!(
        (&r["percentage"], &r["inclusive"]),
        (&json!("16"), &json!(false))
    );
    app.get(key, "/v1/tax-rates/txr_unknown")
        .await
        .assert_problem(404, "not_found");
    let r = ok(
        &app.get(
            key,
            &format!("/v1/audit/streams/tax_rate/{old}/state?sequence=1"),
        )
        .await,
        200,
    );
    assert_eq!(r["state"]["status"], "active");
    assert_eq!(r["state"]["name"], "Old VAT");
    app.assert_read_models_equal_rebuild().await;
}

both_backends!(
    plan_subscription_and_customer_rates_in_precedence,
    tax_rates_are_validated_archived_and_audited,
);
