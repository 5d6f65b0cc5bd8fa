//! Hostile input (issue 19): what an adversarial probe found, one test per
//! finding, each named after what went wrong, on both backends.

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Value};
use tally_tests::{both_backends, Backend, Resp, TestApp};

both_backends!(
    malformed_json_applied_commands_that_take_no_body,
    invalid_utf8_or_nul_in_a_path_id_was_400_text_or_500,
    nul_in_bodies_and_queries_was_a_500_on_postgres,
    unknown_nested_fields_were_accepted,
    tickets_accepted_any_subscription_id,
    payments_accepted_a_captured_at_of_year_0_or_9999,
    back_dated_activation_billed_thousands_of_periods,
    truncate_of_the_event_log_was_not_refused,
    ipv6_spellings_of_internal_ipv4_addresses_were_accepted_as_webhook_urls,
    a_lowercase_bearer_scheme_was_refused,
    keys_could_not_be_listed_or_revoked,
    list_query_parameters_were_declared_as_path_parameters,
);

/// A request with a raw body (JSON content type), as a fuzzer sends it.
async fn raw(app: &TestApp, method: Method, path: &str, body: &[u8]) -> Resp {
    app.request(method, path, Some(&app.admin_key), &[], Some(body.to_vec()))
        .await
}

async fn head(app: &TestApp) -> i64 {
    app.state().dispatcher.log().head().await.expect("head")
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test time")
        .with_timezone(&Utc)
}

