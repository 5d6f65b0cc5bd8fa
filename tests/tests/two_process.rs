//! Two `tally serve` processes on one PostgreSQL (issue 14, point 6), the
//! real command line as separate OS processes on a manual clock, each with
//! `--db-max-connections 12` and its own `application_name` (in the database
//! URL), so that `pg_stat_activity` and `pg_locks` tell their connections and
//! advisory locks apart.
//!
//! The load is split between them: subscriptions created on one and
//! activated on the other, seat changes, usage that pushes some
//! subscriptions over their meter's hard cap (the quota policy suspends
//! them), a clock advance on both that makes every subscription renew (the
//! billing policy invoices each renewal) and makes the unpaid ones past due
//! (collections suspend them), a webhook endpoint for the subscription,
//! invoice and quota topics, and NATS JetStream publishing (a `nats-server`
//! of the test's own). In the middle of that load the process that owns
//! every consumer is SIGKILLed; the load goes on against the other.
//!
//! Then: the survivor holds every consumer's advisory lock, runs it and has
//! taken an event appended after the kill through every consumer within 5 s
//! of the kill; each process's connections stayed within its flag for the
//! whole run; every acknowledged command is in the log, appended once; read
//! models equal a rebuild; the sealer's chain verifies over every event;
//! a read with `X-Min-Position` of a seat change, on the other process (the
//! survivor after the kill), sees it;
//! one invoice per activation and renewal, gapless numbers, one quota
//! suspension per subscription that crossed its cap and none for the
//! others, at most one non-payment suspension per past-due crossing; one
//! webhook delivery per (endpoint, event, topic) the log calls for, none
//! received twice; the NATS stream holds each message id once.
//!
//! PostgreSQL only, and it fails (never skips) without it or without a
//! `nats-server` binary. `TALLY_TWO_PROCESS_SEED` replays a run's choices.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};
use tally_aggregates::subscription::{SubscriptionEvent, SuspendReason};
use tally_commands::nats::NatsConfig;
use tally_commands::policies::{billing, quota};
use tally_commands::{topics, webhooks};
use tally_projections::StoredEvent;
use tally_tests::checks::{
    assert_acks_in_log, invoice_numbers_gapless, one_invoice_per_billing_event,
    one_suspension_per_crossing, usage_counted_once, Ack,
};
use tally_tests::nats::{assert_published, expected, receive, OwnNats};
use tally_tests::process::{
    consumer_status, read_log, settle_over_http, ServeOptions, ServerProcess,
};
use tally_tests::receiver::Receiver;
use tally_tests::{assert_read_models_equal_rebuild, tally_bin, Backend, Resp, TestDb};

/// PostgreSQL connections each process may open (`--db-max-connections`).
const DB_MAX_CONNECTIONS: i64 = 12;
/// The survivor must run every consumer this soon after the kill.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(5);
/// How long the takeover is watched before the test gives up on it.
const TAKEOVER_WATCH: Duration = Duration::from_secs(30);
/// The manual clock of both processes starts here; the storm moves both to
/// [`storm_time`], past the first period's end and the activation invoices'
/// due date plus grace.
const T0: &str = "2026-01-01T00:00:00Z";
const DUE_DAYS: u32 = 25;
const GRACE_DAYS: u32 = 3;
/// The hard cap of the plan's meter, and what each quota target is pushed to.
const HARD_CAP: i64 = 100;
const TARGET_USAGE: i64 = 150;
const TARGET_RECORD: i64 = 15;
/// Subscriptions made before the storm: half are quota targets (their
/// activation invoice paid, so collections leave them alone), half are
/// left unpaid (collections make them past due and suspend them).
const SUBSCRIPTIONS: usize = 12;
/// Concurrent clients of the storm.
const CLIENTS: usize = 4;
/// The kill comes this long after the storm began (uniformly random), and
/// the load goes on this long after it.
const KILL_AFTER_MS: std::ops::Range<u64> = 150..700;
const LOAD_AFTER_KILL: Duration = Duration::from_millis(1500);
/// Settling, webhook deliveries, resends: each bounded by this.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the connection monitor samples `pg_stat_activity`.
const MONITOR_EVERY: Duration = Duration::from_millis(25);
/// The application names of the two processes and of the test's own
/// connections.
const APP_A: &str = "tally-a";
const APP_B: &str = "tally-b";
const APP_TEST: &str = "tally-test";
/// The topics the webhook endpoint takes.
const WEBHOOK_TOPICS: [&str; 3] = [
    "billing.subscriptions.v1.*",
    "billing.invoices.v1.*",
    "metering.quota.v1.*",
];

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(T0)
        .expect("time")
        .with_timezone(&Utc)
}

