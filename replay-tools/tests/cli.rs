//! The `tally-replay` binary against a real database, on both backends: a
//! rebuild killed with SIGKILL half-way and run again resumes from its own
//! checkpoint and ends equal; audit timelines, export and status.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use tally_tests::{both_backends, dump_read_models, Backend, TestApp};

both_backends!(
    a_killed_rebuild_resumes_and_ends_equal,
    audit_timeline_export_and_status
);

fn replay(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally-replay"))
        .args(args)
        .arg("--database")
        .arg(url)
        .output()
        .expect("run tally-replay")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "tally-replay failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).expect("utf-8")
}

async fn checkpoint(db: &tally_projections::Db, name: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT position FROM consumer_checkpoints WHERE name = $1")
        .bind(name)
        .fetch_optional(&db.any)
        .await
        .unwrap()
}

async fn a_killed_rebuild_resumes_and_ends_equal(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let plan = app.standard_plan().await;
    let (sub, _) = app.active_subscription(&plan, 1).await;
    let now = chrono::Utc::now().to_rfc3339();
    for b in 0..3 {
        let records: Vec<Value> = (0..1000)
            .map(|i| {
                json!({"subscription_id": sub, "meter": "api_calls", "quantity": "1",
                "timestamp": now, "transaction_id": format!("k-{b}-{i}")})
            })
            .collect();
        let r = app
            .post(
                &app.admin_key,
                "/v1/usage/batch",
                json!({"records": records}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    app.settle().await;
    let head = app.state().dispatcher.log().head().await.unwrap();
    let db = app.state().db.clone();
    let url = db.url.clone();
    let before = dump_read_models(&db).await;
    assert_eq!(before["rm_usage_records"].len(), 3000);
    app.stop().await;
    let db = app.db.connect().await;

    // Small batches, so that it is killed long before the end: SIGKILL as
    // soon as it reports its first committed batch.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally-replay"))
        .args(["rebuild", "--all", "--batch-size", "10", "--database", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tally-replay");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let header = lines.next().expect("a first line").unwrap();
    assert!(header.contains("from position 0"), "{header}");
    let progress = lines.next().expect("a progress line").unwrap();
    assert!(progress.contains("position"), "{progress}");
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    let shadow = checkpoint(&db, "usage__next")
        .await
        .expect("the killed rebuild left its checkpoint");
    assert!(
        shadow > 0 && shadow < head,
        "killed half-way: {shadow} of {head}"
    );
    // The live tables are untouched.
    assert_eq!(dump_read_models(&db).await, before);

    let out = stdout(&replay(&url, &["rebuild", "--all"]));
    let resumed = out
        .lines()
        .find_map(|l| l.split("resuming at position ").nth(1))
        .unwrap_or_else(|| panic!("no resume in: {out}"));
    let resumed: i64 = resumed.split(',').next().unwrap().trim().parse().unwrap();
    assert!(
        resumed >= shadow,
        "resumed at {resumed}, checkpoint {shadow}"
    );
    assert_eq!(
        out.matches(&format!("swapped in at position {head}"))
            .count(),
        10,
        "{out}"
    );
    assert_eq!(dump_read_models(&db).await, before);
    for name in [
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
    ] {
        assert_eq!(checkpoint(&db, name).await, Some(head), "{name}");
        assert_eq!(checkpoint(&db, &format!("{name}__next")).await, None);
    }

    // The offline variant ends equal too.
    let out = stdout(&replay(&url, &["rebuild", "usage", "--in-place"]));
    assert!(out.contains("rebuilt in place"), "{out}");
    assert_eq!(dump_read_models(&db).await, before);
}

async fn audit_timeline_export_and_status(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let key = app.admin_key.clone();
    let plan = app.standard_plan().await;
    let (sub, _) = app.active_subscription(&plan, 2).await;
    app.settle().await;
    let between = chrono::Utc::now();
    let r = app
        .change_seats(&key, &sub, json!({"seats": 4, "proration": "none"}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // A stream of every other type: a usage record, a ticket, an inbox read.
    let r = app
        .post(
            &key,
            "/v1/usage",
            json!({"subscription_id": sub, "meter": "api_calls", "quantity": "3",
            "timestamp": chrono::Utc::now().to_rfc3339(), "transaction_id": "cli-1"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = app
        .post(&key, "/v1/tickets", json!({"subject": "CLI", "description": "audit", "requester": "customer:cus_1", "priority": "low"}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    app.settle().await;
    let items = app.get(&key, "/v1/inbox?recipient=customer:cus_1").await;
    let item = items.body["data"][0]["id"].as_str().unwrap().to_string();
    let r = app
        .post(&key, &format!("/v1/inbox/{item}/read"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.settle().await;
    let head = app.state().dispatcher.log().head().await.unwrap();
    let url = app.state().db.url.clone();
    app.stop().await;

    // The table: each event with its actor and what it changed.
    let out = stdout(&replay(&url, &["audit", "subscription", &sub]));
    for needle in [
        "SubscriptionCreated",
        "SubscriptionActivated",
        "SeatsChanged",
        "seats: 2 → 4",
        "key_",
    ] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }
    // JSON, and the state as of a time between the two commands.
    let all: Value = serde_json::from_str(&stdout(&replay(
        &url,
        &["audit", "subscription", &sub, "--json"],
    )))
    .unwrap();
    assert_eq!(all["events"].as_array().unwrap().len(), 3);
    assert_eq!(all["state"]["seats"], 4);
    let then: Value = serde_json::from_str(&stdout(&replay(
        &url,
        &[
            "audit",
            "subscription",
            &sub,
            "--json",
            "--at",
            &between.to_rfc3339(),
        ],
    )))
    .unwrap();
    assert_eq!(then["events"].as_array().unwrap().len(), 2);
    assert_eq!(then["state"]["seats"], 2);
    assert!(then["events"][1]["actor"]
        .as_str()
        .unwrap()
        .starts_with("key_"));
    // Errors are one line and a failure status.
    let bad = replay(&url, &["audit", "subscription", "sub_nope"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).starts_with("tally-replay: no subscription stream")
    );
    let bad = replay(&url, &["audit", "nonsense", &sub]);
    assert!(!bad.status.success());

    // Export: every event once, in position order; filters by tenant and position.
    let lines: Vec<Value> = stdout(&replay(&url, &["export"]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as i64, head);
    let positions: Vec<i64> = lines
        .iter()
        .map(|l| l["position"].as_i64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    assert!(lines.iter().all(|l| l["metadata"]["tenant"] == "default"));
    let after = stdout(&replay(
        &url,
        &["export", "--after", "2", "--tenant", "default"],
    ));
    assert_eq!(after.lines().count() as i64, head - 2);
    assert_eq!(stdout(&replay(&url, &["export", "--tenant", "nobody"])), "");
    // Every stream in the log has a timeline, whatever its type.
    let mut streams: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["stream_type"].as_str().unwrap().to_string(),
                l["stream_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    streams.sort();
    streams.dedup();
    let kinds: std::collections::BTreeSet<_> = streams.iter().map(|(k, _)| k.as_str()).collect();
    for kind in [
        "plan",
        "subscription",
        "invoice",
        "invoice_numbering",
        "usage_record",
        "ticket",
        "inbox",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    for (kind, id) in &streams {
        let out = stdout(&replay(&url, &["audit", kind, id, "--json"]));
        let doc: Value = serde_json::from_str(&out).unwrap();
        assert!(!doc["events"].as_array().unwrap().is_empty(), "{kind} {id}");
    }

    // Status: every projection, at the head.
    let status = stdout(&replay(&url, &["status"]));
    for name in [
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
    ] {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing from:\n{status}"));
        assert!(line.contains(&head.to_string()), "{line}");
    }
    // --help on every command.
    for cmd in ["audit", "status", "rebuild", "verify", "digest", "export"] {
        let o = Command::new(env!("CARGO_BIN_EXE_tally-replay"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{cmd} --help");
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage: tally-replay"));
    }
}