async fn draft_subscription(app: &TestApp, plan: &str) -> String {
    let r = app
        .create_subscription(
            &app.admin_key,
            json!({"customer_id": "cus_1", "plan_id": plan}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.id()
}

async fn draft_invoice(app: &TestApp) -> String {
    let r = app
        .post(
            &app.admin_key,
            "/v1/invoices",
            json!({"customer_id": "cus_1", "currency": "EUR",
                   "lines": [{"description": "Setup", "quantity": "1", "unit_price": "10.00"}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.id()
}

/// `POST /v1/invoices/{id}/issue` with `{}}`, `{} {}` or `[]` issued the
/// invoice (200): serde read the first document and ignored the rest, and
/// read `[]` as an empty struct. A command without a body takes an empty
/// body or `{}`, nothing else.
async fn malformed_json_applied_commands_that_take_no_body(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let draft = draft_subscription(&app, &plan).await;
    let (active, _) = app.active_subscription(&plan, 1).await;
    let r = app
        .suspend(&app.admin_key, &active, json!({"reason": "manual"}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let invoice = draft_invoice(&app).await;
    app.settle().await;
    let before = head(&app).await;
    let commands = [
        format!("/v1/invoices/{invoice}/issue"),
        format!("/v1/invoices/{invoice}/mark-uncollectible"),
        format!("/v1/subscriptions/{active}/resume"),
        format!("/v1/subscriptions/{draft}/activate"),
        format!("/v1/plans/{plan}/archive"),
    ];
    for path in &commands {
        for body in [
            &b"{}}"[..],
            b"{} {}",
            b"[]",
            b"null",
            b"\"x\"",
            b"{\"x\": 1}",
        ] {
            let r = raw(&app, Method::POST, path, body).await;
            r.assert_problem(422, "validation_failed");
            assert!(
                r.body["errors"][0]["field"].is_string(),
                "{path} {body:?}: {:?}",
                r.body
            );
        }
    }
    assert_eq!(head(&app).await, before, "a refused body changed nothing");
    // An empty body and `{}` are fine.
    let r = raw(&app, Method::POST, &commands[0], b"").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "open");
    let r = raw(&app, Method::POST, &commands[2], b"{}").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "active");
    let r = raw(&app, Method::POST, &commands[3], b" ").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "active");
}

/// `POST /v1/plans/x%ff/archive` answered 400 text/plain (axum's path
/// rejection) and a `%00` in a path id reached PostgreSQL (500). Every id in
/// a path that is not NUL-free UTF-8 names nothing: 404 problem+json.
async fn invalid_utf8_or_nul_in_a_path_id_was_400_text_or_500(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let requests = [
        (Method::POST, "/v1/plans/x%ff/archive"),
        (Method::GET, "/v1/plans/x%ff"),
        (Method::GET, "/v1/plans/plan_%00"),
        (Method::POST, "/v1/subscriptions/sub_%ff/activate"),
        (Method::POST, "/v1/subscriptions/sub_%00/cancel"),
        (Method::GET, "/v1/subscriptions/sub_%00/entitlements"),
        (Method::GET, "/v1/invoices/inv_%ff"),
        (Method::POST, "/v1/invoices/inv_%00/issue"),
        (Method::POST, "/v1/inbox/%00/read"),
        (Method::POST, "/v1/inbox/ntf_%00/archive"),
        (Method::POST, "/v1/inbox/x%ff/read"),
        (Method::GET, "/v1/audit/streams/subscription/%00/events"),
        (Method::GET, "/v1/audit/streams/subscription/sub_%ff/state"),
        (Method::GET, "/v1/audit/streams/%00/x/events"),
        (Method::GET, "/v1/tickets/tkt_%00"),
        (Method::POST, "/v1/tickets/tkt_%ff/assign"),
        (Method::POST, "/v1/usage/use_%00/void"),
        (Method::GET, "/v1/usage/use_%ff"),
        (Method::GET, "/v1/webhooks/whk_%00"),
        (Method::DELETE, "/v1/webhooks/whk_%ff"),
        (Method::GET, "/v1/customers/cus_%00/balance"),
        (Method::GET, "/v1/customers/%ff/journal"),
        (Method::POST, "/v1/admin/projections/%00/rebuild"),
    ];
    for (method, path) in requests {
        let body = (method == Method::POST).then(|| b"{}".to_vec());
        let r = app
            .request(method.clone(), path, Some(&app.admin_key), &[], body)
            .await;
        assert_eq!(r.status, 404, "{method} {path}: {:?}", r.body);
        r.assert_problem(404, "not_found");
    }
    assert_eq!(head(&app).await, 0);
}

/// NUL bytes in text reached PostgreSQL, which refuses them (500), while
/// SQLite stored them: refused at the edge on both, naming the field.
async fn nul_in_bodies_and_queries_was_a_500_on_postgres(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let (sub, _) = app.active_subscription(&plan, 1).await;
    app.settle().await;
    let before = head(&app).await;
    let bodies = [
        (
            format!("/v1/subscriptions/{sub}/cancel"),
            json!({"at": "now", "reason": "a\u{0}b"}),
            "reason",
        ),
        (
            format!("/v1/subscriptions/{sub}/suspend"),
            json!({"reason": "manual", "note": "\u{0}"}),
            "note",
        ),
        (
            "/v1/usage/use_x/void".to_string(),
            json!({"reason": "x\u{0}"}),
            "reason",
        ),
        (
            "/v1/invoices".to_string(),
            json!({"customer_id": "cus_1", "currency": "EUR", "subscription_id": "sub_\u{0}"}),
            "subscription_id",
        ),
        (
            "/v1/invoices".to_string(),
            json!({"customer_id": "cus_1", "currency": "EUR",
                   "lines": [{"description": "\u{0}", "quantity": "1", "unit_price": "1"}]}),
            "lines[0].description",
        ),
        (
            "/v1/tickets".to_string(),
            json!({"subject": "s", "description": "d", "requester": "customer:c\u{0}",
                   "priority": "low"}),
            "requester",
        ),
    ];
    for (path, body, field) in bodies {
        let r = app.post(&app.admin_key, &path, body).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], field, "{path}: {:?}", r.body);
    }
    assert_eq!(head(&app).await, before, "nothing refused was written");
    // In a usage batch a record with a NUL is rejected alone (API.md: one
    // bad record does not reject the others).
    let now = Utc::now().to_rfc3339();
    let r = app
        .post(
            &app.admin_key,
            "/v1/usage/batch",
            json!({"records": [
                {"subscription_id": sub, "meter": "api_calls\u{0}", "quantity": 1,
                 "timestamp": now, "transaction_id": "t\u{0}1"},
                {"subscription_id": sub, "meter": "api_calls", "quantity": 1,
                 "timestamp": now, "transaction_id": "t2"},
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let results = &r.body["results"];
    assert_eq!(results[0]["status"], "rejected", "{results:?}");
    assert_eq!(
        results[0]["error"]["errors"][0]["field"], "meter",
        "{results:?}"
    );
    assert_eq!(results[1]["status"], "created", "{results:?}");
    app.settle().await;
    let before = head(&app).await;
    let queries = [
        ("/v1/invoices?customer_id=%00", "customer_id"),
        ("/v1/invoices?customer_id=x%ff", "customer_id"),
        ("/v1/invoices?cursor=%00", "cursor"),
        ("/v1/subscriptions?status=%00", "status"),
        ("/v1/subscriptions?customer_id=a%00b", "customer_id"),
        ("/v1/tickets?assignee=%00", "assignee"),
        ("/v1/plans?cursor=%00", "cursor"),
        ("/v1/inbox?recipient=customer:%00", "recipient"),
        ("/v1/usage?subscription_id=%00", "subscription_id"),
        ("/v1/audit/events?after=%00", "after"),
    ];
    for (path, field) in queries {
        let r = app.get(&app.admin_key, path).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], field, "{path}: {:?}", r.body);
    }
    assert_eq!(head(&app).await, before, "nothing refused was written");
}

/// `"seats": {"min": 1, "max": 50, "zzz": 1}` created a plan (201) while an
/// unknown top-level field was refused: nested objects refuse them too.
async fn unknown_nested_fields_were_accepted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut plan = tally_tests::standard_plan_body("nested");
    plan["seats"] = json!({"min": 1, "max": 50, "zzz": 1});
    let r = app.create_plan(&app.admin_key, plan).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "seats.zzz", "{:?}", r.body);
    let r = app
        .post(
            &app.admin_key,
            "/v1/invoices",
            json!({"customer_id": "cus_1", "currency": "EUR",
                   "lines": [{"description": "x", "quantity": "1", "unit_price": "1", "zzz": 1}]}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "lines[0].zzz", "{:?}", r.body);
    assert_eq!(head(&app).await, 0);
}

/// Tickets took any `subscription_id` (none such, `../../etc/passwd`,
/// another tenant's) with 201; like invoices, only the tenant's own.
async fn tickets_accepted_any_subscription_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let (own, _) = app.active_subscription(&plan, 1).await;
    let other_key = app.key("other", "admin").await;
    let other_plan = app
        .create_plan(&other_key, tally_tests::standard_plan_body("o"))
        .await
        .id();
    let theirs = app
        .create_subscription(
            &other_key,
            json!({"customer_id": "cus_9", "plan_id": other_plan}),
        )
        .await
        .id();
    let ticket = |sub: &str| {
        json!({"subject": "s", "description": "d", "requester": "customer:cus_1",
               "priority": "low", "subscription_id": sub})
    };
    for sub in ["sub_doesnotexist", "../../etc/passwd", theirs.as_str(), ""] {
        let r = app.post(&app.admin_key, "/v1/tickets", ticket(sub)).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(
            r.body["errors"][0]["field"], "subscription_id",
            "{sub}: {:?}",
            r.body
        );
    }
    let r = app.post(&app.admin_key, "/v1/tickets", ticket(&own)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["subscription_id"], own.as_str());
}

async fn pay(app: &TestApp, invoice: &str, captured_at: &str) -> Resp {
    app.post(
        &app.admin_key,
        &format!("/v1/invoices/{invoice}/payments"),
        json!({"amount": "1.00", "reference": "wire", "captured_at": captured_at}),
    )
    .await
}

/// A payment's `captured_at` of 0000-01-01 or 9999-12-31 was recorded.
async fn payments_accepted_a_captured_at_of_year_0_or_9999(backend: Backend) {
    let now = t("2026-03-01T09:00:00Z");
    let app = TestApp::spawn_manual(backend, now).await;
    let invoice = draft_invoice(&app).await;
    let r = raw(
        &app,
        Method::POST,
        &format!("/v1/invoices/{invoice}/issue"),
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for bad in [
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "2026-03-02T09:00:00Z",
        "2024-01-01T00:00:00Z",
    ] {
        let r = pay(&app, &invoice, bad).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(
            r.body["errors"][0]["field"], "captured_at",
            "{bad}: {:?}",
            r.body
        );
    }
    let r = pay(&app, &invoice, "2026-02-27T12:00:00Z").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["payments"][0]["captured_at"], "2026-02-27T12:00:00Z");
}

/// Every time string in a JSON document has a four-digit year.
fn assert_four_digit_years(v: &Value) {
    match v {
        Value::String(s) if DateTime::parse_from_rfc3339(s).is_ok() || s.starts_with('+') => {
            assert!(
                s.len() >= 20
                    && s.as_bytes()[..4].iter().all(u8::is_ascii_digit)
                    && s.as_bytes()[4] == b'-',
                "not RFC 3339 with a four-digit year: {s}"
            );
        }
        Value::Array(items) => items.iter().for_each(assert_four_digit_years),
        Value::Object(map) => map.values().for_each(assert_four_digit_years),
        _ => {}
    }
}

/// `activate {"at": "0000-01-01T00:00:00Z"}` answered 200 and the scheduler
/// then billed thousands of periods; `"at": "9999-12-31T23:59:59Z"` wrote a
/// period end of `+10000-01-31T23:59:59Z`. Now `at` lies at most one
/// interval back (its one catch-up period is one invoice) and a year ahead,
/// and other accepted times are bounded too.
async fn back_dated_activation_billed_thousands_of_periods(backend: Backend) {
    let app = TestApp::spawn_manual(backend, t("2026-03-15T00:00:00Z")).await;
    let plan = app.standard_plan().await;
    let sub = draft_subscription(&app, &plan).await;
    for bad in [
        "0000-01-01T00:00:00Z",
        "2026-02-14T23:59:59Z",
        "2027-03-15T00:00:01Z",
        "9999-12-31T23:59:59Z",
    ] {
        let r = app.activate(&app.admin_key, &sub, json!({"at": bad})).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], "at", "{bad}: {:?}", r.body);
    }
    for (path, field) in [
        ("/v1/usage?from=0000-01-01T00:00:00Z", "from"),
        ("/v1/usage?to=9999-12-31T23:59:59Z", "to"),
    ] {
        let r = app.get(&app.admin_key, path).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], field, "{path}: {:?}", r.body);
    }
    let r = app
        .advance_clock(&app.admin_key, json!({"by": "P8000Y"}))
        .await;
    r.assert_problem(422, "validation_failed");

    let r = app
        .activate(&app.admin_key, &sub, json!({"at": "2026-02-15T12:00:00Z"}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["current_period"]["end"], "2026-03-15T12:00:00Z");
    assert_four_digit_years(&r.body);
    app.settle().await;
    let invoices = app
        .get(
            &app.admin_key,
            &format!("/v1/invoices?subscription_id={sub}"),
        )
        .await;
    assert_eq!(invoices.status, 200, "{:?}", invoices.body);
    let data = invoices.body["data"].as_array().expect("data");
    assert_eq!(data.len(), 1, "one catch-up invoice: {data:?}");
    assert_four_digit_years(&invoices.body);
    // The next period is billed when it starts, once.
    let r = app
        .advance_clock(&app.admin_key, json!({"to": "2026-03-15T12:00:00Z"}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.settle().await;
    let invoices = app
        .get(
            &app.admin_key,
            &format!("/v1/invoices?subscription_id={sub}"),
        )
        .await;
    assert_eq!(invoices.body["data"].as_array().expect("data").len(), 2);
}

/// PostgreSQL refused UPDATE and DELETE on `events` but not TRUNCATE.
async fn truncate_of_the_event_log_was_not_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.standard_plan().await;
    let before = head(&app).await;
    assert!(before > 0);
    let db = &app.state().db;
    let wipe = match backend {
        Backend::Postgres => "TRUNCATE events",
        // SQLite has no TRUNCATE; its unqualified DELETE is the same wipe.
        Backend::Sqlite => "DELETE FROM events",
    };
    let err = sqlx::query(wipe)
        .execute(&db.any)
        .await
        .expect_err("the log refuses to be wiped");
    assert!(err.to_string().contains("immutable"), "{err}");
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&db.any)
        .await
        .expect("count");
    assert_eq!(count, before);
}