fn storm_time() -> DateTime<Utc> {
    t0() + chrono::Duration::days(32)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Every consumer a `tally serve` with NATS runs, named from the code: the
/// read models, the quota and billing policies, the NATS publisher, the
/// webhook fan-out and the sealer. Collections, the renewal scheduler and
/// the quota resume scheduler are not among them: every process runs them
/// on its clock and the write side decides (no ownership to fail over).
fn consumers() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = tally_projections::all_projectors()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    for policy in [
        quota::CONSUMER,
        billing::CONSUMER,
        tally_commands::nats::CONSUMER,
        webhooks::FANOUT_CONSUMER,
        tally_projections::seal::CONSUMER,
    ] {
        names.insert(policy.to_string());
    }
    names
}

/// The test database's URL with `application_name` set: each process's
/// connections carry its name.
fn url_named(db: &TestDb, name: &str) -> String {
    let sep = if db.url.contains('?') { '&' } else { '?' };
    format!("{}{sep}application_name={name}", db.url)
}

fn serve_options(db: &TestDb, name: &str, nats_url: &str) -> ServeOptions {
    let mut o = ServeOptions::new(tally_bin!(), &url_named(db, name));
    o.clock_start = Some(t0());
    o.args = vec![
        "--db-max-connections".into(),
        DB_MAX_CONNECTIONS.to_string(),
        "--invoice-due-days".into(),
        DUE_DAYS.to_string(),
        "--grace-days".into(),
        GRACE_DAYS.to_string(),
        "--nats-url".into(),
        nats_url.into(),
    ];
    o.env = vec![("TALLY_WEBHOOK_ALLOWED_HOSTS".into(), "127.0.0.1".into())];
    o
}

/// The largest number of connections each application name had open to the
/// test database, sampled every [`MONITOR_EVERY`] until stopped.
struct Monitor {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<BTreeMap<String, i64>>,
}

impl Monitor {
    async fn start(url: String) -> Monitor {
        let mut conn = PgConnection::connect(&url)
            .await
            .expect("monitor connection");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak: BTreeMap<String, i64> = BTreeMap::new();
            while !stopped.load(Ordering::Relaxed) {
                let rows = sqlx::query(
                    // Client backends only: an autovacuum worker on the
                    // test database has no application name.
                    "SELECT application_name, count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND backend_type = 'client backend' \
                     GROUP BY 1",
                )
                .fetch_all(&mut conn)
                .await
                .expect("read pg_stat_activity");
                for r in rows {
                    let name: String = r.get(0);
                    let n: i64 = r.get(1);
                    let p = peak.entry(name).or_default();
                    *p = (*p).max(n);
                }
                tokio::time::sleep(MONITOR_EVERY).await;
            }
            let _ = conn.close().await;
            peak
        });
        Monitor { stop, task }
    }

    async fn finish(self) -> BTreeMap<String, i64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("monitor task")
    }
}

/// Which application holds each consumer's advisory lock (the runtime locks
/// `hashtext('tally.consumer.' || name)` as a bigint: `classid` holds its
/// high half, `objid` its low half); `None` when nobody does.
async fn lock_holders(
    conn: &mut PgConnection,
    names: &BTreeSet<String>,
) -> BTreeMap<String, Option<String>> {
    let names: Vec<String> = names.iter().cloned().collect();
    let rows = sqlx::query(
        "SELECT c.name, a.application_name FROM unnest($1::text[]) AS c(name) \
         LEFT JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.objid::bigint = (hashtext('tally.consumer.' || c.name)::bigint & 4294967295) \
           AND l.classid::bigint = ((hashtext('tally.consumer.' || c.name)::bigint >> 32) & 4294967295) \
         LEFT JOIN pg_stat_activity a ON a.pid = l.pid",
    )
    .bind(&names)
    .fetch_all(conn)
    .await
    .expect("read pg_locks");
    rows.into_iter()
        .map(|r| (r.get::<String, _>(0), r.get::<Option<String>, _>(1)))
        .collect()
}

/// Each consumer's status on the server at `base` (`running`, `standby`, …).
async fn statuses(client: &reqwest::Client, base: &str, key: &str) -> BTreeMap<String, Value> {
    consumer_status(client, base, key)
        .await
        .into_iter()
        .map(|c| (c["name"].as_str().expect("name").to_string(), c))
        .collect()
}

