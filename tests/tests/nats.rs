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

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{json, Value};
use sqlx::AnyConnection;
use tally_commands::nats::{self, NatsPublisher};
use tally_commands::topics;
use tally_projections::runtime::{self, ProjectionError, Projector, RuntimeConfig};
use tally_projections::{Db, Runtime, StoredEvent};
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

/// One message as a consumer of the stream receives it.
#[derive(Debug)]
struct Received {
    msg_id: String,
    subject: String,
    envelope: Value,
}

/// What the publisher must have sent for the log as it is: `Nats-Msg-Id` →
/// (subject, envelope).
async fn expected(db: &Db, config: &NatsConfig) -> BTreeMap<String, (String, Value)> {
    let events = tally_projections::EventLog::new(db.clone())
        .read_after(0, 100_000)
        .await
        .expect("read the log");
    let mut out = BTreeMap::new();
    for e in &events {
        for i in topics::integration_events(e) {
            let id = nats::message_id(&e.event_id, i.topic);
            let previous = out.insert(id, (config.subject(i.topic), topics::envelope(e, &i)));
            assert!(previous.is_none(), "two messages with one id");
        }
    }
    out
}

/// Every message of the test's stream, read by an ordered consumer from the
/// start, once `count` have arrived; the stream must hold exactly `count`.
async fn receive(js: &jetstream::Context, config: &NatsConfig, count: usize) -> Vec<Received> {
    let stream = js.get_stream(&config.stream).await.expect("the stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("consume");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut out = Vec::new();
    while out.len() < count {
        let m = tokio::time::timeout_at(deadline, messages.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {count} messages arrived", out.len()))
            .expect("a message")
            .expect("a message");
        let headers = m.headers.as_ref().expect("headers");
        out.push(Received {
            msg_id: headers
                .get("Nats-Msg-Id")
                .expect("Nats-Msg-Id")
                .as_str()
                .to_string(),
            subject: m.subject.to_string(),
            envelope: serde_json::from_slice(&m.payload).expect("a JSON envelope"),
        });
    }
    // Nothing beyond them: the stream holds one message per id.
    let info = js
        .get_stream(&config.stream)
        .await
        .expect("the stream")
        .get_info()
        .await
        .expect("stream info");
    assert_eq!(info.state.messages, count as u64, "messages in the stream");
    out
}

/// The stream holds exactly the expected messages, each once, in log order.
fn assert_published(received: &[Received], expected: &BTreeMap<String, (String, Value)>) {
    let ids: Vec<&str> = received.iter().map(|r| r.msg_id.as_str()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a Nats-Msg-Id arrived twice: {ids:?}"
    );
    assert_eq!(
        unique,
        expected.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        "published ids"
    );
    for r in received {
        let (subject, envelope) = &expected[&r.msg_id];
        assert_eq!(&r.subject, subject);
        assert_eq!(&r.envelope, envelope, "envelope of {}", r.msg_id);
        assert_eq!(
            r.msg_id,
            format!(
                "{}:{}",
                r.envelope["id"].as_str().unwrap(),
                r.envelope["topic"].as_str().unwrap()
            )
        );
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
    async fn effects(&self, batch: &[StoredEvent]) -> Result<(), ProjectionError> {
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

/// A `nats-server -js` of this test's own, which it can stop and restart on
/// the same port and store.
struct OwnNats {
    binary: PathBuf,
    port: u16,
    store: PathBuf,
    child: Option<tokio::process::Child>,
}

impl OwnNats {
    fn new() -> OwnNats {
        let binary = std::env::var_os("TALLY_TEST_NATS_SERVER")
            .map(PathBuf::from)
            .or_else(|| {
                let path = std::env::var_os("PATH").unwrap_or_default();
                std::env::split_paths(&path)
                    .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
                    .map(|dir| dir.join("nats-server"))
                    .find(|p| p.is_file())
            })
            .expect(
                "the NATS outage test needs the nats-server binary \
                 (scripts/test.sh installs it; or set TALLY_TEST_NATS_SERVER)",
            );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .unwrap()
            .port();
        let store =
            std::env::temp_dir().join(format!("tally-nats-{}", uuid::Uuid::new_v4().simple()));
        OwnNats {
            binary,
            port,
            store,
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let child = tokio::process::Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
    }

    /// Kills it (SIGKILL, as a crash).
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill nats-server");
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
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
