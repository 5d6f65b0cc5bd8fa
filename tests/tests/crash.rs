//! The crash test (issue 8): the real `tally serve` as a separate process on
//! a manual clock, a mixed load from several clients (plans, subscriptions
//! through their whole life, usage singly and in batches, invoices drafted,
//! issued and paid, tickets, inbox reads, queries), SIGKILLed at a random
//! moment and started again on the same database, round after round.
//!
//! Rounds: `TALLY_CRASH_ROUNDS` (default 5, the CI form; 20 for the full
//! run). The seed is printed; `TALLY_CRASH_SEED` replays a run's choices
//! (the interleaving of the clients is up to the scheduler).
//!
//! After every restart: every command answered 2xx has its events in the
//! log. At the end, with the server settled and then killed: the same; no
//! usage record recorded twice and every recorded quantity counted in the
//! totals; invoice numbers 1..N per tenant with no gap or duplicate, every
//! issued invoice numbered; one billing invoice per activation and renewal;
//! at most one non-payment suspension per past-due crossing; one effect
//! per Idempotency-Key (and its replay answers the first response); no
//! provider payment recorded twice however often (and however
//! concurrently) its signed notification was delivered around the kills,
//! and every delivered one recorded; every read model equal to a fresh
//! rebuild.
//!
//! Time: the manual clock lives in the process, so a restart passes
//! `--clock-start` = the latest time the test asked the clock to reach;
//! the clock never goes back and the renewals, collections and quota
//! schedulers catch up from there.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tally_projections::StoredEvent;
use tally_tests::checks::{
    assert_acks_in_log, invoice_numbers_gapless, one_invoice_per_billing_event,
    one_suspension_per_crossing, usage_counted_once, Ack,
};
use tally_tests::process::{read_log, run_cli, settle_over_http, ServeOptions, ServerProcess};
use tally_tests::{
    assert_read_models_equal_rebuild, both_backends, standard_plan_body, tally_bin, Backend, Resp,
    TestApp, TestDb,
};
use tokio::sync::watch;

both_backends!(
    crash_rounds,
    an_abandoned_key_whose_command_took_effect_is_not_applied_again
);

/// The manual clock starts here.
const T0: &str = "2026-01-01T00:00:00Z";
/// Concurrent clients.
const CLIENTS: usize = 6;
/// A round's load runs this long before the kill (uniformly random).
const LOAD_MS: std::ops::Range<u64> = 300..1500;
/// How far the clock task moves the clock per step, and how often.
const CLOCK_STEP_HOURS: i64 = 20;
const CLOCK_EVERY: Duration = Duration::from_millis(120);
/// How long the drain after the last round retries requests whose outcome
/// the kill hid.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(45);
/// How long the server gets to settle at the end.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Payment terms and grace period, short so that collections act within
/// a few rounds.
const DUE_DAYS: u32 = 7;
const GRACE_DAYS: u32 = 3;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// One tenant's key and plans.
struct Tenant {
    name: String,
    key: String,
    plans: Vec<String>,
}

/// A command sent with an Idempotency-Key and answered.
#[derive(Debug, Clone)]
struct Keyed {
    tenant: usize,
    path: String,
    body: Value,
    key: String,
    status: u16,
    answer: Value,
}

/// A request whose outcome the kill hid (no answer, or a 503): sent again
/// with the same Idempotency-Key (or the same usage transaction ids).
#[derive(Debug, Clone)]
struct Pending {
    tenant: usize,
    path: String,
    body: Value,
    key: Option<String>,
    /// Its last answer was 409 `idempotency_key_in_flight`: the key is
    /// still reserved by a request of a killed process.
    in_flight: bool,
}

/// A provider notification the test sent (tenant `default`, Stripe).
#[derive(Debug, Clone)]
struct ProviderSend {
    event_id: String,
    payment_id: String,
    invoice_id: String,
    amount_minor: i64,
    /// Answered 200 at least once.
    delivered: bool,
}

#[derive(Default)]
struct Ledger {
    provider: Vec<ProviderSend>,
    acks: Vec<Ack>,
    keyed: Vec<Keyed>,
    /// Answers that must never happen (500, an unknown 5xx, read-your-writes
    /// broken).
    failures: Vec<String>,
    /// Requests by outcome, for the figures printed at the end.
    outcomes: BTreeMap<String, u64>,
    pending: Vec<Pending>,
}

struct Shared {
    base: String,
    client: reqwest::Client,
    tenants: Vec<Tenant>,
    up: watch::Receiver<bool>,
    stop: AtomicBool,
    ledger: Mutex<Ledger>,
    /// The latest time the test asked the clock to reach.
    clock_target: Mutex<DateTime<Utc>>,
    /// The clock as the server last answered it.
    clock_now: Mutex<DateTime<Utc>>,
    keys: AtomicU64,
    /// Tenant `default`'s Stripe webhook path and secret.
    stripe: (String, String),
}

enum Sent {
    Answered(Resp),
    /// No answer: the server died under the request.
    Lost,
}

