//! End-to-end tests of the HTTP API, each on SQLite and on PostgreSQL.

use serde_json::json;
use tally_tests::{both_backends, standard_plan_body, table_rows, Backend, TestApp};

both_backends!(
    openapi_declares_the_contract,
    walkthrough,
    auth_and_roles,
    tenants_are_isolated,
    idempotency_replay_and_reuse,
    idempotency_simultaneous_requests,
    if_match,
    concurrent_change_seats_lose_nothing,
    bad_bodies_are_422_problems,
    lifecycle_rules,
    suspend_twice_is_a_noop,
    lists_filter_and_page,
    rebuild_equals_incremental,
    audit_stream_has_metadata,
    operations_endpoints,
    docs_work_offline,
    manual_clock,
    audit_state_and_feed,
    rate_limit_per_key,
);

/// Above its rate a key gets 429 problems with Retry-After before any work
/// is done; another key keeps its own budget.
async fn rate_limit_per_key(backend: Backend) {
    let app = TestApp::spawn_limited(
        backend,
        tally_api::ratelimit::RateLimit {
            per_sec: 0.01,
            burst: 3.0,
        },
    )
    .await;
    let key = &app.admin_key;
    for _ in 0..3 {
        assert_eq!(app.get(key, "/v1/plans").await.status, 200);
    }
    let limited = app.create_plan(key, standard_plan_body("rl")).await;
    limited.assert_problem(429, "rate_limited");
    let wait: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(wait >= 1, "{wait}");
    // The refused command changed nothing.
    let head = app.state().dispatcher.log().head().await.unwrap();
    assert_eq!(head, 0);
    // A second key has its own bucket.
    let other = app.key("default", "reader").await;
    assert_eq!(app.get(&other, "/v1/plans").await.status, 200);
    // Health and metrics are not behind a key.
    assert_eq!(
        app.request(reqwest::Method::GET, "/healthz", None, &[], None)
            .await
            .status,
        200
    );
}

async fn walkthrough(backend: Backend) {
    // The clock stands on the activation day: with the system clock the
    // billing scheduler would at once renew the periods since then.
    let start = chrono::DateTime::parse_from_rfc3339("2026-01-31T10:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let app = TestApp::spawn_manual(backend, start).await;
    let key = &app.admin_key;
    let plan = app.create_plan(key, standard_plan_body("pro")).await;
    assert_eq!(plan.status, 201, "{:?}", plan.body);
    assert_eq!(plan.body["base_price"], "10.00");
    assert_eq!(plan.body["currency"], "EUR");
    assert_eq!(plan.header("etag"), Some("\"1\""));
    let plan_id = plan.id();
    assert!(plan_id.starts_with("plan_"));

    let sub = app
        .create_subscription(
            key,
            json!({"customer_id": "cus_42", "plan_id": plan_id, "seats": 3}),
        )
        .await;
    assert_eq!(sub.status, 201, "{:?}", sub.body);
    assert_eq!(sub.body["status"], "draft");
    assert_eq!(sub.body["seats"], 3);
    let id = sub.id();
    assert!(id.starts_with("sub_"));

    let act = app
        .activate(key, &id, json!({"at": "2026-01-31T10:00:00Z"}))
        .await;
    assert_eq!(act.status, 200, "{:?}", act.body);
    assert_eq!(act.body["status"], "active");
    assert_eq!(act.body["current_period"]["start"], "2026-01-31T10:00:00Z");
    // End-of-month clamping: an anchor on the 31st renews on Feb 28.
    assert_eq!(act.body["current_period"]["end"], "2026-02-28T10:00:00Z");
    assert_eq!(act.body["version"], 2);
    assert_eq!(act.header("etag"), Some("\"2\""));

    let got = app
        .get_after(key, &format!("/v1/subscriptions/{id}"), act.position())
        .await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(
        got.body, act.body,
        "the read model shows what the command answered"
    );
    assert_eq!(got.header("etag"), Some("\"2\""));
}

async fn auth_and_roles(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let none = app
        .request(reqwest::Method::GET, "/v1/plans", None, &[], None)
        .await;
    none.assert_problem(401, "unauthorized");
    let bad = app.get("tally_not_a_key", "/v1/plans").await;
    bad.assert_problem(401, "unauthorized");

    let reader = app.key("default", "reader").await;
    let writer = app.key("default", "writer").await;
    let auditor = app.key("default", "auditor").await;
    assert_eq!(app.get(&reader, "/v1/plans").await.status, 200);
    app.create_plan(&reader, standard_plan_body("r"))
        .await
        .assert_problem(403, "forbidden");
    let plan = app.create_plan(&writer, standard_plan_body("w")).await;
    assert_eq!(plan.status, 201);
    let events = format!("/v1/audit/streams/plan/{}/events", plan.id());
    app.get(&reader, &events)
        .await
        .assert_problem(403, "forbidden");
    app.get(&writer, &events)
        .await
        .assert_problem(403, "forbidden");
    assert_eq!(app.get(&auditor, &events).await.status, 200);
    app.get(&writer, "/v1/admin/projections")
        .await
        .assert_problem(403, "forbidden");
    assert_eq!(app.projections(&app.admin_key).await.status, 200);
}

async fn tenants_are_isolated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let (id, act) = app.active_subscription(&plan, 2).await;
    let other = app.key("acme", "admin").await;
    let path = format!("/v1/subscriptions/{id}");
    app.get_after(&other, &path, act.position())
        .await
        .assert_problem(404, "not_found");
    app.change_seats(&other, &id, json!({"seats": 3}))
        .await
        .assert_problem(404, "not_found");
    app.get(
        &other,
        &format!("/v1/audit/streams/subscription/{id}/events"),
    )
    .await
    .assert_problem(404, "not_found");
    // Another tenant cannot subscribe to this tenant's plan either.
    let r = app
        .create_subscription(&other, json!({"customer_id": "c", "plan_id": plan}))
        .await;
    r.assert_problem(422, "validation_failed");
    let list = app
        .get_after(&other, "/v1/subscriptions", act.position())
        .await;
    assert_eq!(list.body["data"], json!([]));
    // The owner still sees it.
    assert_eq!(
        app.get_after(&app.admin_key, &path, act.position())
            .await
            .status,
        200
    );
}

