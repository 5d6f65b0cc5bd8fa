//! The concurrency suite: many writers on one aggregate of each type at
//! once, transactions that commit out of position order, and projectors
//! that never skip an event — every read model is compared with a fresh
//! rebuild after every round.
//!
//! On PostgreSQL a deferred test trigger delays each appending transaction
//! at its commit by a random few milliseconds, so transactions that took
//! their positions in one order commit in another. The deterministic case
//! (a lower position held open while higher ones commit) is
//! `postgres_commits_out_of_position_order_reach_every_read_model`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::Connection;
use tally_tests::{both_backends, standard_plan_body, Backend, Resp, TestApp};

/// Rounds of the many-writers test; every round ends with a rebuild check.
const ROUNDS: usize = 3;
/// Concurrent writers on each aggregate.
const WRITERS: usize = 12;

fn start() -> DateTime<Utc> {
    "2026-03-01T00:00:00Z".parse().unwrap()
}

/// A plan whose meter has no hard cap, so usage never suspends.
fn uncapped_plan(code: &str) -> Value {
    let mut body = standard_plan_body(code);
    body["meters"] = json!([{"key": "api_calls", "included": "1000", "overage_unit_price": "0.01", "reset": "monthly"}]);
    body
}

/// Makes every appending transaction on PostgreSQL wait 0–3 ms at its
/// commit (a deferred constraint trigger on `events`), so commits land out of
/// position order under concurrency.
async fn scramble_commit_order(app: &TestApp) {
    let db = &app.state().db;
    for sql in [
        "CREATE FUNCTION tally_test_jitter() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_sleep(random() * 0.008); RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER tally_test_jitter AFTER INSERT ON events \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tally_test_jitter()",
    ] {
        sqlx::query(sql)
            .execute(&db.any)
            .await
            .expect("install jitter");
    }
}

/// Sends `n` requests at once (one task each) and returns their answers.
async fn at_once<F>(app: &Arc<TestApp>, n: usize, request: F) -> Vec<Resp>
where
    F: Fn(Arc<TestApp>, usize) -> futures::future::BoxFuture<'static, Resp>,
{
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(request(app.clone(), i)))
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        let r = t.await.expect("writer task");
        assert!(r.status < 500, "a writer got a server error: {r:?}");
        out.push(r);
    }
    out
}

fn count(rs: &[Resp], status: u16) -> usize {
    rs.iter().filter(|r| r.status == status).count()
}

/// Events of one stream as (sequence, type, payload), in sequence order.
async fn stream(app: &TestApp, aggregate_type: &str, id: &str) -> Vec<(i64, String, Value)> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT sequence, event_type, CAST(payload AS TEXT) AS payload FROM events \
         WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
    )
    .bind(aggregate_type)
    .bind(format!("default:{id}"))
    .fetch_all(&app.state().db.any)
    .await
    .expect("read stream");
    rows.iter()
        .map(|r| {
            let payload: String = r.get("payload");
            (
                r.get("sequence"),
                r.get("event_type"),
                serde_json::from_str(&payload).expect("payload json"),
            )
        })
        .collect()
}

/// Every stream in the log numbers its events 1..n without a gap or a repeat.
async fn assert_streams_contiguous(app: &TestApp) {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT aggregate_type, aggregate_id, COUNT(*) AS n, MIN(sequence) AS lo, MAX(sequence) AS hi, \
         COUNT(DISTINCT sequence) AS d FROM events WHERE position > 0 \
         GROUP BY aggregate_type, aggregate_id",
    )
    .fetch_all(&app.state().db.any)
    .await
    .expect("streams");
    assert!(!rows.is_empty());
    for r in rows {
        let (n, lo, hi, d): (i64, i64, i64, i64) =
            (r.get("n"), r.get("lo"), r.get("hi"), r.get("d"));
        let key: String = r.get("aggregate_id");
        assert!(
            lo == 1 && hi == n && d == n,
            "stream {key}: {n} events, sequences {lo}..{hi}, {d} distinct"
        );
    }
}

/// Invoice numbers of the tenant are INV-000001..N, each once.
async fn assert_invoice_numbers_dense(app: &TestApp) {
    let numbers: Vec<String> = sqlx::query_scalar(
        "SELECT number FROM rm_invoices WHERE tenant = 'default' AND number IS NOT NULL ORDER BY number",
    )
    .fetch_all(&app.state().db.any)
    .await
    .expect("numbers");
    let want: Vec<String> = (1..=numbers.len()).map(|n| format!("INV-{n:06}")).collect();
    assert_eq!(
        numbers, want,
        "invoice numbers without a gap or a duplicate"
    );
}

