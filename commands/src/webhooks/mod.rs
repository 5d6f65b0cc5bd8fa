//! Signed webhooks (API.md § Webhooks): the endpoints a tenant's admin
//! registers, the fan-out consumer that turns published events into
//! deliveries, and the delivery worker that posts them, signed, with retries,
//! a dead letter, and a log of every attempt.
//!
//! Guarantee 3 of the architecture, at-least-once with an idempotent key:
//! - The fan-out consumer (`webhooks.fanout`) inserts one delivery row per
//!   (event, topic, matching active endpoint) inside its checkpoint
//!   transaction, keyed by (endpoint, event id, topic) with `ON CONFLICT DO
//!   NOTHING`, so every published event has exactly one delivery per endpoint.
//! - The worker claims due rows with a lease, posts them and records the
//!   outcome. A crash or shutdown between the post and the record means the
//!   post is sent again, with the same stored body and so the same envelope
//!   `id` (the event id), which receivers deduplicate on.
//! - Deliveries of one subject to one endpoint go out in log order: a delivery
//!   waits while an earlier one of the same subject is pending or retrying. A
//!   dead letter no longer holds the queue (one bad event would otherwise
//!   block its subject forever), so a manual retry of a dead delivery may
//!   arrive after later events of its subject.
//!
//! Retry times follow the server's clock (a manual clock retries when a test
//! advances it). Leases follow the wall clock: they guard against other
//! processes, which live in real time.
//!
//! Secrets: a signing secret must be recoverable to sign, so it is derived,
//! never stored: HMAC-SHA256(server key, endpoint id and a per-endpoint salt).
//! The server key is `TALLY_SECRET_KEY`; without it a key generated once is
//! kept in the database (zero setup, but then whoever reads the database can
//! derive the secrets). Secrets and signatures are never logged.
//!
//! SSRF: a URL whose host is or resolves to a loopback, private, link-local
//! or otherwise internal address is refused at creation and again at every
//! attempt, and the HTTP client resolves names through a resolver that
//! applies the same rule (a name re-pointed after creation is caught), unless
//! `TALLY_WEBHOOK_ALLOWED_HOSTS` lists the host or a network holding the
//! address. Redirects are not followed and no proxy is used.
//!
//! Layout: `config.rs` (configuration and the SSRF guard), `signing.rs`
//! (signatures and derived secrets), `store.rs` (endpoints and deliveries
//! as the API shows them, topic patterns, the management methods),
//! `worker.rs` (claiming, posting, recording, retries, purging),
//! `fanout.rs` (the consumer); this file holds the [`Webhooks`] handle.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::{Rng, RngCore};
use reqwest::Url;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use tally_projections::db::{Db, DbError};
use tally_projections::runtime::{ProjectionError, Projector};
use tally_projections::{time, EventLog, Page, StoredEvent, Tables, MAX_PAGE_LIMIT};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::clock::Clock;
use crate::ids::{Generate, WebhookDeliveryId, WebhookEndpointId};
use crate::topics;
use tally_aggregates::inbox::{Inbox, InboxCommand, Notice};

/// The fan-out consumer's name (its checkpoint row).
pub const FANOUT_CONSUMER: &str = "webhooks.fanout";
/// The header carrying `t=<unix>,v1=<hex hmac>`.
pub const SIGNATURE_HEADER: &str = "Tally-Signature";
/// Longest accepted endpoint URL.
pub const MAX_URL_CHARS: usize = 2048;
/// Most topics (or families) one endpoint subscribes to.
pub const MAX_TOPICS: usize = 50;
/// Most endpoints a tenant may have (deleted ones do not count).
pub const MAX_ENDPOINTS_PER_TENANT: i64 = 100;
/// Longest error text kept for an attempt.
const MAX_ERROR_CHARS: usize = 300;
/// How long resolving an endpoint's host may take at creation.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often finished deliveries past their retention are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

type HmacSha256 = Hmac<Sha256>;

mod config;
mod fanout;
mod signing;
mod store;
mod worker;

pub use config::*;
use fanout::*;
pub use signing::*;
pub use store::*;
pub use worker::*;

// ---- the handle ----