async fn idempotency_replay_and_reuse(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let body = json!({"customer_id": "cus_i", "plan_id": plan});
    let key = [("idempotency-key", "create-1".to_string())];
    let first = app
        .post_with(&app.admin_key, "/v1/subscriptions", body.clone(), &key)
        .await;
    assert_eq!(first.status, 201);
    let again = app
        .post_with(&app.admin_key, "/v1/subscriptions", body.clone(), &key)
        .await;
    assert_eq!(again.status, 201);
    assert_eq!(
        again.body, first.body,
        "same key and body → the first response"
    );
    assert_eq!(again.header("etag"), first.header("etag"));
    assert_eq!(
        again.header("x-log-position"),
        first.header("x-log-position")
    );
    let other = app
        .post_with(
            &app.admin_key,
            "/v1/subscriptions",
            json!({"customer_id": "someone_else", "plan_id": plan}),
            &key,
        )
        .await;
    other.assert_problem(422, "idempotency_key_reused");
    app.settle().await;
    let list = app.get(&app.admin_key, "/v1/subscriptions").await;
    assert_eq!(
        list.body["data"].as_array().unwrap().len(),
        1,
        "one subscription, not two"
    );
    // An error response is replayed too (nothing was appended).
    let bad_key = [("idempotency-key", "bad-1".to_string())];
    let e1 = app
        .post_with(
            &app.admin_key,
            &format!("/v1/subscriptions/{}/resume", first.id()),
            json!({}),
            &bad_key,
        )
        .await;
    e1.assert_problem(409, "invalid_transition");
    let e2 = app
        .post_with(
            &app.admin_key,
            &format!("/v1/subscriptions/{}/resume", first.id()),
            json!({}),
            &bad_key,
        )
        .await;
    assert_eq!((e2.status, &e2.body), (e1.status, &e1.body));
}