async fn many_writers_on_one_aggregate_of_each_type(backend: Backend) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let app = Arc::new(TestApp::spawn_manual(backend, start()).await);
    if backend == Backend::Postgres && std::env::var("NOJITTER").is_err() {
        scramble_commit_order(&app).await;
    }
    let key = app.admin_key.clone();
    let plan = app.create_plan(&key, uncapped_plan("uncapped")).await;
    assert_eq!(plan.status, 201, "{:?}", plan.body);
    let (sub, _) = app.active_subscription(&plan.id(), 2).await;
    let ticket = app
        .post(
            &key,
            "/v1/tickets",
            json!({"subject": "Busy", "description": "Many hands", "requester": "customer:cus_1", "priority": "low"}),
        )
        .await;
    assert_eq!(ticket.status, 201, "{:?}", ticket.body);
    let ticket = ticket.id();

    // (version, seats) of every acknowledged seat change.
    let mut seat_acks: Vec<(i64, Value)> = Vec::new();
    let mut comments = 0;
    let mut usage_total = 0;
    for round in 0..ROUNDS {
        // Plans: everyone archives the same plan; one wins.
        let target = app
            .create_plan(&key, uncapped_plan(&format!("r{round}")))
            .await
            .id();
        let rs = at_once(&app, WRITERS, |app, _| {
            let target = target.clone();
            Box::pin(async move {
                let key = app.admin_key.clone();
                app.archive_plan(&key, &target).await
            })
        })
        .await;
        assert_eq!(count(&rs, 200), 1, "one archive wins: {rs:?}");
        for r in rs.iter().filter(|r| r.status != 200) {
            r.assert_problem(409, "invalid_transition");
        }
        let archived = stream(&app, "plan", &target).await;
        assert_eq!(
            archived.iter().filter(|e| e.1 == "PlanArchived").count(),
            1,
            "{archived:?}"
        );

        // Subscriptions: every writer changes the seats of one subscription
        // four times, half with proration (the billing policy then invoices).
        let rs = at_once(&app, WRITERS * 4, |app, i| {
            let sub = sub.clone();
            Box::pin(async move {
                let key = app.admin_key.clone();
                let proration = if i % 2 == 0 { "prorate" } else { "none" };
                app.change_seats(
                    &key,
                    &sub,
                    json!({"seats": 1 + i % 20, "proration": proration}),
                )
                .await
            })
        })
        .await;
        for r in &rs {
            if r.status == 200 {
                let version = r.body["version"].as_i64().expect("version");
                seat_acks.push((version, r.body["seats"].clone()));
            } else {
                r.assert_problem(409, "concurrent_modification");
            }
        }

        // Usage: everyone reports the same transaction id (one record), and
        // a batch of distinct ones each.
        let rs = at_once(&app, WRITERS, |app, _| {
            let sub = sub.clone();
            Box::pin(async move {
                let key = app.admin_key.clone();
                app.post(
                    &key,
                    "/v1/usage",
                    json!({"subscription_id": sub, "meter": "api_calls", "quantity": "5",
                           "timestamp": start().to_rfc3339(), "transaction_id": format!("same-{round}")}),
                )
                .await
            })
        })
        .await;
        assert_eq!(
            count(&rs, 201),
            1,
            "one record for one transaction id: {rs:?}"
        );
        assert_eq!(
            count(&rs, 200),
            WRITERS - 1,
            "the others are duplicates: {rs:?}"
        );
        let ids: BTreeSet<String> = rs.iter().map(|r| r.id()).collect();
        assert_eq!(ids.len(), 1, "every duplicate names the original: {ids:?}");
        usage_total += 5;
        let rs = at_once(&app, WRITERS, |app, w| {
            let sub = sub.clone();
            Box::pin(async move {
                let key = app.admin_key.clone();
                let records: Vec<Value> = (0..25)
                    .map(|k| {
                        json!({"subscription_id": sub, "meter": "api_calls", "quantity": "1",
                                    "timestamp": start().to_rfc3339(),
                                    "transaction_id": format!("b-{round}-{w}-{k}")})
                    })
                    .collect();
                app.post(&key, "/v1/usage/batch", json!({"records": records}))
                    .await
            })
        })
        .await;
        for r in &rs {
            assert_eq!(r.status, 200, "{:?}", r.body);
            for item in r.body["results"].as_array().expect("results") {
                assert_eq!(item["status"], "created", "{item:?}");
                usage_total += 1;
            }
        }

        // Invoices: everyone issues the same draft (one number), then pays a
        // tenth of it; ten payments fit, the rest exceed the amount due.
        let draft = app
            .post(
                &key,
                "/v1/invoices",
                json!({"customer_id": "cus_pay", "currency": "EUR",
                       "lines": [{"description": "Work", "quantity": "1", "unit_price": "100.00"}]}),
            )
            .await;
        assert_eq!(draft.status, 201, "{:?}", draft.body);
        let invoice = draft.id();
        let rs = at_once(&app, WRITERS, |app, _| {
            let invoice = invoice.clone();
            Box::pin(async move {
                let key = app.admin_key.clone();
                app.post(&key, &format!("/v1/invoices/{invoice}/issue"), json!({}))
                    .await
            })
        })
        .await;
        assert_eq!(count(&rs, 200), 1, "one issue wins: {rs:?}");
        let rs = at_once(&app, WRITERS, |app, w| {
            let invoice = invoice.clone();
            Box::pin(async move {
                let key = app.admin_key.clone();
                app.post(
                    &key,
                    &format!("/v1/invoices/{invoice}/payments"),
                    json!({"amount": "10.00", "reference": format!("pay-{w}")}),
                )
                .await
            })
        })
        .await;
        assert_eq!(count(&rs, 200), 10, "ten tenths fit: {rs:?}");
        let events = stream(&app, "invoice", &invoice).await;
        assert_eq!(
            events.iter().filter(|e| e.1 == "PaymentRecorded").count(),
            10,
            "{events:?}"
        );
        assert_eq!(events.iter().filter(|e| e.1 == "InvoiceIssued").count(), 1);

        // Tickets: every writer comments three times; no comment is lost.
        let rs = at_once(&app, WRITERS * 3, |app, i| {
            let ticket = ticket.clone();
            Box::pin(async move {
                let key = app.admin_key.clone();
                app.post(
                    &key,
                    &format!("/v1/tickets/{ticket}/comments"),
                    json!({"author": format!("agent-{i}"), "body": format!("note {round}/{i}"), "public": i % 2 == 0}),
                )
                .await
            })
        })
        .await;
        for r in rs.iter().filter(|r| r.status != 201 && r.status != 200) {
            r.assert_problem(409, "concurrent_modification");
        }
        comments += rs
            .iter()
            .filter(|r| r.status == 201 || r.status == 200)
            .count();

        // Inbox: everyone marks the same item read.
        app.settle().await;
        let items = app.get(&key, "/v1/inbox?recipient=customer:cus_1").await;
        assert_eq!(items.status, 200, "{:?}", items.body);
        let item = items.body["data"][0]["id"]
            .as_str()
            .expect("an inbox item")
            .to_string();
        let rs = at_once(&app, WRITERS, |app, _| {
            let item = item.clone();
            Box::pin(async move {
                let key = app.admin_key.clone();
                app.post(&key, &format!("/v1/inbox/{item}/read"), json!({}))
                    .await
            })
        })
        .await;
        assert_eq!(count(&rs, 200), WRITERS, "{rs:?}");

        // The write side holds exactly what was acknowledged.
        // Seats: every change follows the one before (no lost update), every
        // event was acknowledged to its writer, and every acknowledgement
        // (a no-op when the seats were already so) matches the log at its
        // version.
        let events = stream(&app, "subscription", &sub).await;
        let mut seats_at = BTreeMap::new();
        let mut seats = json!(2);
        for (sequence, kind, payload) in &events {
            if kind == "SeatsChanged" {
                let change = &payload["SeatsChanged"];
                assert_eq!(change["from"], seats, "{payload:?}");
                seats = change["to"].clone();
                assert!(
                    seat_acks.contains(&(*sequence, seats.clone())),
                    "event {sequence} was never acknowledged: {payload:?}"
                );
            }
            seats_at.insert(*sequence, seats.clone());
        }
        for (version, acked) in &seat_acks {
            assert_eq!(
                seats_at.get(version),
                Some(acked),
                "acknowledged at version {version}"
            );
        }
        let ticket_events = stream(&app, "ticket", &ticket).await;
        assert_eq!(
            ticket_events
                .iter()
                .filter(|e| e.1 == "CommentAdded")
                .count(),
            comments,
            "one event per acknowledged comment"
        );
        assert_streams_contiguous(&app).await;

        // The read side equals the write side and a fresh rebuild.
        app.assert_read_models_equal_rebuild().await;
        let head = app.state().dispatcher.log().head().await.unwrap();
        let s = app
            .get_after(&key, &format!("/v1/subscriptions/{sub}"), head)
            .await;
        assert_eq!(s.body["seats"], seats, "{:?}", s.body);
        let summary = app
            .get_after(
                &key,
                &format!("/v1/usage/summary?subscription_id={sub}&meter=api_calls&window=current"),
                head,
            )
            .await;
        assert_eq!(summary.status, 200, "{:?}", summary.body);
        assert_eq!(
            summary.body["total"]
                .as_str()
                .and_then(|t| t.parse::<f64>().ok()),
            Some(usage_total as f64),
            "{:?}",
            summary.body
        );
        let inv = app
            .get_after(&key, &format!("/v1/invoices/{invoice}"), head)
            .await;
        assert_eq!(inv.body["status"], "paid", "{:?}", inv.body);
        let t = app
            .get_after(&key, &format!("/v1/tickets/{ticket}"), head)
            .await;
        assert_eq!(
            t.body["comments"].as_array().map(|c| c.len()),
            Some(comments),
            "{:?}",
            t.body
        );
        assert_invoice_numbers_dense(&app).await;
    }
}