impl Shared {
    async fn send(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Sent {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        for (n, v) in headers {
            req = req.header(*n, v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let Ok(r) = req.send().await else {
            return Sent::Lost;
        };
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let Ok(bytes) = r.bytes().await else {
            return Sent::Lost;
        };
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Sent::Answered(Resp {
            status,
            headers,
            body,
        })
    }

    fn count(&self, what: &str) {
        *self
            .ledger
            .lock()
            .expect("ledger")
            .outcomes
            .entry(what.to_string())
            .or_default() += 1;
    }

    fn fail(&self, what: String) {
        self.ledger.lock().expect("ledger").failures.push(what);
    }

    fn next_key(&self, client: usize) -> String {
        format!(
            "crash-{client}-{}",
            self.keys.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Sends a command (POST). A 2xx is recorded as acknowledged; no answer
    /// or a 503 makes a keyed command (or a usage report, keyed by its
    /// transaction ids) pending, to be sent again after the restart.
    async fn command(
        &self,
        tenant: usize,
        path: &str,
        body: Value,
        key: Option<String>,
    ) -> Option<Resp> {
        let t = &self.tenants[tenant];
        let mut headers = Vec::new();
        if let Some(k) = &key {
            headers.push(("idempotency-key", k.clone()));
        }
        let sent = self
            .send(&t.key, reqwest::Method::POST, path, Some(&body), &headers)
            .await;
        let resend = key.is_some() || path.starts_with("/v1/usage") && !path.ends_with("/void");
        let r = match sent {
            Sent::Lost => {
                self.count("lost");
                if resend {
                    self.ledger.lock().expect("ledger").pending.push(Pending {
                        tenant,
                        path: path.to_string(),
                        body,
                        key,
                        in_flight: false,
                    });
                }
                return None;
            }
            Sent::Answered(r) => r,
        };
        self.count(&format!(
            "{} {}",
            r.status,
            r.body["code"].as_str().unwrap_or("")
        ));
        let in_flight = r.status == 409 && r.body["code"] == "idempotency_key_in_flight";
        if r.status == 503 || in_flight {
            if r.status == 503 && r.body["code"] != "unavailable" {
                self.fail(format!(
                    "POST {path}: 503 that is not `unavailable`: {:?}",
                    r.body
                ));
            }
            if resend {
                self.ledger.lock().expect("ledger").pending.push(Pending {
                    tenant,
                    path: path.to_string(),
                    body,
                    key,
                    in_flight,
                });
            }
            return None;
        }
        if r.status >= 500 {
            self.fail(format!("POST {path}: {} {:?}", r.status, r.body));
            return None;
        }
        if !(200..300).contains(&r.status) {
            return Some(r);
        }
        self.acknowledge(tenant, path, &r);
        if let Some(k) = key {
            self.ledger.lock().expect("ledger").keyed.push(Keyed {
                tenant,
                path: path.to_string(),
                body,
                key: k,
                status: r.status,
                answer: r.body.clone(),
            });
        }
        Some(r)
    }

    fn acknowledge(&self, tenant: usize, path: &str, r: &Resp) {
        let tenant = self.tenants[tenant].name.clone();
        let position = r
            .header("x-log-position")
            .and_then(|p| p.parse::<i64>().ok());
        let mut acks = Vec::new();
        if path == "/v1/usage/batch" {
            for item in r.body["results"].as_array().into_iter().flatten() {
                if let (Some(id), "created" | "duplicate") =
                    (item["id"].as_str(), item["status"].as_str().unwrap_or(""))
                {
                    acks.push(Ack {
                        tenant: tenant.clone(),
                        kind: Some("usage_record"),
                        id: id.to_string(),
                        version: 1,
                        position: None,
                        request_id: None,
                        what: format!("batch record {id}"),
                    });
                }
            }
        } else {
            let kind = match path.split('/').nth(2) {
                Some("plans") => Some("plan"),
                Some("subscriptions") => Some("subscription"),
                Some("invoices") => Some("invoice"),
                Some("tickets") => Some("ticket"),
                Some("usage") => Some("usage_record"),
                _ => None,
            };
            let id = r.body["id"].as_str().unwrap_or_default().to_string();
            let version = r.body["version"].as_i64().unwrap_or(0);
            acks.push(Ack {
                tenant,
                kind: kind.filter(|_| !id.is_empty() && version > 0),
                id,
                version,
                position,
                request_id: None,
                what: format!("POST {path} → {}", r.status),
            });
        }
        self.ledger.lock().expect("ledger").acks.extend(acks);
    }

    async fn query(&self, tenant: usize, path: &str, min_position: Option<i64>) -> Option<Resp> {
        let headers: Vec<(&str, String)> = min_position
            .map(|p| vec![("x-min-position", p.to_string())])
            .unwrap_or_default();
        match self
            .send(
                &self.tenants[tenant].key,
                reqwest::Method::GET,
                path,
                None,
                &headers,
            )
            .await
        {
            Sent::Lost => {
                self.count("lost");
                None
            }
            Sent::Answered(r) => {
                self.count(&format!(
                    "GET {} {}",
                    r.status,
                    r.body["code"].as_str().unwrap_or("")
                ));
                if r.status >= 500
                    && !(r.status == 503
                        && matches!(
                            r.body["code"].as_str(),
                            Some("unavailable" | "projection_lagging")
                        ))
                {
                    self.fail(format!("GET {path}: {} {:?}", r.status, r.body));
                }
                (r.status == 200).then_some(r)
            }
        }
    }

    fn usage_time(&self) -> String {
        rfc3339(*self.clock_now.lock().expect("clock") - chrono::Duration::minutes(30))
    }
}

/// One subscription a client made.
struct Sub {
    tenant: usize,
    id: String,
    customer: String,
    /// Whether this client pays its invoices (the others go past due).
    pays: bool,
    /// The position of the last command on it.
    position: i64,
    version: i64,
}

/// A client: random commands and queries with its own RNG until told to
/// stop, on the resources it made.
struct Client {
    sh: Arc<Shared>,
    me: usize,
    rng: StdRng,
    /// Steps taken; names its customers and transaction ids.
    n: u64,
    subs: Vec<Sub>,
    invoices: Vec<(usize, String)>,
    tickets: Vec<(usize, String)>,
}

async fn run_client(sh: Arc<Shared>, me: usize, seed: u64) {
    let mut up = sh.up.clone();
    let mut c = Client {
        sh,
        me,
        rng: StdRng::seed_from_u64(seed),
        n: 0,
        subs: Vec::new(),
        invoices: Vec::new(),
        tickets: Vec::new(),
    };
    while !c.sh.stop.load(Ordering::Relaxed) {
        if !*up.borrow() {
            let _ = tokio::time::timeout(Duration::from_millis(100), up.wait_for(|u| *u)).await;
            continue;
        }
        c.step().await;
    }
}

impl Client {
    /// One random operation, in a tenant picked at random; half of the
    /// commands carry an Idempotency-Key.
    async fn step(&mut self) {
        self.n += 1;
        let tenant = self.rng.gen_range(0..self.sh.tenants.len());
        let key = self.rng.gen_bool(0.5).then(|| self.sh.next_key(self.me));
        match self.rng.gen_range(0..100) {
            0..=9 => self.new_subscription(tenant, key).await,
            10..=28 => self.change_subscription(tenant, key).await,
            29..=48 => self.usage_batch(tenant, key).await,
            49..=56 => self.usage_report(tenant, key).await,
            57..=64 => self.pay_open_invoices(tenant).await,
            65..=74 => self.manual_invoice(tenant, key).await,
            75..=80 => self.ticket(tenant, key).await,
            81..=85 => self.read_inbox(tenant, key).await,
            86..=89 => self.provider_payment().await,
            _ => self.queries(tenant).await,
        }
    }

    fn next_key(&mut self, p: f64) -> Option<String> {
        self.rng.gen_bool(p).then(|| self.sh.next_key(self.me))
    }

    /// One of this client's subscriptions in `tenant`.
    fn pick(&mut self, tenant: usize) -> Option<usize> {
        let mine: Vec<usize> = (0..self.subs.len())
            .filter(|i| self.subs[*i].tenant == tenant)
            .collect();
        (!mine.is_empty()).then(|| mine[self.rng.gen_range(0..mine.len())])
    }

    /// A customer of this client in `tenant` (or a made-up one).
    fn customer(&mut self, tenant: usize) -> String {
        match self.pick(tenant) {
            Some(i) => self.subs[i].customer.clone(),
            None => format!("cus_{}_manual", self.me),
        }
    }

    async fn new_subscription(&mut self, tenant: usize, key: Option<String>) {
        let sh = self.sh.clone();
        let plans = &sh.tenants[tenant].plans;
        let plan = &plans[self.rng.gen_range(0..plans.len())];
        let customer = format!("cus_{}_{}", self.me, self.n);
        let seats = self.rng.gen_range(1..=5);
        let body = json!({"customer_id": customer, "plan_id": plan, "seats": seats});
        let Some(r) = sh.command(tenant, "/v1/subscriptions", body, key).await else {
            return;
        };
        if r.status != 201 {
            sh.fail(format!("create subscription: {} {:?}", r.status, r.body));
            return;
        }
        let mut sub = Sub {
            tenant,
            id: r.id(),
            customer,
            pays: self.rng.gen_bool(0.6),
            position: r.position(),
            version: 1,
        };
        let key = self.next_key(0.5);
        let path = format!("/v1/subscriptions/{}/activate", sub.id);
        if let Some(r) = sh.command(tenant, &path, json!({}), key).await {
            note(&mut sub, &r);
        }
        self.subs.push(sub);
    }

    /// Seats, plan, suspension and resumption, cancellation.
    async fn change_subscription(&mut self, tenant: usize, key: Option<String>) {
        let sh = self.sh.clone();
        let Some(i) = self.pick(tenant) else { return };
        let id = self.subs[i].id.clone();
        let (action, body) = match self.rng.gen_range(0..19) {
            0..=9 => {
                let seats = self.rng.gen_range(0..=22);
                if self.rng.gen_bool(0.5) {
                    (
                        "change-seats",
                        json!({"seats": seats, "proration": "prorate"}),
                    )
                } else {
                    ("change-seats", json!({"seats": seats}))
                }
            }
            10..=13 => {
                let plans = &sh.tenants[tenant].plans;
                let plan = &plans[self.rng.gen_range(0..plans.len())];
                (
                    "change-plan",
                    json!({"plan_id": plan, "proration": "prorate"}),
                )
            }
            14 | 15 => ("suspend", json!({"reason": "manual", "note": "crash test"})),
            16 | 17 => ("resume", json!({})),
            _ => {
                let at = if self.rng.gen_bool(0.5) {
                    "now"
                } else {
                    "period_end"
                };
                ("cancel", json!({"at": at, "reason": "crash test"}))
            }
        };
        let path = format!("/v1/subscriptions/{id}/{action}");
        if let Some(r) = sh.command(tenant, &path, body, key).await {
            note(&mut self.subs[i], &r);
        }
    }

    fn usage_record(&mut self, sub: usize, transaction_id: String) -> Value {
        json!({
            "subscription_id": self.subs[sub].id, "meter": "api_calls",
            "quantity": self.rng.gen_range(1..=60).to_string(),
            "timestamp": self.sh.usage_time(),
            "transaction_id": transaction_id,
        })
    }

    async fn usage_batch(&mut self, tenant: usize, key: Option<String>) {
        let mut records = Vec::new();
        for j in 0..self.rng.gen_range(1..=20) {
            let Some(i) = self.pick(tenant) else { return };
            let tx = format!("tx-{}-{}-{j}", self.me, self.n);
            records.push(self.usage_record(i, tx));
        }
        let body = json!({ "records": records });
        self.sh.command(tenant, "/v1/usage/batch", body, key).await;
    }

    /// One record (its transaction id is its idempotency), sometimes voided.
    async fn usage_report(&mut self, tenant: usize, key: Option<String>) {
        let Some(i) = self.pick(tenant) else { return };
        let body = self.usage_record(i, format!("tx-{}-{}", self.me, self.n));
        let sh = self.sh.clone();
        if let Some(r) = sh.command(tenant, "/v1/usage", body, None).await {
            if r.status == 201 && self.rng.gen_bool(0.2) {
                let path = format!("/v1/usage/{}/void", r.id());
                sh.command(tenant, &path, json!({"reason": "crash test"}), key)
                    .await;
            }
        }
    }

    /// Pays the open invoices of a subscription whose customer pays (the
    /// others go past due and are suspended).
    async fn pay_open_invoices(&mut self, tenant: usize) {
        let Some(i) = self.pick(tenant).filter(|i| self.subs[*i].pays) else {
            return;
        };
        let sh = self.sh.clone();
        let path = format!(
            "/v1/invoices?subscription_id={}&status=open",
            self.subs[i].id
        );
        let Some(list) = sh.query(tenant, &path, None).await else {
            return;
        };
        for inv in list.body["data"].as_array().into_iter().flatten() {
            let id = inv["id"].as_str().unwrap_or_default();
            let reference = format!("pay-{}-{}-{id}", self.me, self.n);
            let body = json!({"amount": inv["amount_due"], "reference": reference});
            let key = self.next_key(0.7);
            sh.command(tenant, &format!("/v1/invoices/{id}/payments"), body, key)
                .await;
        }
    }

    /// A signed Stripe payment for one of this client's invoices of tenant
    /// `default` (in any status: an invoice not open makes it credit),
    /// delivered once, twice in a row or twice at once.
    async fn provider_payment(&mut self) {
        let mine: Vec<String> = self
            .invoices
            .iter()
            .filter(|(t, _)| *t == 0)
            .map(|(_, id)| id.clone())
            .collect();
        let invoice_id = if mine.is_empty() {
            "inv_unknown".to_string()
        } else {
            mine[self.rng.gen_range(0..mine.len())].clone()
        };
        let send = ProviderSend {
            event_id: format!("evt-{}-{}", self.me, self.n),
            payment_id: format!("pi-{}-{}", self.me, self.n),
            invoice_id,
            amount_minor: self.rng.gen_range(100..5_000),
            delivered: false,
        };
        let sh = self.sh.clone();
        let delivered = match self.rng.gen_range(0..3) {
            0 => deliver(&sh, &send).await,
            1 => deliver(&sh, &send).await | deliver(&sh, &send).await,
            _ => {
                let (a, b) = tokio::join!(deliver(&sh, &send), deliver(&sh, &send));
                a | b
            }
        };
        sh.ledger
            .lock()
            .expect("ledger")
            .provider
            .push(ProviderSend { delivered, ..send });
    }

    /// A manual invoice drafted, or one drafted before given a line,
    /// issued or partly paid.
    async fn manual_invoice(&mut self, tenant: usize, key: Option<String>) {
        let sh = self.sh.clone();
        if self.invoices.is_empty() || self.rng.gen_bool(0.4) {
            let customer = self.customer(tenant);
            let quantity = self.rng.gen_range(1..=4).to_string();
            let lines =
                json!([{"description": "Consulting", "quantity": quantity, "unit_price": "12.35"}]);
            let body = json!({"customer_id": customer, "currency": "EUR", "lines": lines});
            let Some(r) = sh.command(tenant, "/v1/invoices", body, key).await else {
                return;
            };
            if r.status != 201 {
                sh.fail(format!("create invoice: {} {:?}", r.status, r.body));
                return;
            }
            self.invoices.push((tenant, r.id()));
            return;
        }
        let (tenant, id) = self.invoices[self.rng.gen_range(0..self.invoices.len())].clone();
        let (action, body) = match self.rng.gen_range(0..4) {
            0 => (
                "lines",
                json!({"description": "Extra", "quantity": "1", "unit_price": "3.10"}),
            ),
            1 | 2 => ("issue", json!({})),
            _ => (
                "payments",
                json!({"amount": "5.00", "reference": format!("part-{}-{}", self.me, self.n)}),
            ),
        };
        sh.command(tenant, &format!("/v1/invoices/{id}/{action}"), body, key)
            .await;
    }

    /// A ticket opened, or one opened before assigned, commented or moved.
    async fn ticket(&mut self, tenant: usize, key: Option<String>) {
        let sh = self.sh.clone();
        if self.tickets.is_empty() || self.rng.gen_bool(0.3) {
            let requester = format!("customer:{}", self.customer(tenant));
            let body = json!({"subject": "Help", "description": "crash test", "requester": requester, "priority": "normal"});
            if let Some(r) = sh.command(tenant, "/v1/tickets", body, key).await {
                if r.status == 201 {
                    self.tickets.push((tenant, r.id()));
                }
            }
            return;
        }
        let (tenant, id) = self.tickets[self.rng.gen_range(0..self.tickets.len())].clone();
        let (action, body) = match self.rng.gen_range(0..4) {
            0 => (
                "assign",
                json!({"assignee": format!("agent{}", self.rng.gen_range(0..3))}),
            ),
            1 => (
                "comments",
                json!({"author": "agent0", "body": format!("note {}", self.n), "public": self.rng.gen_bool(0.5)}),
            ),
            _ => {
                let to =
                    ["open", "pending", "on_hold", "solved", "closed"][self.rng.gen_range(0..5)];
                ("transition", json!({"to": to}))
            }
        };
        sh.command(tenant, &format!("/v1/tickets/{id}/{action}"), body, key)
            .await;
    }

    /// Reads a customer's inbox and marks an item (or all) read.
    async fn read_inbox(&mut self, tenant: usize, key: Option<String>) {
        let Some(i) = self.pick(tenant) else { return };
        let sh = self.sh.clone();
        let recipient = format!("customer:{}", self.subs[i].customer);
        let path = format!("/v1/inbox?recipient={recipient}&state=unread");
        let Some(r) = sh.query(tenant, &path, None).await else {
            return;
        };
        let first = r.body["data"]
            .as_array()
            .and_then(|d| d.first())
            .and_then(|i| i["id"].as_str())
            .map(str::to_string);
        match first {
            Some(item) if self.rng.gen_bool(0.7) => {
                sh.command(tenant, &format!("/v1/inbox/{item}/read"), json!({}), key)
                    .await;
            }
            _ => {
                let body = json!({ "recipient": recipient });
                sh.command(tenant, "/v1/inbox/read-all", body, key).await;
            }
        }
    }

    /// Queries; a read with X-Min-Position of one's own last write must see it.
    async fn queries(&mut self, tenant: usize) {
        let Some(i) = self.pick(tenant) else { return };
        let sh = self.sh.clone();
        let s = &self.subs[i];
        match self.rng.gen_range(0..4) {
            0 => {
                let path = format!("/v1/subscriptions/{}", s.id);
                if let Some(r) = sh.query(tenant, &path, Some(s.position)).await {
                    let v = r.body["version"].as_i64().unwrap_or(0);
                    if v < s.version {
                        sh.fail(format!(
                            "read-your-writes: {path} at version {v} after X-Min-Position {} of version {}",
                            s.position, s.version
                        ));
                    }
                }
            }
            1 => {
                let path = format!(
                    "/v1/usage/summary?subscription_id={}&meter=api_calls&window=current",
                    s.id
                );
                sh.query(tenant, &path, None).await;
            }
            2 => {
                let path = format!("/v1/invoices?customer_id={}", s.customer);
                sh.query(tenant, &path, None).await;
            }
            _ => {
                let path = format!("/v1/customers/{}/balance", s.customer);
                sh.query(tenant, &path, None).await;
            }
        }
    }
}

/// Remembers a subscription command's position and version for later reads.
fn note(sub: &mut Sub, r: &Resp) {
    if (200..300).contains(&r.status) {
        if let Some(p) = r.header("x-log-position").and_then(|p| p.parse().ok()) {
            sub.position = p;
        }
        if let Some(v) = r.body["version"].as_i64() {
            sub.version = v;
        }
    }
}

/// Moves the manual clock forward in steps while the server is up.
async fn clock_task(sh: Arc<Shared>) {
    let mut up = sh.up.clone();
    let admin = sh.tenants[0].key.clone();
    while !sh.stop.load(Ordering::Relaxed) {
        if !*up.borrow() {
            let _ = tokio::time::timeout(Duration::from_millis(100), up.wait_for(|u| *u)).await;
            continue;
        }
        let to = {
            let mut target = sh.clock_target.lock().expect("clock");
            *target += chrono::Duration::hours(CLOCK_STEP_HOURS);
            *target
        };
        if let Sent::Answered(r) = sh
            .send(
                &admin,
                reqwest::Method::POST,
                "/v1/admin/clock/advance",
                Some(&json!({"to": rfc3339(to)})),
                &[],
            )
            .await
        {
            sh.count(&format!("clock {}", r.status));
            if r.status == 200 {
                *sh.clock_now.lock().expect("clock") = t(r.body["now"].as_str().expect("now"));
            } else if r.status != 503 {
                sh.fail(format!("clock advance: {} {:?}", r.status, r.body));
            }
        }
        tokio::time::sleep(CLOCK_EVERY).await;
    }
}

/// Sends a provider notification signed as Stripe signs, at the server's
/// clock; true when it was answered 200. A kill (no answer, 503), a clock
/// step past the tolerance (400) or a lost race (409) leaves it undelivered,
/// to be sent again.
async fn deliver(sh: &Shared, send: &ProviderSend) -> bool {
    use hmac::{Hmac, Mac};
    let body = json!({"id": send.event_id, "type": "payment_intent.succeeded",
        "data": {"object": {"id": send.payment_id, "amount_received": send.amount_minor,
            "currency": "eur", "metadata": {"tally_invoice_id": send.invoice_id}}}})
    .to_string();
    let at = sh.clock_now.lock().expect("clock").timestamp();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(sh.stripe.1.as_bytes()).expect("key");
    mac.update(format!("{at}.{body}").as_bytes());
    let signature = format!("t={at},v1={}", hex::encode(mac.finalize().into_bytes()));
    let answer = sh
        .client
        .post(format!("{}{}", sh.base, sh.stripe.0))
        .header("content-type", "application/json")
        .header("Stripe-Signature", signature)
        .body(body)
        .send()
        .await;
    let Ok(r) = answer else {
        sh.count("provider lost");
        return false;
    };
    let status = r.status().as_u16();
    sh.count(&format!("provider {status}"));
    match status {
        200 => true,
        400 | 409 | 503 => false,
        other => {
            let text = r.text().await.unwrap_or_default();
            sh.fail(format!("provider notification: {other} {text}"));
            false
        }
    }
}

/// No provider payment recorded twice, every delivered one recorded once:
/// one `ProviderPaymentReceived` per payment, one invoice payment per
/// reference, one `InboundNoticeRecorded` per provider event.
fn provider_payments_once(events: &[StoredEvent], sends: &[ProviderSend]) {
    let mut received: BTreeMap<String, usize> = BTreeMap::new();
    let mut notices: BTreeMap<String, usize> = BTreeMap::new();
    let mut references: BTreeMap<String, usize> = BTreeMap::new();
    for e in events {
        let payload = e.payload_value().expect("JSON payload");
        match (e.aggregate_type.as_str(), e.event_type.as_str()) {
            ("provider_payment", "ProviderPaymentReceived") => {
                let id = payload["ProviderPaymentReceived"]["payment_id"]
                    .as_str()
                    .unwrap_or_default();
                *received.entry(id.to_string()).or_default() += 1;
            }
            ("inbound_notice", "InboundNoticeRecorded") => {
                let id = payload["InboundNoticeRecorded"]["provider_event_id"]
                    .as_str()
                    .unwrap_or_default();
                *notices.entry(id.to_string()).or_default() += 1;
            }
            ("invoice", "PaymentRecorded") => {
                let r = payload["PaymentRecorded"]["payment"]["reference"]
                    .as_str()
                    .unwrap_or_default();
                if r.starts_with("stripe:") {
                    *references.entry(r.to_string()).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    for (what, counts) in [
        ("payment", &received),
        ("notice", &notices),
        ("invoice payment", &references),
    ] {
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{what} recorded more than once: {twice:?}"
        );
    }
    for s in sends.iter().filter(|s| s.delivered) {
        assert_eq!(received.get(&s.payment_id), Some(&1), "{s:?}");
        assert_eq!(notices.get(&s.event_id), Some(&1), "{s:?}");
    }
    println!(
        "{} provider payments delivered, {} recorded",
        sends.iter().filter(|s| s.delivered).count(),
        received.len()
    );
}

fn serve_options(db: &TestDb, clock_start: DateTime<Utc>) -> ServeOptions {
    let mut o = ServeOptions::new(tally_bin!(), &db.url);
    o.clock_start = Some(clock_start);
    o.args = vec![
        "--invoice-due-days".into(),
        DUE_DAYS.to_string(),
        "--grace-days".into(),
        GRACE_DAYS.to_string(),
    ];
    o
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

async fn crash_rounds(backend: Backend) {
    let rounds = env_u64("TALLY_CRASH_ROUNDS").unwrap_or(5);
    let seed = env_u64("TALLY_CRASH_SEED").unwrap_or_else(|| rand::thread_rng().gen());
    println!("crash test on {backend:?}: {rounds} rounds, TALLY_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::new(backend).await;
    let start = t(T0);
    let mut server = ServerProcess::start(&serve_options(&db, start)).await;
    let admin = server
        .bootstrap_key()
        .await
        .expect("the first start prints the bootstrap key");
    let acme = run_cli(
        tally_bin!(),
        &[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--role",
            "admin",
            "--database",
            &db.url,
        ],
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .expect("client");
    let (up_tx, up) = watch::channel(true);
    let mut tenants = vec![
        Tenant {
            name: "default".into(),
            key: admin,
            plans: Vec::new(),
        },
        Tenant {
            name: "acme".into(),
            key: acme,
            plans: Vec::new(),
        },
    ];
    for tenant in &mut tenants {
        for body in plan_bodies() {
            let r = client
                .post(format!("{}/v1/plans", server.base))
                .bearer_auth(&tenant.key)
                .json(&body)
                .send()
                .await
                .expect("create plan");
            assert_eq!(r.status().as_u16(), 201);
            let v: Value = r.json().await.expect("plan");
            tenant
                .plans
                .push(v["id"].as_str().expect("plan id").to_string());
        }
    }
    // Tenant `default` takes Stripe payments.
    let stripe_secret = "whsec_crash_test".to_string();
    let r = client
        .put(format!("{}/v1/payment-providers/stripe", server.base))
        .bearer_auth(&tenants[0].key)
        .json(&json!({"webhook_secret": stripe_secret}))
        .send()
        .await
        .expect("configure stripe");
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.expect("provider");
    let stripe_hook = v["webhook_url"].as_str().expect("webhook_url").to_string();
    let sh = Arc::new(Shared {
        stripe: (stripe_hook, stripe_secret),
        base: server.base.clone(),
        client,
        tenants,
        up,
        stop: AtomicBool::new(false),
        ledger: Mutex::new(Ledger::default()),
        clock_target: Mutex::new(start),
        clock_now: Mutex::new(start),
        keys: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    for me in 0..CLIENTS {
        tasks.push(tokio::spawn(run_client(
            sh.clone(),
            me,
            seed.wrapping_add(me as u64 + 1),
        )));
    }
    tasks.push(tokio::spawn(clock_task(sh.clone())));
    tasks.push(tokio::spawn(resender(sh.clone())));

    for round in 1..=rounds {
        let load = Duration::from_millis(rng.gen_range(LOAD_MS));
        tokio::time::sleep(load).await;
        let _ = up_tx.send(false);
        server.kill();
        let clock_start = *sh.clock_target.lock().expect("clock");
        server.restart(&serve_options(&db, clock_start)).await;
        *sh.clock_now.lock().expect("clock") = clock_start;
        let _ = up_tx.send(true);
        let acks = sh.ledger.lock().expect("ledger").acks.clone();
        assert_acks_in_log(&read_log(&db.url).await, &acks);
        println!("round {round}: killed after {load:?}, restarted at clock {clock_start}; {} acknowledged commands in the log", acks.len());
    }

    // The last round: stop the load, send again what the last kill hid, settle.
    sh.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("client task");
    }
    let orphans = drain(&sh).await;
    // Provider notifications the kills hid are delivered again (providers
    // retry until they get a 200); each has one effect in all.
    let sends = std::mem::take(&mut sh.ledger.lock().expect("ledger").provider);
    let mut redelivered = Vec::new();
    for mut send in sends {
        for _ in 0..20 {
            if send.delivered {
                break;
            }
            send.delivered = deliver(&sh, &send).await;
        }
        assert!(send.delivered, "never delivered: {send:?}");
        redelivered.push(send);
    }
    replays_answer_the_first_response(&sh).await;
    settle(&sh).await;
    server.kill();

    let ledger = std::mem::take(&mut *sh.ledger.lock().expect("ledger"));
    println!("outcomes: {:?}", ledger.outcomes);
    println!(
        "{} keyed requests still reserved by a killed process at the end",
        orphans.len()
    );
    assert!(
        ledger.failures.is_empty(),
        "unexpected answers: {:#?}",
        ledger.failures
    );
    let events = read_log(&db.url).await;
    assert_acks_in_log(&events, &ledger.acks);
    println!(
        "{} events in the log, {} acknowledged commands, {} keyed",
        events.len(),
        ledger.acks.len(),
        ledger.keyed.len()
    );
    usage_counted_once(&db, &events).await;
    invoice_numbers_gapless(&events);
    one_invoice_per_billing_event(&events);
    one_suspension_per_crossing(&events);
    one_effect_per_key(&events, &ledger.keyed);
    provider_payments_once(&events, &redelivered);
    let conn = db.connect().await;
    assert_read_models_equal_rebuild(&conn).await;
    conn.close().await;
}

/// Two plans per tenant with the `api_calls` meter: one capped (the quota
/// policy suspends at the cap), one uncapped with overage.
fn plan_bodies() -> Vec<Value> {
    vec![
        json!({
            "code": "std", "name": "Standard", "currency": "EUR", "interval": "month",
            "base_price": "10.00", "seat_price": "2.50", "seats": {"min": 1, "max": 20},
            "meters": [{"key": "api_calls", "included": "1000", "hard_cap": "2500", "overage_unit_price": "0.01", "reset": "monthly"}]
        }),
        json!({
            "code": "pro", "name": "Pro", "currency": "EUR", "interval": "month",
            "base_price": "30.00", "seat_price": "5.00", "seats": {"min": 1, "max": 20},
            "meters": [{"key": "api_calls", "included": "500", "overage_unit_price": "0.02", "reset": "monthly"}]
        }),
    ]
}

/// Sends the requests whose outcome a kill hid again, with their keys,
/// while the load runs: the clients go on meanwhile (a key still reserved
/// by a killed process's request makes its repeat wait up to 10 s).
async fn resender(sh: Arc<Shared>) {
    let mut up = sh.up.clone();
    while !sh.stop.load(Ordering::Relaxed) {
        if !*up.borrow() {
            let _ = tokio::time::timeout(Duration::from_millis(100), up.wait_for(|u| *u)).await;
            continue;
        }
        let pending: Vec<Pending> = std::mem::take(&mut sh.ledger.lock().expect("ledger").pending);
        if pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        resend(&sh, pending).await;
    }
}

async fn resend(sh: &Shared, pending: Vec<Pending>) {
    let sends = pending.into_iter().map(|p| async move {
        sh.count("resent");
        sh.command(p.tenant, &p.path, p.body, p.key).await;
    });
    futures::future::join_all(sends).await;
}

/// After the last round: sends again what is still without an answer until
/// each has one (bounded). A key still reserved by a killed process's request
/// answers `idempotency_key_in_flight` until the reservation is 60 s old
/// (then it is taken over, or answered `idempotency_key_applied` when its
/// command took effect); such keys are set aside and returned, their one
/// effect at most is checked on the log.
async fn drain(sh: &Shared) -> Vec<Pending> {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let mut orphans = Vec::new();
    loop {
        let pending: Vec<Pending> = std::mem::take(&mut sh.ledger.lock().expect("ledger").pending);
        let (stuck, retry): (Vec<Pending>, Vec<Pending>) =
            pending.into_iter().partition(|p| p.in_flight);
        orphans.extend(stuck);
        if retry.is_empty() {
            return orphans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} requests still without a definite answer after {DRAIN_TIMEOUT:?}: {retry:?}",
            retry.len()
        );
        resend(sh, retry).await;
    }
}

/// Every acknowledged keyed command sent again answers the first response
/// and changes nothing (checked on the log later).
async fn replays_answer_the_first_response(sh: &Shared) {
    let keyed = sh.ledger.lock().expect("ledger").keyed.clone();
    for k in &keyed {
        let sent = sh
            .send(
                &sh.tenants[k.tenant].key,
                reqwest::Method::POST,
                &k.path,
                Some(&k.body),
                &[("idempotency-key", k.key.clone())],
            )
            .await;
        let Sent::Answered(r) = sent else {
            panic!("no answer to the replay of {}", k.key);
        };
        assert_eq!(
            (r.status, &r.body),
            (k.status, &k.answer),
            "the replay of {} ({}) answers the first response",
            k.key,
            k.path
        );
    }
}

/// Waits (bounded) until every consumer has reached the log head and the
/// head stays put (policies append events others read).
async fn settle(sh: &Shared) {
    settle_over_http(&sh.client, &sh.base, &sh.tenants[0].key, SETTLE_TIMEOUT).await;
}

/// Each Idempotency-Key took effect at most once: every event carrying it
/// was appended by one request.
fn one_effect_per_key(events: &[StoredEvent], keyed: &[Keyed]) {
    let mut requests: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for e in events {
        if let Some(k) = e.metadata.get("idempotency_key") {
            let request = e
                .metadata
                .get("request_id")
                .map(String::as_str)
                .unwrap_or("");
            requests.entry((&e.tenant, k)).or_default().insert(request);
        }
    }
    let twice: Vec<_> = requests.iter().filter(|(_, r)| r.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "Idempotency-Keys applied by more than one request: {twice:?}"
    );
    println!(
        "{} keys with effects, {} keyed commands answered",
        requests.len(),
        keyed.len()
    );
}

/// Regression test (found by the crash rounds): a process killed after its
/// command appended events but before it stored the answer left the
/// Idempotency-Key reserved; 60 s later a repeat took the reservation over
/// and ran the command a second time. Now the repeat finds the key's events
/// in the log and answers 409 `idempotency_key_applied`, stored for later
/// repeats; a key abandoned before its command took effect is still taken
/// over and run.
async fn an_abandoned_key_whose_command_took_effect_is_not_applied_again(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = &app.admin_key;
    let body = standard_plan_body("once");
    let once = [("idempotency-key", "plan-once".to_string())];
    let first = app.post_with(admin, "/v1/plans", body.clone(), &once).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    abandon(&app, "plan-once").await;
    let again = app.post_with(admin, "/v1/plans", body.clone(), &once).await;
    again.assert_problem(409, "idempotency_key_applied");
    let third = app.post_with(admin, "/v1/plans", body, &once).await;
    third.assert_problem(409, "idempotency_key_applied");
    assert_eq!(third.header("idempotent-replayed"), Some("true"));
    let plans = app.get_after(admin, "/v1/plans", first.position()).await;
    let created: Vec<&Value> = plans.body["data"]
        .as_array()
        .expect("plans")
        .iter()
        .filter(|p| p["code"] == "once")
        .collect();
    assert_eq!(created.len(), 1, "the plan was created once: {created:?}");

    let invalid = json!({"code": "bad", "name": "Bad", "currency": "XYZ"});
    let bad = [("idempotency-key", "plan-bad".to_string())];
    let r = app
        .post_with(admin, "/v1/plans", invalid.clone(), &bad)
        .await;
    r.assert_problem(422, "validation_failed");
    abandon(&app, "plan-bad").await;
    let r = app.post_with(admin, "/v1/plans", invalid, &bad).await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(
        r.header("idempotent-replayed"),
        None,
        "taken over and run again"
    );
}

/// Makes a completed key look like the reservation of a request whose
/// process died five minutes ago.
async fn abandon(app: &TestApp, key: &str) {
    let long_ago = tally_projections::time::to_text(Utc::now() - chrono::Duration::minutes(5));
    sqlx::query(
        "UPDATE idempotency_keys SET state = 'pending', response_status = NULL, \
         response_body = NULL, response_headers = NULL, created_at = $1 WHERE idem_key = $2",
    )
    .bind(long_ago)
    .bind(key)
    .execute(&app.state().db.any)
    .await
    .expect("abandon the key");
}