async fn idempotency_simultaneous_requests(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let body = json!({"customer_id": "cus_sim", "plan_id": plan});
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (base, client, key, body) = (
            app.base.clone(),
            app.client.clone(),
            app.admin_key.clone(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{base}/v1/subscriptions"))
                .bearer_auth(key)
                .header("idempotency-key", "same-moment")
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 201, "{body:?}");
        ids.insert(body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(
        ids.len(),
        1,
        "all eight requests answered with the same subscription"
    );
    app.settle().await;
    let list = app.get(&app.admin_key, "/v1/subscriptions").await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
}

async fn if_match(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let (id, _) = app.active_subscription(&plan, 2).await;
    let path = format!("/v1/subscriptions/{id}/change-seats");
    let stale = app
        .post_with(
            &app.admin_key,
            &path,
            json!({"seats": 3}),
            &[("if-match", "\"1\"".into())],
        )
        .await;
    stale.assert_problem(412, "version_mismatch");
    let ok = app
        .post_with(
            &app.admin_key,
            &path,
            json!({"seats": 3}),
            &[("if-match", "\"2\"".into())],
        )
        .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.body["version"], 3);
    let garbage = app
        .post_with(
            &app.admin_key,
            &path,
            json!({"seats": 4}),
            &[("if-match", "soon".into())],
        )
        .await;
    garbage.assert_problem(422, "validation_failed");
}

async fn concurrent_change_seats_lose_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.create_plan(&app.admin_key, json!({
        "code": "big", "name": "Big", "currency": "USD", "interval": "month", "base_price": "0",
        "seat_price": "1.00", "seats": {"min": 1, "max": 1000}
    })).await.id();
    let (id, _) = app.active_subscription(&plan, 1).await;
    let mut tasks = Vec::new();
    for i in 0..50u32 {
        let (base, client, key, id) = (
            app.base.clone(),
            app.client.clone(),
            app.admin_key.clone(),
            id.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{base}/v1/subscriptions/{id}/change-seats"))
                .bearer_auth(key)
                .json(&json!({"seats": 100 + i, "proration": "none"}))
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }));
    }
    let mut versions = std::collections::BTreeSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body:?}");
        versions.insert(body["version"].as_i64().unwrap());
    }
    // Every write got its own version: 3..=52, none lost, none shared.
    assert_eq!(versions, (3..=52).collect());
    let events = app.stream_events(&app.admin_key, "subscription", &id).await;
    let seats: Vec<_> = events.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "SeatsChanged")
        .collect();
    assert_eq!(seats.len(), 50);
    // Each change starts from the seats the previous one left.
    for pair in seats.windows(2) {
        assert_eq!(
            pair[0]["payload"]["SeatsChanged"]["to"],
            pair[1]["payload"]["SeatsChanged"]["from"]
        );
    }
}

async fn bad_bodies_are_422_problems(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = &app.admin_key;
    let raw = |body: &'static str| {
        app.request(
            reqwest::Method::POST,
            "/v1/plans",
            Some(key),
            &[],
            Some(body.as_bytes().to_vec()),
        )
    };
    let r = raw("{\"code\": ").await;
    r.assert_problem(422, "validation_failed");
    let mut unknown = standard_plan_body("u");
    unknown["colour"] = json!("blue");
    let r = app.create_plan(key, unknown).await;
    r.assert_problem(422, "validation_failed");
    assert!(
        r.body["detail"].as_str().unwrap().contains("colour"),
        "{:?}",
        r.body
    );
    let mut wrong = standard_plan_body("w");
    wrong["base_price"] = json!(10.5);
    let r = app.create_plan(key, wrong).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "base_price");
    let mut neg = standard_plan_body("n");
    neg["base_price"] = json!("-1.00");
    let r = app.create_plan(key, neg).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "base_price");
    let mut cur = standard_plan_body("c");
    cur["currency"] = json!("XYZ");
    let r = app.create_plan(key, cur).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "currency");
    let mut seats = standard_plan_body("s");
    seats["seats"] = json!({"min": "one", "max": 3});
    let r = app.create_plan(key, seats).await;
    assert_eq!(r.body["errors"][0]["field"], "seats.min");
    // Just over the 1 MiB limit: a body far larger may be cut off by the
    // server closing the connection before the client finished sending.
    let huge = vec![b' '; 1024 * 1024 + 4096];
    let r = app
        .request(
            reqwest::Method::POST,
            "/v1/plans",
            Some(key),
            &[],
            Some(huge),
        )
        .await;
    r.assert_problem(413, "payload_too_large");
    let r = app.get(key, "/v1/subscriptions?limit=0").await;
    r.assert_problem(422, "validation_failed");
    let r = app.get(key, "/v1/subscriptions?status=sleeping").await;
    r.assert_problem(422, "validation_failed");
    let r = app.get(key, "/v1/nothing-here").await;
    r.assert_problem(404, "not_found");
    // Seats as a negative number is a type error on an unsigned field.
    let plan = app.standard_plan().await;
    let r = app
        .create_subscription(
            key,
            json!({"customer_id": "c", "plan_id": plan, "seats": -2}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "seats");
}

