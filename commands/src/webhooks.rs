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
use crate::{ids, topics};
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

/// The server key secrets are derived from. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Vec<u8>);

impl SecretKey {
    /// At least 32 characters; use a random value (e.g. `openssl rand -hex 32`).
    pub fn new(key: &str) -> Result<SecretKey, String> {
        if key.len() < 32 {
            return Err("TALLY_SECRET_KEY must be at least 32 characters".into());
        }
        Ok(SecretKey(key.as_bytes().to_vec()))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// How webhooks are delivered. `Default` is production's; tests shorten the
/// poll and allow 127.0.0.1.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Hosts and networks that may be internal (`TALLY_WEBHOOK_ALLOWED_HOSTS`).
    pub allowed_hosts: AllowList,
    /// Attempts before a delivery goes to the dead letter (`TALLY_WEBHOOK_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// The wait after the first failed attempt; each later wait is
    /// `backoff_factor` times the one before, up to `max_retry_delay`.
    pub first_retry: Duration,
    pub backoff_factor: u32,
    pub max_retry_delay: Duration,
    /// Each wait is lengthened by a random 0 to this percent of it, so that
    /// receivers coming back up are not hit by every retry at once.
    pub jitter_percent: u32,
    /// Timeout of one attempt (connect, send and response head).
    pub timeout: Duration,
    /// An endpoint whose attempts have all failed for this long (server
    /// clock) is disabled.
    pub disable_after: Duration,
    /// How often the worker looks for due deliveries.
    pub poll_interval: Duration,
    /// Attempts in flight at once per process.
    pub max_in_flight: usize,
    /// How long a claimed delivery is reserved for its worker (wall clock);
    /// longer than `timeout`, so a slow attempt is never sent twice at once.
    pub lease: Duration,
    /// Delivered and dead deliveries older than this (server clock) are deleted.
    pub retention: Duration,
    /// The server key secrets derive from (`TALLY_SECRET_KEY`).
    pub secret_key: Option<SecretKey>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        // 8 attempts, waits of 1, 3, 9, 27, 81 and 243 minutes and 12 hours
        // (the cap), each +0–25%: the last attempt comes 18 to 23 hours after
        // the first.
        Self {
            allowed_hosts: AllowList::default(),
            max_attempts: 8,
            first_retry: Duration::from_secs(60),
            backoff_factor: 3,
            max_retry_delay: Duration::from_secs(12 * 3600),
            jitter_percent: 25,
            timeout: Duration::from_secs(10),
            disable_after: Duration::from_secs(3 * 24 * 3600),
            poll_interval: Duration::from_millis(250),
            max_in_flight: 16,
            lease: Duration::from_secs(60),
            retention: Duration::from_secs(30 * 24 * 3600),
            secret_key: None,
        }
    }
}

impl WebhookConfig {
    /// The defaults with `TALLY_WEBHOOK_ALLOWED_HOSTS`, `TALLY_WEBHOOK_MAX_ATTEMPTS`
    /// and `TALLY_SECRET_KEY` applied.
    pub fn from_env() -> Result<WebhookConfig, WebhookError> {
        let mut config = WebhookConfig::default();
        if let Ok(hosts) = std::env::var("TALLY_WEBHOOK_ALLOWED_HOSTS") {
            config.allowed_hosts = AllowList::parse(&hosts)
                .map_err(|e| WebhookError::Config(format!("TALLY_WEBHOOK_ALLOWED_HOSTS: {e}")))?;
        }
        if let Ok(n) = std::env::var("TALLY_WEBHOOK_MAX_ATTEMPTS") {
            config.max_attempts = n
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=20).contains(n))
                .ok_or_else(|| {
                    WebhookError::Config("TALLY_WEBHOOK_MAX_ATTEMPTS must be 1 to 20".into())
                })?;
        }
        if let Ok(key) = std::env::var("TALLY_SECRET_KEY") {
            config.secret_key = Some(SecretKey::new(&key).map_err(WebhookError::Config)?);
        }
        Ok(config)
    }

    /// The wait after the `failed`-th failed attempt (1-based), before jitter.
    pub fn retry_delay(&self, failed: u32) -> Duration {
        let factor = u128::from(self.backoff_factor.max(1));
        let mut ms = self.first_retry.as_millis();
        let cap = self.max_retry_delay.as_millis();
        for _ in 1..failed {
            ms = ms.saturating_mul(factor);
            if ms >= cap {
                break;
            }
        }
        Duration::from_millis(ms.min(cap) as u64)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("webhook configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for WebhookError {
    fn from(e: sqlx::Error) -> Self {
        WebhookError::Db(DbError::Sqlx(e))
    }
}

// ---- SSRF: which addresses an endpoint may have ----

/// Hosts and networks exempt from the internal-address rule: host names
/// (matched as written in the URL) and IP addresses or CIDR networks
/// (matched against the addresses a host resolves to).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    hosts: Vec<String>,
    nets: Vec<(IpAddr, u8)>,
}

