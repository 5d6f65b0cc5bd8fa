//! End-to-end tests of support tickets and the notification inbox, on both backends.

use serde_json::json;
use tally_tests::{both_backends, table_rows, Backend, Resp, TestApp};

both_backends!(
    a_tickets_life,
    inbox_delivery_and_read_state,
    ticket_rejections,
    support_rebuild_keeps_read_state
);

async fn inbox(app: &TestApp, recipient: &str, extra: &str) -> Resp {
    app.settle().await;
    app.get(
        &app.admin_key,
        &format!("/v1/inbox?recipient={recipient}{extra}"),
    )
    .await
}

fn titles(r: &Resp) -> Vec<String> {
    r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap().to_string())
        .collect()
}

async fn new_ticket(app: &TestApp) -> String {
    let r = app
        .post(&app.admin_key, "/v1/tickets", json!({
            "subject": "Cannot log in", "description": "Since this morning", "requester": "customer:cus_7", "priority": "high"
        }))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["status"], "new");
    r.id()
}

async fn a_tickets_life(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let k = &app.admin_key;
    let id = new_ticket(&app).await;
    let t = |p: &str| format!("/v1/tickets/{id}/{p}");
    let r = app
        .post(k, &t("assign"), json!({"assignee": "alice"}))
        .await;
    assert_eq!(r.body["status"], "open", "assigning a new ticket opens it");
    assert_eq!(r.body["assignee"], "alice");
    let r = app
        .post(
            k,
            &t("comments"),
            json!({"author": "alice", "body": "checking the SSO logs", "public": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = app
        .post(
            k,
            &t("comments"),
            json!({"author": "alice", "body": "Could you try again?", "public": true}),
        )
        .await;
    assert_eq!(r.body["comments"].as_array().unwrap().len(), 2);
    let r = app
        .post(k, &t("transition"), json!({"to": "pending"}))
        .await;
    assert_eq!(r.body["status"], "pending");
    // The requester replies while the ticket waits on them: it reopens.
    let r = app
        .post(
            k,
            &t("comments"),
            json!({"author": "customer:cus_7", "body": "Here is the log", "public": true}),
        )
        .await;
    assert_eq!(r.body["status"], "open");
    let r = app.post(k, &t("transition"), json!({"to": "solved"})).await;
    assert_eq!(r.body["status"], "solved");
    // The requester replies publicly: the ticket reopens.
    let r = app
        .post(
            k,
            &t("comments"),
            json!({"author": "customer:cus_7", "body": "Still broken", "public": true}),
        )
        .await;
    assert_eq!(r.body["status"], "open");
    let r = app
        .post(k, &t("attachments"), json!({"file_name": "screen.png", "content_type": "image/png", "size_bytes": 1200, "storage_key": "s3://b/screen.png"}))
        .await;
    assert_eq!(r.body["attachments"][0]["file_name"], "screen.png");
    app.post(k, &t("transition"), json!({"to": "solved"})).await;
    let r = app.post(k, &t("transition"), json!({"to": "closed"})).await;
    assert_eq!(r.body["status"], "closed");
    // Closed is terminal.
    app.post(k, &t("transition"), json!({"to": "open"}))
        .await
        .assert_problem(409, "invalid_transition");
    app.post(
        k,
        &t("comments"),
        json!({"author": "alice", "body": "x", "public": true}),
    )
    .await
    .assert_problem(409, "invalid_transition");
    app.post(k, &t("assign"), json!({"assignee": "bob"}))
        .await
        .assert_problem(409, "invalid_transition");
    // A reader does not see internal comments; a writer does.
    let reader = app.key("default", "reader").await;
    let writer = app.key("default", "writer").await;
    let as_reader = app
        .get_after(&reader, &format!("/v1/tickets/{id}"), r.position())
        .await;
    let as_writer = app.get(&writer, &format!("/v1/tickets/{id}")).await;
    let publics = |r: &Resp| {
        r.body["comments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["public"].as_bool().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(publics(&as_reader), [true, true, true]);
    assert_eq!(publics(&as_writer), [false, true, true, true]);
    let listed = app
        .get(&reader, "/v1/tickets?status=closed&assignee=alice")
        .await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
    assert!(listed.body["data"][0]["comments"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["public"] == true));
    assert_eq!(
        app.get(&reader, "/v1/tickets?status=open").await.body["data"],
        json!([])
    );
}

async fn inbox_delivery_and_read_state(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let k = &app.admin_key;
    let id = new_ticket(&app).await;
    let t = |p: &str| format!("/v1/tickets/{id}/{p}");
    app.post(k, &t("assign"), json!({"assignee": "alice"}))
        .await;
    app.post(
        k,
        &t("comments"),
        json!({"author": "alice", "body": "internal note", "public": false}),
    )
    .await;
    app.post(
        k,
        &t("comments"),
        json!({"author": "alice", "body": "We are on it", "public": true}),
    )
    .await;
    app.post(
        k,
        &t("comments"),
        json!({"author": "customer:cus_7", "body": "Thanks", "public": true}),
    )
    .await;
    // Subscription notifications go to the customer.
    let plan = app.standard_plan().await;
    let sub = app
        .create_subscription(k, json!({"customer_id": "cus_7", "plan_id": plan}))
        .await
        .id();
    app.activate(k, &sub, json!({})).await;
    app.suspend(k, &sub, json!({"reason": "non_payment"})).await;

    let alice = inbox(&app, "user:alice", "").await;
    assert_eq!(alice.status, 200, "{:?}", alice.body);
    // Assigned (and the new→open status change), and the requester's comment;
    // not her own comments.
    let at = titles(&alice);
    assert!(
        at.contains(&"Ticket assigned: Cannot log in".to_string()),
        "{at:?}"
    );
    assert!(
        at.contains(&"New comment on: Cannot log in".to_string()),
        "{at:?}"
    );
    assert_eq!(
        at.iter().filter(|t| t.starts_with("New comment")).count(),
        1,
        "{at:?}"
    );
    let cus = inbox(&app, "customer:cus_7", "").await;
    let ct = titles(&cus);
    assert_eq!(
        ct.iter().filter(|t| t.starts_with("New comment")).count(),
        1,
        "only alice's public comment: {ct:?}"
    );
    assert!(ct.contains(&"Subscription activated".to_string()), "{ct:?}");
    assert!(ct.contains(&"Subscription suspended".to_string()), "{ct:?}");
    let suspended = cus.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["title"] == "Subscription suspended")
        .unwrap();
    assert_eq!(suspended["severity"], "critical");
    assert_eq!(suspended["subject_ref"]["type"], "subscription");
    assert_eq!(suspended["subject_ref"]["id"], sub.as_str());
    let unread = cus.body["unread_count"].as_i64().unwrap();
    assert_eq!(unread as usize, ct.len());
    // Read one, archive one, then read all.
    let first = cus.body["data"][0]["id"].as_str().unwrap().to_string();
    let second = cus.body["data"][1]["id"].as_str().unwrap().to_string();
    let r = app
        .post(k, &format!("/v1/inbox/{first}/read"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["state"], "read");
    assert_eq!(
        inbox(&app, "customer:cus_7", "").await.body["unread_count"]
            .as_i64()
            .unwrap(),
        unread - 1
    );
    app.post(k, &format!("/v1/inbox/{second}/archive"), json!({}))
        .await;
    let archived = inbox(&app, "customer:cus_7", "&state=archived").await;
    assert_eq!(archived.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(archived.body["unread_count"].as_i64().unwrap(), unread - 2);
    let critical = inbox(&app, "customer:cus_7", "&severity=critical").await;
    assert_eq!(titles(&critical), ["Subscription suspended"]);
    let r = app
        .post(
            k,
            "/v1/inbox/read-all",
            json!({"recipient": "customer:cus_7"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        inbox(&app, "customer:cus_7", "").await.body["unread_count"],
        0
    );
    assert!(
        inbox(&app, "user:alice", "").await.body["unread_count"]
            .as_i64()
            .unwrap()
            > 0,
        "other recipients untouched"
    );
    app.post(k, "/v1/inbox/ntf_missing/read", json!({}))
        .await
        .assert_problem(404, "not_found");
    app.get(k, "/v1/inbox?recipient=nobody")
        .await
        .assert_problem(422, "validation_failed");
    // Another tenant sees nothing.
    let other = app.key("acme", "admin").await;
    let theirs = app.get(&other, "/v1/inbox?recipient=customer:cus_7").await;
    assert_eq!(theirs.body["data"], json!([]));
    app.post(&other, &format!("/v1/inbox/{first}/read"), json!({}))
        .await
        .assert_problem(404, "not_found");
}

async fn ticket_rejections(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let k = &app.admin_key;
    let r = app
        .post(
            k,
            "/v1/tickets",
            json!({"subject": "", "description": "d", "requester": "c", "priority": "high"}),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "subject");
    let r = app
        .post(
            k,
            "/v1/tickets",
            json!({"subject": "s", "description": "d", "requester": "c", "priority": "asap"}),
        )
        .await;
    assert_eq!(r.body["errors"][0]["field"], "priority");
    let id = new_ticket(&app).await;
    let t = |p: &str| format!("/v1/tickets/{id}/{p}");
    app.post(k, &t("transition"), json!({"to": "closed"}))
        .await
        .assert_problem(409, "invalid_transition");
    let big = app.post(k, &t("attachments"), json!({"file_name": "a.zip", "content_type": "application/zip", "size_bytes": 25 * 1024 * 1024 + 1, "storage_key": "k"})).await;
    big.assert_problem(422, "validation_failed");
    assert_eq!(big.body["errors"][0]["field"], "size_bytes");
    let exe = app.post(k, &t("attachments"), json!({"file_name": "a.exe", "content_type": "application/x-msdownload", "size_bytes": 10, "storage_key": "k"})).await;
    assert_eq!(exe.body["errors"][0]["field"], "content_type");
    for i in 0..20 {
        let r = app.post(k, &t("attachments"), json!({"file_name": format!("f{i}.txt"), "content_type": "text/plain", "size_bytes": 10, "storage_key": "k"})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let r = app.post(k, &t("attachments"), json!({"file_name": "f21.txt", "content_type": "text/plain", "size_bytes": 10, "storage_key": "k"})).await;
    r.assert_problem(422, "validation_failed");
    app.post(
        k,
        "/v1/tickets/tkt_nothere/assign",
        json!({"assignee": "a"}),
    )
    .await
    .assert_problem(404, "not_found");
    let reader = app.key("default", "reader").await;
    app.post(&reader, &t("assign"), json!({"assignee": "a"}))
        .await
        .assert_problem(403, "forbidden");
}

async fn support_rebuild_keeps_read_state(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let k = &app.admin_key;
    for _ in 0..3 {
        let id = new_ticket(&app).await;
        app.post(
            k,
            &format!("/v1/tickets/{id}/assign"),
            json!({"assignee": "alice"}),
        )
        .await;
        app.post(
            k,
            &format!("/v1/tickets/{id}/comments"),
            json!({"author": "alice", "body": "hi", "public": true}),
        )
        .await;
    }
    let items = inbox(&app, "customer:cus_7", "").await;
    let first = items.body["data"][0]["id"].as_str().unwrap().to_string();
    app.post(k, &format!("/v1/inbox/{first}/archive"), json!({}))
        .await;
    app.post(k, "/v1/inbox/read-all", json!({"recipient": "user:alice"}))
        .await;
    let id = new_ticket(&app).await;
    app.post(
        k,
        &format!("/v1/tickets/{id}/assign"),
        json!({"assignee": "alice"}),
    )
    .await;
    app.settle().await;
    let db = &app.state().db;
    let cols = "tenant, id, recipient, severity, title, body, subject_type, subject_id, state, created_at, position";
    let before = table_rows(db, "rm_inbox_items", cols).await;
    let tickets_before = table_rows(
        db,
        "rm_tickets",
        "tenant, id, status, assignee, requester, priority, body, version",
    )
    .await;
    assert!(before.iter().any(|r| r[8] == "archived"));
    assert!(before.iter().any(|r| r[8] == "read"));
    assert!(
        before.iter().any(|r| r[8] == "unread"),
        "the item after read-all stays unread"
    );
    for name in ["inbox", "tickets"] {
        assert_eq!(app.rebuild(k, name).await.status, 202);
    }
    app.settle().await;
    let after = table_rows(db, "rm_inbox_items", cols).await;
    assert_eq!(
        after, before,
        "rebuilt inbox equals the incremental one, read states kept"
    );
    assert_eq!(
        table_rows(
            db,
            "rm_tickets",
            "tenant, id, status, assignee, requester, priority, body, version"
        )
        .await,
        tickets_before
    );
}