/// Polls until every consumer of `base` has `status` (bounded).
async fn wait_all_status(client: &reqwest::Client, base: &str, key: &str, status: &str) {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let s = statuses(client, base, key).await;
        if s.values().all(|c| c["status"] == status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every consumer of {base} became {status}: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Default)]
struct Ledger {
    acks: Vec<Ack>,
    /// Usage reports whose answer the kill hid: sent again to the survivor
    /// (the transaction id makes a repeat a duplicate).
    lost_usage: Vec<Value>,
    /// Acknowledged usage per transaction id: (subscription, quantity).
    usage: HashMap<String, (String, i64)>,
    /// Answers that must never happen.
    failures: Vec<String>,
    outcomes: BTreeMap<String, u64>,
}

/// What the storm's clients share.
struct Load {
    client: reqwest::Client,
    /// The two processes' base URLs; 0 is the one killed.
    nodes: [String; 2],
    key: String,
    killed: AtomicBool,
    stop: AtomicBool,
    ledger: Mutex<Ledger>,
    targets: Vec<String>,
    unpaid: Vec<String>,
    plan: String,
    tx: AtomicU64,
}

impl Load {
    /// Node `n % 2` while both run, the survivor after the kill.
    fn node(&self, n: u64) -> usize {
        if self.killed.load(Ordering::Relaxed) {
            1
        } else {
            (n % 2) as usize
        }
    }

    fn count(&self, what: String) {
        *self
            .ledger
            .lock()
            .expect("ledger")
            .outcomes
            .entry(what)
            .or_default() += 1;
    }

    /// A request to node `node`; `None` when no answer came (the kill).
    async fn send(&self, node: usize, path: &str, body: Option<&Value>) -> Option<Resp> {
        let url = format!("{}{path}", self.nodes[node]);
        let req = match body {
            Some(b) => self.client.post(url).json(b),
            None => self.client.get(url),
        };
        let r = req.bearer_auth(&self.key).send().await.ok()?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.ok()?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Some(Resp {
            status,
            headers,
            body,
        })
    }

    /// A command: a 2xx is acknowledged (resource, version, position and
    /// request id); a 5xx other than 503 `unavailable` is a failure.
    async fn command(&self, node: usize, path: &str, body: Value) -> Option<Resp> {
        let Some(r) = self.send(node, path, Some(&body)).await else {
            self.count(format!("lost (node {node})"));
            if path == "/v1/usage" {
                self.ledger.lock().expect("ledger").lost_usage.push(body);
            }
            return None;
        };
        self.count(format!(
            "{} {}",
            r.status,
            r.body["code"].as_str().unwrap_or("")
        ));
        if r.status >= 500 && !(r.status == 503 && r.body["code"] == "unavailable") {
            self.ledger.lock().expect("ledger").failures.push(format!(
                "POST {path} on node {node}: {} {:?}",
                r.status, r.body
            ));
        }
        if !(200..300).contains(&r.status) {
            if r.status == 503 && path == "/v1/usage" {
                self.ledger.lock().expect("ledger").lost_usage.push(body);
            }
            return Some(r);
        }
        let kind = match path.split('/').nth(2) {
            Some("plans") => Some("plan"),
            Some("subscriptions") => Some("subscription"),
            Some("invoices") => Some("invoice"),
            Some("usage") => Some("usage_record"),
            _ => None,
        };
        let id = r.body["id"].as_str().unwrap_or_default().to_string();
        let version = r.body["version"].as_i64().unwrap_or(0);
        let mut ledger = self.ledger.lock().expect("ledger");
        if kind == Some("usage_record") {
            let tx = body["transaction_id"].as_str().expect("tx").to_string();
            let sub = body["subscription_id"].as_str().expect("sub").to_string();
            let qty: i64 = body["quantity"]
                .as_str()
                .and_then(|q| q.parse().ok())
                .expect("quantity");
            ledger.usage.insert(tx, (sub, qty));
        }
        ledger.acks.push(Ack {
            tenant: "default".into(),
            kind: kind.filter(|_| !id.is_empty() && version > 0),
            id,
            version,
            position: r.header("x-log-position").and_then(|p| p.parse().ok()),
            // A usage answer may be the original record (a duplicate), not
            // this request's append.
            request_id: (kind != Some("usage_record"))
                .then(|| r.header("x-request-id").map(str::to_string))
                .flatten(),
            what: format!("POST {path} on node {node} → {}", r.status),
        });
        drop(ledger);
        Some(r)
    }