async fn lifecycle_rules(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = &app.admin_key;
    let plan = app.standard_plan().await;
    let other_plan = app
        .create_plan(
            key,
            json!({
                "code": "gold", "name": "Gold", "currency": "EUR", "interval": "month",
                "base_price": "40.00", "seat_price": "5.00", "seats": {"min": 1, "max": 50}
            }),
        )
        .await
        .id();
    let sub = app
        .create_subscription(
            key,
            json!({"customer_id": "cus_l", "plan_id": plan, "seats": 2}),
        )
        .await;
    let id = sub.id();
    let r = app
        .change_plan(
            key,
            &id,
            json!({"plan_id": other_plan, "proration": "prorate"}),
        )
        .await;
    r.assert_problem(409, "invalid_transition");
    assert!(
        r.body["detail"].as_str().unwrap().contains("draft"),
        "{:?}",
        r.body
    );
    app.activate(key, &id, json!({})).await;
    let r = app.change_seats(key, &id, json!({"seats": 21})).await;
    r.assert_problem(422, "seat_limit");
    assert_eq!(r.body["errors"][0]["field"], "seats");
    let r = app
        .change_plan(
            key,
            &id,
            json!({"plan_id": other_plan, "proration": "prorate"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["plan_id"], other_plan);
    let r = app
        .suspend(key, &id, json!({"reason": "manual", "note": "fraud check"}))
        .await;
    assert_eq!(r.body["status"], "suspended");
    assert_eq!(r.body["suspension"]["reason"], "manual");
    let r = app.resume(key, &id).await;
    assert_eq!(r.body["status"], "active");
    assert_eq!(r.body["suspension"], json!(null));
    let r = app
        .cancel(key, &id, json!({"at": "now", "reason": "moving"}))
        .await;
    assert_eq!(r.body["status"], "canceled");
    for r in [
        app.resume(key, &id).await,
        app.change_seats(key, &id, json!({"seats": 3})).await,
        app.activate(key, &id, json!({})).await,
        app.cancel(key, &id, json!({"at": "now"})).await,
    ] {
        r.assert_problem(409, "invalid_transition");
    }
    // Archived plans take no new subscriptions.
    let r = app.archive_plan(key, &plan).await;
    assert_eq!(r.body["status"], "archived");
    let r = app
        .create_subscription(key, json!({"customer_id": "c", "plan_id": plan}))
        .await;
    r.assert_problem(422, "validation_failed");
    let r = app
        .post(
            key,
            "/v1/subscriptions/sub_doesnotexist/activate",
            json!({}),
        )
        .await;
    r.assert_problem(404, "not_found");
}

async fn suspend_twice_is_a_noop(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let (id, _) = app.active_subscription(&plan, 1).await;
    let first = app
        .suspend(&app.admin_key, &id, json!({"reason": "non_payment"}))
        .await;
    assert_eq!(first.status, 200);
    let second = app
        .suspend(&app.admin_key, &id, json!({"reason": "manual"}))
        .await;
    assert_eq!(second.status, 200, "{:?}", second.body);
    assert_eq!(
        second.body["version"], first.body["version"],
        "no event appended"
    );
    assert_eq!(second.body["suspension"]["reason"], "non_payment");
    assert_eq!(
        second.header("x-log-position"),
        first.header("x-log-position")
    );
}

async fn lists_filter_and_page(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = &app.admin_key;
    let plan = app.standard_plan().await;
    let mut last = 0;
    for i in 0..5 {
        let r = app
            .create_subscription(
                key,
                json!({"customer_id": format!("cus_{}", i % 2), "plan_id": plan}),
            )
            .await;
        if i < 2 {
            last = app.activate(key, &r.id(), json!({})).await.position();
        } else {
            last = r.position();
        }
    }
    let page1 = app.get_after(key, "/v1/subscriptions?limit=2", last).await;
    assert_eq!(page1.body["data"].as_array().unwrap().len(), 2);
    let cursor = page1.body["next_cursor"].as_str().unwrap().to_string();
    let page2 = app
        .get(key, &format!("/v1/subscriptions?limit=2&cursor={cursor}"))
        .await;
    let page3 = app
        .get(
            key,
            &format!(
                "/v1/subscriptions?limit=2&cursor={}",
                page2.body["next_cursor"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(page3.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(page3.body["next_cursor"], json!(null));
    let mut all: Vec<String> = Vec::new();
    for p in [&page1, &page2, &page3] {
        all.extend(
            p.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_string()),
        );
    }
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 5);
    assert_eq!(all, sorted, "pages are in id order without overlap");
    let active = app.get(key, "/v1/subscriptions?status=active").await;
    assert_eq!(active.body["data"].as_array().unwrap().len(), 2);
    let cus0 = app.get(key, "/v1/subscriptions?customer_id=cus_0").await;
    assert_eq!(cus0.body["data"].as_array().unwrap().len(), 3);
    let plans = app.get(key, "/v1/plans?status=active").await;
    assert_eq!(plans.body["data"].as_array().unwrap().len(), 1);
}

async fn rebuild_equals_incremental(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let key = &app.admin_key;
    let plan = app.standard_plan().await;
    for i in 0..6u32 {
        let (id, _) = app.active_subscription(&plan, 1 + i).await;
        if i % 2 == 0 {
            app.suspend(key, &id, json!({"reason": "manual"})).await;
        }
        if i % 3 == 0 {
            app.cancel(key, &id, json!({"at": "period_end"})).await;
        }
    }
    app.settle().await;
    let db = &app.state().db;
    let cols = "tenant, id, customer_id, plan_id, status, body, version";
    let before_subs = table_rows(db, "rm_subscriptions", cols).await;
    let before_plans = table_rows(db, "rm_plans", "tenant, id, code, status, body, version").await;
    assert_eq!(before_subs.len(), 6);
    for name in ["subscriptions", "plans"] {
        let r = app.rebuild(key, name).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    app.settle().await;
    assert_eq!(table_rows(db, "rm_subscriptions", cols).await, before_subs);
    assert_eq!(
        table_rows(db, "rm_plans", "tenant, id, code, status, body, version").await,
        before_plans
    );
    app.rebuild(key, "nope")
        .await
        .assert_problem(404, "not_found");
}

async fn audit_stream_has_metadata(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let (id, _) = app.active_subscription(&plan, 1).await;
    let r = app
        .post_with(
            &app.admin_key,
            &format!("/v1/subscriptions/{id}/change-seats"),
            json!({"seats": 4}),
            &[
                ("x-request-id", "req-abc".to_string()),
                ("x-correlation-id", "corr-xyz".to_string()),
                ("idempotency-key", "seats-4".to_string()),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let events = app.stream_events(&app.admin_key, "subscription", &id).await;
    assert_eq!(events.status, 200);
    let data = events.body["data"].as_array().unwrap();
    let types: Vec<_> = data
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "SubscriptionCreated",
            "SubscriptionActivated",
            "SeatsChanged"
        ]
    );
    let seqs: Vec<_> = data
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert!(data
        .windows(2)
        .all(|w| w[0]["position"].as_i64() < w[1]["position"].as_i64()));
    let last = &data[2];
    assert_eq!(last["position"].as_i64().unwrap(), r.position());
    let m = &last["metadata"];
    assert_eq!(m["tenant"], "default");
    assert!(m["actor"].as_str().unwrap().starts_with("key_"));
    assert_eq!(m["request_id"], "req-abc");
    assert_eq!(m["correlation_id"], "corr-xyz");
    assert_eq!(m["idempotency_key"], "seats-4");
    assert_eq!(m["event_id"], last["event_id"]);
    assert_eq!(last["event_version"], "1.0");
    assert_eq!(r.header("x-request-id"), Some("req-abc"));
    app.get(&app.admin_key, "/v1/audit/streams/gizmo/x/events")
        .await
        .assert_problem(404, "not_found");
}

async fn operations_endpoints(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let h = app
        .request(reqwest::Method::GET, "/healthz", None, &[], None)
        .await;
    assert_eq!(h.status, 200);
    let plan = app.standard_plan().await;
    app.active_subscription(&plan, 1).await;
    app.settle().await;
    let ready = app
        .request(reqwest::Method::GET, "/readyz", None, &[], None)
        .await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    let p = app.projections(&app.admin_key).await;
    let list = p.body.as_array().unwrap();
    let names: Vec<_> = list.iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "plans",
            "subscriptions",
            "usage",
            "invoices",
            "balances",
            "tickets",
            "inbox",
            "customers",
            "coupons",
            "tax_rates",
            "policy.quota",
            "policy.billing",
            "webhooks.fanout",
            "sealer"
        ]
    );
    for x in list {
        assert_eq!(x["lag_events"], 0, "{x:?}");
        assert_eq!(x["position"], x["log_head"]);
        assert_eq!(x["status"], "running");
    }
    let m = app
        .request(reqwest::Method::GET, "/metrics", None, &[], None)
        .await;
    assert_eq!(m.status, 200);
    let text = m.body.as_str().unwrap();
    for needle in [
        "tally_http_requests_total",
        "tally_commands_total",
        "tally_events_appended_total",
        "tally_projection_lag_events",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}");
    }
}

/// Issue 16: every list's query parameters were declared `in: path` (the
/// document did not validate and generators dropped the lists),
/// operationIds repeated (`list` x7), and the two idempotency 409 codes were
/// not in the document. scripts/contract.sh validates and generates from
/// the document; this pins the parts a generator names things by.
async fn openapi_declares_the_contract(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let spec = app
        .request(reqwest::Method::GET, "/openapi.json", None, &[], None)
        .await;
    assert_eq!(spec.status, 200);
    let mut ids = std::collections::BTreeMap::new();
    for (path, item) in spec.body["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().expect("an operationId");
            let well_formed = id.split('_').count() >= 2
                && id
                    .split('_')
                    .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase()));
            assert!(
                well_formed,
                "{method} {path}: operationId {id} is not resource_verb"
            );
            let before = ids.insert(id.to_string(), format!("{method} {path}"));
            assert!(
                before.is_none(),
                "operationId {id} twice: {before:?} and {method} {path}"
            );
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for p in &params {
                let name = p["name"].as_str().unwrap();
                let in_path = path.contains(&format!("{{{name}}}"));
                assert_eq!(
                    p["in"] == "path",
                    in_path,
                    "{method} {path}: parameter {name} is in {}",
                    p["in"]
                );
            }
            let has = |name: &str, place: &str| {
                params.iter().any(|p| p["name"] == name && p["in"] == place)
            };
            let responses = op["responses"].as_object().unwrap();
            if !path.starts_with("/v1/") {
                continue;
            }
            if path.starts_with("/v1/inbound/") {
                // A payment provider's webhook: no API key, no
                // Idempotency-Key (the provider's event id dedupes), its
                // own answers.
                assert!(op.get("security").is_none(), "{method} {path}: no API key");
                for status in ["400", "404", "409", "413", "422", "503"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} lacks {status}"
                    );
                }
                continue;
            }
            for status in ["401", "403", "422", "429", "503"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} lacks {status}"
                );
            }
            if method == "post" {
                assert!(
                    has("Idempotency-Key", "header"),
                    "{method} {path}: Idempotency-Key"
                );
                let conflict = &responses["409"];
                let text = conflict.to_string();
                for code in [
                    "idempotency_key_in_flight",
                    "idempotency_key_applied",
                    "invalid_transition",
                ] {
                    assert!(
                        text.contains(code),
                        "{method} {path}: 409 does not name {code}"
                    );
                }
                assert!(
                    conflict["content"]["application/problem+json"]["schema"]["$ref"]
                        .as_str()
                        .is_some_and(|r| r.ends_with("/Problem")),
                    "{method} {path}: 409 is a problem"
                );
            }
            let page = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .is_some_and(|r| r.contains("Page"));
            if method == "get" && page {
                assert!(
                    has("limit", "query") && has("cursor", "query"),
                    "{method} {path}: limit and cursor in query"
                );
            }
        }
    }
    for (id, at) in [
        ("plans_list", "get /v1/plans"),
        ("plans_create", "post /v1/plans"),
        (
            "subscriptions_change_seats",
            "post /v1/subscriptions/{id}/change-seats",
        ),
        ("invoices_pay", "post /v1/invoices/{id}/payments"),
        ("keys_revoke", "delete /v1/keys/{id}"),
        ("usage_create_batch", "post /v1/usage/batch"),
        (
            "invoices_credit_note",
            "post /v1/invoices/{id}/credit-notes",
        ),
        (
            "payment_providers_configure",
            "put /v1/payment-providers/{provider}",
        ),
        ("payment_providers_list", "get /v1/payment-providers"),
        ("inbound_receive", "post /v1/inbound/{provider}/{token}"),
    ] {
        assert_eq!(ids.get(id).map(String::as_str), Some(at), "{id}");
    }
    let seats = &spec.body["paths"]["/v1/subscriptions/{id}/change-seats"]["post"];
    assert!(
        seats["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "If-Match" && p["in"] == "header"),
        "{seats}"
    );
    let batch = &spec.body["paths"]["/v1/usage/batch"]["post"]["responses"]["200"];
    assert!(batch["headers"]["X-Log-Position"].is_object(), "{batch}");
    // A meter's pricing models (API.md § Plans), in requests and answers.
    let schemas = &spec.body["components"]["schemas"];
    for schema in ["MeterRequest", "MeterDto"] {
        let pricing = schemas[schema]["properties"]["pricing"].to_string();
        assert!(
            pricing.contains("\"#/components/schemas/PricingDto\""),
            "{schema}: {pricing}"
        );
    }
    let pricing = &schemas["PricingDto"]["properties"];
    assert_eq!(
        pricing["model"]["pattern"],
        "^(per_unit|graduated|volume|package)$"
    );
    for field in ["unit_price", "tiers", "package_size", "package_price"] {
        assert!(pricing[field].is_object(), "{field}: {pricing:#}");
    }
    let tier = &schemas["TierDto"]["properties"];
    for field in ["up_to", "unit_price", "flat_fee"] {
        assert!(tier[field].is_object(), "{field}: {tier:#}");
    }
}