/// Transaction A takes a position and holds its commit while many commands
/// commit higher positions; the projectors must wait for A, then apply it:
/// every read model ends equal to a rebuild, A's effect included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_commits_out_of_position_order_reach_every_read_model() {
    let app = Arc::new(TestApp::spawn_manual(Backend::Postgres, start()).await);
    let db = app.state().db.clone();
    // Appends of tenant `held` wait at their commit for a lock the test holds.
    for sql in [
        "CREATE FUNCTION tally_test_hold() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.tenant = 'held' THEN PERFORM pg_advisory_xact_lock_shared(424242); END IF; \
         RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER tally_test_hold AFTER INSERT ON events \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tally_test_hold()",
    ] {
        sqlx::query(sql)
            .execute(&db.any)
            .await
            .expect("install hold");
    }
    let held_key = app.key("held", "admin").await;
    let plan = app.standard_plan().await;
    let mut lock = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(424242)")
        .execute(&mut lock)
        .await
        .unwrap();
    let before = app.state().dispatcher.log().head().await.unwrap();

    // The held tenant's plan takes a position and waits to commit.
    let held = {
        let app = app.clone();
        tokio::spawn(async move { app.create_plan(&held_key, standard_plan_body("held")).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND objid = 424242 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&mut lock)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held append never started"
        );
        tokio::task::yield_now().await;
    }

    // Meanwhile other commands commit positions above it.
    let mut subs = Vec::new();
    let mut lowest_later = i64::MAX;
    for _ in 0..5 {
        let (sub, activated) = app.active_subscription(&plan, 3).await;
        lowest_later = lowest_later.min(activated.position());
        subs.push(sub);
    }
    let committed = app.state().dispatcher.log().head().await.unwrap();
    assert!(committed > before, "later positions committed");
    // The read models wait at the hole: the subscriptions are not visible.
    let positions = app.projections(&app.admin_key).await;
    assert_eq!(positions.status, 200);
    for p in positions.body.as_array().expect("projections") {
        assert!(
            p["position"].as_i64().unwrap_or(0) <= before,
            "a consumer passed the open lower position: {p:?}"
        );
    }

    // A commits; everything arrives, A included, nothing skipped.
    sqlx::query("SELECT pg_advisory_unlock(424242)")
        .execute(&mut lock)
        .await
        .unwrap();
    let held = held.await.unwrap();
    assert_eq!(held.status, 201, "{:?}", held.body);
    assert!(
        held.position() < lowest_later,
        "A's position {} is below the ones committed while it waited ({lowest_later})",
        held.position()
    );
    app.settle().await;
    let plans: BTreeMap<String, String> = sqlx::query_as("SELECT tenant, code FROM rm_plans")
        .fetch_all(&db.any)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        plans.get("held").map(String::as_str),
        Some("held"),
        "{plans:?}"
    );
    for sub in &subs {
        let s = app
            .get(&app.admin_key, &format!("/v1/subscriptions/{sub}"))
            .await;
        assert_eq!(s.body["status"], "active", "{:?}", s.body);
    }
    app.assert_read_models_equal_rebuild().await;
}

both_backends!(many_writers_on_one_aggregate_of_each_type);