    /// Reads `sub` on `node` with `X-Min-Position` of the answer `written`
    /// (maybe from the other process): it must show that version or a
    /// later one. A 503 `projection_lagging` (the wait is bounded, and a
    /// takeover may be under way) is counted, not failed.
    async fn read_your_write(&self, node: usize, sub: &str, written: &Resp) {
        let r = self
            .client
            .get(format!("{}/v1/subscriptions/{sub}", self.nodes[node]))
            .bearer_auth(&self.key)
            .header("x-min-position", written.position().to_string())
            .send()
            .await;
        let Ok(r) = r else {
            self.count(format!("GET lost (node {node})"));
            return;
        };
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        self.count(format!(
            "GET {status} {}",
            body["code"].as_str().unwrap_or("")
        ));
        let version = written.body["version"].as_i64().unwrap_or(0);
        let ok = match status {
            200 => body["version"].as_i64().unwrap_or(0) >= version,
            503 => matches!(
                body["code"].as_str(),
                Some("projection_lagging" | "unavailable")
            ),
            _ => false,
        };
        if !ok {
            self.ledger.lock().expect("ledger").failures.push(format!(
                "read-your-writes: {sub} on node {node} after version {version} at position {}: \
                 {status} {body:?}",
                written.position()
            ));
        }
    }

    fn next_tx(&self) -> String {
        format!("tx-{}", self.tx.fetch_add(1, Ordering::Relaxed))
    }

    fn usage_body(&self, sub: &str, quantity: i64) -> Value {
        json!({
            "subscription_id": sub, "meter": "api_calls",
            "quantity": quantity.to_string(),
            "timestamp": rfc3339(storm_time() - chrono::Duration::minutes(30)),
            "transaction_id": self.next_tx(),
        })
    }

    /// Acknowledged usage of `sub`.
    fn used(&self, sub: &str) -> i64 {
        self.ledger
            .lock()
            .expect("ledger")
            .usage
            .values()
            .filter(|(s, _)| s == sub)
            .map(|(_, q)| q)
            .sum()
    }

    /// Creates a subscription on one node and activates it on the other.
    async fn new_subscription(&self, n: u64, customer: &str, seats: u32) -> Option<String> {
        let body = json!({"customer_id": customer, "plan_id": self.plan, "seats": seats});
        let r = self
            .command(self.node(n), "/v1/subscriptions", body)
            .await?;
        if r.status != 201 {
            return None;
        }
        let id = r.id();
        let path = format!("/v1/subscriptions/{id}/activate");
        let r = self.command(self.node(n + 1), &path, json!({})).await?;
        (r.status == 200).then_some(id)
    }
}

/// One storm client: usage on the quota targets (up to [`TARGET_USAGE`]
/// each) and on the unpaid subscriptions, seat changes, new subscriptions.
async fn storm_client(load: Arc<Load>, me: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = me as u64;
    while !load.stop.load(Ordering::Relaxed) {
        n += 1;
        let node = load.node(n);
        match rng.gen_range(0..10) {
            0..=4 => {
                let sub = &load.targets[rng.gen_range(0..load.targets.len())];
                if load.used(sub) < TARGET_USAGE {
                    let body = load.usage_body(sub, TARGET_RECORD);
                    load.command(node, "/v1/usage", body).await;
                }
            }
            5 | 6 => {
                let sub = &load.unpaid[rng.gen_range(0..load.unpaid.len())];
                let body = load.usage_body(sub, 1);
                load.command(node, "/v1/usage", body).await;
            }
            7 | 8 => {
                let all: Vec<&String> = load.targets.iter().chain(&load.unpaid).collect();
                let sub = all[rng.gen_range(0..all.len())];
                let seats = rng.gen_range(1..=10);
                let body = if rng.gen_bool(0.5) {
                    json!({"seats": seats, "proration": "prorate"})
                } else {
                    json!({"seats": seats})
                };
                let path = format!("/v1/subscriptions/{sub}/change-seats");
                if let Some(r) = load.command(node, &path, body).await {
                    if r.status == 200 {
                        load.read_your_write(load.node(n + 1), sub, &r).await;
                    }
                }
            }
            _ => {
                let customer = format!("cus_storm_{me}_{n}");
                load.new_subscription(n, &customer, rng.gen_range(1..=5))
                    .await;
            }
        }
    }
}