/// `http://[::127.0.0.1]/x` (an IPv4-compatible IPv6 address) was accepted
/// as a webhook URL.
async fn ipv6_spellings_of_internal_ipv4_addresses_were_accepted_as_webhook_urls(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for url in [
        "http://[::127.0.0.1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://[64:ff9b::10.0.0.1]/x",
        "http://[2002:7f00:1::1]/x",
    ] {
        let r = app
            .post(
                &app.admin_key,
                "/v1/webhooks",
                json!({"url": url, "topics": ["billing.subscriptions.v1.*"]}),
            )
            .await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], "url", "{url}: {:?}", r.body);
    }
}

/// `Authorization: bearer KEY` was 401: the scheme is case-insensitive.
async fn a_lowercase_bearer_scheme_was_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = app
            .request(
                Method::GET,
                "/v1/plans",
                None,
                &[("authorization", format!("{scheme} {}", app.admin_key))],
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{scheme}: {:?}", r.body);
    }
    let r = app
        .request(
            Method::GET,
            "/v1/plans",
            None,
            &[("authorization", format!("Basic {}", app.admin_key))],
            None,
        )
        .await;
    r.assert_problem(401, "unauthorized");
}

/// A second server on the same database, as another process would be.
async fn second_server(app: &TestApp) -> tally_api::Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let config = tally_api::Config {
        database_url: app.db.url.clone(),
        clock: tally_commands::Clock::System,
        runtime: Default::default(),
        billing: Default::default(),
        nats: None,
        rate_limit: Default::default(),
        limits: Default::default(),
        db_max_connections: tally_projections::db::DEFAULT_MAX_CONNECTIONS,
    };
    tally_api::start(config, listener)
        .await
        .expect("start a second server")
}

