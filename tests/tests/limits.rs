//! Server-wide request limits (`tally_api::limits`): a request past its
//! deadline is answered 503 `timeout`, a request above the cap on requests in
//! flight 503 `overloaded` at once, and a command that timed out still ends
//! all there or absent, never half done.

use std::time::{Duration, Instant};

use sqlx::Connection;
use tally_tests::{both_backends, standard_plan_body, Backend, Resp, TestApp};

both_backends!(
    slow_read_times_out,
    above_the_cap_is_shed_at_once,
    timed_out_command_is_all_or_nothing,
);

/// Far past the log head: a query with it waits the whole 2 s for it.
const FAR_AHEAD: &str = "1000000000";

async fn wait_far_ahead(app: &TestApp) -> Resp {
    app.request(
        reqwest::Method::GET,
        "/v1/plans",
        Some(&app.admin_key),
        &[("x-min-position", FAR_AHEAD.to_string())],
        None,
    )
    .await
}

/// Polls `cond` every 10 ms until it holds; fails after `within`.
async fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_retry_after(r: &Resp) {
    let secs: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!(secs >= 1, "{secs}");
}

/// A read that outlives the deadline (it waits 2 s for X-Min-Position) is
/// answered 503 `timeout` at the deadline, and its slot is given back.
async fn slow_read_times_out(backend: Backend) {
    let app = TestApp::spawn_tuned(backend, |c| {
        c.limits.request_timeout = Duration::from_millis(500)
    })
    .await;
    let started = Instant::now();
    let r = wait_far_ahead(&app).await;
    let elapsed = started.elapsed();
    r.assert_problem(503, "timeout");
    assert_retry_after(&r);
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_millis(1900),
        "answered after {elapsed:?}"
    );
    let limiter = app.state().limits.clone();
    wait_until(Duration::from_secs(5), "the aborted read to end", || {
        limiter.in_flight() == 0
    })
    .await;
    assert_eq!(app.get(&app.admin_key, "/v1/plans").await.status, 200);
}

/// With a cap of 2 and 2 requests held open, a third is answered 503
/// `overloaded` at once (not queued); when the held ones are done, requests
/// are served again.
async fn above_the_cap_is_shed_at_once(backend: Backend) {
    let app = TestApp::spawn_tuned(backend, |c| c.limits.max_concurrent_requests = 2).await;
    let limiter = app.state().limits.clone();
    let extra = async {
        wait_until(Duration::from_secs(5), "2 requests in flight", || {
            limiter.in_flight() == 2
        })
        .await;
        let started = Instant::now();
        let r = app
            .create_plan(&app.admin_key, standard_plan_body("shed"))
            .await;
        (r, started.elapsed())
    };
    let (held_1, held_2, (shed, shed_after)) =
        tokio::join!(wait_far_ahead(&app), wait_far_ahead(&app), extra);
    shed.assert_problem(503, "overloaded");
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert!(shed_after < Duration::from_millis(500), "{shed_after:?}");
    // The held requests were served to their end, not shed.
    held_1.assert_problem(503, "projection_lagging");
    held_2.assert_problem(503, "projection_lagging");
    // The shed command did nothing.
    assert_eq!(app.state().dispatcher.log().head().await.unwrap(), 0);
    wait_until(Duration::from_secs(5), "the slots to be free", || {
        limiter.in_flight() == 0
    })
    .await;
    let r = app
        .create_plan(&app.admin_key, standard_plan_body("shed"))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(app.get(&app.admin_key, "/v1/plans").await.status, 200);
}

/// Holds the database's write lock (SQLite) or a lock on `events` that
/// blocks appends (PostgreSQL) until `release`.
struct WriteBlock {
    sqlite: Option<sqlx::SqliteConnection>,
    postgres: Option<sqlx::PgConnection>,
}

impl WriteBlock {
    async fn take(app: &TestApp) -> WriteBlock {
        match app.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&app.db.url)
                    .await
                    .expect("connect");
                sqlx::raw_sql("BEGIN IMMEDIATE")
                    .execute(&mut c)
                    .await
                    .expect("take the write lock");
                WriteBlock {
                    sqlite: Some(c),
                    postgres: None,
                }
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&app.db.url)
                    .await
                    .expect("connect");
                sqlx::raw_sql("BEGIN; LOCK TABLE events IN SHARE MODE")
                    .execute(&mut c)
                    .await
                    .expect("lock events");
                WriteBlock {
                    sqlite: None,
                    postgres: Some(c),
                }
            }
        }
    }

    async fn release(mut self) {
        if let Some(mut c) = self.sqlite.take() {
            sqlx::raw_sql("COMMIT")
                .execute(&mut c)
                .await
                .expect("commit");
        }
        if let Some(mut c) = self.postgres.take() {
            sqlx::raw_sql("COMMIT")
                .execute(&mut c)
                .await
                .expect("commit");
        }
    }
}

/// Commands that outlive the deadline (their append waits for a lock) are
/// answered 503 `timeout`, then finish on their own: each plan is there
/// once, whole, and a retry with the same Idempotency-Key gets the original
/// response instead of creating a second plan.
async fn timed_out_command_is_all_or_nothing(backend: Backend) {
    let app = TestApp::spawn_tuned(backend, |c| {
        c.limits.request_timeout = Duration::from_secs(1)
    })
    .await;
    let key = &app.admin_key;
    let idem = [("idempotency-key", "plan-slow".to_string())];
    let block = WriteBlock::take(&app).await;
    let keyed = app
        .post_with(key, "/v1/plans", standard_plan_body("slow"), &idem)
        .await;
    keyed.assert_problem(503, "timeout");
    assert_retry_after(&keyed);
    let bare = app.create_plan(key, standard_plan_body("bare")).await;
    bare.assert_problem(503, "timeout");
    block.release().await;

    // The timed-out commands run on to their end and then give back their
    // slots; a retry with the same key replays the first response.
    let limiter = app.state().limits.clone();
    wait_until(
        Duration::from_secs(30),
        "the timed-out commands to end",
        || limiter.in_flight() == 0,
    )
    .await;
    let replayed = app
        .post_with(key, "/v1/plans", standard_plan_body("slow"), &idem)
        .await;
    assert_eq!(replayed.status, 201, "{:?}", replayed.body);
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    assert_eq!(replayed.body["code"], "slow");

    // Both plans exist once each, with their one event; nothing else was written.
    app.settle().await;
    let plans = app.get(key, "/v1/plans").await;
    assert_eq!(plans.status, 200, "{:?}", plans.body);
    let mut codes: Vec<&str> = plans.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|p| p["code"].as_str().expect("code"))
        .collect();
    codes.sort();
    assert_eq!(codes, ["bare", "slow"]);
    assert_eq!(app.state().dispatcher.log().head().await.unwrap(), 2);
    let events = app.stream_events(key, "plan", &replayed.id()).await;
    assert_eq!(events.status, 200, "{:?}", events.body);
    assert_eq!(events.body["data"].as_array().map(Vec::len), Some(1));
    app.assert_read_models_equal_rebuild().await;
}
