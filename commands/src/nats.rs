//! NATS JetStream publishing of the published language (`topics.rs`).
//!
//! The publisher is a checkpointed consumer of the ordered log like a policy
//! (`publisher.nats`): for each batch it publishes every integration event to
//! JetStream and waits for the stream's acks *before* the runtime commits the
//! batch's checkpoint, so the checkpoint only moves past events NATS has
//! stored. A crash, a NATS outage or a lost ack makes the runtime retry the
//! batch from the checkpoint (with backoff, never skipping): delivery is
//! at-least-once, and every message carries `Nats-Msg-Id` =
//! `<event id>:<topic>`, stable per (event, topic), so JetStream drops a
//! re-publish within the stream's duplicate window and consumers that see
//! one after it can dedupe on the same id (the envelope's `id` is the event id).
//!
//! The subject of a message is its topic (`billing.invoices.v1.invoice-paid`),
//! behind an optional prefix. The stream (default `TALLY`) takes
//! `<prefix><domain>.>` for every domain of the topic table; it is created
//! when missing and its subjects and duplicate window are brought up to date
//! on connect, keeping whatever else an operator configured on it.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream, ErrorCode};
use async_trait::async_trait;
use sqlx::AnyConnection;
use tally_projections::runtime::{ProjectionError, Projector};
use tally_projections::StoredEvent;
use tokio::sync::Mutex;

use crate::topics;

pub const CONSUMER: &str = "publisher.nats";
pub const DEFAULT_STREAM: &str = "TALLY";
/// How long JetStream remembers a `Nats-Msg-Id`. A re-publish after a crash
/// happens when Tally is back (restart, then at most the runtime's backoff),
/// so the window has to outlast a slow restart; JetStream's own default of
/// two minutes is short for that. It costs server memory per id kept.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Connecting to NATS, and each JetStream request and ack, gives up after this.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Publishes awaiting their ack at once.
const MAX_IN_FLIGHT: usize = 256;

/// Where and how integration events are published.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// `nats://host:4222` (several comma-separated, credentials in the URL).
    pub url: String,
    /// The JetStream stream that stores the messages.
    pub stream: String,
    /// Put before every topic to make the subject, e.g. `staging.`; empty by
    /// default. Lets deployments (and tests) share one NATS.
    pub subject_prefix: String,
    /// The stream's duplicate window (capped at the stream's `max_age` when
    /// an operator set one).
    pub duplicate_window: Duration,
}

impl NatsConfig {
    /// The defaults: stream `TALLY`, subjects are the topics, ten-minute window.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: DEFAULT_STREAM.to_string(),
            subject_prefix: String::new(),
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
        }
    }

    /// The server URLs of [`Self::url`], a comma-separated list as other
    /// NATS tools take it.
    fn servers(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// The subject a topic is published on.
    pub fn subject(&self, topic: &str) -> String {
        format!("{}{topic}", self.subject_prefix)
    }

    /// The stream's subjects: `<prefix><domain>.>` for every domain (first
    /// token) of the topic table.
    pub fn stream_subjects(&self) -> Vec<String> {
        let domains: BTreeSet<&str> = topics::TOPICS
            .iter()
            .filter_map(|t| t.topic.split('.').next())
            .collect();
        domains
            .into_iter()
            .map(|d| format!("{}{d}.>", self.subject_prefix))
            .collect()
    }
}

/// The `Nats-Msg-Id` of one topic of one event: stable across re-publishes,
/// distinct for the several topics one event can publish.
pub fn message_id(event_id: &str, topic: &str) -> String {
    format!("{event_id}:{topic}")
}

/// One message to publish.
struct Outbound {
    subject: String,
    id: String,
    payload: Vec<u8>,
}

pub struct NatsPublisher {
    config: NatsConfig,
    /// The JetStream context of the current connection; dropped after a
    /// failure so that the next attempt connects and checks the stream anew.
    context: Mutex<Option<jetstream::Context>>,
}

impl NatsPublisher {
    pub fn new(config: NatsConfig) -> Self {
        Self {
            config,
            context: Mutex::new(None),
        }
    }

    fn outbound(&self, batch: &[&StoredEvent]) -> Result<Vec<Outbound>, ProjectionError> {
        let subjects = self.config.stream_subjects();
        let mut out = Vec::new();
        for event in batch {
            for integration in topics::integration_events(event) {
                let subject = self.config.subject(integration.topic);
                // A topic outside the table would find no stream: stop here
                // with a clear error rather than fail on every publish.
                if !subjects
                    .iter()
                    .any(|s| subject.starts_with(s.trim_end_matches('>')))
                {
                    return Err(ProjectionError::Effect(format!(
                        "topic {} is not in the topic table, so no stream subject covers it",
                        integration.topic
                    )));
                }
                let payload = serde_json::to_vec(&topics::envelope(event, &integration))
                    .map_err(|e| ProjectionError::decode(event, e))?;
                out.push(Outbound {
                    subject,
                    id: message_id(&event.event_id, integration.topic),
                    payload,
                });
            }
        }
        Ok(out)
    }

    /// The current context, connecting and ensuring the stream when there is none.
    async fn context(&self) -> Result<jetstream::Context, ProjectionError> {
        let mut slot = self.context.lock().await;
        if let Some(js) = slot.as_ref() {
            return Ok(js.clone());
        }
        let client = async_nats::ConnectOptions::new()
            .name("tally publisher.nats")
            .connection_timeout(TIMEOUT)
            .connect(self.config.servers())
            .await
            .map_err(|e| effect("cannot connect to NATS", e))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(TIMEOUT)
            .build(client);
        ensure_stream(&js, &self.config).await?;
        *slot = Some(js.clone());
        Ok(js)
    }

