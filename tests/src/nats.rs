//! NATS JetStream for the tests (`tests/nats.rs`, `tests/two_process.rs`):
//! a `nats-server -js` of a test's own, and the check that a stream holds
//! exactly the messages the log calls for, each once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::Value;
use tally_commands::nats::{self, NatsConfig};
use tally_commands::topics;
use tally_projections::Db;

/// How long [`receive`] waits for the messages.
const DEADLINE: Duration = Duration::from_secs(60);

/// One message as a consumer of the stream receives it.
#[derive(Debug)]
pub struct Received {
    pub msg_id: String,
    pub subject: String,
    pub envelope: Value,
}

/// What the publisher must have sent for the log as it is: `Nats-Msg-Id` →
/// (subject, envelope).
pub async fn expected(db: &Db, config: &NatsConfig) -> BTreeMap<String, (String, Value)> {
    // The whole log: a single read stops at a hole not yet proven final.
    let events = crate::process::whole_log(db).await;
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
pub async fn receive(js: &jetstream::Context, config: &NatsConfig, count: usize) -> Vec<Received> {
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
pub fn assert_published(received: &[Received], expected: &BTreeMap<String, (String, Value)>) {
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

/// A `nats-server -js` of this test's own, which it can stop and restart on
/// the same port and store.
pub struct OwnNats {
    binary: PathBuf,
    port: u16,
    store: PathBuf,
    child: Option<tokio::process::Child>,
}

impl OwnNats {
    pub fn new() -> OwnNats {
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
                "a test with a NATS of its own needs the nats-server binary \
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

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) {
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
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill nats-server");
        }
    }
}

impl Default for OwnNats {
    fn default() -> Self {
        Self::new()
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
