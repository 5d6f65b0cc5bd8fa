//! NATS JetStream publishing (`commands/src/nats.rs`), against a real NATS:
//! every integration event arrives once per `Nats-Msg-Id` with its envelope,
//! also when Tally is killed mid-publishing and restarted (JetStream drops
//! the re-published messages), and a NATS that is down holds the checkpoint
//! until it is back.
//!
//! The shared server is `TALLY_TEST_NATS_URL`, else `nats://127.0.0.1:4222`;
//! the tests fail (never skip) when it does not answer. Tests share it, so
//! each gets its own stream and subject prefix. The outage test runs its own
//! `nats-server` (`TALLY_TEST_NATS_SERVER`, else found on the PATH or in
//! `/usr/sbin`), because it stops and restarts it.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use serde_json::json;
use sqlx::AnyConnection;
use tally_commands::nats::{self, NatsPublisher};
use tally_commands::topics;
use tally_projections::runtime::{self, ProjectionError, Projector, RuntimeConfig};
use tally_projections::{Db, Runtime, StoredEvent};
use tally_tests::nats::{assert_published, expected, receive, OwnNats};
use tally_tests::{both_backends, Backend, NatsConfig, TestApp};

const DEADLINE: Duration = Duration::from_secs(60);

fn nats_url() -> String {
    std::env::var("TALLY_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A stream and subject prefix of this test's own on the server at `url`.
fn own_config(url: &str) -> NatsConfig {
    let id = uuid::Uuid::new_v4().simple().to_string();
    NatsConfig {
        stream: format!("TALLY_TEST_{id}"),
        subject_prefix: format!("test{id}."),
        ..NatsConfig::new(url)
    }
}

/// How long the shared server keeps a test's messages: a failed test leaves
/// its stream behind, and this empties it.
const TEST_MAX_AGE: Duration = Duration::from_secs(3600);

/// Creates the test's stream the way an operator might have: one domain's
/// subjects, JetStream's default duplicate window, a max age of its own. The
/// publisher must add the other subjects and its window and keep the rest.
async fn operator_stream(js: &jetstream::Context, config: &NatsConfig) {
    js.create_stream(jetstream::stream::Config {
        name: config.stream.clone(),
        subjects: vec![format!("{}billing.>", config.subject_prefix)],
        max_age: TEST_MAX_AGE,
        ..Default::default()
    })
    .await
    .expect("create the test stream");
}

/// The publisher brought the operator's stream up to date and kept the rest.
async fn assert_stream_updated(js: &jetstream::Context, config: &NatsConfig) {
    let info = js
        .get_stream(&config.stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    let subjects: BTreeSet<String> = info.config.subjects.iter().cloned().collect();
    assert_eq!(
        subjects,
        config
            .stream_subjects()
            .into_iter()
            .collect::<BTreeSet<_>>()
    );
    assert_eq!(info.config.max_age, TEST_MAX_AGE);
    assert_eq!(
        info.config.duplicate_window,
        nats::DEFAULT_DUPLICATE_WINDOW.min(TEST_MAX_AGE)
    );
}

async fn jetstream(url: &str) -> jetstream::Context {
    let client = async_nats::connect(url).await.unwrap_or_else(|e| {
        panic!("NATS tests need a NATS with JetStream at {url} (set TALLY_TEST_NATS_URL): {e}")
    });
    jetstream::new(client)
}

/// Polls `check` until it holds, failing the test after [`DEADLINE`].
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn delete_stream(js: &jetstream::Context, config: &NatsConfig) {
    js.delete_stream(&config.stream)
        .await
        .expect("delete the test stream");
}

/// A subscription created, activated, suspended, resumed and canceled, and a
/// ticket: events under the billing and support topics.
async fn lifecycle(app: &TestApp) -> String {
    let plan = app.standard_plan().await;
    let (sub, _) = app.active_subscription(&plan, 2).await;
    let k = &app.admin_key;
    let r = app
        .suspend(k, &sub, json!({"reason": "manual", "note": "paused"}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = app.resume(k, &sub).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = app.cancel(k, &sub, json!({"at": "now"})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = app
        .post(k, "/v1/tickets", json!({
            "subject": "Cannot log in", "description": "Since this morning", "requester": "customer:cus_7", "priority": "normal"
        }))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    sub
}

async fn publishes_every_integration_event_once(backend: Backend) {
    let url = nats_url();
    let js = jetstream(&url).await;
    let config = own_config(&url);
    operator_stream(&js, &config).await;
    let app = TestApp::spawn_nats(backend, config.clone()).await;
    let sub = lifecycle(&app).await;
    app.settle().await;

    let expected = expected(&app.state().db, &config).await;
    let topics_sent: BTreeSet<&str> = expected
        .values()
        .filter_map(|(_, e)| e["topic"].as_str())
        .collect();
    for topic in [
        topics::SUBSCRIPTION_SUSPENDED,
        topics::SUBSCRIPTION_RESUMED,
        topics::SUBSCRIPTION_CANCELED,
        topics::TICKET_CREATED,
    ] {
        assert!(topics_sent.contains(topic), "{topic} in {topics_sent:?}");
    }
    let received = receive(&js, &config, expected.len()).await;
    assert_published(&received, &expected);

    let suspended = received
        .iter()
        .find(|r| r.envelope["topic"] == topics::SUBSCRIPTION_SUSPENDED)
        .expect("the suspension");
    assert_eq!(
        suspended.subject,
        format!(
            "{}{}",
            config.subject_prefix,
            topics::SUBSCRIPTION_SUSPENDED
        )
    );
    assert_eq!(suspended.envelope["type"], "subscription-suspended");
    assert_eq!(suspended.envelope["tenant_id"], "default");
    assert_eq!(
        suspended.envelope["subject"],
        json!({"type": "subscription", "id": sub})
    );
    assert_eq!(suspended.envelope["data"]["reason"], "manual");
    // In log order on one subject.
    let on_sub: Vec<&str> = received
        .iter()
        .filter(|r| r.envelope["subject"]["id"] == sub.as_str())
        .filter_map(|r| r.envelope["type"].as_str())
        .collect();
    let pos = |t: &str| on_sub.iter().position(|x| *x == t).unwrap();
    assert!(pos("subscription-suspended") < pos("subscription-resumed"));
    assert!(pos("subscription-resumed") < pos("subscription-canceled"));

    assert_stream_updated(&js, &config).await;
    delete_stream(&js, &config).await;
}

/// The publisher as a crash catches it: it publishes the first `keep`
/// events of its batch, acked by NATS, and then the process dies before the
/// batch's checkpoint commits.
struct DiesMidBatch {
    inner: Arc<NatsPublisher>,
    keep: usize,
    reached: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Projector for DiesMidBatch {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn tables(&self) -> &'static [&'static str] {
        self.inner.tables()
    }
    fn rebuildable(&self) -> bool {
        false
    }
    fn handles(&self, event: &StoredEvent) -> bool {
        self.inner.handles(event)
    }
    async fn apply(
        &self,
        conn: &mut AnyConnection,
        tables: tally_projections::Tables,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        self.inner.apply(conn, tables, event).await
    }
    async fn effects(&self, batch: &[&StoredEvent]) -> Result<(), ProjectionError> {
        let keep = batch.len().min(self.keep);
        self.inner.effects(&batch[..keep]).await?;
        self.reached.notify_one();
        std::future::pending().await
    }
}

async fn killed_mid_publishing_publishes_each_id_once(backend: Backend) {
    let url = nats_url();
    let js = jetstream(&url).await;
    let config = own_config(&url);
    operator_stream(&js, &config).await;
    // The log is written by a server without the publisher.
    let app = TestApp::spawn(backend).await;
    for _ in 0..4 {
        lifecycle(&app).await;
    }
    app.settle().await;
    let db = app.state().db.clone();
    let head = app.state().dispatcher.log().head().await.unwrap();
    let expected = expected(&db, &config).await;
    let runtime_config = RuntimeConfig {
        batch_size: 10_000,
        poll_interval: Duration::from_millis(100),
        ..RuntimeConfig::default()
    };

    // Killed after publishing about half the log, before the checkpoint.
    let reached = Arc::new(tokio::sync::Notify::new());
    let doomed = Runtime::new(
        db.clone(),
        vec![Arc::new(DiesMidBatch {
            inner: Arc::new(NatsPublisher::new(config.clone())),
            keep: head as usize / 2,
            reached: reached.clone(),
        })],
        runtime_config.clone(),
    );
    doomed.start();
    tokio::time::timeout(DEADLINE, reached.notified())
        .await
        .expect("the publisher reached the crash");
    doomed.abort();
    assert_eq!(
        runtime::checkpoint(&db, nats::CONSUMER).await.unwrap(),
        0,
        "the checkpoint did not move past the killed batch"
    );
    let published_before = js
        .get_stream(&config.stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state
        .messages as usize;
    assert!(
        published_before > 0 && published_before < expected.len(),
        "{published_before} of {} published before the crash",
        expected.len()
    );

    // Restarted: the batch is published again from its checkpoint; JetStream
    // drops what it already has.
    let restarted = Runtime::new(
        db.clone(),
        vec![Arc::new(NatsPublisher::new(config.clone()))],
        runtime_config,
    );
    restarted.start();
    assert!(
        restarted.wait_for(head, DEADLINE).await.unwrap(),
        "publisher did not reach the head: {:?}",
        restarted.status().await
    );
    let received = receive(&js, &config, expected.len()).await;
    assert_published(&received, &expected);
    restarted.stop().await;
    delete_stream(&js, &config).await;
}

async fn publisher_status(app: &TestApp) -> tally_projections::ConsumerStatus {
    app.state()
        .runtime
        .status()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == nats::CONSUMER)
        .expect("the publisher runs")
}

/// Waits until the publisher fails, then checks that its checkpoint stays
/// before `first_unpublished`.
async fn assert_held(app: &TestApp, first_unpublished: i64) {
    wait_until("the publisher fails or moves on", || async {
        let status = publisher_status(app).await;
        status.status == "failing" || status.position >= first_unpublished
    })
    .await;
    let status = publisher_status(app).await;
    assert!(status.last_error.is_some(), "{status:?}");
    assert!(
        status.position < first_unpublished,
        "checkpoint {} moved past the unpublished event at {first_unpublished}",
        status.position
    );
    let row = runtime::checkpoint(&app.state().db, nats::CONSUMER)
        .await
        .unwrap();
    assert!(row < first_unpublished, "checkpoint row at {row}");
}

/// The position of the first event after `after` that publishes something.
async fn first_published_after(db: &Db, after: i64) -> i64 {
    tally_projections::EventLog::new(db.clone())
        .read_after(after, 100_000)
        .await
        .unwrap()
        .iter()
        .find(|e| !topics::integration_events(e).is_empty())
        .expect("an event with a topic")
        .position
}

async fn nats_outage_holds_the_checkpoint(backend: Backend) {
    let mut server = OwnNats::new();
    let config = own_config(&server.url());
    // NATS is down when Tally starts.
    let app = TestApp::spawn_nats(backend, config.clone()).await;
    lifecycle(&app).await;
    let db = app.state().db.clone();
    assert_held(&app, first_published_after(&db, 0).await).await;

    // Up: everything so far is published.
    server.start();
    app.settle().await;
    let js = jetstream(&server.url()).await;
    let before = expected(&db, &config).await;
    assert_published(&receive(&js, &config, before.len()).await, &before);

    // Down while Tally keeps writing: the checkpoint waits for it.
    server.kill().await;
    let head = app.state().dispatcher.log().head().await.unwrap();
    lifecycle(&app).await;
    assert_held(&app, first_published_after(&db, head).await).await;

    // Back, with its store: the rest is published, nothing twice.
    server.start();
    app.settle().await;
    let js = jetstream(&server.url()).await;
    let all = expected(&db, &config).await;
    assert!(all.len() > before.len());
    assert_published(&receive(&js, &config, all.len()).await, &all);
    // The publisher created this stream.
    let info = js
        .get_stream(&config.stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.config.subjects, config.stream_subjects());
    assert_eq!(info.config.duplicate_window, nats::DEFAULT_DUPLICATE_WINDOW);
}

both_backends!(
    publishes_every_integration_event_once,
    killed_mid_publishing_publishes_each_id_once,
    nats_outage_holds_the_checkpoint,
);