    /// Publishes every message and waits for each ack; returns how many
    /// JetStream recognised as duplicates.
    async fn publish(
        &self,
        js: &jetstream::Context,
        messages: Vec<Outbound>,
    ) -> Result<usize, ProjectionError> {
        let mut duplicates = 0;
        let mut messages = messages.into_iter().peekable();
        while messages.peek().is_some() {
            let mut acks = Vec::with_capacity(MAX_IN_FLIGHT);
            for m in messages.by_ref().take(MAX_IN_FLIGHT) {
                let publish = PublishMessage::build()
                    .payload(m.payload.into())
                    .message_id(&m.id)
                    .header("Content-Type", "application/json");
                let ack = js
                    .send_publish(m.subject, publish)
                    .await
                    .map_err(|e| effect("JetStream publish failed", e))?;
                acks.push((m.id, ack));
            }
            for (id, ack) in acks {
                let ack = ack
                    .await
                    .map_err(|e| effect(&format!("no JetStream ack for {id}"), e))?;
                if ack.duplicate {
                    duplicates += 1;
                }
            }
        }
        Ok(duplicates)
    }
}

fn effect(what: &str, e: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Effect(format!("{what}: {e}"))
}

/// Creates the stream, or adds what is missing to it (our subjects, the
/// duplicate window) and leaves the rest of its configuration alone.
async fn ensure_stream(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> Result<(), ProjectionError> {
    let subjects = config.stream_subjects();
    match js.get_stream(&config.stream).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| effect("cannot read the JetStream stream", e))?;
            let mut wanted = info.config.clone();
            for s in &subjects {
                if !wanted.subjects.contains(s) {
                    wanted.subjects.push(s.clone());
                }
            }
            wanted.duplicate_window = window(config, wanted.max_age);
            if wanted != info.config {
                js.update_stream(&wanted)
                    .await
                    .map_err(|e| effect("cannot update the JetStream stream", e))?;
                tracing::info!(stream = %config.stream, subjects = ?wanted.subjects,
                    duplicate_window_s = wanted.duplicate_window.as_secs(), "JetStream stream updated");
            }
        }
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            js.create_stream(stream::Config {
                name: config.stream.clone(),
                subjects,
                storage: stream::StorageType::File,
                duplicate_window: window(config, Duration::ZERO),
                ..Default::default()
            })
            .await
            .map_err(|e| effect("cannot create the JetStream stream", e))?;
            tracing::info!(stream = %config.stream, "JetStream stream created");
        }
        Err(e) => return Err(effect("cannot look up the JetStream stream", e)),
    }
    Ok(())
}

/// The duplicate window, within the stream's `max_age` (JetStream refuses a
/// longer one).
fn window(config: &NatsConfig, max_age: Duration) -> Duration {
    if max_age.is_zero() {
        config.duplicate_window
    } else {
        config.duplicate_window.min(max_age)
    }
}

#[async_trait]
impl Projector for NatsPublisher {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    fn rebuildable(&self) -> bool {
        false
    }

    fn handles(&self, event: &StoredEvent) -> bool {
        !topics::integration_events(event).is_empty()
    }

    async fn apply(
        &self,
        _conn: &mut AnyConnection,
        _tables: tally_projections::Tables,
        _event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        Ok(())
    }

    async fn effects(&self, batch: &[&StoredEvent]) -> Result<(), ProjectionError> {
        let messages = self.outbound(batch)?;
        if messages.is_empty() {
            return Ok(());
        }
        let count = messages.len();
        let js = self.context().await?;
        match self.publish(&js, messages).await {
            Ok(duplicates) => {
                metrics::counter!("tally_nats_published_total").increment(count as u64);
                if duplicates > 0 {
                    metrics::counter!("tally_nats_duplicates_total").increment(duplicates as u64);
                    tracing::info!(duplicates, count, "JetStream dropped re-published messages");
                }
                Ok(())
            }
            Err(e) => {
                // Reconnect (and re-check the stream) on the retry.
                *self.context.lock().await = None;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_subjects_cover_every_topic_of_the_table() {
        let config = NatsConfig {
            subject_prefix: "t1.".into(),
            ..NatsConfig::new("nats://127.0.0.1:4222")
        };
        let subjects = config.stream_subjects();
        assert!(
            subjects.contains(&"t1.billing.>".to_string()),
            "{subjects:?}"
        );
        for spec in topics::TOPICS {
            let subject = config.subject(spec.topic);
            assert!(
                subjects
                    .iter()
                    .any(|s| subject.starts_with(s.trim_end_matches('>'))),
                "{subject} is outside {subjects:?}"
            );
        }
    }

    #[test]
    fn a_url_list_names_every_server() {
        let config = NatsConfig::new("nats://a:4222, nats://b:4222,");
        assert_eq!(config.servers(), ["nats://a:4222", "nats://b:4222"]);
    }

    #[test]
    fn message_ids_are_stable_per_event_and_topic() {
        let a = message_id("evt_1", topics::SUBSCRIPTION_SUSPENDED);
        assert_eq!(a, message_id("evt_1", topics::SUBSCRIPTION_SUSPENDED));
        assert_ne!(a, message_id("evt_1", topics::QUOTA_EXCEEDED));
        assert_ne!(a, message_id("evt_2", topics::SUBSCRIPTION_SUSPENDED));
    }

    #[test]
    fn the_window_stays_within_the_streams_max_age() {
        let config = NatsConfig::new("nats://x");
        assert_eq!(window(&config, Duration::ZERO), DEFAULT_DUPLICATE_WINDOW);
        assert_eq!(
            window(&config, Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }
}