async fn get_plans(app: &TestApp, base: &str, key: &str) -> u16 {
    app.client
        .get(format!("{base}/v1/plans"))
        .bearer_auth(key)
        .send()
        .await
        .expect("request sent")
        .status()
        .as_u16()
}

/// Keys could be created but not listed or revoked. `GET /v1/keys` lists
/// the tenant's keys without secrets; `DELETE /v1/keys/{id}` revokes one on
/// every process within 1 s (each caches keys it has seen) and records a
/// `KeyRevoked` event saying who did it.
async fn keys_could_not_be_listed_or_revoked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let writer = app.key("default", "writer").await;
    let foreign = app.key("other", "writer").await;
    let other = second_server(&app).await;
    let other_base = format!("http://{}", other.addr);
    // Both processes have seen (and cached) the writer's key.
    assert_eq!(get_plans(&app, &app.base, &writer).await, 200);
    assert_eq!(get_plans(&app, &other_base, &writer).await, 200);

    let r = app.list_keys(&writer, "").await;
    r.assert_problem(403, "forbidden");
    let r = app.list_keys(&app.admin_key, "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let text = r.body.to_string();
    for secret in [&app.admin_key, &writer, &foreign] {
        assert!(
            !text.contains(secret.as_str()),
            "no secret is shown: {text}"
        );
    }
    let data = r.body["data"].as_array().expect("data");
    assert_eq!(data.len(), 2, "only the tenant's keys: {data:?}");
    let writer_row = data
        .iter()
        .find(|k| k["role"] == "writer")
        .expect("the writer key");
    let writer_id = writer_row["id"].as_str().expect("id").to_string();
    assert!(writer_row["revoked_at"].is_null());
    let page = app.list_keys(&app.admin_key, "?limit=1").await;
    assert_eq!(page.body["data"].as_array().map(Vec::len), Some(1));
    let next = page.body["next_cursor"].as_str().expect("a next page");
    let rest = app
        .list_keys(&app.admin_key, &format!("?limit=1&cursor={next}"))
        .await;
    assert_eq!(rest.body["data"].as_array().map(Vec::len), Some(1));
    assert!(rest.body["next_cursor"].is_null());

    // Another tenant's key, or none, is not found.
    let foreign_id = tally_commands::keys::list(&app.state().db, Some("other"), None, 10)
        .await
        .expect("list")
        .data[0]
        .id
        .clone();
    for id in [foreign_id.as_str(), "key_nope", "x%00"] {
        let r = app.revoke_key(&app.admin_key, id).await;
        r.assert_problem(404, "not_found");
    }
    assert_eq!(get_plans(&app, &app.base, &foreign).await, 200);

    let r = app.revoke_key(&app.admin_key, &writer_id).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["id"], writer_id.as_str());
    let revoked_at = r.body["revoked_at"]
        .as_str()
        .expect("revoked_at")
        .to_string();
    let revoked = std::time::Instant::now();
    // At once in this process ...
    assert_eq!(get_plans(&app, &app.base, &writer).await, 401);
    // ... and within a second in the other.
    loop {
        let status = get_plans(&app, &other_base, &writer).await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked.elapsed() < std::time::Duration::from_secs(1),
            "the other process still accepts a revoked key"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Revoking again answers the same and records nothing new.
    let again = app.revoke_key(&app.admin_key, &writer_id).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.body["revoked_at"], revoked_at.as_str());

    // The log says who revoked it.
    let events = app
        .stream_events(&app.admin_key, "api_key", &writer_id)
        .await;
    assert_eq!(events.status, 200, "{:?}", events.body);
    let events = events.body["data"].as_array().expect("data").clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event_type"], "KeyRevoked");
    assert_eq!(events[0]["payload"]["KeyRevoked"]["role"], "writer");
    let admin_id = data
        .iter()
        .find(|k| k["role"] == "admin")
        .and_then(|k| k["id"].as_str())
        .expect("the admin key");
    assert_eq!(events[0]["metadata"]["actor"], admin_id);
    other.shutdown().await.expect("stop the second server");
}

/// The OpenAPI document declared every list's query parameters (`limit`,
/// `cursor`, filters) `in: path`, so fuzzers never sent them as queries;
/// API.md wants them `in: query`. A path parameter names a `{…}` of its path.
async fn list_query_parameters_were_declared_as_path_parameters(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let doc = app.get(&app.admin_key, "/openapi.json").await;
    assert_eq!(doc.status, 200);
    let paths = doc.body["paths"].as_object().expect("paths");
    let mut queries = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().expect("name");
                match p["in"].as_str() {
                    Some("path") => assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{method} {path}: `{name}` is no path parameter"
                    ),
                    Some("query") => queries += 1,
                    // The headers the server reads (issue 16 declared them).
                    Some("header") => assert!(
                        ["Idempotency-Key", "X-Min-Position", "If-Match"].contains(&name),
                        "{method} {path}: header `{name}`"
                    ),
                    other => panic!("{method} {path}: `{name}` in {other:?}"),
                }
            }
        }
    }
    assert!(queries > 20, "{queries} query parameters");
    let keys = &paths["/v1/keys"]["get"]["parameters"];
    assert_eq!(keys[0]["in"], "query", "{keys:?}");
}
