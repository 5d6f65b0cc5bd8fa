//! End-to-end tests of usage metering and the quota policy, on both backends.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tally_tests::{both_backends, Backend, Resp, TestApp};

both_backends!(
    quota_suspends_and_the_next_window_resumes,
    same_transaction_id_twenty_times_at_once,
    batch_with_good_duplicate_and_bad_records,
    batch_answers_with_the_position_of_its_last_new_event,
    usage_rejections,
    void_and_list,
    usage_rebuild_equals_incremental,
);

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A plan with `api_calls` capped at 100 per month, and an active
/// subscription on it, activated at the manual clock's start.
async fn capped(app: &TestApp) -> String {
    let plan = app
        .create_plan(&app.admin_key, json!({
            "code": "capped", "name": "Capped", "currency": "EUR", "interval": "month", "base_price": "5.00",
            "meters": [{"key": "api_calls", "included": "50", "hard_cap": "100", "overage_unit_price": "0.10", "reset": "monthly"}]
        }))
        .await;
    assert_eq!(plan.status, 201, "{:?}", plan.body);
    app.active_subscription(&plan.id(), 1).await.0
}

async fn report(app: &TestApp, sub: &str, qty: &str, txid: &str, at: &str) -> Resp {
    app.post(&app.admin_key, "/v1/usage", json!({
        "subscription_id": sub, "meter": "api_calls", "quantity": qty, "timestamp": at, "transaction_id": txid
    }))
    .await
}