impl AllowList {
    /// Comma-separated host names, IP addresses and CIDRs
    /// (`127.0.0.1,10.0.0.0/8,hooks.internal`).
    pub fn parse(s: &str) -> Result<AllowList, String> {
        let mut out = AllowList::default();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Some((addr, len)) = entry.split_once('/') {
                let ip: IpAddr = addr
                    .trim_matches(['[', ']'])
                    .parse()
                    .map_err(|_| format!("`{entry}` is not an IP network"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let len: u8 = len
                    .parse()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| format!("`{entry}` has a bad prefix length"))?;
                out.nets.push((ip, len));
            } else if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
                out.nets.push((ip, if ip.is_ipv4() { 32 } else { 128 }));
            } else if entry.len() <= 253
                && entry
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
            {
                out.hosts
                    .push(entry.trim_end_matches('.').to_ascii_lowercase());
            } else {
                return Err(format!("`{entry}` is not a host name, address or network"));
            }
        }
        Ok(out)
    }

    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.nets
            .iter()
            .any(|(net, len)| in_net(ip, *net, *len) || in_net(canonical(ip), *net, *len))
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// An IPv4 address written as IPv6 is judged as the IPv4 address it
/// reaches: mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d` (deprecated, but
/// still routed by some stacks), NAT64 `64:ff9b::a.b.c.d` (and the
/// local-use `64:ff9b:1::/48`), and 6to4 `2002:AABB:CCDD::/48`.
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(a) = ip else {
        return ip;
    };
    if let Some(v4) = a.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = a.segments();
    let v4 = |hi: u16, lo: u16| IpAddr::V4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    match s {
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => ip,
        [0, 0, 0, 0, 0, 0, hi, lo] => v4(hi, lo),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] | [0x64, 0xff9b, 1, _, _, _, hi, lo] => v4(hi, lo),
        [0x2002, hi, lo, ..] => v4(hi, lo),
        _ => ip,
    }
}

/// Whether an address is one a webhook must not reach: loopback, private,
/// link-local, unspecified, carrier-grade NAT, multicast, broadcast or reserved.
pub fn is_internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240
        }
        IpAddr::V6(a) => {
            let s0 = a.segments()[0];
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s0 & 0xfe00) == 0xfc00
                || (s0 & 0xffc0) == 0xfe80
                || (s0 & 0xffc0) == 0xfec0
        }
    }
}

/// Why a URL is refused (the message is the 422's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("must be an absolute http or https URL of at most {MAX_URL_CHARS} characters")]
    Invalid,
    #[error("must not carry a user name or password")]
    Credentials,
    #[error("the host {0} does not resolve")]
    Unresolved(String),
    #[error(
        "{host} is or resolves to {ip}, a loopback, private or link-local address \
         (refused unless TALLY_WEBHOOK_ALLOWED_HOSTS allows it)"
    )]
    Internal { host: String, ip: IpAddr },
}

fn check_ip(allowed: &AllowList, host: &str, ip: IpAddr) -> Result<(), UrlRefused> {
    if is_internal(ip) && !allowed.allows_ip(ip) {
        return Err(UrlRefused::Internal {
            host: host.to_string(),
            ip,
        });
    }
    Ok(())
}

/// Resolves `host` and checks every address it has (one internal address is
/// enough to refuse: the client could connect to any of them).
async fn resolve_checked(allowed: &AllowList, host: &str) -> Result<Vec<SocketAddr>, UrlRefused> {
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, 0))).await {
            Ok(Ok(addrs)) => addrs.collect(),
            _ => Vec::new(),
        };
    if addrs.is_empty() {
        return Err(UrlRefused::Unresolved(host.to_string()));
    }
    if !allowed.allows_host(host) {
        for a in &addrs {
            check_ip(allowed, host, a.ip())?;
        }
    }
    Ok(addrs)
}

/// Parses an endpoint URL and checks where it leads (resolving its host).
pub async fn check_url(allowed: &AllowList, raw: &str) -> Result<Url, UrlRefused> {
    if raw.len() > MAX_URL_CHARS {
        return Err(UrlRefused::Invalid);
    }
    let url = Url::parse(raw).map_err(|_| UrlRefused::Invalid)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlRefused::Invalid);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefused::Credentials);
    }
    let host = url.host_str().ok_or(UrlRefused::Invalid)?.to_string();
    // The URL parser normalizes every IPv4 spelling (`2130706433`, `0x7f.1`)
    // to dotted decimal, and IPv6 hosts come bracketed.
    match host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) => check_ip(allowed, &host, ip)?,
        Err(_) if allowed.allows_host(&host) => {}
        Err(_) => {
            resolve_checked(allowed, &host).await?;
        }
    }
    Ok(url)
}

/// An HTTP client for outbound calls to addresses a tenant chose (webhook
/// endpoints, a payment provider's API): no redirects, no proxy, and a
/// resolver that applies the SSRF rule again at connect time.
pub fn guarded_client(
    allowed: &AllowList,
    timeout: Duration,
    user_agent: &str,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(user_agent)
        .dns_resolver(Arc::new(GuardedResolver {
            allowed: allowed.clone(),
        }))
        .build()
}

