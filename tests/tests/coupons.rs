//! Coupons end to end, both backends (issue 17, item 4): 50 redemptions at
//! once of a coupon with `max_redemptions: 10` (exactly 10 succeed, the rest
//! 409 `coupon_exhausted`); discount lines on the invoices a repeating
//! coupon covers and none after; an amount off never more than the lines;
//! every refusal as the contract names it (unknown, archived and expired
//! codes, another plan, bad terms, a canceled subscription); the audit
//! state of a coupon; read models equal to a rebuild.

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

async fn create_coupon(app: &TestApp, body: Value) -> Resp {
    app.post(&app.admin_key, "/v1/coupons", body).await
}

async fn apply(app: &TestApp, sub: &str, code: &str) -> Resp {
    app.post(
        &app.admin_key,
        &format!("/v1/subscriptions/{sub}/discount"),
        json!({"coupon_code": code}),
    )
    .await
}

async fn draft_subscription(app: &TestApp, plan: &str, customer: &str) -> String {
    let r = app
        .create_subscription(
            &app.admin_key,
            json!({"customer_id": customer, "plan_id": plan}),
        )
        .await;
    ok(&r, 201)["id"].as_str().expect("id").to_string()
}

async fn advance_to(app: &TestApp, to: &str) {
    let r = app.advance_clock(&app.admin_key, json!({"to": to})).await;
    ok(&r, 200);
    app.settle().await;
}

