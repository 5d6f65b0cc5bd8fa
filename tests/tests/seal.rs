//! Tamper evidence end to end, on both backends: the server seals what the
//! API appends, `GET /v1/audit/digest` shows the chain's head, and `verify`
//! names the first position where someone with database access edited,
//! deleted or inserted an event row, or rewrote the chain itself (caught only
//! against a digest taken before).

use serde_json::{json, Value};
use tally_projections::seal::{self, Digest, DivergenceKind, VerifyReport};
use tally_projections::{Db, EventLog, StoredEvent};
use tally_tests::{both_backends, Backend, TestApp};

/// A server with plans, subscriptions and the invoices their activation
/// issues, settled and sealed. Checks the clean log verifies and the API's
/// digest is the chain's head, then stops the server (no sealer runs while a
/// test tampers) and returns a fresh handle on its database.
async fn sealed_log(backend: Backend) -> (TestApp, Db, Digest) {
    let mut app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    for seats in [1, 2, 3] {
        app.active_subscription(&plan, seats).await;
    }
    let (sub, _) = app.active_subscription(&plan, 4).await;
    let r = app
        .change_seats(&app.admin_key, &sub, json!({"seats": 6}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.settle().await;

    let db = &app.state().db;
    let head = app.state().dispatcher.log().head().await.expect("head");
    let sealed = seal::digest(db).await.expect("digest");
    assert_eq!(sealed.position, head, "the sealer reaches the head");
    let r = app.get(&app.admin_key, "/v1/audit/digest").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"position": sealed.position, "hash": sealed.hash})
    );
    let report = seal::verify(db, Some(sealed.clone()))
        .await
        .expect("verify");
    assert!(report.is_ok(), "{report:#?}");
    assert_eq!(report.checked_events as i64, event_rows(db).await);
    assert_eq!(report.verified, sealed);
    assert_eq!(report.unsealed_events, 0);

    app.stop().await;
    let db = app.db.connect().await;
    (app, db, sealed)
}

async fn event_rows(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&db.any)
        .await
        .expect("count events")
}

