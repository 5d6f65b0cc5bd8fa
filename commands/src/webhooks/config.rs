//! Webhook configuration (signing key, allowed hosts, timeouts) and the
//! SSRF guard: which addresses an endpoint may have, checked at creation,
//! at every attempt and by the HTTP client's resolver.

use super::*;

/// The server key secrets are derived from. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(pub(super) Vec<u8>);

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
    pub(super) hosts: Vec<String>,
    pub(super) nets: Vec<(IpAddr, u8)>,
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

pub(super) fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
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
pub(super) fn canonical(ip: IpAddr) -> IpAddr {
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

pub(super) fn check_ip(allowed: &AllowList, host: &str, ip: IpAddr) -> Result<(), UrlRefused> {
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
pub(super) async fn resolve_checked(
    allowed: &AllowList,
    host: &str,
) -> Result<Vec<SocketAddr>, UrlRefused> {
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
pub(super) struct GuardedResolver {
    pub(super) allowed: AllowList,
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