/// Every invoice of the subscription, by the period its first line bills.
async fn invoices_of(app: &TestApp, sub: &str) -> Vec<Value> {
    app.settle().await;
    let r = app
        .get(
            &app.admin_key,
            &format!("/v1/invoices?subscription_id={sub}&limit=200"),
        )
        .await;
    let mut out = ok(&r, 200)["data"].as_array().expect("data").clone();
    out.sort_by_key(|inv| {
        inv["lines"][0]["period"]["start"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    out
}

fn kinds_and_amounts(inv: &Value) -> Vec<(String, String)> {
    inv["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().expect("kind").to_string(),
                l["amount"].as_str().expect("amount").to_string(),
            )
        })
        .collect()
}

/// The test: 50 simultaneous redemptions of a coupon with
/// `max_redemptions: 10`; the coupon stream's sequence decides.
async fn fifty_redeem_at_once_and_exactly_ten_succeed(backend: tally_tests::Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let coupon = ok(
        &create_coupon(
            &app,
            json!({"code": "LAUNCH", "percent_off": "10", "duration": "forever",
                   "max_redemptions": 10}),
        )
        .await,
        201,
    );
    assert_eq!(coupon["status"], "active");
    assert_eq!(coupon["times_redeemed"], 0);
    let mut subs = Vec::new();
    for i in 0..50 {
        subs.push(draft_subscription(&app, &plan, &format!("cus_{i}")).await);
    }
    let answers = futures::future::join_all(subs.iter().map(|s| apply(&app, s, "LAUNCH"))).await;
    let mut redeemed = 0;
    for r in &answers {
        match r.status {
            200 => {
                assert_eq!(r.body["discount"]["code"], "LAUNCH");
                redeemed += 1;
            }
            409 => r.assert_problem(409, "coupon_exhausted"),
            other => panic!("unexpected {other}: {:#}", r.body),
        }
    }
    assert_eq!(redeemed, 10);
    let id = coupon["id"].as_str().expect("id");
    let events = ok(&app.stream_events(&app.admin_key, "coupon", id).await, 200);
    let redemptions = events["data"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event_type"] == "CouponRedeemed")
        .count();
    assert_eq!(redemptions, 10);
    app.settle().await;
    let read = ok(
        &app.get(&app.admin_key, &format!("/v1/coupons/{id}")).await,
        200,
    );
    assert_eq!(read["times_redeemed"], 10);
    assert_eq!(read["redeemable"], false);
    // Later and alone, by the code in another case (the same coupon), too.
    let late = draft_subscription(&app, &plan, "cus_late").await;
    apply(&app, &late, "launch")
        .await
        .assert_problem(409, "coupon_exhausted");
    app.assert_read_models_equal_rebuild().await;
}

/// A repeating coupon discounts exactly its periods' invoices: one negative
/// `discount` line on the recurring (and seat) lines, rounded half away
/// from zero; `subtotal − discount = total`; then no discount line.
async fn a_repeating_coupon_discounts_its_periods_invoices(backend: tally_tests::Backend) {
    let app =
        TestApp::spawn_billing(backend, t("2026-01-10T00:00:00Z"), BillingConfig::default()).await;
    let plan = app.standard_plan().await;
    ok(
        &create_coupon(
            &app,
            json!({"code": "TWO-MONTHS", "name": "Two months", "percent_off": "15",
                   "duration": "repeating", "duration_in_periods": 2, "plan_ids": [plan]}),
        )
        .await,
        201,
    );
    let r = app
        .create_subscription(
            &app.admin_key,
            json!({"customer_id": "cus_1", "plan_id": plan, "seats": 3, "coupon_code": "TWO-MONTHS"}),
        )
        .await;
    let created = ok(&r, 201);
    let sub = created["id"].as_str().expect("id").to_string();
    assert_eq!(created["discount"]["code"], "TWO-MONTHS");
    assert_eq!(created["discount"]["periods_left"], 2);
    ok(&app.activate(&app.admin_key, &sub, json!({})).await, 200);
    app.settle().await;
    advance_to(&app, "2026-02-10T00:00:00Z").await;
    advance_to(&app, "2026-03-10T00:00:00Z").await;
    let invoices = invoices_of(&app, &sub).await;
    assert_eq!(invoices.len(), 3, "{invoices:#?}");
    // 10.00 + 3 × 2.50 = 17.50; 15% = 2.625 → 2.63.
    for inv in &invoices[..2] {
        assert_eq!(
            kinds_and_amounts(inv),
            [
                ("recurring".to_string(), "10.00".to_string()),
                ("recurring".to_string(), "7.50".to_string()),
                ("discount".to_string(), "-2.63".to_string()),
            ],
            "{inv:#}"
        );
        assert_eq!(inv["subtotal"], "17.50");
        assert_eq!(inv["discount"], "2.63");
        assert_eq!(inv["total"], "14.87");
        assert_eq!(inv["amount_due"], "14.87");
    }
    assert_eq!(
        kinds_and_amounts(&invoices[2]),
        [
            ("recurring".to_string(), "10.00".to_string()),
            ("recurring".to_string(), "7.50".to_string()),
        ]
    );
    assert_eq!(invoices[2]["discount"], "0.00");
    assert_eq!(invoices[2]["total"], "17.50");
    let s = ok(
        &app.get(&app.admin_key, &format!("/v1/subscriptions/{sub}"))
            .await,
        200,
    );
    assert!(s["discount"].is_null(), "{s:#}");
    app.assert_read_models_equal_rebuild().await;
}

/// An amount off larger than the lines takes the lines and no more: the
/// invoice is zero and settled at issue; removing the discount ends it.
async fn an_amount_off_never_exceeds_the_lines(backend: tally_tests::Backend) {
    let app =
        TestApp::spawn_billing(backend, t("2026-01-10T00:00:00Z"), BillingConfig::default()).await;
    let plan = app.standard_plan().await;
    ok(
        &create_coupon(
            &app,
            json!({"code": "BIG", "amount_off": "50.00", "currency": "EUR", "duration": "forever"}),
        )
        .await,
        201,
    );
    let sub = draft_subscription(&app, &plan, "cus_big").await;
    let r = ok(&apply(&app, &sub, "BIG").await, 200);
    assert!(r["discount"]["periods_left"].is_null());
    ok(&app.activate(&app.admin_key, &sub, json!({})).await, 200);
    let invoices = invoices_of(&app, &sub).await;
    assert_eq!(invoices.len(), 1);
    let inv = &invoices[0];
    assert_eq!(
        kinds_and_amounts(inv).last().expect("line"),
        &("discount".to_string(), "-12.50".to_string())
    );
    assert_eq!(inv["total"], "0.00");
    assert_eq!(inv["status"], "paid");
    // Removed: the next invoice is not discounted.
    let r = app
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/subscriptions/{sub}/discount"),
            Some(&app.admin_key),
            &[],
            None,
        )
        .await;
    assert!(ok(&r, 200)["discount"].is_null());
    advance_to(&app, "2026-02-10T00:00:00Z").await;
    let invoices = invoices_of(&app, &sub).await;
    assert_eq!(invoices[1]["total"], "12.50", "{:#}", invoices[1]);
    app.assert_read_models_equal_rebuild().await;
}

/// Every refusal as API.md names it, and bad terms 422 naming the field.
async fn coupon_refusals_follow_the_contract(backend: tally_tests::Backend) {
    let app =
        TestApp::spawn_billing(backend, t("2026-01-10T00:00:00Z"), BillingConfig::default()).await;
    let plan = app.standard_plan().await;
    let sub = draft_subscription(&app, &plan, "cus_1").await;
    apply(&app, &sub, "NOPE")
        .await
        .assert_problem(422, "coupon_invalid");
    apply(&app, &sub, "not a code!")
        .await
        .assert_problem(422, "coupon_invalid");
    // Creating a subscription with an unknown code creates nothing.
    let r = app
        .create_subscription(
            &app.admin_key,
            json!({"customer_id": "cus_2", "plan_id": plan, "coupon_code": "NOPE"}),
        )
        .await;
    r.assert_problem(422, "coupon_invalid");

    let archived = ok(
        &create_coupon(
            &app,
            json!({"code": "OLD", "percent_off": "5", "duration": "once"}),
        )
        .await,
        201,
    );
    let id = archived["id"].as_str().expect("id");
    let r = app
        .post(
            &app.admin_key,
            &format!("/v1/coupons/{id}/archive"),
            json!({}),
        )
        .await;
    assert_eq!(ok(&r, 200)["status"], "archived");
    app.post(
        &app.admin_key,
        &format!("/v1/coupons/{id}/archive"),
        json!({}),
    )
    .await
    .assert_problem(409, "invalid_transition");
    apply(&app, &sub, "OLD")
        .await
        .assert_problem(422, "coupon_invalid");

    ok(
        &create_coupon(
            &app,
            json!({"code": "SOON", "percent_off": "5", "duration": "once",
                   "redeem_by": "2026-01-20T00:00:00Z"}),
        )
        .await,
        201,
    );
    ok(
        &create_coupon(
            &app,
            json!({"code": "OTHER-PLAN", "percent_off": "5", "duration": "once",
                   "plan_ids": ["plan_0000000000000000000000000000000a"]}),
        )
        .await,
        201,
    );
    apply(&app, &sub, "OTHER-PLAN")
        .await
        .assert_problem(422, "coupon_not_applicable");
    ok(
        &create_coupon(
            &app,
            json!({"code": "YEN", "amount_off": "500", "currency": "JPY", "duration": "once"}),
        )
        .await,
        201,
    );
    apply(&app, &sub, "YEN")
        .await
        .assert_problem(422, "coupon_not_applicable");
    advance_to(&app, "2026-01-21T00:00:00Z").await;
    apply(&app, &sub, "SOON")
        .await
        .assert_problem(422, "coupon_invalid");

    // The same code again, in any case, is the same coupon.
    create_coupon(
        &app,
        json!({"code": "old", "percent_off": "5", "duration": "once"}),
    )
    .await
    .assert_problem(409, "already_exists");

    let bad = [
        (json!({"code": "A", "duration": "once"}), "percent_off"),
        (
            json!({"code": "A", "percent_off": "5", "amount_off": "1.00", "currency": "EUR", "duration": "once"}),
            "percent_off",
        ),
        (
            json!({"code": "A", "amount_off": "1.00", "duration": "once"}),
            "currency",
        ),
        (
            json!({"code": "A", "amount_off": "1.001", "currency": "EUR", "duration": "once"}),
            "amount_off",
        ),
        (
            json!({"code": "A", "amount_off": "1", "currency": "XXX", "duration": "once"}),
            "currency",
        ),
        (
            json!({"code": "A", "percent_off": "101", "duration": "once"}),
            "percent_off",
        ),
        (
            json!({"code": "A", "percent_off": "0", "duration": "once"}),
            "percent_off",
        ),
        (
            json!({"code": "A", "percent_off": "abc", "duration": "once"}),
            "percent_off",
        ),
        (
            json!({"code": "A", "percent_off": "5", "duration": "weekly"}),
            "duration",
        ),
        (
            json!({"code": "A", "percent_off": "5", "duration": "repeating"}),
            "duration_in_periods",
        ),
        (
            json!({"code": "A", "percent_off": "5", "duration": "once", "max_redemptions": 0}),
            "max_redemptions",
        ),
        (
            json!({"code": "A", "percent_off": "5", "duration": "once", "redeem_by": "2020-01-01T00:00:00Z"}),
            "redeem_by",
        ),
        (
            json!({"code": "A", "percent_off": "5", "duration": "once", "redeem_by": "soon"}),
            "redeem_by",
        ),
        (
            json!({"code": "A", "percent_off": "5", "duration": "once", "plan_ids": ["basic"]}),
            "plan_ids[0]",
        ),
        (
            json!({"code": "A B", "percent_off": "5", "duration": "once"}),
            "code",
        ),
        (
            json!({"code": "", "percent_off": "5", "duration": "once"}),
            "code",
        ),
    ];
    for (body, field) in bad {
        let r = create_coupon(&app, body.clone()).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], field, "{body}: {:#}", r.body);
    }
    create_coupon(
        &app,
        json!({"code": "A", "percent_off": 5, "duration": "once"}),
    )
    .await
    .assert_problem(422, "validation_failed");
    create_coupon(
        &app,
        json!({"code": "A", "percent_off": "5", "duration": "once", "extra": 1}),
    )
    .await
    .assert_problem(422, "validation_failed");

    // A canceled subscription takes no coupon, and redeems none.
    ok(
        &create_coupon(
            &app,
            json!({"code": "LATE", "percent_off": "5", "duration": "once", "max_redemptions": 1}),
        )
        .await,
        201,
    );
    ok(
        &app.cancel(&app.admin_key, &sub, json!({"at": "now"})).await,
        200,
    );
    apply(&app, &sub, "LATE")
        .await
        .assert_problem(409, "invalid_transition");
    let other = draft_subscription(&app, &plan, "cus_3").await;
    ok(&apply(&app, &other, "LATE").await, 200);

    // The list by code, the detail, and unknown ids.
    app.settle().await;
    let r = ok(&app.get(&app.admin_key, "/v1/coupons?code=LATE").await, 200);
    assert_eq!(r["data"].as_array().expect("data").len(), 1);
    assert_eq!(r["data"][0]["times_redeemed"], 1);
    let r = ok(
        &app.get(&app.admin_key, "/v1/coupons?status=archived").await,
        200,
    );
    assert_eq!(r["data"][0]["code"], "OLD");
    app.get(&app.admin_key, "/v1/coupons/cpn_unknown")
        .await
        .assert_problem(404, "not_found");
    app.get(&app.admin_key, "/v1/coupons/sub_1")
        .await
        .assert_problem(404, "not_found");

    // The audit state of the archived coupon, as of before its archive.
    let r = ok(
        &app.get(
            &app.admin_key,
            &format!("/v1/audit/streams/coupon/{id}/state?sequence=1"),
        )
        .await,
        200,
    );
    assert_eq!(r["state"]["status"], "active");
    assert_eq!(r["state"]["code"], "OLD");
    let r = ok(
        &app.get(
            &app.admin_key,
            &format!("/v1/audit/streams/coupon/{id}/state"),
        )
        .await,
        200,
    );
    assert_eq!(r["state"]["status"], "archived");
    app.assert_read_models_equal_rebuild().await;
}

both_backends!(
    fifty_redeem_at_once_and_exactly_ten_succeed,
    a_repeating_coupon_discounts_its_periods_invoices,
    an_amount_off_never_exceeds_the_lines,
    coupon_refusals_follow_the_contract,
);
