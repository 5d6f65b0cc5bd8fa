//! Audit state-as-of, end to end on both backends: for every aggregate type,
//! the state the audit API folds as of a sequence, or as of a time, is the
//! resource exactly as the API returned it then.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use tally_tests::{both_backends, Backend, BillingConfig, TestApp};

both_backends!(state_as_of_matches_what_the_api_returned);

/// What the API answered at one moment, for one resource.
struct Seen {
    kind: &'static str,
    id: String,
    at: DateTime<Utc>,
    body: Value,
}

struct Script<'a> {
    app: &'a TestApp,
    now: DateTime<Utc>,
    seen: Vec<Seen>,
}

impl Script<'_> {
    /// Runs one command a minute after the previous one and notes its answer.
    async fn step(&mut self, kind: &'static str, path: &str, body: Value, status: u16) -> Value {
        self.send(reqwest::Method::POST, kind, path, body, status)
            .await
    }

    /// [`Script::step`] with another method (`PUT /v1/customers/{id}`).
    async fn send(
        &mut self,
        method: reqwest::Method,
        kind: &'static str,
        path: &str,
        body: Value,
        status: u16,
    ) -> Value {
        self.now += Duration::minutes(1);
        let r = self
            .app
            .advance_clock(&self.app.admin_key, json!({"to": self.now.to_rfc3339()}))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let r = self
            .app
            .request(
                method,
                path,
                Some(&self.app.admin_key),
                &[],
                Some(body.to_string().into_bytes()),
            )
            .await;
        assert_eq!(r.status, status, "{path}: {:?}", r.body);
        let id = r.body["id"].as_str().expect("a resource").to_string();
        self.seen.push(Seen {
            kind,
            id,
            at: self.now,
            body: r.body.clone(),
        });
        r.body
    }
}

