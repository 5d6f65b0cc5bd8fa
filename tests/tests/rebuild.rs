//! Rebuilds of every read model, on both backends: a mixed workload over all
//! aggregates, then each read model rebuilt blue/green must equal the one
//! built incrementally, row for row; and queries keep answering from the
//! current tables while a rebuild runs.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tally_projections::bulk;
use tally_projections::rebuild::{self, Start};
use tally_projections::runtime::{RuntimeConfig, StepOutcome};
use tally_projections::{all_projectors, Runtime, Tables};
use tally_tests::{
    assert_same_read_models, both_backends, dump_read_models, Backend, BillingConfig, TestApp,
};

both_backends!(
    every_read_model_rebuilds_equal,
    queries_answer_from_current_tables_during_a_rebuild
);

fn start() -> DateTime<Utc> {
    "2026-01-15T09:00:00Z".parse().unwrap()
}

fn ok(r: &tally_tests::Resp, status: u16) -> Value {
    assert_eq!(r.status, status, "{:?}", r.body);
    r.body.clone()
}

/// Plans (one with graduated pricing), customers (created and updated, so
/// invoices copy their details), subscriptions through renewals, one in its
/// trial, plan and seat changes, usage with overage (below the hard cap: a quota suspension would be resumed by a
/// timer, after the workload has settled) and a void, invoices paid, partly paid, voided and written off, a past-due
/// suspension, credit notes (credit carried to a renewal, a refund), coupons
/// (redeemed into discount lines of renewals, one archived), tax rates (one
/// on the manual invoices' lines, one archived), tickets with
/// comments and moves, and inbox read state.
async fn mixed_workload(app: &TestApp) {
    let key = &app.admin_key;
    let basic = app.standard_plan().await;
    let mut pro_body = tally_tests::standard_plan_body("pro");
    pro_body["base_price"] = json!("30.00");
    // Graduated, nothing included: the usage of the subscription moved to it
    // is billed in two tiers, one with a flat fee.
    pro_body["meters"] = json!([{"key": "api_calls", "hard_cap": "5000", "reset": "monthly",
        "pricing": {"model": "graduated", "tiers": [
            {"up_to": "500", "unit_price": "0.01"},
            {"up_to": null, "unit_price": "0.005", "flat_fee": "1.00"}]}}]);
    let pro = ok(&app.create_plan(key, pro_body).await, 201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut subs = Vec::new();
    for i in 0..4u32 {
        let r = app
            .create_subscription(
                key,
                json!({"customer_id": format!("cus_{i}"), "plan_id": basic, "seats": 1 + i}),
            )
            .await;
        let id = ok(&r, 201)["id"].as_str().unwrap().to_string();
        ok(&app.activate(key, &id, json!({})).await, 200);
        subs.push(id);
    }
    for (id, name) in [("cus_0", "Zero"), ("cus_9", "Nine"), ("cus_0", "Zero Ltd")] {
        let r = app
            .put_customer(
                key,
                id,
                json!({"name": name, "email": format!("{id}@example.com"), "currency": "EUR",
                       "address": {"line1": "Main St 1", "city": "Berlin", "country": "DE"}}),
            )
            .await;
        assert!(matches!(r.status, 200 | 201), "{:?}", r.body);
    }
    let r = app
        .create_subscription(
            key,
            json!({"customer_id": "cus_trial", "plan_id": basic, "trial_days": 14}),
        )
        .await;
    let trial = ok(&r, 201)["id"].as_str().unwrap().to_string();
    assert_eq!(
        ok(&app.activate(key, &trial, json!({})).await, 200)["status"],
        "trialing"
    );
    ok(
        &app.post(
            key,
            "/v1/coupons",
            json!({"code": "THIRD", "percent_off": "33.3333",
            "duration": "repeating", "duration_in_periods": 2, "max_redemptions": 5}),
        )
        .await,
        201,
    );
    let old = ok(
        &app.post(
            key,
            "/v1/coupons",
            json!({"code": "FIVE", "amount_off": "5.00",
            "currency": "EUR", "duration": "forever"}),
        )
        .await,
        201,
    );
    ok(
        &app.post(
            key,
            &format!("/v1/subscriptions/{}/discount", subs[2]),
            json!({"coupon_code": "THIRD"}),
        )
        .await,
        200,
    );
    ok(
        &app.post(
            key,
            &format!("/v1/subscriptions/{}/discount", subs[3]),
            json!({"coupon_code": "FIVE"}),
        )
        .await,
        200,
    );
    let archive = format!("/v1/coupons/{}/archive", old["id"].as_str().unwrap());
    ok(&app.post(key, &archive, json!({})).await, 200);
    ok(
        &app.change_plan(
            key,
            &subs[0],
            json!({"plan_id": pro, "proration": "prorate"}),
        )
        .await,
        200,
    );
    ok(
        &app.change_seats(key, &subs[1], json!({"seats": 5, "proration": "prorate"}))
            .await,
        200,
    );
    let now = start().to_rfc3339();
    let mut records = Vec::new();
    for (i, sub) in subs.iter().enumerate() {
        for n in 0..5 {
            records.push(json!({"subscription_id": sub, "meter": "api_calls",
                "quantity": format!("{}", 200 * (i + 1)), "timestamp": now,
                "transaction_id": format!("w-{i}-{n}")}));
        }
    }
    let batch = ok(
        &app.post(key, "/v1/usage/batch", json!({"records": records}))
            .await,
        200,
    );
    let first = batch["results"][0]["id"].as_str().unwrap().to_string();
    ok(
        &app.post(
            key,
            &format!("/v1/usage/{first}/void"),
            json!({"reason": "test"}),
        )
        .await,
        200,
    );
    // Tax rates: one exclusive on the manual invoices' lines, one archived.
    let vat = ok(
        &app.post(
            key,
            "/v1/tax-rates",
            json!({"name": "VAT", "percentage": "19", "inclusive": false}),
        )
        .await,
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let gone = ok(
        &app.post(
            key,
            "/v1/tax-rates",
            json!({"name": "Old", "percentage": "16", "inclusive": true}),
        )
        .await,
        201,
    );
    let archive = format!("/v1/tax-rates/{}/archive", gone["id"].as_str().unwrap());
    ok(&app.post(key, &archive, json!({})).await, 200);
    // A manual invoice: paid in two parts; another voided, another written off.
    for (n, end) in ["paid", "void", "uncollectible"].iter().enumerate() {
        let inv = ok(
            &app.post(key, "/v1/invoices", json!({"customer_id": "cus_9", "currency": "EUR",
                "lines": [{"description": "Setup", "quantity": "1", "unit_price": format!("{}.50", 10 + n), "tax_rate_ids": [vat]}]}))
                .await,
            201,
        );
        let id = inv["id"].as_str().unwrap().to_string();
        let issued = ok(
            &app.post(key, &format!("/v1/invoices/{id}/issue"), json!({}))
                .await,
            200,
        );
        let total = issued["total"].as_str().unwrap().to_string();
        match *end {
            "paid" => {
                ok(
                    &app.post(
                        key,
                        &format!("/v1/invoices/{id}/payments"),
                        json!({"amount": "1.00", "reference": "p-1"}),
                    )
                    .await,
                    200,
                );
                let due: rust_decimal::Decimal =
                    total.parse::<rust_decimal::Decimal>().unwrap() - rust_decimal::Decimal::ONE;
                ok(
                    &app.post(
                        key,
                        &format!("/v1/invoices/{id}/payments"),
                        json!({"amount": due.to_string(), "reference": "p-2"}),
                    )
                    .await,
                    200,
                );
            }
            "void" => {
                ok(
                    &app.post(
                        key,
                        &format!("/v1/invoices/{id}/void"),
                        json!({"reason": "mistake"}),
                    )
                    .await,
                    200,
                );
            }
            _ => {
                ok(
                    &app.post(
                        key,
                        &format!("/v1/invoices/{id}/mark-uncollectible"),
                        json!({}),
                    )
                    .await,
                    200,
                );
            }
        }
    }
    // Pay every open subscription invoice but those of cus_3, then let a
    // month and a half pass: renewals, overage, cus_3 past due, suspended.
    app.settle().await;
    let open = ok(
        &app.get(key, "/v1/invoices?status=open&limit=200").await,
        200,
    );
    for inv in open["data"].as_array().unwrap() {
        if inv["customer_id"] == "cus_3" {
            continue;
        }
        let id = inv["id"].as_str().unwrap();
        ok(
            &app.post(
                key,
                &format!("/v1/invoices/{id}/payments"),
                json!({"amount": inv["amount_due"], "reference": format!("pay-{id}")}),
            )
            .await,
            200,
        );
    }
    // Credit notes on one paid subscription invoice: 2.00 to the customer's
    // credit (applied to its renewal), 1.00 refunded.
    app.settle().await;
    let paid = ok(
        &app.get(key, "/v1/invoices?status=paid&customer_id=cus_1&limit=1")
            .await,
        200,
    );
    if let Some(inv) = paid["data"].as_array().unwrap().first() {
        let id = inv["id"].as_str().unwrap();
        for body in [
            json!({"amount": "2.00", "reason": "order_change"}),
            json!({"amount": "1.00", "reason": "refund", "refund": true}),
        ] {
            ok(
                &app.post(key, &format!("/v1/invoices/{id}/credit-notes"), body)
                    .await,
                200,
            );
        }
    }
    for to in ["2026-02-16T09:00:00Z", "2026-03-01T09:00:00Z"] {
        ok(&app.advance_clock(key, json!({"to": to})).await, 200);
        app.settle().await;
    }
    // cus_0's 800 calls on the graduated plan: 500 × 0.01, 300 × 0.005 and
    // the second tier's fee, on its renewal invoice.
    let cus_0 = ok(
        &app.get(key, "/v1/invoices?customer_id=cus_0&limit=200")
            .await,
        200,
    );
    let tiers: Vec<(String, String)> = cus_0["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|inv| inv["lines"].as_array().unwrap().clone())
        .filter(|l| l["kind"] == "usage")
        .map(|l| {
            let text = |f: &str| l[f].as_str().unwrap().to_string();
            (text("description"), text("amount"))
        })
        .collect();
    assert_eq!(
        tiers,
        [
            ("Overage: api_calls, tier 1 (up to 500)", "5.00"),
            ("Overage: api_calls, tier 2 (above 500)", "1.50"),
            ("Overage: api_calls, tier 2 flat fee", "1.00"),
        ]
        .map(|(d, a)| (d.to_string(), a.to_string()))
        .to_vec(),
        "{cus_0:#}"
    );
    // Tickets: one through its life, one commented and put on hold.
    for (n, moves) in [vec!["pending", "solved", "closed"], vec!["on_hold"]]
        .into_iter()
        .enumerate()
    {
        let t = ok(
            &app.post(
                key,
                "/v1/tickets",
                json!({"subject": format!("Help {n}"), "description": "It broke",
                "requester": "customer:cus_1", "priority": "normal", "subscription_id": subs[1]}),
            )
            .await,
            201,
        );
        let id = t["id"].as_str().unwrap().to_string();
        ok(
            &app.post(
                key,
                &format!("/v1/tickets/{id}/assign"),
                json!({"assignee": "alice"}),
            )
            .await,
            200,
        );
        ok(
            &app.post(
                key,
                &format!("/v1/tickets/{id}/comments"),
                json!({"author": "alice", "body": "Looking", "public": true}),
            )
            .await,
            200,
        );
        ok(
            &app.post(
                key,
                &format!("/v1/tickets/{id}/comments"),
                json!({"author": "alice", "body": "internal", "public": false}),
            )
            .await,
            200,
        );
        for to in moves {
            ok(
                &app.post(
                    key,
                    &format!("/v1/tickets/{id}/transition"),
                    json!({"to": to}),
                )
                .await,
                200,
            );
        }
    }
    // Inbox read state: one item read, one archived, then read-all for another.
    app.settle().await;
    let items = ok(
        &app.get(key, "/v1/inbox?recipient=customer:cus_1").await,
        200,
    );
    let items = items["data"].as_array().unwrap();
    assert!(items.len() >= 2, "{items:?}");
    ok(
        &app.post(
            key,
            &format!("/v1/inbox/{}/read", items[0]["id"].as_str().unwrap()),
            json!({}),
        )
        .await,
        200,
    );
    ok(
        &app.post(
            key,
            &format!("/v1/inbox/{}/archive", items[1]["id"].as_str().unwrap()),
            json!({}),
        )
        .await,
        200,
    );
    ok(
        &app.post(
            key,
            "/v1/inbox/read-all",
            json!({"recipient": "user:alice"}),
        )
        .await,
        200,
    );
    app.settle().await;
}

async fn every_read_model_rebuilds_equal(backend: Backend) {
    let app = TestApp::spawn_billing(backend, start(), BillingConfig::default()).await;
    mixed_workload(&app).await;
    let db = &app.state().db;
    let before = dump_read_models(db).await;
    for (table, rows) in &before {
        assert!(!rows.is_empty(), "the workload leaves {table} empty");
    }
    // Damage every live table, so that only the rebuild can bring the rows
    // back, then rebuild everything at once (blue/green, in the server).
    for table in before.keys() {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&db.any)
            .await
            .unwrap();
    }
    for p in all_projectors() {
        let r = app.rebuild(&app.admin_key, p.name()).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    app.settle().await;
    let after = dump_read_models(db).await;
    let shadows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM consumer_checkpoints WHERE name LIKE '%__next'")
            .fetch_one(&db.any)
            .await
            .unwrap();
    assert_eq!(
        shadows, 0,
        "every rebuild swapped and dropped its checkpoint"
    );
    assert_same_read_models(&before, &after);

    // Once more in one pass, with the bulk folds writing after every batch
    // of three events: every stream met again after a write reads its row
    // back, and every window total adds to the stored one.
    let indexes = index_names(db).await;
    let rebuilder = Runtime::new(
        db.clone(),
        all_projectors(),
        RuntimeConfig {
            batch_size: 3,
            ..RuntimeConfig::default()
        },
    );
    let projectors = all_projectors();
    let all: Vec<&dyn tally_projections::Projector> =
        projectors.iter().map(|p| p.as_ref()).collect();
    let limits = bulk::Limits {
        held_rows: 1,
        flush_every: std::time::Duration::ZERO,
    };
    let outcomes = rebuild::run_all_with(&rebuilder, &all, limits, &mut |_| {})
        .await
        .unwrap();
    assert!(outcomes.iter().all(|o| o.swapped_at.is_some()));
    assert_same_read_models(&before, &dump_read_models(db).await);
    // The swapped-in tables keep the names of their indexes and constraints.
    assert_eq!(index_names(db).await, indexes);
}

/// The read model tables' index names (PostgreSQL), sorted.
async fn index_names(db: &tally_projections::Db) -> Vec<(String, String)> {
    if db.backend != tally_projections::Backend::Postgres {
        return Vec::new();
    }
    sqlx::query_as(
        "SELECT tablename::text, indexname::text FROM pg_indexes \
         WHERE schemaname = current_schema() AND tablename LIKE 'rm\\_%' ORDER BY 1, 2",
    )
    .fetch_all(&db.any)
    .await
    .unwrap()
}

async fn queries_answer_from_current_tables_during_a_rebuild(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = &app.admin_key;
    let plan = app.standard_plan().await;
    for i in 0..12u32 {
        app.active_subscription(&plan, 1 + i % 5).await;
    }
    app.settle().await;
    assert_eq!(subscription_count(&app).await, 12);

    // A rebuild of the subscriptions read model, driven a few events at a
    // time from here so that it stops half-way.
    let db = app.state().db.clone();
    let subs = all_projectors()
        .into_iter()
        .find(|p| p.name() == "subscriptions")
        .unwrap();
    let rebuilder = Runtime::new(
        db.clone(),
        all_projectors(),
        RuntimeConfig {
            batch_size: 3,
            ..RuntimeConfig::default()
        },
    );
    assert_eq!(
        rebuild::prepare(&db, subs.as_ref()).await.unwrap(),
        Start::Fresh
    );
    let shadow = rebuild::shadow_consumer("subscriptions");
    for _ in 0..4 {
        let step = rebuilder
            .step_into(subs.as_ref(), &shadow, Tables::Shadow)
            .await
            .unwrap();
        assert!(matches!(step, StepOutcome::Applied(_)));
    }
    let half: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rm_subscriptions__next")
        .fetch_one(&db.any)
        .await
        .unwrap();
    assert!(half < 12, "the shadow is only partly built ({half} rows)");

    // Meanwhile queries answer in full from the current tables, and new
    // writes keep reaching them.
    assert_eq!(subscription_count(&app).await, 12);
    app.active_subscription(&plan, 2).await;
    app.settle().await;
    assert_eq!(subscription_count(&app).await, 13);
    let status = app.projections(key).await;
    assert_eq!(status.status, 200);

    // Finish: catch up with the head (which moved), swap, and the live
    // runner continues from the swapped position.
    while let StepOutcome::Applied(_) = rebuilder
        .step_into(subs.as_ref(), &shadow, Tables::Shadow)
        .await
        .unwrap()
    {}
    rebuilder.settle_cursor(&shadow).await.unwrap();
    let before = dump_read_models(&db).await["rm_subscriptions"].clone();
    assert!(rebuild::swap(&db, subs.as_ref()).await.unwrap().is_some());
    assert_eq!(subscription_count(&app).await, 13);
    // A second swap finds nothing to do.
    assert_eq!(rebuild::swap(&db, subs.as_ref()).await.unwrap(), None);
    app.active_subscription(&plan, 3).await;
    app.settle().await;
    assert_eq!(subscription_count(&app).await, 14);
    let after = dump_read_models(&db).await["rm_subscriptions"].clone();
    assert_eq!(after.len(), before.len() + 1);
}

async fn subscription_count(app: &TestApp) -> usize {
    let r = app.get(&app.admin_key, "/v1/subscriptions?limit=200").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["data"].as_array().unwrap().len()
}