async fn docs_work_offline(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let spec = app
        .request(reqwest::Method::GET, "/openapi.json", None, &[], None)
        .await;
    assert_eq!(spec.status, 200);
    let paths = spec.body["paths"].as_object().unwrap();
    for p in [
        "/v1/plans",
        "/v1/plans/{id}",
        "/v1/plans/{id}/archive",
        "/v1/subscriptions",
        "/v1/subscriptions/{id}",
        "/v1/subscriptions/{id}/activate",
        "/v1/subscriptions/{id}/end-trial",
        "/v1/customers",
        "/v1/customers/{customer_id}",
        "/v1/coupons",
        "/v1/coupons/{id}",
        "/v1/coupons/{id}/archive",
        "/v1/subscriptions/{id}/discount",
        "/v1/tax-rates",
        "/v1/tax-rates/{id}",
        "/v1/tax-rates/{id}/archive",
        "/v1/subscriptions/{id}/change-plan",
        "/v1/subscriptions/{id}/change-seats",
        "/v1/subscriptions/{id}/suspend",
        "/v1/subscriptions/{id}/resume",
        "/v1/subscriptions/{id}/cancel",
        "/v1/subscriptions/{id}/entitlements",
        "/v1/audit/streams/{type}/{id}/events",
        "/v1/admin/projections",
        "/v1/admin/projections/{name}/rebuild",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "OpenAPI lacks {p}");
    }
    let page = app
        .request(reqwest::Method::GET, "/docs/", None, &[], None)
        .await;
    assert_eq!(page.status, 200);
    let html = page.body.as_str().unwrap();
    assert!(html.contains("swagger"), "{html}");
    for needle in ["http://", "https://"] {
        for line in html
            .lines()
            .filter(|l| l.contains("<script") || l.contains("<link"))
        {
            assert!(
                !line.contains(needle),
                "external reference in /docs: {line}"
            );
        }
    }
    let init = app
        .request(
            reqwest::Method::GET,
            "/docs/swagger-initializer.js",
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(init.status, 200);
    assert!(init.body.as_str().unwrap().contains("/openapi.json"));
}