/// Pays every open invoice of the subscription in full.
async fn pay_open_invoices(app: &TestApp, sub: &str) {
    app.settle().await;
    let list = app
        .get(
            &app.admin_key,
            &format!("/v1/invoices?subscription_id={sub}&status=open"),
        )
        .await;
    let open = list.body["data"].as_array().expect("invoices");
    assert!(!open.is_empty(), "activation issued an invoice");
    for inv in open {
        let id = inv["id"].as_str().expect("id");
        let r = app
            .post(
                &app.admin_key,
                &format!("/v1/invoices/{id}/payments"),
                json!({"amount": inv["amount_due"], "reference": format!("pay-{id}")}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
}

/// Waits (bounded) until the subscription read model shows `status`.
async fn wait_status(app: &TestApp, id: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = app
            .get(&app.admin_key, &format!("/v1/subscriptions/{id}"))
            .await;
        if r.body["status"] == status {
            return r.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never became {status}: {:?}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn quota_suspends_and_the_next_window_resumes(backend: Backend) {
    let app = TestApp::spawn_manual(backend, t("2026-03-10T12:00:00Z")).await;
    let sub = capped(&app).await;
    // 60 + 40 = 100: at the cap, not above it.
    assert_eq!(
        report(&app, &sub, "60", "tx-1", "2026-03-10T12:00:00Z")
            .await
            .status,
        201
    );
    let r = report(&app, &sub, "40", "tx-2", "2026-03-10T12:00:00Z").await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    app.settle().await;
    let s = app
        .get(&app.admin_key, &format!("/v1/subscriptions/{sub}"))
        .await;
    assert_eq!(s.body["status"], "active");
    let e = app
        .get(
            &app.admin_key,
            &format!("/v1/subscriptions/{sub}/entitlements"),
        )
        .await;
    assert_eq!(e.body["data"][0]["meter"], "api_calls");
    assert_eq!(e.body["data"][0]["used"], "100");
    assert_eq!(e.body["data"][0]["hard_cap"], "100");
    assert_eq!(e.body["data"][0]["remaining"], "0");
    assert_eq!(e.body["data"][0]["window"]["start"], "2026-03-10T12:00:00Z");
    assert_eq!(e.body["data"][0]["window"]["end"], "2026-04-10T12:00:00Z");
    // Several records cross the cap at once: one suspension.
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (base, client, key, sub) = (
            app.base.clone(),
            app.client.clone(),
            app.admin_key.clone(),
            sub.clone(),
        );
        tasks.push(tokio::spawn(async move {
            client
                .post(format!("{base}/v1/usage"))
                .bearer_auth(key)
                .json(
                    &json!({"subscription_id": sub, "meter": "api_calls", "quantity": "1",
                    "timestamp": "2026-03-10T12:00:00Z", "transaction_id": format!("over-{i}")}),
                )
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut created = 0;
    for task in tasks {
        // A report that arrives after the suspension is refused (409).
        match task.await.unwrap() {
            201 => created += 1,
            409 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(created >= 1);
    let suspended = wait_status(&app, &sub, "suspended").await;
    assert_eq!(suspended["suspension"]["reason"], "quota_exceeded");
    assert_eq!(suspended["suspension"]["meter"], "api_calls");
    app.settle().await;
    let events = app
        .stream_events(&app.admin_key, "subscription", &sub)
        .await;
    let suspensions: Vec<&Value> = events.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "SubscriptionSuspended")
        .collect();
    assert_eq!(suspensions.len(), 1, "exactly one suspension");
    let m = &suspensions[0]["metadata"];
    assert_eq!(m["actor"], "system:quota");
    // Causation points at a usage event.
    let causation = m["causation_id"].as_str().unwrap();
    let feed = app
        .get(
            &app.admin_key,
            "/v1/usage?subscription_id=".to_string().as_str(),
        )
        .await;
    assert_eq!(feed.status, 200);
    let mut found = false;
    for r in app
        .get(
            &app.admin_key,
            &format!("/v1/usage?subscription_id={sub}&limit=200"),
        )
        .await
        .body["data"]
        .as_array()
        .unwrap()
    {
        let ev = app
            .stream_events(&app.admin_key, "usage_record", r["id"].as_str().unwrap())
            .await;
        if ev.body["data"][0]["event_id"] == causation {
            found = true;
        }
    }
    assert!(found, "the suspension's causation id is a usage event");
    // Usage while suspended is refused.
    report(&app, &sub, "1", "tx-late", "2026-03-10T12:00:00Z")
        .await
        .assert_problem(409, "invalid_transition");
    // The first invoice (activation) is paid, or by the next window it would
    // be past due and collections would make the subscription past_due.
    pay_open_invoices(&app, &sub).await;
    // The next monthly window starts: the subscription resumes.
    let r = app
        .advance_clock(&app.admin_key, json!({"to": "2026-04-10T12:00:01Z"}))
        .await;
    assert_eq!(r.status, 200);
    let resumed = wait_status(&app, &sub, "active").await;
    assert_eq!(resumed["suspension"], Value::Null);
    app.settle().await;
    let e = app
        .get(
            &app.admin_key,
            &format!("/v1/subscriptions/{sub}/entitlements"),
        )
        .await;
    assert_eq!(e.body["data"][0]["used"], "0");
    assert_eq!(e.body["data"][0]["window"]["start"], "2026-04-10T12:00:00Z");
    let summary = app
        .get(
            &app.admin_key,
            &format!("/v1/usage/summary?subscription_id={sub}&meter=api_calls&window=2026-03"),
        )
        .await;
    assert_eq!(summary.status, 200, "{:?}", summary.body);
    assert_eq!(summary.body["record_count"].as_i64().unwrap(), 2 + created);
    assert_eq!(summary.body["total"], (100 + created).to_string());
}

async fn same_transaction_id_twenty_times_at_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let (sub, _) = app.active_subscription(&plan, 1).await;
    let now = Utc::now().to_rfc3339();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (base, client, key, sub, now) = (
            app.base.clone(),
            app.client.clone(),
            app.admin_key.clone(),
            sub.clone(),
            now.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{base}/v1/usage"))
                .bearer_auth(key)
                .json(&json!({"subscription_id": sub, "meter": "api_calls", "quantity": "7", "timestamp": now, "transaction_id": "dup-1"}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut created = 0;
    let mut ids = std::collections::BTreeSet::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            201 => created += 1,
            200 => assert_eq!(body["duplicate"], true),
            other => panic!("status {other}: {body:?}"),
        }
        ids.insert(body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(created, 1, "recorded once");
    assert_eq!(ids.len(), 1, "every answer is the same record");
    app.settle().await;
    let s = app
        .get(
            &app.admin_key,
            &format!("/v1/usage/summary?subscription_id={sub}&meter=api_calls"),
        )
        .await;
    assert_eq!(s.body["total"], "7");
    assert_eq!(s.body["record_count"], 1);
    // The same id again alone, and inside a batch: still once.
    let again = app.post(&app.admin_key, "/v1/usage", json!({"subscription_id": sub, "meter": "api_calls", "quantity": "7", "timestamp": now, "transaction_id": "dup-1"})).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["duplicate"], true);
    assert_eq!(again.body["quantity"], "7");
    let b = app.post(&app.admin_key, "/v1/usage/batch", json!({"records": [
        {"subscription_id": sub, "meter": "api_calls", "quantity": "7", "timestamp": now, "transaction_id": "dup-1"}
    ]})).await;
    assert_eq!(b.body["results"][0]["status"], "duplicate");
}

/// Issue 16: `POST /v1/usage/batch` answered without `X-Log-Position`, so a
/// client could not read its batch back with `X-Min-Position`. API.md: the
/// position of the batch's last new event.
async fn batch_answers_with_the_position_of_its_last_new_event(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let (sub, _) = app.active_subscription(&plan, 1).await;
    app.settle().await;
    let now = Utc::now().to_rfc3339();
    let rec = |txid: &str| json!({"subscription_id": sub, "meter": "api_calls", "quantity": "2", "timestamp": now, "transaction_id": txid});
    let before = app
        .post(&app.admin_key, "/v1/usage", rec("p-0"))
        .await
        .position();
    let r = app
        .post(
            &app.admin_key,
            "/v1/usage/batch",
            json!({"records": [rec("p-1"), rec("p-0"), rec("p-2")]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let position = r.position();
    assert!(position > before, "{position} after {before}");
    // It is the highest position of the usage events the batch appended.
    let feed = app
        .get(
            &app.admin_key,
            &format!("/v1/audit/events?after={before}&limit=1000"),
        )
        .await;
    assert_eq!(feed.status, 200, "{:?}", feed.body);
    let usage_positions: Vec<i64> = feed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["stream_type"] == "usage_record")
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert_eq!(usage_positions.len(), 2, "{:?}", feed.body);
    assert_eq!(usage_positions.iter().max(), Some(&position));
    // Read-your-writes with it: both new records are in the list at once.
    let list = app
        .get_after(
            &app.admin_key,
            &format!("/v1/usage?subscription_id={sub}"),
            position,
        )
        .await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    assert_eq!(list.body["data"].as_array().unwrap().len(), 3);
    // A batch that appends nothing still names a position every earlier
    // write is at or below (the log head).
    let again = app
        .post(
            &app.admin_key,
            "/v1/usage/batch",
            json!({"records": [rec("p-1"), rec("p-2")]}),
        )
        .await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert!(again.position() >= position, "{:?}", again.headers);
}

async fn batch_with_good_duplicate_and_bad_records(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let (sub, _) = app.active_subscription(&plan, 1).await;
    let now = Utc::now().to_rfc3339();
    let first = app.post(&app.admin_key, "/v1/usage", json!({"subscription_id": sub, "meter": "api_calls", "quantity": "1", "timestamp": now, "transaction_id": "b-old"})).await;
    assert_eq!(first.status, 201);
    let rec = |txid: &str, qty: Value| json!({"subscription_id": sub, "meter": "api_calls", "quantity": qty, "timestamp": now, "transaction_id": txid});
    let r = app.post(&app.admin_key, "/v1/usage/batch", json!({"records": [
        rec("b-1", json!("2")),
        rec("b-old", json!("1")),
        rec("b-neg", json!("-3")),
        {"subscription_id": sub, "meter": "nope", "quantity": "1", "timestamp": now, "transaction_id": "b-meter"},
        {"subscription_id": sub, "meter": "api_calls", "quantity": "1", "transaction_id": "b-missing"},
        rec("b-2", json!(3)),
        rec("b-1", json!("2")),
        {"subscription_id": "sub_unknown", "meter": "api_calls", "quantity": "1", "timestamp": now, "transaction_id": "b-sub"},
        {"subscription_id": sub, "meter": "api_calls", "quantity": "1", "timestamp": "2020-01-01T00:00:00Z", "transaction_id": "b-old-ts"},
    ]})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let results = r.body["results"].as_array().unwrap();
    let statuses: Vec<_> = results
        .iter()
        .map(|x| x["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "created",
            "duplicate",
            "rejected",
            "rejected",
            "rejected",
            "created",
            "duplicate",
            "rejected",
            "rejected"
        ]
    );
    assert_eq!(results[1]["id"], first.body["id"]);
    assert_eq!(results[2]["error"]["errors"][0]["field"], "quantity");
    assert_eq!(results[3]["error"]["errors"][0]["field"], "meter");
    assert_eq!(results[4]["error"]["errors"][0]["field"], "timestamp");
    assert_eq!(results[7]["error"]["errors"][0]["field"], "subscription_id");
    assert_eq!(results[8]["error"]["errors"][0]["field"], "timestamp");
    assert_eq!(results[4]["transaction_id"], "b-missing");
    app.settle().await;
    let s = app
        .get(
            &app.admin_key,
            &format!("/v1/usage/summary?subscription_id={sub}&meter=api_calls"),
        )
        .await;
    assert_eq!(s.body["total"], "6");
    assert_eq!(s.body["record_count"], 3);
    let too_many: Vec<Value> = (0..1001)
        .map(|i| rec(&format!("m-{i}"), json!("1")))
        .collect();
    app.post(
        &app.admin_key,
        "/v1/usage/batch",
        json!({"records": too_many}),
    )
    .await
    .assert_problem(422, "validation_failed");
}

async fn usage_rejections(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let draft = app
        .create_subscription(&app.admin_key, json!({"customer_id": "c", "plan_id": plan}))
        .await
        .id();
    let now = Utc::now();
    let body = |sub: &str, meter: &str, qty: &str, ts: String, txid: &str| json!({"subscription_id": sub, "meter": meter, "quantity": qty, "timestamp": ts, "transaction_id": txid});
    let k = &app.admin_key;
    app.post(
        k,
        "/v1/usage",
        body(&draft, "api_calls", "1", now.to_rfc3339(), "r1"),
    )
    .await
    .assert_problem(409, "invalid_transition");
    app.post(
        k,
        "/v1/usage",
        body("sub_nothere", "api_calls", "1", now.to_rfc3339(), "r2"),
    )
    .await
    .assert_problem(422, "validation_failed");
    let (sub, _) = app.active_subscription(&plan, 1).await;
    let r = app
        .post(
            k,
            "/v1/usage",
            body(&sub, "storage", "1", now.to_rfc3339(), "r3"),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "meter");
    let r = app
        .post(
            k,
            "/v1/usage",
            body(&sub, "api_calls", "-1", now.to_rfc3339(), "r4"),
        )
        .await;
    assert_eq!(r.body["errors"][0]["field"], "quantity");
    let r = app
        .post(
            k,
            "/v1/usage",
            body(
                &sub,
                "api_calls",
                "1",
                (now + chrono::Duration::minutes(10)).to_rfc3339(),
                "r5",
            ),
        )
        .await;
    assert_eq!(r.body["errors"][0]["field"], "timestamp");
    let r = app
        .post(
            k,
            "/v1/usage",
            body(
                &sub,
                "api_calls",
                "1",
                (now - chrono::Duration::days(36)).to_rfc3339(),
                "r6",
            ),
        )
        .await;
    assert_eq!(r.body["errors"][0]["field"], "timestamp");
    let r = app.post(k, "/v1/usage", json!({"subscription_id": sub, "meter": "api_calls", "quantity": 1.5, "timestamp": now.to_rfc3339(), "transaction_id": "r7"})).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "quantity");
    let reader = app.key("default", "reader").await;
    app.post(
        &reader,
        "/v1/usage",
        body(&sub, "api_calls", "1", now.to_rfc3339(), "r8"),
    )
    .await
    .assert_problem(403, "forbidden");
}

async fn void_and_list(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let (sub, _) = app.active_subscription(&plan, 1).await;
    let now = Utc::now();
    let mut ids = Vec::new();
    for i in 0..3 {
        let ts = (now - chrono::Duration::minutes(10 - i)).to_rfc3339();
        let r = app.post(&app.admin_key, "/v1/usage", json!({"subscription_id": sub, "meter": "api_calls", "quantity": "5", "timestamp": ts, "transaction_id": format!("v-{i}")})).await;
        ids.push(r.id());
    }
    let v = app
        .post(
            &app.admin_key,
            &format!("/v1/usage/{}/void", ids[1]),
            json!({"reason": "test traffic"}),
        )
        .await;
    assert_eq!(v.status, 200, "{:?}", v.body);
    assert_eq!(v.body["status"], "voided");
    app.post(
        &app.admin_key,
        &format!("/v1/usage/{}/void", ids[1]),
        json!({"reason": "again"}),
    )
    .await
    .assert_problem(409, "invalid_transition");
    app.post(
        &app.admin_key,
        "/v1/usage/use_00000000000000000000000000000000/void",
        json!({"reason": "x"}),
    )
    .await
    .assert_problem(404, "not_found");
    let page1 = app
        .get_after(
            &app.admin_key,
            &format!("/v1/usage?subscription_id={sub}&limit=2"),
            v.position(),
        )
        .await;
    let data = page1.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["id"], ids[0].as_str(), "timestamp order");
    let cursor = page1.body["next_cursor"].as_str().unwrap();
    let page2 = app
        .get(
            &app.admin_key,
            &format!(
                "/v1/usage?subscription_id={sub}&limit=2&cursor={}",
                urlencode(cursor)
            ),
        )
        .await;
    assert_eq!(page2.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(page2.body["data"][0]["id"], ids[2].as_str());
    let s = app
        .get(
            &app.admin_key,
            &format!("/v1/usage/summary?subscription_id={sub}&meter=api_calls"),
        )
        .await;
    assert_eq!(s.body["total"], "10", "voided records leave the totals");
    assert_eq!(s.body["record_count"], 2);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn usage_rebuild_equals_incremental(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let (sub, _) = app.active_subscription(&plan, 1).await;
    let now = Utc::now().to_rfc3339();
    let records: Vec<Value> = (0..50)
        .map(|i| json!({"subscription_id": sub, "meter": "api_calls", "quantity": format!("{}.5", i), "timestamp": now, "transaction_id": format!("rb-{i}")}))
        .collect();
    assert_eq!(
        app.post(
            &app.admin_key,
            "/v1/usage/batch",
            json!({"records": records})
        )
        .await
        .status,
        200
    );
    let some = app.get_after(&app.admin_key, "/v1/usage?limit=3", 0).await;
    for r in some.body["data"].as_array().unwrap() {
        app.post(
            &app.admin_key,
            &format!("/v1/usage/{}/void", r["id"].as_str().unwrap()),
            json!({"reason": "x"}),
        )
        .await;
    }
    app.settle().await;
    let db = &app.state().db;
    let recs = "tenant, id, transaction_id, subscription_id, meter, ts, status, body, version";
    let before = tally_tests::table_rows(db, "rm_usage_records", recs).await;
    let totals = || async {
        use sqlx::Row;
        sqlx::query("SELECT subscription_id, meter, window_start, total, record_count FROM rm_usage_totals ORDER BY 1, 2, 3")
            .fetch_all(&db.any)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1), r.get::<String, _>(2), r.get::<String, _>(3), r.get::<i64, _>(4)))
            .collect::<Vec<_>>()
    };
    let before_totals = totals().await;
    assert_eq!(before.len(), 50);
    assert_eq!(app.rebuild(&app.admin_key, "usage").await.status, 202);
    app.settle().await;
    assert_eq!(
        tally_tests::table_rows(db, "rm_usage_records", recs).await,
        before
    );
    assert_eq!(totals().await, before_totals);
}