/// Every event, in position order.
async fn all_events(db: &Db) -> Vec<StoredEvent> {
    let log = EventLog::new(db.clone());
    let mut out: Vec<StoredEvent> = Vec::new();
    loop {
        let after = out.last().map_or(0, |e| e.position);
        let page = log.read_after(after, 1000).await.expect("read log");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// What an attacker with database access does first: lift the log's
/// immutability triggers (and on PostgreSQL the one that assigns positions,
/// so an insert can choose its own).
async fn lift_triggers(db: &Db) {
    let statements: &[&str] = match db.backend {
        tally_projections::Backend::Postgres => &["ALTER TABLE events DISABLE TRIGGER USER"],
        tally_projections::Backend::Sqlite => &[
            "DROP TRIGGER events_refuse_update",
            "DROP TRIGGER events_refuse_delete",
        ],
    };
    for sql in statements {
        sqlx::query(sql)
            .execute(&db.any)
            .await
            .expect("lift triggers");
    }
}

async fn set_payload(db: &Db, position: i64, payload: &Value) {
    let sql = db.sql(
        "UPDATE events SET payload = $1::json WHERE position = $2",
        "UPDATE events SET payload = $1 WHERE position = $2",
    );
    let n = sqlx::query(sql)
        .bind(payload.to_string())
        .bind(position)
        .execute(&db.any)
        .await
        .expect("edit payload")
        .rows_affected();
    assert_eq!(n, 1);
}

/// Inserts a forged event row at `position`, copying `like`'s type and payload.
async fn insert_event(db: &Db, position: i64, like: &StoredEvent) {
    let sql = db.sql(
        "INSERT INTO events (position, txid, aggregate_type, aggregate_id, sequence, event_type, \
         event_version, payload, metadata, tenant) \
         VALUES ($1, pg_current_xact_id(), $2, $3, 1, $4, $5, $6::json, '{}'::json, 'default')",
        "INSERT INTO events (position, aggregate_type, aggregate_id, sequence, event_type, \
         event_version, payload, metadata, tenant) \
         VALUES ($1, $2, $3, 1, $4, $5, $6, '{}', 'default')",
    );
    sqlx::query(sql)
        .bind(position)
        .bind(&like.aggregate_type)
        .bind(format!("default:{}_forged", like.aggregate_type))
        .bind(&like.event_type)
        .bind(&like.event_version)
        .bind(like.payload.to_string())
        .execute(&db.any)
        .await
        .expect("insert forged event");
}

/// Sets the first numeric field named `key` found in a payload.
fn set_number(v: &mut Value, key: &str, n: u64) -> bool {
    match v {
        Value::Object(map) => {
            if let Some(x) = map.get_mut(key).filter(|x| x.is_number()) {
                *x = json!(n);
                return true;
            }
            map.values_mut().any(|v| set_number(v, key, n))
        }
        Value::Array(items) => items.iter_mut().any(|v| set_number(v, key, n)),
        _ => false,
    }
}

#[track_caller]
fn assert_diverged(report: &VerifyReport, position: i64, kind: DivergenceKind) {
    let d = report
        .divergence
        .as_ref()
        .unwrap_or_else(|| panic!("no divergence found: {report:#?}"));
    assert_eq!((d.position, d.kind), (position, kind), "{report:#?}");
}

async fn edited_payload_is_found(backend: Backend) {
    let (_app, db, sealed) = sealed_log(backend).await;
    let events = all_events(&db).await;
    let victim = events
        .iter()
        .find(|e| e.event_type == "SubscriptionCreated")
        .expect("a subscription");
    let mut payload = victim.payload_value().expect("JSON payload");
    assert!(set_number(&mut payload, "seats", 20), "{payload}");
    lift_triggers(&db).await;
    set_payload(&db, victim.position, &payload).await;

    let report = seal::verify(&db, None).await.expect("verify");
    assert_diverged(&report, victim.position, DivergenceKind::Edited);
    let before = events.iter().filter(|e| e.position < victim.position);
    assert_eq!(report.checked_events, before.count() as u64);
    assert_eq!(report.sealed, sealed);
}

/// Moving an event to another tenant (the column queries filter on) is an edit.
async fn moved_tenant_is_found(backend: Backend) {
    let (_app, db, _) = sealed_log(backend).await;
    let events = all_events(&db).await;
    let victim = &events[events.len() / 2];
    lift_triggers(&db).await;
    sqlx::query("UPDATE events SET tenant = 'other' WHERE position = $1")
        .bind(victim.position)
        .execute(&db.any)
        .await
        .expect("update");

    let report = seal::verify(&db, None).await.expect("verify");
    assert_diverged(&report, victim.position, DivergenceKind::Edited);
}

async fn deleted_row_is_found(backend: Backend) {
    let (_app, db, _) = sealed_log(backend).await;
    let events = all_events(&db).await;
    let victim = &events[events.len() / 2];
    lift_triggers(&db).await;
    sqlx::query("DELETE FROM events WHERE position = $1")
        .bind(victim.position)
        .execute(&db.any)
        .await
        .expect("delete");

    let report = seal::verify(&db, None).await.expect("verify");
    assert_diverged(&report, victim.position, DivergenceKind::Deleted);
}

async fn inserted_row_is_found(backend: Backend) {
    let (_app, db, _) = sealed_log(backend).await;
    let events = all_events(&db).await;
    // Below the first position: no legitimate append ever lands there, and
    // a reader starting after position 0 would never see it.
    lift_triggers(&db).await;
    insert_event(&db, 0, &events[0]).await;

    let report = seal::verify(&db, None).await.expect("verify");
    assert_diverged(&report, 0, DivergenceKind::Inserted);
    assert_eq!(report.checked_events, 0);
}

/// An attacker who recomputes the whole chain after an edit leaves a
/// consistent chain: only a digest taken before catches it. A digest from
/// before the edited position still holds.
async fn rewritten_chain_fails_the_digest(backend: Backend) {
    let (_app, db, before) = sealed_log(backend).await;
    let events = all_events(&db).await;
    let victim = events
        .iter()
        .find(|e| e.event_type == "SeatsChanged")
        .expect("a seat change");
    let earlier: (i64, String) = sqlx::query_as(
        "SELECT position, hash FROM audit_chain WHERE position < $1 ORDER BY position DESC LIMIT 1",
    )
    .bind(victim.position)
    .fetch_one(&db.any)
    .await
    .expect("an earlier link");
    let earlier = Digest {
        position: earlier.0,
        hash: earlier.1,
    };

    let mut payload = victim.payload_value().expect("JSON payload");
    assert!(set_number(&mut payload, "to", 20), "{payload}");
    lift_triggers(&db).await;
    set_payload(&db, victim.position, &payload).await;
    let mut previous = seal::GENESIS.to_string();
    let mut tx = db.any.begin().await.expect("begin");
    sqlx::query("DELETE FROM audit_chain")
        .execute(&mut *tx)
        .await
        .expect("drop chain");
    for e in all_events(&db).await {
        previous = seal::link(&previous, &seal::canonical_bytes(&e));
        sqlx::query("INSERT INTO audit_chain (position, hash) VALUES ($1, $2)")
            .bind(e.position)
            .bind(&previous)
            .execute(&mut *tx)
            .await
            .expect("forge link");
    }
    tx.commit().await.expect("commit");

    let alone = seal::verify(&db, None).await.expect("verify");
    assert!(
        alone.is_ok(),
        "a consistent rewrite passes alone: {alone:#?}"
    );
    assert_ne!(alone.sealed.hash, before.hash);
    let report = seal::verify(&db, Some(before.clone()))
        .await
        .expect("verify");
    assert_diverged(&report, before.position, DivergenceKind::DigestMismatch);
    let report = seal::verify(&db, Some(earlier)).await.expect("verify");
    assert!(report.is_ok(), "{report:#?}");
}

/// Cutting the newest events and their links leaves a shorter, consistent
/// chain: the digest names a position that is no longer sealed.
async fn truncated_tail_fails_the_digest(backend: Backend) {
    let (_app, db, before) = sealed_log(backend).await;
    lift_triggers(&db).await;
    for table in ["events", "audit_chain"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE position = $1"))
            .bind(before.position)
            .execute(&db.any)
            .await
            .expect("truncate");
    }
    let alone = seal::verify(&db, None).await.expect("verify");
    assert!(alone.is_ok(), "{alone:#?}");
    let report = seal::verify(&db, Some(before.clone()))
        .await
        .expect("verify");
    assert_diverged(&report, before.position, DivergenceKind::DigestNotSealed);
}

async fn digest_needs_the_audit_role(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.standard_plan().await;
    app.settle().await;
    let reader = app.key("default", "reader").await;
    app.get(&reader, "/v1/audit/digest")
        .await
        .assert_problem(403, "forbidden");
    let writer = app.key("default", "writer").await;
    app.get(&writer, "/v1/audit/digest")
        .await
        .assert_problem(403, "forbidden");
    let auditor = app.key("default", "auditor").await;
    let r = app.get(&auditor, "/v1/audit/digest").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["position"], 1);
    assert_eq!(r.body["hash"].as_str().map(str::len), Some(64));
}

both_backends!(
    edited_payload_is_found,
    moved_tenant_is_found,
    deleted_row_is_found,
    inserted_row_is_found,
    rewritten_chain_fails_the_digest,
    truncated_tail_fails_the_digest,
    digest_needs_the_audit_role,
);

/// A rolled-back append leaves a hole in the positions. The sealer steps over
/// it once it is final, verify accepts it (no row, no link), and a row
/// forged into it later is an insertion.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_forged_row_in_a_rolled_back_hole_is_found() {
    use sqlx::Connection;
    let mut app = TestApp::spawn(Backend::Postgres).await;
    let plan = app.standard_plan().await;
    let mut conn = sqlx::PgConnection::connect(&app.db.url)
        .await
        .expect("connect");
    sqlx::query("BEGIN")
        .execute(&mut conn)
        .await
        .expect("begin");
    let hole: i64 = sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, tenant) \
         VALUES ('plan', 'default:plan_rolled_back', 1, 'PlanCreated', '1', '{}', '{}', 'default') RETURNING position",
    )
    .fetch_one(&mut conn)
    .await
    .expect("insert");
    sqlx::query("ROLLBACK")
        .execute(&mut conn)
        .await
        .expect("rollback");
    app.active_subscription(&plan, 2).await;
    app.settle().await;

    let db = &app.state().db;
    let sealed = seal::digest(db).await.expect("digest");
    assert!(sealed.position > hole);
    let links: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_chain WHERE position = $1")
        .bind(hole)
        .fetch_one(&db.any)
        .await
        .expect("links");
    assert_eq!(links, 0, "nothing sealed at the hole");
    let report = seal::verify(db, Some(sealed)).await.expect("verify");
    assert!(report.is_ok(), "{report:#?}");

    app.stop().await;
    let db = app.db.connect().await;
    let events = all_events(&db).await;
    lift_triggers(&db).await;
    insert_event(&db, hole, &events[0]).await;
    let report = seal::verify(&db, None).await.expect("verify");
    assert_diverged(&report, hole, DivergenceKind::Inserted);
    let below = events.iter().filter(|e| e.position < hole).count();
    assert_eq!(report.checked_events, below as u64);
}