async fn manual_clock(backend: Backend) {
    let start = chrono::DateTime::parse_from_rfc3339("2026-01-31T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let app = TestApp::spawn_manual(backend, start).await;
    let key = &app.admin_key;
    let r = app.get(key, "/v1/admin/clock").await;
    assert_eq!(r.body["now"], "2026-01-31T00:00:00Z");
    let r = app.advance_clock(key, json!({"by": "P1M"})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["now"], "2026-02-28T00:00:00Z");
    let plan = app.standard_plan().await;
    let (_, act) = app.active_subscription(&plan, 1).await;
    assert_eq!(
        act.body["activated_at"], "2026-02-28T00:00:00Z",
        "commands read the manual clock"
    );
    app.advance_clock(key, json!({"to": "2026-01-01T00:00:00Z"}))
        .await
        .assert_problem(422, "validation_failed");
    let writer = app.key("default", "writer").await;
    app.advance_clock(&writer, json!({"by": "P1D"}))
        .await
        .assert_problem(403, "forbidden");
    // A server on the system clock has no clock endpoints.
    let sys = TestApp::spawn(backend).await;
    sys.get(&sys.admin_key, "/v1/admin/clock")
        .await
        .assert_problem(404, "not_found");
}

async fn audit_state_and_feed(backend: Backend) {
    let start = chrono::DateTime::parse_from_rfc3339("2026-01-31T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let app = TestApp::spawn_manual(backend, start).await;
    let k = &app.admin_key;
    let plan = app.standard_plan().await;
    let id = app
        .create_subscription(
            k,
            json!({"customer_id": "cus_a", "plan_id": plan, "seats": 2}),
        )
        .await
        .id();
    app.advance_clock(k, json!({"by": "P1D"})).await;
    app.activate(k, &id, json!({})).await;
    app.advance_clock(k, json!({"by": "P1D"})).await;
    let last = app.change_seats(k, &id, json!({"seats": 5})).await;
    let path = |q: &str| format!("/v1/audit/streams/subscription/{id}/state?{q}");
    // As of the first day: the draft, shaped like GET /v1/subscriptions/{id}.
    let draft = app.get(k, &path("at=2026-01-31T12:00:00Z")).await;
    assert_eq!(draft.status, 200, "{:?}", draft.body);
    assert_eq!(draft.body["sequence"], 1);
    assert_eq!(draft.body["state"]["status"], "draft");
    assert_eq!(draft.body["state"]["seats"], 2);
    assert_eq!(draft.body["state"]["id"], id.as_str());
    let second = app.get(k, &path("sequence=2")).await;
    assert_eq!(second.body["state"]["status"], "active");
    assert_eq!(second.body["state"]["seats"], 2);
    let now = app.get(k, &path("")).await;
    let current = app
        .get_after(k, &format!("/v1/subscriptions/{id}"), last.position())
        .await;
    assert_eq!(
        now.body["state"], current.body,
        "the latest state equals the resource's GET"
    );
    app.get(k, &path("at=2026-01-01T00:00:00Z"))
        .await
        .assert_problem(404, "not_found");
    app.get(k, &path("at=yesterday"))
        .await
        .assert_problem(422, "validation_failed");
    app.get(k, &path("at=2026-01-31T12:00:00Z&sequence=1"))
        .await
        .assert_problem(422, "validation_failed");
    let auditor = app.key("default", "auditor").await;
    assert_eq!(app.get(&auditor, &path("sequence=1")).await.status, 200);
    let reader = app.key("default", "reader").await;
    app.get(&reader, &path("sequence=1"))
        .await
        .assert_problem(403, "forbidden");

    // The tenant's global feed, in position order, with cursors; another
    // tenant's events never appear.
    let other = app.key("acme", "admin").await;
    app.create_plan(&other, standard_plan_body("acme")).await;
    // Activation also issued the first invoice (billing policy): let it land.
    app.settle().await;
    let page1 = app.get(k, "/v1/audit/events?limit=2").await;
    assert_eq!(page1.status, 200, "{:?}", page1.body);
    let entry = |e: &serde_json::Value| {
        (
            e["position"].as_i64().unwrap(),
            e["stream_type"].as_str().unwrap().to_string(),
        )
    };
    let mut seen: Vec<(i64, String)> = page1.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(entry)
        .collect();
    let mut cursor = page1.body["next_cursor"].as_str().unwrap().to_string();
    for _ in 0..20 {
        let page = app
            .get(k, &format!("/v1/audit/events?after={cursor}&limit=2"))
            .await;
        let data = page.body["data"].as_array().unwrap();
        if data.is_empty() {
            break;
        }
        assert!(data.iter().all(|e| e["metadata"]["tenant"] == "default"));
        seen.extend(data.iter().map(entry));
        cursor = page.body["next_cursor"].as_str().unwrap().to_string();
    }
    let ours: Vec<&(i64, String)> = seen
        .iter()
        .filter(|(_, t)| t == "plan" || t == "subscription")
        .collect();
    assert_eq!(
        ours.len(),
        4,
        "plan created, subscription created, activated, seats changed: {seen:?}"
    );
    // The rest is the first invoice: created, two lines, issued, numbered.
    assert_eq!(seen.len(), 9, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    let theirs = app.get(&other, "/v1/audit/events").await;
    let their_types: Vec<_> = theirs.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream_type"].as_str().unwrap())
        .collect();
    assert_eq!(their_types, ["plan"]);
    app.get(k, "/v1/audit/events?limit=0")
        .await
        .assert_problem(422, "validation_failed");
}