/// Webhooks of one server process: endpoint management, the fan-out
/// consumer, the delivery worker. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    clock: Clock,
    config: WebhookConfig,
    keys: SigningKeys,
    client: reqwest::Client,
    /// This worker's lease owner id.
    owner: String,
    stop: watch::Sender<bool>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Webhooks {
    /// Loads the signing keys (creating the database-kept one when no key is
    /// configured) and builds the HTTP client.
    pub async fn new(
        db: Db,
        clock: Clock,
        config: WebhookConfig,
    ) -> Result<Webhooks, WebhookError> {
        let keys = SigningKeys::load(&db, config.secret_key.as_ref()).await?;
        let client = guarded_client(&config.allowed_hosts, config.timeout, "Tally-Webhooks/1")
            .map_err(|e| WebhookError::Config(format!("HTTP client: {e}")))?;
        Ok(Webhooks {
            inner: Arc::new(Inner {
                db,
                clock,
                config,
                keys,
                client,
                owner: uuid::Uuid::new_v4().to_string(),
                stop: watch::channel(false).0,
                worker: Mutex::new(None),
            }),
        })
    }

    /// Seals a secret a tenant handed over (see `crate::secrets`) under the
    /// current server key: (key id, sealed value).
    pub fn seal_secret(
        &self,
        context: &str,
        plaintext: &str,
    ) -> Result<(String, String), WebhookError> {
        let key_id = self.inner.keys.current.clone();
        let key = self
            .inner
            .keys
            .keys
            .get(&key_id)
            .ok_or_else(|| WebhookError::Config("the signing key is not loaded".into()))?;
        Ok((key_id, crate::secrets::seal(key, context, plaintext)))
    }

    /// Opens a secret [`Webhooks::seal_secret`] sealed.
    pub fn open_secret(&self, key_id: &str, context: &str, sealed: &str) -> Option<String> {
        let key = self.inner.keys.keys.get(key_id)?;
        crate::secrets::open(key, context, sealed)
    }

    /// The hosts that may be internal (`TALLY_WEBHOOK_ALLOWED_HOSTS`): the SSRF
    /// rule of every outbound call.
    pub fn allowed_hosts(&self) -> &AllowList {
        &self.inner.config.allowed_hosts
    }

    /// The fan-out consumer, for the runtime.
    pub fn fanout(&self) -> Arc<dyn Projector> {
        Arc::new(Fanout {
            webhooks: self.clone(),
        })
    }

    /// Starts the delivery worker (once).
    pub fn start_worker(&self) {
        let mut worker = self.inner.worker.lock().expect("webhook worker");
        if worker.is_none() {
            let me = self.clone();
            let stop = self.inner.stop.subscribe();
            *worker = Some(tokio::spawn(async move { me.run_worker(stop).await }));
        }
    }

    /// Stops the worker: attempts in flight are abandoned (their deliveries
    /// are sent again later, with the same event id) and its leases released.
    pub async fn stop(&self) {
        let _ = self.inner.stop.send(true);
        let handle = self.inner.worker.lock().expect("webhook worker").take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }

    // ---- endpoints ----
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2() {
        let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signature_is_the_hmac_of_timestamp_dot_body_and_verifies() {
        let body = br#"{"id":"evt_1"}"#;
        let header = signature("whsec_test", 1_767_225_600, body);
        let mut mac = HmacSha256::new_from_slice(b"whsec_test").unwrap();
        mac.update(b"1767225600.{\"id\":\"evt_1\"}");
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(header, format!("t=1767225600,v1={expected}"));
        assert_eq!(
            verify_signature("whsec_test", &header, body, 1_767_225_600 + 60, 300),
            Ok(1_767_225_600)
        );
        assert_eq!(
            verify_signature("whsec_other", &header, body, 1_767_225_600, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature("whsec_test", &header, b"{}", 1_767_225_600, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature("whsec_test", &header, body, 1_767_225_600 + 301, 300),
            Err(SignatureError::Expired)
        );
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "garbage"] {
            assert_eq!(
                verify_signature("whsec_test", bad, body, 1, 300),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        // A second v1 (another secret during a rotation) does not hurt.
        let two = format!("{header},v1=00ff");
        assert!(verify_signature("whsec_test", &two, body, 1_767_225_600, 300).is_ok());
    }

    #[test]
    fn secrets_derive_from_key_endpoint_and_salt() {
        let a = derive_secret(b"key-one", "whk_1", "salt");
        assert!(a.starts_with("whsec_") && a.len() == 6 + 64);
        assert_eq!(a, derive_secret(b"key-one", "whk_1", "salt"));
        assert_ne!(a, derive_secret(b"key-two", "whk_1", "salt"));
        assert_ne!(a, derive_secret(b"key-one", "whk_2", "salt"));
        assert_ne!(a, derive_secret(b"key-one", "whk_1", "salt2"));
        assert_eq!(
            format!("{:?}", SecretKey::new(&"k".repeat(32)).unwrap()),
            "SecretKey(<redacted>)"
        );
        assert!(SecretKey::new("short").is_err());
    }

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "127.5.5.5",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn allow_lists_take_hosts_addresses_and_networks() {
        let a = AllowList::parse(" 127.0.0.1, 10.0.0.0/8 ,Hooks.Internal,[::1],").unwrap();
        assert!(a.allows_ip("127.0.0.1".parse().unwrap()));
        assert!(!a.allows_ip("127.0.0.2".parse().unwrap()));
        assert!(a.allows_ip("10.200.3.4".parse().unwrap()));
        assert!(a.allows_ip("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!a.allows_ip("11.0.0.1".parse().unwrap()));
        assert!(a.allows_ip("::1".parse().unwrap()));
        assert!(a.allows_host("hooks.internal"));
        assert!(a.allows_host("HOOKS.internal."));
        assert!(!a.allows_host("other.internal"));
        assert_eq!(AllowList::parse("").unwrap(), AllowList::default());
        assert!(AllowList::parse("0.0.0.0/0")
            .unwrap()
            .allows_ip("192.168.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x/8", "bad host", "::1/129"] {
            assert!(AllowList::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn urls_to_internal_addresses_are_refused_unless_allowed() {
        let none = AllowList::default();
        for url in [
            "http://10.0.0.1/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://localhost/",
            // Issue 19: IPv6 spellings of internal IPv4 addresses.
            "http://[::127.0.0.1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://[::ffff:10.0.0.1]/x",
            "http://[::10.0.0.1]/x",
            "http://[64:ff9b::7f00:1]/x",
            "http://[64:ff9b::169.254.169.254]/x",
            "http://[64:ff9b:1::a00:1]/x",
            "http://[2002:7f00:1::]/x",
            "http://[2002:a9fe:a9fe::1]/x",
            "http://[::]/x",
        ] {
            assert!(
                matches!(
                    check_url(&none, url).await,
                    Err(UrlRefused::Internal { .. })
                ),
                "{url}"
            );
        }
        for url in ["ftp://example.com/", "not a url", "/relative", "http://"] {
            assert_eq!(
                check_url(&none, url).await,
                Err(UrlRefused::Invalid),
                "{url}"
            );
        }
        assert_eq!(
            check_url(&none, "http://user:pw@8.8.8.8/").await,
            Err(UrlRefused::Credentials)
        );
        assert!(check_url(&none, "https://8.8.8.8/hook").await.is_ok());
        // The same spellings of a public address are fine.
        for url in [
            "http://[::ffff:8.8.8.8]/x",
            "http://[64:ff9b::808:808]/x",
            "http://[2002:808:808::1]/x",
            "http://[2001:4860:4860::8888]/x",
        ] {
            assert!(check_url(&none, url).await.is_ok(), "{url}");
        }
        let local = AllowList::parse("127.0.0.1").unwrap();
        assert!(check_url(&local, "http://127.0.0.1:9/x").await.is_ok());
        assert!(check_url(&local, "http://10.0.0.1/").await.is_err());
        let by_name = AllowList::parse("localhost").unwrap();
        assert!(check_url(&by_name, "http://localhost:9/").await.is_ok());
    }

    #[test]
    fn topics_match_exactly_or_by_family() {
        let t = "billing.subscriptions.v1.subscription-suspended";
        assert!(topic_matches(t, t));
        assert!(topic_matches("billing.subscriptions.v1.*", t));
        assert!(topic_matches("billing.*", t));
        assert!(!topic_matches("billing.invoices.v1.*", t));
        assert!(!topic_matches("billing.subscriptions.v1.subscription", t));
        assert!(!topic_matches("billing.sub*", t));
        assert!(
            validate_topics(&[t.into(), "billing.invoices.v1.*".into(), t.into()])
                .is_ok_and(|v| v.len() == 2)
        );
        for bad in [
            vec![],
            vec!["nope.v1.thing".to_string()],
            vec!["billing.nothing.v1.*".to_string()],
            vec!["*".to_string()],
        ] {
            assert!(validate_topics(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_default_schedule_is_eight_tries_over_about_a_day() {
        let c = WebhookConfig::default();
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut at = now;
        let mut late = now;
        for attempt in 0..7 {
            let left = i64::from(c.max_attempts) - attempt;
            match next_after(&c, false, attempt, left, at, 0.0) {
                Next::Retry(t) => at = t,
                other => panic!("attempt {attempt}: {other:?}"),
            }
            match next_after(&c, false, attempt, left, late, 1.0) {
                Next::Retry(t) => late = t,
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        assert_eq!(next_after(&c, false, 7, 1, at, 0.5), Next::Dead);
        assert_eq!(next_after(&c, true, 7, 1, at, 0.5), Next::Delivered);
        let span = (at - now).num_minutes();
        assert_eq!(span, 1 + 3 + 9 + 27 + 81 + 243 + 720);
        let span_late = (late - now).num_minutes();
        assert!(
            span_late <= span * 125 / 100 + 1 && span_late > span,
            "{span_late}"
        );
        assert!((18 * 60..=24 * 60).contains(&span), "{span}");
        assert_eq!(c.retry_delay(1), Duration::from_secs(60));
        assert_eq!(c.retry_delay(30), Duration::from_secs(12 * 3600));
    }
}
