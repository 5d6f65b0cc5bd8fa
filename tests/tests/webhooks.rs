//! Signed webhooks end to end, on both backends and the manual clock, with a
//! local HTTP receiver that answers from a script and records every request:
//! signatures verify; 500, 500, 200 delivers on the third try; a receiver
//! that always fails ends in the dead letter with every attempt logged and a
//! manual retry delivers it; a restart in the middle of an attempt loses
//! nothing and the duplicate carries the same event id; deliveries of one
//! subject arrive in event order; an endpoint failing for three days is
//! disabled; URLs reaching internal addresses are refused (10.x, 169.254.x,
//! 127.x when not allowed, and a host name resolving to one), at creation
//! and at delivery.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tally_commands::webhooks::verify_signature;
use tally_tests::receiver::{Received, Receiver, Reply, WAIT};
use tally_tests::{both_backends, dump_table, AllowList, Backend, TestApp, WebhookConfig};
use tokio::sync::oneshot;

both_backends!(
    signed_deliveries_retry_until_the_receiver_answers,
    always_failing_receiver_dead_letters_and_manual_retry_delivers,
    restart_mid_attempt_loses_nothing_and_repeats_the_event_id,
    deliveries_of_one_subject_arrive_in_event_order,
    endpoint_failing_for_three_days_is_disabled,
    deliveries_of_a_disabled_endpoint_are_paused_until_it_is_enabled,
    internal_addresses_are_refused,
    endpoints_are_admin_only_validated_and_tenant_scoped,
);

const SUSPENDED: &str = "billing.subscriptions.v1.subscription-suspended";
const RESUMED: &str = "billing.subscriptions.v1.subscription-resumed";

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .expect("time")
        .with_timezone(&Utc)
}

fn time_of(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("time string"))
        .expect("time")
        .with_timezone(&Utc)
}

/// The tests' webhook settings: 127.0.0.1 allowed (the receiver), a short poll.
fn local_config() -> WebhookConfig {
    WebhookConfig {
        allowed_hosts: AllowList::parse("127.0.0.1").expect("allow list"),
        poll_interval: Duration::from_millis(20),
        ..WebhookConfig::default()
    }
}

/// Production's rule (nothing internal allowed), with the tests' short poll.
fn strict_config() -> WebhookConfig {
    WebhookConfig {
        poll_interval: Duration::from_millis(20),
        ..WebhookConfig::default()
    }
}

// ---- helpers ----

