//! `tally-replay digest` and `verify` as operators run them: the built binary
//! against a database a real server sealed, on both backends.

use std::process::Output;

use serde_json::{json, Value};
use tally_tests::{Backend, TestApp};

async fn replay(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tally-replay"))
        .arg("--database")
        .arg(url)
        .args(args)
        .output()
        .await
        .expect("run tally-replay")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

async fn digest_and_verify(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    app.active_subscription(&plan, 2).await;
    app.settle().await;
    let head = app.state().dispatcher.log().head().await.expect("head");
    // Positions, not a count: a retried append on PostgreSQL leaves a hole.
    let positions: Vec<i64> = sqlx::query_scalar("SELECT position FROM events ORDER BY position")
        .fetch_all(&app.state().db.any)
        .await
        .expect("positions");
    let events = positions.len();
    let api = app.get(&app.admin_key, "/v1/audit/digest").await;
    assert_eq!(api.status, 200, "{:?}", api.body);
    app.stop().await;
    let url = app.db.url.clone();

    let out = replay(&url, &["digest"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let digest = text(&out.stdout);
    let hash = api.body["hash"].as_str().expect("hash");
    assert_eq!(digest, format!("{head}:{hash}"));
    let out = replay(&url, &["digest", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let body: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(body, json!({"position": head, "hash": hash}));

    let out = replay(&url, &["verify", "--digest", &digest]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let verdict = text(&out.stdout);
    assert!(
        verdict.starts_with(&format!(
            "ok: {events} events verified up to position {head} (hash {hash})"
        )),
        "{verdict}"
    );
    let out = replay(&url, &["verify", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["checked_events"], events);
    assert_eq!(report["divergence"], Value::Null);

    let out = replay(&url, &["verify", "--digest", "12:nothex"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("invalid digest `12:nothex`"),
        "{}",
        text(&out.stderr)
    );

    // Delete one sealed row, as someone with database access could.
    let db = app.db.connect().await;
    let lift: &[&str] = match backend {
        Backend::Postgres => &["ALTER TABLE events DISABLE TRIGGER USER"],
        Backend::Sqlite => &["DROP TRIGGER events_refuse_delete"],
    };
    for sql in lift {
        sqlx::query(sql)
            .execute(&db.any)
            .await
            .expect("lift trigger");
    }
    let victim = positions[events / 2];
    sqlx::query("DELETE FROM events WHERE position = $1")
        .bind(victim)
        .execute(&db.any)
        .await
        .expect("delete");
    db.close().await;

    let out = replay(&url, &["verify"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "tally-replay: diverged at position {victim}: event deleted (a sealed position has no event row)"
        )
    );
    assert_eq!(text(&out.stdout), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn digest_and_verify_sqlite() {
    digest_and_verify(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn digest_and_verify_postgres() {
    digest_and_verify(Backend::Postgres).await
}