/// The HTTP client's resolver: the same rule at connect time.
struct GuardedResolver {
    allowed: AllowList,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.allowed.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = resolve_checked(&allowed, &host)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

// ---- signatures ----

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Tally-Signature` value: `t=<unix>,v1=<hex hmac_sha256(secret, "<t>.<body>")>`.
/// The key is the secret exactly as shown at creation (`whsec_…`).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Tally-Signature header is not t=<unix>,v1=<hex>")]
    Malformed,
    #[error("no v1 signature matches the body")]
    Mismatch,
    #[error("the signature's timestamp is outside the tolerance")]
    Expired,
}

/// Verifies a `Tally-Signature` header as a receiver should: the HMAC of
/// `"<t>.<body>"` (the raw body bytes, before any JSON parsing) under the
/// endpoint's secret matches one `v1` (compared in constant time), and `t`
/// is within `tolerance_secs` of `now_unix` (replay protection). Returns `t`.
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<i64, SignatureError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => {
                timestamp = Some(t.parse::<i64>().map_err(|_| SignatureError::Malformed)?)
            }
            Some(("v1", v)) => {
                candidates.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?)
            }
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let t = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if !candidates
        .iter()
        .any(|c| mac(secret, t, body).verify_slice(c).is_ok())
    {
        return Err(SignatureError::Mismatch);
    }
    if now_unix.abs_diff(t) > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::Expired);
    }
    Ok(t)
}

/// An endpoint's secret: derived from the server key, the endpoint id and
/// its salt, so that none is stored.
fn derive_secret(key: &[u8], endpoint_id: &str, salt: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(b"tally.webhook.secret.v1\0");
    mac.update(endpoint_id.as_bytes());
    mac.update(b"\0");
    mac.update(salt.as_bytes());
    format!("whsec_{}", hex::encode(mac.finalize().into_bytes()))
}

/// The server keys secrets derive from: the configured one, and the
/// database-kept one (used when none is configured, and still needed by
/// endpoints created before one was).
struct SigningKeys {
    current: String,
    keys: HashMap<String, Vec<u8>>,
}

const DB_KEY_ID: &str = "db";

impl SigningKeys {
    async fn load(db: &Db, configured: Option<&SecretKey>) -> Result<SigningKeys, DbError> {
        let mut keys = HashMap::new();
        let current = match configured {
            Some(k) => {
                let id = format!("env:{}", &hex::encode(Sha256::digest(&k.0))[..16]);
                keys.insert(id.clone(), k.0.clone());
                id
            }
            None => {
                let mut bytes = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut bytes);
                let inserted = sqlx::query(
                    "INSERT INTO webhook_signing_keys (id, secret, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(DB_KEY_ID)
                .bind(hex::encode(bytes))
                .bind(time::to_text(Utc::now()))
                .execute(&db.any)
                .await?;
                if inserted.rows_affected() == 1 {
                    tracing::warn!(
                        "TALLY_SECRET_KEY is not set: webhook secrets derive from a key kept in the database"
                    );
                }
                DB_KEY_ID.to_string()
            }
        };
        let stored: Option<String> =
            sqlx::query_scalar("SELECT secret FROM webhook_signing_keys WHERE id = $1")
                .bind(DB_KEY_ID)
                .fetch_optional(&db.any)
                .await?;
        if let Some(k) = stored.and_then(|s| hex::decode(s).ok()) {
            keys.insert(DB_KEY_ID.to_string(), k);
        }
        Ok(SigningKeys { current, keys })
    }

    fn secret(&self, key_id: &str, endpoint_id: &str, salt: &str) -> Option<String> {
        self.keys
            .get(key_id)
            .map(|k| derive_secret(k, endpoint_id, salt))
    }
}

// ---- topics ----

/// Whether a subscription pattern (a topic, or a family `prefix.*`) covers `topic`.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix(".*") {
        Some(family) => {
            topic.len() > family.len() + 1
                && topic.starts_with(family)
                && topic.as_bytes()[family.len()] == b'.'
        }
        None => pattern == topic,
    }
}

/// Checks an endpoint's topics: 1 to [`MAX_TOPICS`], each a published topic
/// or a family (`billing.subscriptions.v1.*`) holding at least one.
pub fn validate_topics(topics: &[String]) -> Result<Vec<String>, String> {
    if topics.is_empty() {
        return Err("give at least one topic".into());
    }
    if topics.len() > MAX_TOPICS {
        return Err(format!("at most {MAX_TOPICS} topics"));
    }
    let mut out: Vec<String> = Vec::new();
    for t in topics {
        let known = if t.ends_with(".*") {
            topics::TOPICS.iter().any(|s| topic_matches(t, s.topic))
        } else {
            topics::spec(t).is_some()
        };
        if !known {
            return Err(format!(
                "`{}` is not a published topic or a family (`….*`) of one",
                t.chars().take(120).collect::<String>()
            ));
        }
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

// ---- retries ----

/// What an attempt leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Delivered,
    Retry(DateTime<Utc>),
    Dead,
}

/// Decides after an attempt: delivered on success; else another try after
/// the backoff (lengthened by `jitter`, 0 to 1, of `jitter_percent`) while
/// tries are left, else the dead letter. `attempts_before` counts earlier
/// attempts of this delivery; `attempts_left` includes this one.
pub fn next_after(
    config: &WebhookConfig,
    success: bool,
    attempts_before: i64,
    attempts_left: i64,
    now: DateTime<Utc>,
    jitter: f64,
) -> Next {
    if success {
        return Next::Delivered;
    }
    if attempts_left <= 1 {
        return Next::Dead;
    }
    let failed = u32::try_from(attempts_before + 1).unwrap_or(u32::MAX);
    let base = config.retry_delay(failed);
    let extra = base.mul_f64(jitter.clamp(0.0, 1.0) * f64::from(config.jitter_percent) / 100.0);
    let wait = chrono::Duration::from_std(base + extra).unwrap_or(chrono::Duration::days(1));
    Next::Retry(now + wait)
}

// ---- what the API shows ----

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub topics: Vec<String>,
    /// active | disabled
    pub status: String,
    pub created_at: String,
    /// Since when every attempt has failed (none succeeded in between).
    pub failing_since: Option<String>,
    pub disabled_at: Option<String>,
}

/// A new endpoint and its secret, which is shown this once.
#[derive(Debug, Clone)]
pub struct CreatedEndpoint {
    pub endpoint: Endpoint,
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub topic: String,
    /// pending | delivered | retrying | paused | dead. `paused` is not
    /// stored: it is how a pending or retrying delivery of a disabled
    /// endpoint reads (no attempt is due until the endpoint is enabled).
    pub status: String,
    pub attempts: i64,
    pub last_status_code: Option<i64>,
    pub last_latency_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<String>,
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
    pub created_at: String,
}

/// One line of the delivery log.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub attempt: i64,
    pub attempted_at: String,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    /// delivered | failed
    pub outcome: String,
    pub error: Option<String>,
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

const ENDPOINT_COLUMNS: &str = "id, url, topics, status, created_at, failing_since, disabled_at";

fn endpoint_row(r: &AnyRow) -> Result<Endpoint, DbError> {
    let topics: String = r.try_get("topics")?;
    Ok(Endpoint {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        topics: serde_json::from_str(&topics).unwrap_or_default(),
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
        failing_since: non_empty(r.try_get("failing_since")?),
        disabled_at: non_empty(r.try_get("disabled_at")?),
    })
}

const DELIVERY_COLUMNS: &str = "id, endpoint_id, event_id, topic, status, attempts, \
    last_status_code, last_latency_ms, last_error, last_attempt_at, next_attempt_at, \
    delivered_at, created_at";

fn delivery_row(r: &AnyRow) -> Result<Delivery, DbError> {
    let status: String = r.try_get("status")?;
    let next: String = r.try_get("next_attempt_at")?;
    Ok(Delivery {
        id: r.try_get("id")?,
        endpoint_id: r.try_get("endpoint_id")?,
        event_id: r.try_get("event_id")?,
        topic: r.try_get("topic")?,
        // Only a delivery that will be tried has a next attempt.
        next_attempt_at: if status == "pending" || status == "retrying" {
            non_empty(next)
        } else {
            None
        },
        status,
        attempts: r.try_get("attempts")?,
        last_status_code: r.try_get("last_status_code")?,
        last_latency_ms: r.try_get("last_latency_ms")?,
        last_error: r.try_get("last_error")?,
        last_attempt_at: non_empty(r.try_get("last_attempt_at")?),
        delivered_at: non_empty(r.try_get("delivered_at")?),
        created_at: r.try_get("created_at")?,
    })
}

/// A delivery as its endpoint's state shows it (API.md § Webhooks): while the
/// endpoint is disabled the worker claims none of its deliveries, so one
/// that would be pending or retrying is `paused`, with no next attempt,
/// rather than showing a due time that will not come.
fn as_seen(endpoint: &Endpoint, mut d: Delivery) -> Delivery {
    if endpoint.status == "disabled" && (d.status == "pending" || d.status == "retrying") {
        d.status = "paused".into();
        d.next_attempt_at = None;
    }
    d
}

/// A delivery claimed by this worker, with what sending it needs.
#[derive(Debug, Clone)]
struct Claimed {
    id: String,
    tenant: String,
    endpoint_id: String,
    event_id: String,
    topic: String,
    body: String,
    attempts: i64,
    attempts_left: i64,
    delivered_at: String,
    url: String,
    salt: String,
    key_id: String,
}

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

    /// Registers an endpoint; its secret is in the answer and nowhere else.
    pub async fn create_endpoint(
        &self,
        tenant: &str,
        created_by: &str,
        url: &str,
        topics: &[String],
    ) -> Result<CreatedEndpoint, WebhookError> {
        let topics = validate_topics(topics).map_err(|message| WebhookError::Invalid {
            field: "topics",
            message,
        })?;
        let url = check_url(&self.inner.config.allowed_hosts, url)
            .await
            .map_err(|e| WebhookError::Invalid {
                field: "url",
                message: e.to_string(),
            })?;
        let db = &self.inner.db;
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_endpoints WHERE tenant = $1 AND status <> 'deleted'",
        )
        .bind(tenant)
        .fetch_one(&db.any)
        .await?;
        if count >= MAX_ENDPOINTS_PER_TENANT {
            return Err(WebhookError::Invalid {
                field: "url",
                message: format!("a tenant has at most {MAX_ENDPOINTS_PER_TENANT} endpoints"),
            });
        }
        let id = ids::new_id("whk");
        let mut salt = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt);
        let salt = hex::encode(salt);
        let key_id = self.inner.keys.current.clone();
        let secret = self
            .inner
            .keys
            .secret(&key_id, &id, &salt)
            .ok_or_else(|| WebhookError::Config("the signing key is not loaded".into()))?;
        // Events recorded from now on are delivered to it, earlier ones not.
        let created_position = EventLog::new(db.clone()).head().await?;
        let now = time::to_text(self.inner.clock.now());
        sqlx::query(
            "INSERT INTO webhook_endpoints (tenant, id, url, topics, status, secret_salt, secret_key_id, \
             created_by, created_at, created_position) VALUES ($1, $2, $3, $4, 'active', $5, $6, $7, $8, $9)",
        )
        .bind(tenant)
        .bind(&id)
        .bind(url.as_str())
        .bind(serde_json::to_string(&topics).unwrap_or_else(|_| "[]".into()))
        .bind(&salt)
        .bind(&key_id)
        .bind(created_by)
        .bind(&now)
        .bind(created_position)
        .execute(&db.any)
        .await?;
        Ok(CreatedEndpoint {
            endpoint: Endpoint {
                id,
                url: url.to_string(),
                topics,
                status: "active".into(),
                created_at: now,
                failing_since: None,
                disabled_at: None,
            },
            secret,
        })
    }

    /// A tenant's endpoint (not deleted).
    pub async fn endpoint(&self, tenant: &str, id: &str) -> Result<Endpoint, WebhookError> {
        let row = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant = $1 AND id = $2 AND status <> 'deleted'"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.inner.db.any)
        .await?;
        match row {
            Some(r) => Ok(endpoint_row(&r)?),
            None => Err(WebhookError::NotFound),
        }
    }

    /// A tenant's endpoints in id (creation) order, one page after `cursor`.
    pub async fn list_endpoints(
        &self,
        tenant: &str,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Page<Endpoint>, WebhookError> {
        let limit = limit.clamp(1, MAX_PAGE_LIMIT);
        let rows = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant = $1 AND status <> 'deleted' \
             AND id > $2 ORDER BY id LIMIT {}",
            limit + 1
        ))
        .bind(tenant)
        .bind(cursor.unwrap_or(""))
        .fetch_all(&self.inner.db.any)
        .await?;
        let data = rows
            .iter()
            .map(endpoint_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page(data, limit, |e| e.id.clone()))
    }

    /// Deletes an endpoint: nothing more is delivered to it, and its
    /// unfinished deliveries end in the dead letter.
    pub async fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<(), WebhookError> {
        let mut tx = self.inner.db.any.begin().await?;
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET status = 'deleted' WHERE tenant = $1 AND id = $2 AND status <> 'deleted'",
        )
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(WebhookError::NotFound);
        }
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'dead', last_error = 'endpoint deleted' \
             WHERE tenant = $1 AND endpoint_id = $2 AND status IN ('pending', 'retrying')",
        )
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The signing secret of an endpoint, derived again (it is never stored):
    /// for replaying the creation answer of an idempotent request.
    pub async fn endpoint_secret(
        &self,
        tenant: &str,
        endpoint_id: &str,
    ) -> Result<Option<String>, DbError> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT secret_salt, secret_key_id FROM webhook_endpoints WHERE tenant = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(endpoint_id)
        .fetch_optional(&self.inner.db.any)
        .await?;
        Ok(row.and_then(|(salt, key_id)| self.inner.keys.secret(&key_id, endpoint_id, &salt)))
    }

    /// Enables a disabled endpoint again; its paused deliveries resume, due
    /// now (their next attempt times passed while the endpoint was disabled).
    pub async fn enable_endpoint(&self, tenant: &str, id: &str) -> Result<Endpoint, WebhookError> {
        let now = time::to_text(self.inner.clock.now());
        let mut tx = self.inner.db.any.begin().await?;
        let enabled = sqlx::query(
            "UPDATE webhook_endpoints SET status = 'active', failing_since = '', disabled_at = '' \
             WHERE tenant = $1 AND id = $2 AND status = 'disabled'",
        )
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if enabled {
            sqlx::query(
                "UPDATE webhook_deliveries SET next_attempt_at = $1 \
                 WHERE tenant = $2 AND endpoint_id = $3 AND status IN ('pending', 'retrying') \
                   AND next_attempt_at < $1",
            )
            .bind(&now)
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.endpoint(tenant, id).await
    }

    // ---- deliveries ----

    /// An endpoint's deliveries in creation order (optionally of one status),
    /// one page after `cursor`.
    pub async fn list_deliveries(
        &self,
        tenant: &str,
        endpoint_id: &str,
        status: Option<&str>,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Page<Delivery>, WebhookError> {
        let endpoint = self.endpoint(tenant, endpoint_id).await?;
        let limit = limit.clamp(1, MAX_PAGE_LIMIT);
        // `paused` is how pending and retrying read while the endpoint is
        // disabled (see `as_seen`), so the filter follows the endpoint.
        let disabled = endpoint.status == "disabled";
        let (status_filter, status) = match status {
            None => ("", None),
            Some("paused") if disabled => (" AND status IN ('pending', 'retrying')", None),
            Some("paused") => return Ok(page(Vec::new(), limit, |d: &Delivery| d.id.clone())),
            Some("pending" | "retrying") if disabled => {
                return Ok(page(Vec::new(), limit, |d: &Delivery| d.id.clone()))
            }
            Some(s) => (" AND status = $4", Some(s)),
        };
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE tenant = $1 AND endpoint_id = $2 \
             AND id > $3{status_filter} ORDER BY id LIMIT {}",
            limit + 1
        );
        let mut q = sqlx::query(&sql)
            .bind(tenant)
            .bind(endpoint_id)
            .bind(cursor.unwrap_or(""));
        if let Some(s) = status {
            q = q.bind(s);
        }
        let rows = q.fetch_all(&self.inner.db.any).await?;
        let data = rows
            .iter()
            .map(|r| delivery_row(r).map(|d| as_seen(&endpoint, d)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page(data, limit, |d| d.id.clone()))
    }

    /// One delivery with its attempts, oldest first.
    pub async fn delivery(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<(Delivery, Vec<Attempt>), WebhookError> {
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE tenant = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.inner.db.any)
        .await?
        .ok_or(WebhookError::NotFound)?;
        let delivery = delivery_row(&row)?;
        // A deleted endpoint's deliveries are gone with it.
        let endpoint = self.endpoint(tenant, &delivery.endpoint_id).await?;
        let delivery = as_seen(&endpoint, delivery);
        let rows = sqlx::query(
            "SELECT attempt, attempted_at, status_code, latency_ms, outcome, error FROM webhook_attempts \
             WHERE tenant = $1 AND delivery_id = $2 ORDER BY attempt",
        )
        .bind(tenant)
        .bind(id)
        .fetch_all(&self.inner.db.any)
        .await?;
        let attempts = rows
            .iter()
            .map(|r| {
                Ok(Attempt {
                    attempt: r.try_get("attempt")?,
                    attempted_at: r.try_get("attempted_at")?,
                    status_code: r.try_get("status_code")?,
                    latency_ms: r.try_get("latency_ms")?,
                    outcome: r.try_get("outcome")?,
                    error: r.try_get("error")?,
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        Ok((delivery, attempts))
    }

    /// Manual retry: the delivery is due now, with one more try when it had
    /// none left (a dead letter, or a delivery to send again).
    pub async fn retry(&self, tenant: &str, id: &str) -> Result<Delivery, WebhookError> {
        let (delivery, _) = self.delivery(tenant, id).await?;
        let endpoint = self.endpoint(tenant, &delivery.endpoint_id).await?;
        if endpoint.status != "active" {
            return Err(WebhookError::Conflict(format!(
                "the endpoint {} is {}; enable it first",
                endpoint.id, endpoint.status
            )));
        }
        let due = time::to_text(self.inner.clock.now());
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $1, \
             attempts_left = CASE WHEN attempts_left < 1 THEN 1 ELSE attempts_left END \
             WHERE tenant = $2 AND id = $3",
        )
        .bind(&due)
        .bind(tenant)
        .bind(id)
        .execute(&self.inner.db.any)
        .await?;
        // The delivery as this retry left it: reading it again raced the
        // worker, which may already have sent it (a flaky "delivered").
        Ok(Delivery {
            status: "pending".into(),
            next_attempt_at: Some(due),
            ..delivery
        })
    }

    // ---- the worker ----

    async fn run_worker(self, mut stop: watch::Receiver<bool>) {
        let mut in_flight: JoinSet<()> = JoinSet::new();
        let mut last_purge: Option<Instant> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            let free = self
                .inner
                .config
                .max_in_flight
                .saturating_sub(in_flight.len());
            if free > 0 {
                match self.claim_due(free).await {
                    Ok(claimed) => {
                        for d in claimed {
                            let me = self.clone();
                            in_flight.spawn(async move { me.attempt(d).await });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "webhook claim failed"),
                }
            }
            if last_purge.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
                last_purge = Some(Instant::now());
                if let Err(e) = self.purge().await {
                    tracing::warn!(error = %e, "webhook delivery purge failed");
                }
            }
            tokio::select! {
                _ = stop.changed() => break,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = tokio::time::sleep(self.inner.config.poll_interval) => {}
            }
        }
        in_flight.abort_all();
        while in_flight.join_next().await.is_some() {}
        if let Err(e) = sqlx::query(
            "UPDATE webhook_deliveries SET lease_owner = '', leased_until = '' WHERE lease_owner = $1",
        )
        .bind(&self.inner.owner)
        .execute(&self.inner.db.any)
        .await
        {
            tracing::warn!(error = %e, "could not release webhook leases (they expire)");
        }
    }

    /// Claims up to `limit` due deliveries whose subject has nothing earlier
    /// waiting, for this worker (a lease on the wall clock).
    async fn claim_due(&self, limit: usize) -> Result<Vec<Claimed>, DbError> {
        let db = &self.inner.db;
        let now = time::to_text(self.inner.clock.now());
        // Leases are about processes, which run in real time, not the server clock.
        let wall = Utc::now();
        let ids: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT d.id FROM webhook_deliveries d \
             JOIN webhook_endpoints w ON w.tenant = d.tenant AND w.id = d.endpoint_id \
             WHERE d.status IN ('pending', 'retrying') AND d.next_attempt_at <= $1 \
               AND d.leased_until < $2 AND w.status = 'active' \
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e \
                 WHERE e.endpoint_id = d.endpoint_id AND e.subject = d.subject \
                   AND e.status IN ('pending', 'retrying') \
                   AND (e.position < d.position OR (e.position = d.position AND e.ordinal < d.ordinal))) \
             ORDER BY d.next_attempt_at, d.position, d.ordinal LIMIT {limit}"
        ))
        .bind(&now)
        .bind(time::to_text(wall))
        .fetch_all(&db.any)
        .await?;
        // Never shorter than two timeouts: an attempt still running must
        // not be claimed and sent by another worker at the same time.
        let lease = self.inner.config.lease.max(self.inner.config.timeout * 2);
        let lease_until =
            wall + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
        let mut claimed = Vec::new();
        for id in ids {
            let got = sqlx::query(
                "UPDATE webhook_deliveries SET lease_owner = $1, leased_until = $2 \
                 WHERE id = $3 AND status IN ('pending', 'retrying') AND leased_until < $4",
            )
            .bind(&self.inner.owner)
            .bind(time::to_text(lease_until))
            .bind(&id)
            .bind(time::to_text(wall))
            .execute(&db.any)
            .await?;
            if got.rows_affected() != 1 {
                continue;
            }
            let r = sqlx::query(
                "SELECT d.id, d.tenant, d.endpoint_id, d.event_id, d.topic, d.body, d.attempts, \
                 d.attempts_left, d.delivered_at, w.url, w.secret_salt, w.secret_key_id \
                 FROM webhook_deliveries d JOIN webhook_endpoints w ON w.tenant = d.tenant AND w.id = d.endpoint_id \
                 WHERE d.id = $1",
            )
            .bind(&id)
            .fetch_one(&db.any)
            .await?;
            claimed.push(Claimed {
                id: r.try_get("id")?,
                tenant: r.try_get("tenant")?,
                endpoint_id: r.try_get("endpoint_id")?,
                event_id: r.try_get("event_id")?,
                topic: r.try_get("topic")?,
                body: r.try_get("body")?,
                attempts: r.try_get("attempts")?,
                attempts_left: r.try_get("attempts_left")?,
                delivered_at: r.try_get("delivered_at")?,
                url: r.try_get("url")?,
                salt: r.try_get("secret_salt")?,
                key_id: r.try_get("secret_key_id")?,
            });
        }
        Ok(claimed)
    }

    /// One attempt: send, then record the outcome.
    async fn attempt(&self, d: Claimed) {
        let at = self.inner.clock.now();
        let started = Instant::now();
        let result = self.send(&d, at).await;
        let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        if let Err(e) = self.record(&d, at, result, latency_ms).await {
            // The lease runs out and the delivery is tried again.
            tracing::warn!(delivery_id = %d.id, error = %e, "could not record a webhook attempt");
        }
    }

    /// Posts the delivery's body, signed; the receiver's status code, or why
    /// there is none.
    async fn send(&self, d: &Claimed, at: DateTime<Utc>) -> Result<u16, String> {
        let url = check_url(&self.inner.config.allowed_hosts, &d.url)
            .await
            .map_err(|e| format!("refused: {e}"))?;
        let secret = self
            .inner
            .keys
            .secret(&d.key_id, &d.endpoint_id, &d.salt)
            .ok_or_else(|| format!("the signing key {} is not configured", d.key_id))?;
        let signature = signature(&secret, at.timestamp(), d.body.as_bytes());
        let response = self
            .inner
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header("Tally-Event-Id", &d.event_id)
            .header("Tally-Delivery-Id", &d.id)
            .header("Tally-Topic", &d.topic)
            .body(d.body.clone())
            .send()
            .await
            .map_err(describe)?;
        Ok(response.status().as_u16())
    }

    /// Records an attempt and what follows from it, in one transaction,
    /// guarded by this worker's lease.
    async fn record(
        &self,
        d: &Claimed,
        at: DateTime<Utc>,
        result: Result<u16, String>,
        latency_ms: i64,
    ) -> Result<(), DbError> {
        let config = &self.inner.config;
        let code = result.as_ref().ok().copied();
        let success = code.is_some_and(|c| (200..300).contains(&c));
        let error = match &result {
            Ok(_) => None,
            Err(e) => Some(e.chars().take(MAX_ERROR_CHARS).collect::<String>()),
        };
        let jitter: f64 = rand::thread_rng().gen();
        let next = next_after(config, success, d.attempts, d.attempts_left, at, jitter);
        let (status, next_at, delivered_at) = match &next {
            Next::Delivered => ("delivered", String::new(), time::to_text(at)),
            Next::Retry(t) => ("retrying", time::to_text(*t), d.delivered_at.clone()),
            Next::Dead => ("dead", String::new(), d.delivered_at.clone()),
        };
        let at_text = time::to_text(at);
        let mut tx = self.inner.db.any.begin().await?;
        let updated = sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, attempts = attempts + 1, attempts_left = $2, \
             last_status_code = $3, last_latency_ms = $4, last_error = $5, last_attempt_at = $6, \
             next_attempt_at = $7, delivered_at = $8, lease_owner = '', leased_until = '' \
             WHERE id = $9 AND lease_owner = $10",
        )
        .bind(status)
        .bind((d.attempts_left - 1).max(0))
        .bind(code.map(i64::from))
        .bind(latency_ms)
        .bind(error.clone())
        .bind(&at_text)
        .bind(&next_at)
        .bind(&delivered_at)
        .bind(&d.id)
        .bind(&self.inner.owner)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            // Our lease ran out and another worker has it now: its record counts.
            tx.rollback().await?;
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, tenant, attempted_at, status_code, \
             latency_ms, outcome, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (delivery_id, attempt) DO NOTHING",
        )
        .bind(&d.id)
        .bind(d.attempts + 1)
        .bind(&d.tenant)
        .bind(&at_text)
        .bind(code.map(i64::from))
        .bind(latency_ms)
        .bind(if success { "delivered" } else { "failed" })
        .bind(error)
        .execute(&mut *tx)
        .await?;
        let mut disabled = false;
        if success {
            sqlx::query(
                "UPDATE webhook_endpoints SET failing_since = '' WHERE tenant = $1 AND id = $2 AND failing_since <> ''",
            )
            .bind(&d.tenant)
            .bind(&d.endpoint_id)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "UPDATE webhook_endpoints SET failing_since = $1 WHERE tenant = $2 AND id = $3 AND failing_since = ''",
            )
            .bind(&at_text)
            .bind(&d.tenant)
            .bind(&d.endpoint_id)
            .execute(&mut *tx)
            .await?;
            let since: Option<String> = sqlx::query_scalar(
                "SELECT failing_since FROM webhook_endpoints WHERE tenant = $1 AND id = $2 AND status = 'active'",
            )
            .bind(&d.tenant)
            .bind(&d.endpoint_id)
            .fetch_optional(&mut *tx)
            .await?;
            let limit = chrono::Duration::from_std(config.disable_after)
                .unwrap_or(chrono::Duration::days(3));
            if since
                .as_deref()
                .and_then(time::from_text)
                .is_some_and(|since| at - since >= limit)
            {
                disabled = sqlx::query(
                    "UPDATE webhook_endpoints SET status = 'disabled', disabled_at = $1 \
                     WHERE tenant = $2 AND id = $3 AND status = 'active'",
                )
                .bind(&at_text)
                .bind(&d.tenant)
                .bind(&d.endpoint_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
            }
        }
        tx.commit().await?;
        let outcome = match next {
            Next::Delivered => "delivered",
            Next::Retry(_) => "retrying",
            Next::Dead => "dead",
        };
        metrics::counter!("tally_webhook_attempts_total", "outcome" => outcome).increment(1);
        match next {
            Next::Delivered => {}
            Next::Retry(_) => tracing::info!(tenant = %d.tenant, endpoint_id = %d.endpoint_id,
                delivery_id = %d.id, status_code = ?code, attempt = d.attempts + 1, "webhook attempt failed"),
            Next::Dead => tracing::warn!(tenant = %d.tenant, endpoint_id = %d.endpoint_id,
                delivery_id = %d.id, status_code = ?code, attempt = d.attempts + 1, "webhook delivery dead-lettered"),
        }
        if disabled {
            tracing::warn!(tenant = %d.tenant, endpoint_id = %d.endpoint_id,
                "webhook endpoint disabled: every attempt failed for the disable period");
            self.notify_disabled(&d.tenant, &d.endpoint_id, at).await;
        }
        Ok(())
    }

    /// Tells the admin who registered a disabled endpoint, in their inbox
    /// (`user:<key id>`), through the `Inbox` aggregate's `Notify` so that a
    /// rebuild keeps the item. Best effort after the disable committed: a
    /// crash in between loses the notice, not the disable (logged above).
    async fn notify_disabled(&self, tenant: &str, endpoint_id: &str, at: DateTime<Utc>) {
        let row: Result<Option<(String, String)>, sqlx::Error> = sqlx::query_as(
            "SELECT created_by, url FROM webhook_endpoints WHERE tenant = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(endpoint_id)
        .fetch_optional(&self.inner.db.any)
        .await;
        let Ok(Some((created_by, url))) = row else {
            tracing::warn!(
                tenant,
                endpoint_id,
                "no admin to notify of a disabled webhook endpoint"
            );
            return;
        };
        let recipient = format!("user:{created_by}");
        let host = Url::parse(&url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default();
        let days = self.inner.config.disable_after.as_secs() / 86_400;
        let notice = Notice {
            severity: "critical".into(),
            title: "Webhook endpoint disabled".into(),
            body: format!(
                "Webhook endpoint {endpoint_id} ({host}) failed every delivery for {days} days and is disabled. \
                 Fix the receiver, then enable it with POST /v1/webhooks/{endpoint_id}/enable; waiting deliveries resume."
            ),
            subject_type: "webhook".into(),
            subject_id: endpoint_id.to_string(),
        };
        let dispatcher = crate::Dispatcher::new(self.inner.db.clone(), self.inner.clock.clone());
        let meta = crate::policies::scheduler_meta(tenant, "system:webhooks");
        let result = dispatcher
            .execute::<Inbox, _>(&meta, &recipient, None, |inbox| {
                inbox.decide(InboxCommand::Notify {
                    recipient: recipient.clone(),
                    notice: notice.clone(),
                    at,
                })
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(tenant, endpoint_id, error = %e, "could not notify the admin of a disabled webhook endpoint");
        }
    }

    /// Deletes delivered and dead deliveries past their retention, with their attempts.
    async fn purge(&self) -> Result<(), DbError> {
        let retention = chrono::Duration::from_std(self.inner.config.retention)
            .unwrap_or(chrono::Duration::days(30));
        let cutoff = time::to_text(self.inner.clock.now() - retention);
        let mut tx = self.inner.db.any.begin().await?;
        sqlx::query(
            "DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM webhook_deliveries \
             WHERE status IN ('delivered', 'dead') AND created_at < $1)",
        )
        .bind(&cutoff)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM webhook_deliveries WHERE status IN ('delivered', 'dead') AND created_at < $1",
        )
        .bind(&cutoff)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A transport error without its URL (which may carry a receiver's token),
/// with its causes ("tcp connect error: Connection refused").
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text.chars().take(MAX_ERROR_CHARS).collect()
}

fn page<T>(mut data: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Page<T> {
    let next_cursor = if data.len() as i64 > limit {
        data.truncate(limit as usize);
        data.last().map(key)
    } else {
        None
    };
    Page { data, next_cursor }
}

// ---- the fan-out consumer ----

/// An active endpoint as the fan-out sees it.
struct Target {
    id: String,
    topics: Vec<String>,
    created_position: i64,
}

/// Turns each published event into one delivery per matching active
/// endpoint, inside the checkpoint transaction. Not rebuildable: replaying
/// the log would deliver old events to endpoints created since.
struct Fanout {
    webhooks: Webhooks,
}

#[async_trait]
impl Projector for Fanout {
    fn name(&self) -> &'static str {
        FANOUT_CONSUMER
    }

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    fn rebuildable(&self) -> bool {
        false
    }

    fn handles(&self, event: &StoredEvent) -> bool {
        topics::TOPICS
            .iter()
            .any(|s| s.aggregate == event.aggregate_type && s.event == event.event_type)
    }

    async fn apply(
        &self,
        conn: &mut AnyConnection,
        tables: Tables,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        self.apply_batch(conn, tables, &[event]).await
    }

    async fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        _tables: Tables,
        events: &[&StoredEvent],
    ) -> Result<(), ProjectionError> {
        let inner = &self.webhooks.inner;
        let now = time::to_text(inner.clock.now());
        let max_attempts = i64::from(inner.config.max_attempts.max(1));
        let mut targets: HashMap<String, Vec<Target>> = HashMap::new();
        for e in events {
            if !targets.contains_key(&e.tenant) {
                let rows = sqlx::query(
                    "SELECT id, topics, created_position FROM webhook_endpoints \
                     WHERE tenant = $1 AND status = 'active'",
                )
                .bind(&e.tenant)
                .fetch_all(&mut *conn)
                .await?;
                let mut list = Vec::new();
                for r in &rows {
                    let topics: String = r.try_get("topics")?;
                    list.push(Target {
                        id: r.try_get("id")?,
                        topics: serde_json::from_str(&topics).unwrap_or_default(),
                        created_position: r.try_get("created_position")?,
                    });
                }
                targets.insert(e.tenant.clone(), list);
            }
            // A tenant without endpoints (most events) costs no envelope.
            if targets[&e.tenant].is_empty() {
                continue;
            }
            let published = topics::integration_events(e);
            let subject = format!("{}:{}", e.aggregate_type, e.resource_id());
            for (ordinal, i) in published.iter().enumerate() {
                let mut body: Option<String> = None;
                for t in targets[&e.tenant].iter().filter(|t| {
                    e.position > t.created_position
                        && t.topics.iter().any(|p| topic_matches(p, i.topic))
                }) {
                    let body = body.get_or_insert_with(|| topics::envelope(e, i).to_string());
                    sqlx::query(
                        "INSERT INTO webhook_deliveries (id, tenant, endpoint_id, event_id, topic, subject, \
                         position, ordinal, body, status, attempts, attempts_left, next_attempt_at, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $11, $11) \
                         ON CONFLICT (endpoint_id, event_id, topic) DO NOTHING",
                    )
                    .bind(ids::new_id("whd"))
                    .bind(&e.tenant)
                    .bind(&t.id)
                    .bind(&e.event_id)
                    .bind(i.topic)
                    .bind(&subject)
                    .bind(e.position)
                    .bind(ordinal as i64)
                    .bind(body.as_str())
                    .bind(max_attempts)
                    .bind(&now)
                    .execute(&mut *conn)
                    .await?;
                }
            }
        }
        Ok(())
    }
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