async fn create_endpoint(app: &TestApp, url: &str, topics: &[&str]) -> (String, String) {
    let r = app
        .post(
            &app.admin_key,
            "/v1/webhooks",
            json!({"url": url, "topics": topics}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let secret = r.body["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (r.id(), secret)
}

async fn deliveries(app: &TestApp, endpoint: &str) -> Vec<Value> {
    let r = app
        .get(
            &app.admin_key,
            &format!("/v1/webhooks/{endpoint}/deliveries"),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["data"].as_array().expect("data").clone()
}

/// Polls the delivery log until `ok` holds (deadline [`WAIT`]).
async fn wait_deliveries(
    app: &TestApp,
    endpoint: &str,
    what: &str,
    ok: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let data = deliveries(app, endpoint).await;
        if ok(&data) {
            return data;
        }
        assert!(Instant::now() < deadline, "waiting for {what}: {data:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the only delivery of `endpoint` has made `attempts` attempts.
async fn wait_attempts(app: &TestApp, endpoint: &str, attempts: i64) -> Value {
    let data = wait_deliveries(app, endpoint, &format!("{attempts} attempts"), |d| {
        d.len() == 1 && d[0]["attempts"] == attempts
    })
    .await;
    data[0].clone()
}

async fn advance(app: &TestApp, by: &str) {
    let r = app.advance_clock(&app.admin_key, json!({"by": by})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

fn now(app: &TestApp) -> DateTime<Utc> {
    app.state().dispatcher.clock().now()
}

/// Checks a request's signature as a receiver would.
fn assert_signed(r: &Received, secret: &str, at: DateTime<Utc>) {
    assert_eq!(r.header("content-type"), "application/json");
    let header = r.header("tally-signature");
    let t = verify_signature(secret, header, &r.body, at.timestamp(), 30 * 24 * 3600)
        .unwrap_or_else(|e| panic!("{header}: {e}"));
    assert!(header.starts_with(&format!("t={t},v1=")), "{header}");
    assert!(verify_signature("whsec_wrong", header, &r.body, t, 300).is_err());
}

async fn suspend(app: &TestApp, sub: &str) {
    let r = app
        .suspend(&app.admin_key, sub, json!({"reason": "manual"}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

async fn delivery_detail(app: &TestApp, id: &str) -> Value {
    let r = app
        .get(&app.admin_key, &format!("/v1/webhooks/deliveries/{id}"))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

// ---- the tests ----

async fn signed_deliveries_retry_until_the_receiver_answers(backend: Backend) {
    let app = TestApp::spawn_webhooks(backend, start(), local_config()).await;
    let receiver = Receiver::start(vec![Reply::Status(500), Reply::Status(500)], 200).await;
    let plan = app.standard_plan().await;
    let (sub, _) = app.active_subscription(&plan, 1).await;
    let (endpoint, secret) = create_endpoint(&app, &receiver.url, &[SUSPENDED]).await;
    suspend(&app, &sub).await;

    let first = wait_attempts(&app, &endpoint, 1).await;
    assert_eq!(first["status"], "retrying", "{first}");
    assert_eq!(first["last_status_code"], 500);
    assert_eq!(first["topic"], SUSPENDED);
    // The first retry comes a minute later, plus up to 25% jitter.
    let next = time_of(&first["next_attempt_at"]) - now(&app);
    assert!(
        next >= chrono::Duration::seconds(60) && next <= chrono::Duration::seconds(75),
        "{next}"
    );

    advance(&app, "PT1H").await;
    let second = wait_attempts(&app, &endpoint, 2).await;
    assert_eq!(second["status"], "retrying", "{second}");
    assert_eq!(second["last_status_code"], 500);
    advance(&app, "PT1H").await;
    let third = wait_attempts(&app, &endpoint, 3).await;
    assert_eq!(third["status"], "delivered", "{third}");
    assert_eq!(third["last_status_code"], 200);
    assert_eq!(third["next_attempt_at"], Value::Null);

    // The event arrived on the third try; every try was signed and carried
    // the same body, whose id is the event id.
    let got = receiver.received();
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_signed(r, &secret, now(&app));
        assert_eq!(r.body, got[0].body);
        assert_eq!(r.header("tally-event-id"), third["event_id"]);
    }
    let envelope = got[0].envelope();
    assert_eq!(envelope["id"], third["event_id"]);
    assert_eq!(envelope["topic"], SUSPENDED);
    assert_eq!(envelope["type"], "subscription-suspended");
    assert_eq!(envelope["tenant_id"], "default");
    assert_eq!(
        envelope["subject"],
        json!({"type": "subscription", "id": sub})
    );
    assert_eq!(envelope["data"]["subscription_id"], sub);
    assert_eq!(envelope["data"]["reason"], "manual");

    // The delivery log has every attempt.
    let detail = delivery_detail(&app, third["id"].as_str().unwrap()).await;
    let log = detail["attempt_log"].as_array().expect("attempt log");
    let codes: Vec<_> = log.iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(500), json!(200)]);
    let outcomes: Vec<_> = log.iter().map(|a| a["outcome"].clone()).collect();
    assert_eq!(outcomes, ["failed", "failed", "delivered"]);
    assert!(log.iter().all(|a| a["latency_ms"].as_i64() >= Some(0)));
    assert_eq!(detail["attempts"], 3);
    assert!(detail["delivered_at"].is_string());

    // The secret is stored nowhere and never shown again.
    for table in [
        "webhook_endpoints",
        "webhook_deliveries",
        "webhook_attempts",
    ] {
        for row in dump_table(&app.state().db, table).await {
            assert!(
                row.iter().all(|cell| !cell.contains(&secret[6..])),
                "{table} holds the secret"
            );
        }
    }
    let list = app.get(&app.admin_key, "/v1/webhooks").await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body["data"][0]["id"], endpoint.as_str());
    assert!(list.body["data"][0].get("secret").is_none());
    let one = app
        .get(&app.admin_key, &format!("/v1/webhooks/{endpoint}"))
        .await;
    assert!(one.body.get("secret").is_none());
    assert_eq!(one.body["failing_since"], Value::Null);

    // Created with an Idempotency-Key: a repeat answers the same, secret
    // included, yet the idempotency store does not hold the secret.
    let body = json!({"url": receiver.url, "topics": [SUSPENDED]});
    let key = [("Idempotency-Key", "whk-create-1".to_string())];
    let first = app
        .post_with(&app.admin_key, "/v1/webhooks", body.clone(), &key)
        .await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    let again = app
        .post_with(&app.admin_key, "/v1/webhooks", body, &key)
        .await;
    assert_eq!(again.status, 201, "{:?}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    let secret = first.body["secret"].as_str().unwrap();
    for row in dump_table(&app.state().db, "idempotency_keys").await {
        assert!(
            row.iter().all(|cell| !cell.contains(&secret[6..])),
            "idempotency_keys holds the secret"
        );
    }
}

async fn always_failing_receiver_dead_letters_and_manual_retry_delivers(backend: Backend) {
    let app = TestApp::spawn_webhooks(backend, start(), local_config()).await;
    let receiver = Receiver::start(vec![], 503).await;
    let plan = app.standard_plan().await;
    let (sub, _) = app.active_subscription(&plan, 1).await;
    let (endpoint, secret) =
        create_endpoint(&app, &receiver.url, &["billing.subscriptions.v1.*"]).await;
    suspend(&app, &sub).await;

    // Each retry happens when the clock reaches its time.
    let max = i64::from(WebhookConfig::default().max_attempts);
    let first_at = now(&app);
    for n in 1..max {
        let d = wait_attempts(&app, &endpoint, n).await;
        assert_eq!(d["status"], "retrying", "attempt {n}: {d}");
        let r = app
            .advance_clock(&app.admin_key, json!({"to": d["next_attempt_at"]}))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let dead = wait_attempts(&app, &endpoint, max).await;
    assert_eq!(dead["status"], "dead", "{dead}");
    assert_eq!(dead["last_status_code"], 503);
    assert_eq!(dead["next_attempt_at"], Value::Null);
    let id = dead["id"].as_str().unwrap().to_string();

    // Every attempt is in the log, and the dead letter lists it.
    let detail = delivery_detail(&app, &id).await;
    let log = detail["attempt_log"].as_array().expect("attempt log");
    assert_eq!(log.len() as i64, max);
    for (i, a) in log.iter().enumerate() {
        assert_eq!(a["attempt"], i as i64 + 1);
        assert_eq!(a["status_code"], 503);
        assert_eq!(a["outcome"], "failed");
    }
    // Eight tries over about a day (18 to 23 hours with the jitter).
    assert_eq!(time_of(&log[0]["attempted_at"]), first_at);
    let span = time_of(&log[log.len() - 1]["attempted_at"]) - first_at;
    assert!(
        span >= chrono::Duration::hours(18) && span <= chrono::Duration::hours(23),
        "{span}"
    );
    let letters = app
        .get(
            &app.admin_key,
            &format!("/v1/webhooks/{endpoint}/deliveries?status=dead"),
        )
        .await;
    assert_eq!(letters.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(receiver.received().len() as i64, max);

    // A manual retry once the receiver is back delivers it.
    receiver.set_default(204);
    let r = app
        .post(
            &app.admin_key,
            &format!("/v1/webhooks/deliveries/{id}/retry"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["status"], "pending");
    let done = wait_attempts(&app, &endpoint, max + 1).await;
    assert_eq!(done["status"], "delivered", "{done}");
    assert_eq!(done["last_status_code"], 204);
    let got = receiver.wait_for(max as usize + 1).await;
    for r in &got {
        assert_signed(r, &secret, now(&app));
        assert_eq!(r.envelope()["id"], done["event_id"]);
    }
}

async fn restart_mid_attempt_loses_nothing_and_repeats_the_event_id(backend: Backend) {
    let mut app = TestApp::spawn_webhooks(backend, start(), local_config()).await;
    let (release, held) = oneshot::channel();
    let receiver = Receiver::start(vec![Reply::Status(500), Reply::Hold(held)], 200).await;
    let plan = app.standard_plan().await;
    let (sub, _) = app.active_subscription(&plan, 1).await;
    let (endpoint, secret) = create_endpoint(&app, &receiver.url, &[SUSPENDED]).await;
    suspend(&app, &sub).await;
    let first = wait_attempts(&app, &endpoint, 1).await;
    assert_eq!(first["status"], "retrying");

    // The retry reaches the receiver, which holds it; the server stops
    // before the answer, and a new one starts on the same database.
    advance(&app, "PT1H").await;
    receiver.wait_for(2).await;
    app.restart_with_webhooks(local_config()).await;

    let done = wait_deliveries(&app, &endpoint, "delivery after the restart", |d| {
        d.len() == 1 && d[0]["status"] == "delivered"
    })
    .await;
    let _ = release.send(200);
    // The interrupted attempt has no outcome, so it is not in the log.
    assert_eq!(done[0]["attempts"], 2, "{:?}", done[0]);
    let got = receiver.wait_for(3).await;
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_signed(r, &secret, now(&app));
        assert_eq!(r.body, got[0].body);
        assert_eq!(r.envelope()["id"], done[0]["event_id"]);
    }
    // Nothing was lost or doubled on the server's side either.
    assert_eq!(deliveries(&app, &endpoint).await.len(), 1);
}

async fn deliveries_of_one_subject_arrive_in_event_order(backend: Backend) {
    let app = TestApp::spawn_webhooks(backend, start(), local_config()).await;
    let receiver = Receiver::start(vec![Reply::Status(500)], 200).await;
    let plan = app.standard_plan().await;
    let (first_sub, _) = app.active_subscription(&plan, 1).await;
    let (endpoint, _) = create_endpoint(&app, &receiver.url, &["billing.subscriptions.v1.*"]).await;
    suspend(&app, &first_sub).await;
    let r = app.resume(&app.admin_key, &first_sub).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // The suspension fails once; the resumption waits behind it.
    let data = wait_deliveries(&app, &endpoint, "the suspension's failure", |d| {
        d.len() == 2
            && d.iter()
                .any(|x| x["topic"] == SUSPENDED && x["attempts"] == 1)
    })
    .await;
    let by_topic = |data: &[Value], topic: &str| -> Value {
        data.iter()
            .find(|d| d["topic"] == topic)
            .cloned()
            .unwrap_or_else(|| panic!("no {topic} delivery in {data:#?}"))
    };
    assert_eq!(by_topic(&data, SUSPENDED)["status"], "retrying");

    // Another subject is not held up by it.
    let (second_sub, _) = app.active_subscription(&plan, 1).await;
    let deadline = Instant::now() + WAIT;
    while !receiver
        .received()
        .iter()
        .any(|r| r.envelope()["subject"]["id"] == second_sub.as_str())
    {
        assert!(
            Instant::now() < deadline,
            "no delivery for the second subscription"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let data = deliveries(&app, &endpoint).await;
    let resumed = by_topic(&data, RESUMED);
    assert_eq!(resumed["status"], "pending", "{resumed}");
    assert_eq!(resumed["attempts"], 0);
    assert_eq!(by_topic(&data, SUSPENDED)["attempts"], 1);

    advance(&app, "PT1H").await;
    wait_deliveries(&app, &endpoint, "every delivery", |d| {
        d.iter().all(|x| x["status"] == "delivered")
    })
    .await;
    let order: Vec<String> = receiver
        .received()
        .iter()
        .map(Received::envelope)
        .filter(|e| e["subject"]["id"] == first_sub.as_str())
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        order,
        [
            "subscription-suspended",
            "subscription-suspended",
            "subscription-resumed"
        ]
    );
}

async fn endpoint_failing_for_three_days_is_disabled(backend: Backend) {
    let app = TestApp::spawn_webhooks(backend, start(), local_config()).await;
    let receiver = Receiver::start(vec![], 500).await;
    let plan = app.standard_plan().await;
    let (sub, _) = app.active_subscription(&plan, 1).await;
    let (endpoint, _) = create_endpoint(&app, &receiver.url, &[SUSPENDED]).await;
    suspend(&app, &sub).await;
    wait_attempts(&app, &endpoint, 1).await;
    let r = app
        .get(&app.admin_key, &format!("/v1/webhooks/{endpoint}"))
        .await;
    assert_eq!(r.body["status"], "active");
    assert_eq!(time_of(&r.body["failing_since"]), start());

    // Two days later it still fails, but has not failed for three days yet.
    advance(&app, "P2D").await;
    wait_attempts(&app, &endpoint, 2).await;
    let r = app
        .get(&app.admin_key, &format!("/v1/webhooks/{endpoint}"))
        .await;
    assert_eq!(r.body["status"], "active", "{:?}", r.body);

    advance(&app, "P1DT1H").await;
    let d = wait_attempts(&app, &endpoint, 3).await;
    let r = app
        .get(&app.admin_key, &format!("/v1/webhooks/{endpoint}"))
        .await;
    assert_eq!(r.body["status"], "disabled", "{:?}", r.body);
    assert_eq!(time_of(&r.body["disabled_at"]), now(&app));
    // The admin who registered it finds a critical item in their inbox.
    let created_by: String =
        sqlx::query_scalar("SELECT created_by FROM webhook_endpoints WHERE id = $1")
            .bind(&endpoint)
            .fetch_one(&app.state().db.any)
            .await
            .unwrap();
    let inbox = format!("/v1/inbox?recipient=user:{created_by}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let item = loop {
        let r = app.get(&app.admin_key, &inbox).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        if let Some(item) = r.body["data"].as_array().and_then(|d| d.first().cloned()) {
            break item;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no inbox item: {:?}",
            r.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(item["severity"], "critical");
    assert_eq!(item["title"], "Webhook endpoint disabled");
    assert_eq!(
        item["subject_ref"],
        json!({"type": "webhook", "id": endpoint})
    );
    assert!(
        item["body"].as_str().unwrap().contains("/enable"),
        "{item:?}"
    );
    // Its delivery waits: a retry is refused while the endpoint is disabled.
    let id = d["id"].as_str().unwrap();
    let d = app
        .get(&app.admin_key, &format!("/v1/webhooks/deliveries/{id}"))
        .await
        .body;
    assert_eq!(d["status"], "paused", "{d:?}");
    app.post(
        &app.admin_key,
        &format!("/v1/webhooks/deliveries/{id}/retry"),
        json!({}),
    )
    .await
    .assert_problem(409, "invalid_transition");

    // Enabled again, with the receiver back, the waiting delivery goes out.
    receiver.set_default(200);
    let r = app
        .post(
            &app.admin_key,
            &format!("/v1/webhooks/{endpoint}/enable"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "active");
    assert_eq!(r.body["failing_since"], Value::Null);
    advance(&app, "PT1H").await;
    let d = wait_attempts(&app, &endpoint, 4).await;
    assert_eq!(d["status"], "delivered", "{d}");
}

/// Issue 16: a disabled endpoint's deliveries read `retrying`, with a
/// `next_attempt_at` in the past that would never come. They read `paused`
/// with no next attempt (API.md), in the list, its `status` filter and the
/// detail, and resume when the endpoint is enabled, due at once.
async fn deliveries_of_a_disabled_endpoint_are_paused_until_it_is_enabled(backend: Backend) {
    let app = TestApp::spawn_webhooks(backend, start(), local_config()).await;
    let receiver = Receiver::start(vec![], 500).await;
    let plan = app.standard_plan().await;
    let (sub, _) = app.active_subscription(&plan, 1).await;
    let (endpoint, _) = create_endpoint(&app, &receiver.url, &[SUSPENDED]).await;
    suspend(&app, &sub).await;
    let d = wait_attempts(&app, &endpoint, 1).await;
    assert_eq!(d["status"], "retrying", "{d}");
    assert!(d["next_attempt_at"].is_string(), "{d}");
    // Three days of failures disable the endpoint (the third attempt).
    advance(&app, "P2D").await;
    wait_attempts(&app, &endpoint, 2).await;
    advance(&app, "P1DT1H").await;
    let d = wait_attempts(&app, &endpoint, 3).await;
    let r = app
        .get(&app.admin_key, &format!("/v1/webhooks/{endpoint}"))
        .await;
    assert_eq!(r.body["status"], "disabled", "{:?}", r.body);

    // Read when its third attempt was: the attempt and the disable commit
    // together, and a read sees both or neither.
    assert_eq!(d["status"], "paused", "{d}");
    assert_eq!(d["next_attempt_at"], Value::Null, "{d}");
    let id = d["id"].as_str().unwrap().to_string();
    let detail = delivery_detail(&app, &id).await;
    assert_eq!(detail["status"], "paused", "{detail}");
    assert_eq!(detail["next_attempt_at"], Value::Null, "{detail}");
    let list = |status: &'static str| {
        let app = &app;
        let endpoint = &endpoint;
        async move {
            let r = app
                .get(
                    &app.admin_key,
                    &format!("/v1/webhooks/{endpoint}/deliveries?status={status}"),
                )
                .await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            r.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("paused").await, vec![id.clone()]);
    assert!(list("retrying").await.is_empty());
    assert!(list("pending").await.is_empty());
    // The worker claims nothing of a disabled endpoint, however late it is.
    advance(&app, "P1D").await;
    let d = &deliveries(&app, &endpoint).await[0];
    assert_eq!(d["status"], "paused", "{d}");

    // Enabled, with the receiver back: the delivery is due now (not at a
    // time that passed while it was paused) and goes out without the clock
    // moving.
    receiver.set_default(200);
    let r = app
        .post(
            &app.admin_key,
            &format!("/v1/webhooks/{endpoint}/enable"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "active");
    assert!(list("paused").await.is_empty());
    let d = wait_attempts(&app, &endpoint, 4).await;
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(d["next_attempt_at"], Value::Null, "{d}");
    let detail = delivery_detail(&app, &id).await;
    let attempts = detail["attempt_log"].as_array().expect("attempt_log");
    assert_eq!(attempts.len(), 4, "{detail}");
    assert_eq!(time_of(&attempts[3]["attempted_at"]), now(&app));
    assert_eq!(receiver.received().len(), 4);
}

async fn internal_addresses_are_refused(backend: Backend) {
    // 127.0.0.1 is allowed here, nothing else internal is.
    let mut app = TestApp::spawn_webhooks(backend, start(), local_config()).await;
    let refused = |r: tally_tests::Resp, what: &str| {
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], "url", "{what}: {:?}", r.body);
    };
    for url in [
        "http://10.0.0.1/hook",
        "http://10.255.1.2:8443/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://192.168.1.10/",
        "http://[::1]/",
        "http://[fd00::1]/",
        "http://0.0.0.0/",
    ] {
        let r = app
            .post(
                &app.admin_key,
                "/v1/webhooks",
                json!({"url": url, "topics": [SUSPENDED]}),
            )
            .await;
        refused(r, url);
    }

    // Without the allowance, 127.x is refused too, however it is written,
    // and so is a host name that resolves to it.
    let mut strict = TestApp::spawn_webhooks(backend, start(), strict_config()).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://127.1.2.3/",
        "http://2130706433/",
        "http://localhost:9/hook",
        "http://10.0.0.1/",
        "http://169.254.169.254/",
    ] {
        let r = strict
            .post(
                &strict.admin_key,
                "/v1/webhooks",
                json!({"url": url, "topics": [SUSPENDED]}),
            )
            .await;
        refused(r, url);
    }
    let r = strict
        .post(
            &strict.admin_key,
            "/v1/webhooks",
            json!({"url": "http://localhost:9/", "topics": [SUSPENDED]}),
        )
        .await;
    let message = r.body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("localhost is or resolves to"), "{message}");
    strict.stop().await;

    // A CIDR in the allow-list admits its network.
    let mut private = TestApp::spawn_webhooks(
        backend,
        start(),
        WebhookConfig {
            allowed_hosts: AllowList::parse("10.0.0.0/8").unwrap(),
            ..strict_config()
        },
    )
    .await;
    let r = private
        .post(
            &private.admin_key,
            "/v1/webhooks",
            json!({"url": "http://10.1.2.3:8080/hook", "topics": [SUSPENDED]}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    private.stop().await;

    // Checked again at delivery: an endpoint created while 127.0.0.1 was
    // allowed gets nothing once the server no longer allows it.
    let receiver = Receiver::start(vec![], 200).await;
    let plan = app.standard_plan().await;
    let (sub, _) = app.active_subscription(&plan, 1).await;
    let (endpoint, _) = create_endpoint(&app, &receiver.url, &[SUSPENDED]).await;
    app.restart_with_webhooks(strict_config()).await;
    suspend(&app, &sub).await;
    let d = wait_attempts(&app, &endpoint, 1).await;
    assert_eq!(d["status"], "retrying", "{d}");
    assert_eq!(d["last_status_code"], Value::Null);
    let detail = delivery_detail(&app, d["id"].as_str().unwrap()).await;
    let error = detail["attempt_log"][0]["error"].as_str().expect("error");
    assert!(error.starts_with("refused:"), "{error}");
    assert!(receiver.received().is_empty());
}

async fn endpoints_are_admin_only_validated_and_tenant_scoped(backend: Backend) {
    let app = TestApp::spawn_webhooks(backend, start(), local_config()).await;
    let receiver = Receiver::start(vec![], 200).await;
    let body = json!({"url": receiver.url, "topics": [SUSPENDED]});

    let writer = app.key("default", "writer").await;
    app.post(&writer, "/v1/webhooks", body.clone())
        .await
        .assert_problem(403, "forbidden");
    let reader = app.key("default", "reader").await;
    app.get(&reader, "/v1/webhooks")
        .await
        .assert_problem(403, "forbidden");

    for (bad, field) in [
        (
            json!({"url": "ftp://example.com/", "topics": [SUSPENDED]}),
            "url",
        ),
        (json!({"url": "not a url", "topics": [SUSPENDED]}), "url"),
        (json!({"url": receiver.url, "topics": []}), "topics"),
        (
            json!({"url": receiver.url, "topics": ["billing.nope.v1.x"]}),
            "topics",
        ),
        (json!({"url": receiver.url, "topics": ["*"]}), "topics"),
        (json!({"url": receiver.url}), "topics"),
        (
            json!({"url": receiver.url, "topics": [SUSPENDED], "secret": "x"}),
            "secret",
        ),
    ] {
        let r = app.post(&app.admin_key, "/v1/webhooks", bad.clone()).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], field, "{bad}: {:?}", r.body);
    }

    let r = app.post(&app.admin_key, "/v1/webhooks", body.clone()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let endpoint = r.id();
    assert!(endpoint.starts_with("whk_"));
    assert_eq!(r.body["url"], receiver.url.as_str());
    assert_eq!(r.body["topics"], json!([SUSPENDED]));
    assert_eq!(r.body["status"], "active");
    let plan = app.standard_plan().await;
    let (sub, _) = app.active_subscription(&plan, 1).await;
    suspend(&app, &sub).await;
    let d = wait_attempts(&app, &endpoint, 1).await;
    let delivery = d["id"].as_str().unwrap().to_string();
    assert!(delivery.starts_with("whd_"));

    // Another tenant sees none of it.
    let other = app.key("other", "admin").await;
    assert!(app.get(&other, "/v1/webhooks").await.body["data"]
        .as_array()
        .unwrap()
        .is_empty());
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/webhooks/{endpoint}")),
        (reqwest::Method::DELETE, format!("/v1/webhooks/{endpoint}")),
        (
            reqwest::Method::GET,
            format!("/v1/webhooks/{endpoint}/deliveries"),
        ),
        (
            reqwest::Method::GET,
            format!("/v1/webhooks/deliveries/{delivery}"),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/webhooks/deliveries/{delivery}/retry"),
        ),
        (
            reqwest::Method::GET,
            "/v1/webhooks/deliveries/whd_0123456789abcdef".to_string(),
        ),
        (reqwest::Method::GET, "/v1/webhooks/nope".to_string()),
    ] {
        app.request(method.clone(), &path, Some(&other), &[], None)
            .await
            .assert_problem(404, "not_found");
    }
    let r = app
        .get(
            &app.admin_key,
            &format!("/v1/webhooks/{endpoint}/deliveries?status=lost"),
        )
        .await;
    r.assert_problem(422, "validation_failed");

    // Deleted: gone from the list, its deliveries with it.
    let r = app
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/webhooks/{endpoint}"),
            Some(&app.admin_key),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    app.get(&app.admin_key, &format!("/v1/webhooks/{endpoint}"))
        .await
        .assert_problem(404, "not_found");
    app.get(
        &app.admin_key,
        &format!("/v1/webhooks/{endpoint}/deliveries"),
    )
    .await
    .assert_problem(404, "not_found");
    assert!(app.get(&app.admin_key, "/v1/webhooks").await.body["data"]
        .as_array()
        .unwrap()
        .is_empty());

    // Documented in the OpenAPI document.
    let spec = app
        .request(reqwest::Method::GET, "/openapi.json", None, &[], None)
        .await;
    let paths = spec.body["paths"].as_object().expect("paths");
    for (p, method) in [
        ("/v1/webhooks", "post"),
        ("/v1/webhooks", "get"),
        ("/v1/webhooks/{id}", "delete"),
        ("/v1/webhooks/{id}/deliveries", "get"),
        ("/v1/webhooks/deliveries/{id}/retry", "post"),
    ] {
        assert!(
            paths.get(p).and_then(|o| o.get(method)).is_some(),
            "OpenAPI lacks {method} {p}"
        );
    }
}