async fn state_as_of_matches_what_the_api_returned(backend: Backend) {
    let start: DateTime<Utc> = "2026-05-01T10:00:00Z".parse().unwrap();
    let app = TestApp::spawn_billing(backend, start, BillingConfig::default()).await;
    let mut s = Script {
        app: &app,
        now: start,
        seen: Vec::new(),
    };
    let plan = s
        .step(
            "plan",
            "/v1/plans",
            tally_tests::standard_plan_body("std"),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A customer, put and then changed: the invoice below copies the
    // details of the second put when it is issued.
    for (name, status) in [("Ana", 201), ("Ana Lima", 200)] {
        s.send(
            reqwest::Method::PUT,
            "customer",
            "/v1/customers/cus_a",
            json!({"name": name, "email": "ana@example.com",
                   "address": {"line1": "Main St 1", "city": "Berlin", "country": "DE"}}),
            status,
        )
        .await;
    }
    // A trial, started and ended early.
    let trial = s
        .step(
            "subscription",
            "/v1/subscriptions",
            json!({"customer_id": "cus_a", "plan_id": plan, "trial_days": 7}),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for command in ["activate", "end-trial"] {
        s.step(
            "subscription",
            &format!("/v1/subscriptions/{trial}/{command}"),
            json!({}),
            200,
        )
        .await;
    }
    let sub = s
        .step(
            "subscription",
            "/v1/subscriptions",
            json!({"customer_id": "cus_a", "plan_id": plan, "seats": 2}),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.step(
        "subscription",
        &format!("/v1/subscriptions/{sub}/activate"),
        json!({}),
        200,
    )
    .await;
    // A tax rate, then archived.
    let rate = s
        .step(
            "tax_rate",
            "/v1/tax-rates",
            json!({"name": "VAT", "percentage": "19", "inclusive": false, "country": "DE"}),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.step(
        "tax_rate",
        &format!("/v1/tax-rates/{rate}/archive"),
        json!({}),
        200,
    )
    .await;
    // A coupon, redeemed by the subscription, then archived.
    let coupon = s
        .step(
            "coupon",
            "/v1/coupons",
            json!({"code": "AUDIT10", "percent_off": "10", "duration": "repeating",
                   "duration_in_periods": 3, "max_redemptions": 5,
                   "redeem_by": "2026-12-31T00:00:00Z"}),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.step(
        "subscription",
        &format!("/v1/subscriptions/{sub}/discount"),
        json!({"coupon_code": "AUDIT10"}),
        200,
    )
    .await;
    s.step(
        "coupon",
        &format!("/v1/coupons/{coupon}/archive"),
        json!({}),
        200,
    )
    .await;
    s.step(
        "subscription",
        &format!("/v1/subscriptions/{sub}/change-seats"),
        json!({"seats": 5, "proration": "none"}),
        200,
    )
    .await;
    s.step(
        "subscription",
        &format!("/v1/subscriptions/{sub}/suspend"),
        json!({"reason": "manual", "note": "audit"}),
        200,
    )
    .await;
    s.step(
        "subscription",
        &format!("/v1/subscriptions/{sub}/resume"),
        json!({}),
        200,
    )
    .await;
    let usage = s
        .step(
            "usage_record",
            "/v1/usage",
            json!({"subscription_id": sub, "meter": "api_calls", "quantity": "7",
            "timestamp": (start + Duration::minutes(6)).to_rfc3339(), "transaction_id": "audit-1"}),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.step(
        "usage_record",
        &format!("/v1/usage/{usage}/void"),
        json!({"reason": "duplicate meter read"}),
        200,
    )
    .await;
    let inv = s
        .step(
            "invoice",
            "/v1/invoices",
            json!({"customer_id": "cus_a", "currency": "EUR"}),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.step(
        "invoice",
        &format!("/v1/invoices/{inv}/lines"),
        json!({"description": "Setup", "quantity": "3", "unit_price": "9.99"}),
        200,
    )
    .await;
    s.step(
        "invoice",
        &format!("/v1/invoices/{inv}/issue"),
        json!({}),
        200,
    )
    .await;
    s.step(
        "invoice",
        &format!("/v1/invoices/{inv}/payments"),
        json!({"amount": "10.00", "reference": "pay-1"}),
        200,
    )
    .await;
    s.step("plan", &format!("/v1/plans/{plan}/archive"), json!({}), 200)
        .await;
    let tkt = s
        .step("ticket", "/v1/tickets", json!({"subject": "Audit me", "description": "Please", "requester": "customer:cus_a", "priority": "low"}), 201)
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.step(
        "ticket",
        &format!("/v1/tickets/{tkt}/assign"),
        json!({"assignee": "bob"}),
        200,
    )
    .await;
    s.step(
        "ticket",
        &format!("/v1/tickets/{tkt}/comments"),
        json!({"author": "bob", "body": "On it", "public": true}),
        200,
    )
    .await;
    s.step(
        "ticket",
        &format!("/v1/tickets/{tkt}/transition"),
        json!({"to": "pending"}),
        200,
    )
    .await;
    app.settle().await;

    let key = &app.admin_key;
    let kinds: std::collections::BTreeSet<_> = s.seen.iter().map(|x| x.kind).collect();
    assert_eq!(kinds.len(), 8, "every resource type with a GET shape");
    for seen in &s.seen {
        let version = seen.body["version"].as_i64().expect("version");
        let by_seq = app
            .get(
                key,
                &format!(
                    "/v1/audit/streams/{}/{}/state?sequence={version}",
                    seen.kind, seen.id
                ),
            )
            .await;
        assert_eq!(by_seq.status, 200, "{:?}", by_seq.body);
        assert_eq!(by_seq.body["sequence"], version);
        assert_eq!(
            by_seq.body["state"], seen.body,
            "{} {} as of sequence {version}",
            seen.kind, seen.id
        );
        // As of the time of that answer (the next command came a minute later).
        let at = (seen.at + Duration::seconds(30)).to_rfc3339();
        let by_time = app
            .get(
                key,
                &format!(
                    "/v1/audit/streams/{}/{}/state?at={}",
                    seen.kind,
                    seen.id,
                    at.replace('+', "%2B")
                ),
            )
            .await;
        assert_eq!(by_time.status, 200, "{:?}", by_time.body);
        assert_eq!(
            by_time.body["state"], seen.body,
            "{} {} as of {at}",
            seen.kind, seen.id
        );
    }

    // The inbox: its read state as of before and after an item was read.
    let items = app.get(key, "/v1/inbox?recipient=customer:cus_a").await;
    let item = items.body["data"][0]["id"].as_str().unwrap().to_string();
    let before_read = s.now + Duration::seconds(30);
    s.now += Duration::minutes(1);
    app.advance_clock(key, json!({"to": s.now.to_rfc3339()}))
        .await;
    let r = app
        .post(key, &format!("/v1/inbox/{item}/read"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let inbox = app
        .get(key, "/v1/audit/streams/inbox/customer:cus_a/state")
        .await;
    assert_eq!(inbox.status, 200, "{:?}", inbox.body);
    assert!(
        inbox.body["state"].to_string().contains(&item),
        "{:?}",
        inbox.body
    );
    let earlier = app
        .get(
            key,
            &format!(
                "/v1/audit/streams/inbox/customer:cus_a/state?at={}",
                before_read.to_rfc3339().replace('+', "%2B")
            ),
        )
        .await;
    assert_eq!(
        earlier.status, 404,
        "no inbox events before the read: {:?}",
        earlier.body
    );

    // Before its first event a stream has no state; bad cuts are 422.
    let r = app
        .get(
            key,
            &format!("/v1/audit/streams/plan/{plan}/state?at=2020-01-01T00:00:00Z"),
        )
        .await;
    r.assert_problem(404, "not_found");
    app.get(
        key,
        &format!("/v1/audit/streams/plan/{plan}/state?sequence=0"),
    )
    .await
    .assert_problem(422, "validation_failed");
    app.get(
        key,
        &format!("/v1/audit/streams/plan/{plan}/state?at=yesterday"),
    )
    .await
    .assert_problem(422, "validation_failed");
    app.get(key, &format!("/v1/audit/streams/widget/{plan}/state"))
        .await
        .assert_problem(404, "not_found");
}