/// Moves the manual clock of both processes to `to`.
async fn advance_both(load: &Load, to: DateTime<Utc>) {
    for node in 0..2 {
        let r = load
            .send(
                node,
                "/v1/admin/clock/advance",
                Some(&json!({"to": rfc3339(to)})),
            )
            .await
            .expect("clock advance answered");
        assert_eq!(r.status, 200, "clock advance on node {node}: {:?}", r.body);
    }
}

/// Waits (bounded) for the open activation invoice of `sub` and pays it.
async fn pay_activation_invoice(load: &Load, sub: &str, node: usize) {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    let path = format!("/v1/invoices?subscription_id={sub}&status=open");
    loop {
        let r = load.send(node, &path, None).await.expect("invoice list");
        assert_eq!(r.status, 200, "{:?}", r.body);
        if let Some(inv) = r.body["data"].as_array().and_then(|d| d.first()) {
            let id = inv["id"].as_str().expect("invoice id");
            let body = json!({"amount": inv["amount_due"], "reference": format!("pay-{id}")});
            let r = load
                .command(node, &format!("/v1/invoices/{id}/payments"), body)
                .await
                .expect("payment answered");
            assert!((200..300).contains(&r.status), "pay {id}: {:?}", r.body);
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no activation invoice for {sub}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the watch of the takeover saw, measured from the kill.
#[derive(Debug)]
struct Takeover {
    /// Every consumer's advisory lock held by the survivor.
    locked: Duration,
    /// ... and none on standby there (a consumer reports `running` once its
    /// first batch there is done, so this includes a policy's catch-up).
    owned: Duration,
    /// ... and every consumer past the marker appended after the kill.
    caught_up: Duration,
    /// When each consumer passed the marker (as far as the polling saw).
    passed: BTreeMap<String, Duration>,
}

/// Watches the survivor from the kill (`killed`) until it holds and runs
/// every consumer and each has processed `marker` (bounded by
/// [`TAKEOVER_WATCH`]).
async fn watch_takeover(
    load: &Load,
    conn: &mut PgConnection,
    names: &BTreeSet<String>,
    killed: Instant,
    marker: i64,
) -> Takeover {
    let (mut locked, mut owned) = (None, None);
    let mut passed: BTreeMap<String, Duration> = BTreeMap::new();
    loop {
        let holders = lock_holders(conn, names).await;
        let status = statuses(&load.client, &load.nodes[1], &load.key).await;
        let all_held = holders.values().all(|h| h.as_deref() == Some(APP_B));
        let running = names.iter().all(|n| {
            status
                .get(n)
                .is_some_and(|s| s["status"] != "standby" && s["status"] != "starting")
        });
        for n in names {
            if status[n]["position"].as_i64().unwrap_or(0) >= marker {
                passed.entry(n.clone()).or_insert_with(|| killed.elapsed());
            }
        }
        if locked.is_none() && all_held {
            locked = Some(killed.elapsed());
        }
        if owned.is_none() && all_held && running {
            owned = Some(killed.elapsed());
        }
        if let (Some(locked), Some(owned)) = (locked, owned) {
            if passed.len() == names.len() {
                return Takeover {
                    locked,
                    owned,
                    caught_up: killed.elapsed(),
                    passed,
                };
            }
        }
        assert!(
            killed.elapsed() < TAKEOVER_WATCH,
            "the survivor did not take over within {TAKEOVER_WATCH:?}: locks {holders:#?}, \
             status {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_share_the_load_and_the_survivor_of_a_kill_runs_every_consumer() {
    let seed = std::env::var("TALLY_TWO_PROCESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen::<u64>());
    println!("TALLY_TWO_PROCESS_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let db = TestDb::new(Backend::Postgres).await;
    let names = consumers();

    let mut nats = OwnNats::new();
    nats.start();
    let receiver = Receiver::start(Vec::new(), 200).await;
    let mut test_conn = PgConnection::connect(&url_named(&db, APP_TEST))
        .await
        .expect("test connection");

    // A first, until it runs every consumer; then B, on standby for each.
    let monitor = Monitor::start(url_named(&db, APP_TEST)).await;
    let mut a = ServerProcess::start(&serve_options(&db, APP_A, &nats.url())).await;
    let key = a
        .bootstrap_key()
        .await
        .expect("the first start prints the bootstrap key");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let listed: BTreeSet<String> = statuses(&client, &a.base, &key).await.into_keys().collect();
    assert_eq!(listed, names, "the consumers a process runs");
    wait_all_status(&client, &a.base, &key, "running").await;
    let b = ServerProcess::start(&serve_options(&db, APP_B, &nats.url())).await;
    wait_all_status(&client, &b.base, &key, "standby").await;
    let holders = lock_holders(&mut test_conn, &names).await;
    assert!(
        holders.values().all(|h| h.as_deref() == Some(APP_A)),
        "A holds every consumer's lock: {holders:#?}"
    );

    let plan = client
        .post(format!("{}/v1/plans", a.base))
        .bearer_auth(&key)
        .json(&json!({
            "code": "metered", "name": "Metered", "currency": "EUR", "interval": "month",
            "base_price": "10.00", "seat_price": "2.50", "seats": {"min": 1, "max": 20},
            "meters": [{"key": "api_calls", "included": "50", "hard_cap": HARD_CAP.to_string(),
                        "overage_unit_price": "0.01", "reset": "monthly"}]
        }))
        .send()
        .await
        .expect("create plan");
    assert_eq!(plan.status().as_u16(), 201);
    let plan: Value = plan.json().await.expect("plan");
    let endpoint = client
        .post(format!("{}/v1/webhooks", b.base))
        .bearer_auth(&key)
        .json(&json!({"url": receiver.url, "topics": WEBHOOK_TOPICS}))
        .send()
        .await
        .expect("create webhook endpoint");
    assert_eq!(endpoint.status().as_u16(), 201);
    let endpoint: Value = endpoint.json().await.expect("endpoint");
    let endpoint = endpoint["id"].as_str().expect("endpoint id").to_string();

    let mut load = Load {
        client: client.clone(),
        nodes: [a.base.clone(), b.base.clone()],
        key: key.clone(),
        killed: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        ledger: Mutex::new(Ledger::default()),
        targets: Vec::new(),
        unpaid: Vec::new(),
        plan: plan["id"].as_str().expect("plan id").to_string(),
        tx: AtomicU64::new(0),
    };

    // Before the storm: subscriptions made on one process and activated on
    // the other; the quota targets pay their activation invoice.
    for i in 0..SUBSCRIPTIONS {
        let sub = load
            .new_subscription(i as u64, &format!("cus_{i}"), 2)
            .await
            .expect("subscription created and activated");
        if i % 2 == 0 {
            pay_activation_invoice(&load, &sub, (i + 1) % 2).await;
            load.targets.push(sub);
        } else {
            load.unpaid.push(sub);
        }
    }
    let load = Arc::new(load);

    // The storm: both clocks past the first period (renewals, past due),
    // clients on both processes, and the owner of every consumer killed.
    advance_both(&load, storm_time()).await;
    let mut clients = Vec::new();
    for me in 0..CLIENTS {
        clients.push(tokio::spawn(storm_client(
            load.clone(),
            me,
            seed.wrapping_add(me as u64 + 1),
        )));
    }
    tokio::time::sleep(Duration::from_millis(rng.gen_range(KILL_AFTER_MS))).await;
    let holders = lock_holders(&mut test_conn, &names).await;
    assert!(
        holders.values().all(|h| h.as_deref() == Some(APP_A)),
        "A still holds every consumer's lock before the kill: {holders:#?}"
    );
    let lag_at_kill: BTreeMap<String, i64> = statuses(&client, &a.base, &key)
        .await
        .into_iter()
        .map(|(n, s)| (n, s["lag_events"].as_i64().unwrap_or(0)))
        .collect();
    load.killed.store(true, Ordering::Relaxed);
    // The takeover is timed from just before the SIGKILL; leases are told
    // apart by the wall time just after it (A took none later).
    let killed = Instant::now();
    a.kill();
    let killed_wall = Utc::now();
    let marker = load
        .command(
            1,
            "/v1/subscriptions",
            json!({"customer_id": "cus_marker", "plan_id": load.plan, "seats": 1}),
        )
        .await
        .expect("the survivor answers");
    assert_eq!(marker.status, 201, "{:?}", marker.body);
    let takeover = watch_takeover(&load, &mut test_conn, &names, killed, marker.position()).await;
    println!(
        "killed A {:?} into the run, consumer lags then {lag_at_kill:?}",
        killed.duration_since(started)
    );
    println!(
        "after the kill: every lock held by B at {:?}, every consumer running there at {:?}, \
         past the marker at {:?}: {:?}",
        takeover.locked, takeover.owned, takeover.caught_up, takeover.passed
    );
    assert!(
        [takeover.locked, takeover.owned, takeover.caught_up]
            .iter()
            .all(|t| *t <= TAKEOVER_LIMIT),
        "the survivor ran every consumer only after {takeover:?} (limit {TAKEOVER_LIMIT:?})"
    );

    // The load goes on against the survivor, then stops; what the kill hid
    // is sent again; every quota target is taken over its cap.
    let until = killed + LOAD_AFTER_KILL;
    if let Some(rest) = until.checked_duration_since(Instant::now()) {
        tokio::time::sleep(rest).await;
    }
    load.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("storm client");
    }
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let lost = std::mem::take(&mut load.ledger.lock().expect("ledger").lost_usage);
        if lost.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "usage still without an answer: {lost:?}"
        );
        for body in lost {
            load.command(1, "/v1/usage", body).await;
        }
    }
    for sub in &load.targets {
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        while load.used(sub) <= HARD_CAP {
            assert!(tokio::time::Instant::now() < deadline, "usage of {sub}");
            let body = load.usage_body(sub, TARGET_RECORD);
            load.command(1, "/v1/usage", body).await;
        }
    }
    settle_over_http(&client, &b.base, &key, SETTLE_TIMEOUT).await;
    let webhook_rows = wait_webhook_deliveries(&mut test_conn, &endpoint, killed_wall).await;
    let endpoint_position: i64 =
        sqlx::query_scalar("SELECT created_position FROM webhook_endpoints WHERE id = $1")
            .bind(&endpoint)
            .fetch_one(&mut test_conn)
            .await
            .expect("the endpoint's position");
    let received = receiver.received();
    let peaks = monitor.finish().await;
    drop(b);
    let _ = test_conn.close().await;

    let ledger = std::mem::take(&mut *load.ledger.lock().expect("ledger"));
    println!("outcomes: {:?}", ledger.outcomes);
    println!("peak connections per application: {peaks:?}");
    assert!(
        ledger.failures.is_empty(),
        "unexpected answers: {:#?}",
        ledger.failures
    );
    for (app, peak) in &peaks {
        assert!(
            [APP_A, APP_B, APP_TEST].contains(&app.as_str()),
            "a connection to the test database outside the budgets: {app:?} ({peak})"
        );
    }
    for app in [APP_A, APP_B] {
        let peak = peaks.get(app).copied().unwrap_or(0);
        assert!(
            (1..=DB_MAX_CONNECTIONS).contains(&peak),
            "{app} had {peak} connections (--db-max-connections {DB_MAX_CONNECTIONS})"
        );
    }

    // Nothing lost, nothing applied twice.
    let events = read_log(&db.url).await;
    assert_acks_in_log(&events, &ledger.acks);
    println!(
        "{} events in the log, {} acknowledged commands",
        events.len(),
        ledger.acks.len()
    );
    usage_counted_once(&db, &events).await;
    invoice_numbers_gapless(&events);
    one_invoice_per_billing_event(&events);
    one_suspension_per_crossing(&events);
    one_quota_suspension_per_crossing(&events, &load.targets, &load.unpaid);
    webhook_deliveries_once(
        &events,
        &endpoint,
        endpoint_position,
        &webhook_rows,
        &received,
    );
    let js = async_nats::jetstream::new(
        async_nats::connect(nats.url())
            .await
            .expect("connect to the test's nats-server"),
    );
    let nats_config = NatsConfig::new(nats.url());
    let conn = db.connect().await;
    let published = expected(&conn, &nats_config).await;
    assert_published(
        &receive(&js, &nats_config, published.len()).await,
        &published,
    );
    println!("NATS: {} messages, each id once", published.len());

    let sealed = tally_projections::seal::verify(&conn, None)
        .await
        .expect("verify the chain");
    assert!(sealed.is_ok(), "{sealed:?}");
    assert_eq!(
        (sealed.checked_events, sealed.unsealed_events),
        (events.len() as u64, 0),
        "the sealer chained every event once: {sealed:?}"
    );
    assert_read_models_equal_rebuild(&conn).await;
    conn.close().await;
    println!("two-process run took {:?}", started.elapsed());
}

/// The quota policy suspended each target once (each crossed its cap in one
/// window) and none of the others.
fn one_quota_suspension_per_crossing(
    events: &[StoredEvent],
    targets: &[String],
    others: &[String],
) {
    let mut suspensions: BTreeMap<&str, usize> = BTreeMap::new();
    for e in events.iter().filter(|e| e.aggregate_type == "subscription") {
        if let SubscriptionEvent::SubscriptionSuspended {
            reason: SuspendReason::QuotaExceeded { .. },
            ..
        } = e.decode::<SubscriptionEvent>().expect("subscription event")
        {
            *suspensions.entry(e.resource_id()).or_default() += 1;
        }
    }
    for sub in targets {
        assert_eq!(
            suspensions.get(sub.as_str()),
            Some(&1),
            "one quota suspension of {sub}: {suspensions:?}"
        );
    }
    for sub in others {
        assert_eq!(
            suspensions.get(sub.as_str()),
            None,
            "no quota suspension of {sub}"
        );
    }
    println!("{} subscriptions suspended for quota once", targets.len());
}

/// One delivery row of the endpoint.
#[derive(Debug)]
struct DeliveryRow {
    id: String,
    event_id: String,
    topic: String,
    subject: String,
    status: String,
    leased_until: Option<DateTime<Utc>>,
}

/// Waits (bounded) until every delivery of `endpoint` is delivered, except
/// those a worker of the killed process had leased (the lease holds them for
/// a minute, on the wall clock) and the later ones of their subjects, which
/// wait behind them. Returns the rows.
async fn wait_webhook_deliveries(
    conn: &mut PgConnection,
    endpoint: &str,
    killed_wall: DateTime<Utc>,
) -> Vec<DeliveryRow> {
    let lease = chrono::Duration::seconds(60);
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let rows: Vec<DeliveryRow> = sqlx::query(
            "SELECT id, event_id, topic, subject, status, leased_until \
             FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY position, ordinal",
        )
        .bind(endpoint)
        .fetch_all(&mut *conn)
        .await
        .expect("read deliveries")
        .into_iter()
        .map(|r| DeliveryRow {
            id: r.get("id"),
            event_id: r.get("event_id"),
            topic: r.get("topic"),
            subject: r.get("subject"),
            status: r.get("status"),
            leased_until: tally_projections::time::from_text(&r.get::<String, _>("leased_until")),
        })
        .collect();
        let held_by_the_dead: BTreeSet<&str> = rows
            .iter()
            .filter(|d| d.status != "delivered")
            .filter(|d| d.leased_until.is_some_and(|u| u < killed_wall + lease))
            .map(|d| d.subject.as_str())
            .collect();
        let waiting: Vec<&DeliveryRow> = rows
            .iter()
            .filter(|d| d.status != "delivered" && !held_by_the_dead.contains(d.subject.as_str()))
            .collect();
        if waiting.is_empty() {
            println!(
                "webhooks: {} deliveries, {} subjects held by the killed process's leases",
                rows.len(),
                held_by_the_dead.len()
            );
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries not delivered: {waiting:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fan-out wrote one delivery per (event, topic) of the log the
/// endpoint takes (created after it), no more, no fewer; the receiver got
/// each delivered one, and none twice.
fn webhook_deliveries_once(
    events: &[StoredEvent],
    endpoint: &str,
    created_position: i64,
    rows: &[DeliveryRow],
    received: &[tally_tests::receiver::Received],
) {
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    for e in events.iter().filter(|e| e.position > created_position) {
        for i in topics::integration_events(e) {
            if WEBHOOK_TOPICS
                .iter()
                .any(|p| webhooks::topic_matches(p, i.topic))
            {
                wanted.insert((e.event_id.clone(), i.topic.to_string()));
            }
        }
    }
    let written: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.event_id.clone(), r.topic.clone()))
        .collect();
    let unique: BTreeSet<(String, String)> = written.iter().cloned().collect();
    assert_eq!(unique.len(), written.len(), "a delivery written twice");
    let missing: Vec<_> = wanted.difference(&unique).collect();
    let extra: Vec<_> = unique.difference(&wanted).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "webhook deliveries of {endpoint}: missing {missing:?}, extra {extra:?}"
    );
    let mut got: BTreeMap<&str, usize> = BTreeMap::new();
    for r in received {
        *got.entry(r.header("tally-delivery-id")).or_default() += 1;
    }
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "deliveries received twice: {twice:?}");
    for r in rows.iter().filter(|r| r.status == "delivered") {
        assert!(
            got.contains_key(r.id.as_str()),
            "delivered but never received: {r:?}"
        );
    }
    println!(
        "webhooks: {} deliveries written once each, {} received once each",
        rows.len(),
        got.len()
    );
}
