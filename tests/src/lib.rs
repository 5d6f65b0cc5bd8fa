//! The end-to-end test harness: `TestApp` starts the real server on port 0
//! against a fresh database (a new SQLite file, or a new PostgreSQL database
//! created for the test and dropped after), and has a method per endpoint.
//!
//! PostgreSQL tests never skip: without a reachable server they fail. The
//! server is `TALLY_TEST_POSTGRES_URL` (an admin URL, any database), else
//! `DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use sqlx::Connection;
use tally_api::{start, Config, Server};
use tally_commands::keys::{self, Role};
pub use tally_commands::nats::NatsConfig;
pub use tally_commands::policies::billing::BillingConfig;
pub use tally_commands::webhooks::{AllowList, WebhookConfig};
use tally_commands::Clock;
use tally_projections::runtime::RuntimeConfig;
use tally_projections::Db;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates `mod name { sqlite, postgres }` running `name(Backend)` on both.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::Backend::Postgres).await
            }
        }
    )*};
}

pub fn postgres_admin_url() -> String {
    std::env::var("TALLY_TEST_POSTGRES_URL")
        .or_else(|_| {
            std::env::var("DATABASE_URL").map(|u| {
                if u.starts_with("postgres") {
                    u
                } else {
                    String::new()
                }
            })
        })
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database made for one test; dropped (PostgreSQL) or deleted (SQLite) after.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    file: Option<PathBuf>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let name = format!("tally_test_{}", uuid::Uuid::new_v4().simple());
        match backend {
            Backend::Sqlite => {
                let file = std::env::temp_dir().join(format!("{name}.db"));
                TestDb {
                    url: format!("sqlite://{}", file.display()),
                    pg_name: None,
                    file: Some(file),
                }
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!("PostgreSQL tests need a server at {admin} (set TALLY_TEST_POSTGRES_URL): {e}")
                });
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let _ = conn.close().await;
                let base = admin
                    .rsplit_once('/')
                    .map(|(b, _)| b.to_string())
                    .unwrap_or(admin.clone());
                let url = match admin.split_once('?') {
                    Some((_, q)) => {
                        format!("{}/{name}?{q}", base.split('?').next().unwrap_or(&base))
                    }
                    None => format!("{base}/{name}"),
                };
                TestDb {
                    url,
                    pg_name: Some(name),
                    file: None,
                }
            }
        }
    }

    /// Connects and migrates.
    pub async fn connect(&self) -> Db {
        let db = Db::connect(&self.url).await.expect("connect test database");
        db.migrate().await.expect("migrate test database");
        db
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
        }
        if let Some(name) = self.pg_name.take() {
            let admin = postgres_admin_url();
            // Drop from a separate thread: we may be inside a runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await
                        .ok()
                })
            })
            .join();
        }
    }
}

/// A response as the tests look at it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `X-Log-Position` of a command response.
    pub fn position(&self) -> i64 {
        self.header("x-log-position")
            .and_then(|p| p.parse().ok())
            .expect("X-Log-Position header")
    }

    pub fn id(&self) -> String {
        self.body["id"].as_str().expect("id in body").to_string()
    }

    /// Asserts a problem+json error with this status and code.
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "status of {:?}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{:?}",
            self.body
        );
        assert_eq!(self.body["code"], code, "{:?}", self.body);
        assert_eq!(self.body["status"], status);
        assert_eq!(
            self.body["type"],
            format!("https://tally.dev/errors/{code}")
        );
    }
}

/// The real server on port 0 with its own database.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    /// The bootstrap admin key of tenant `default`.
    pub admin_key: String,
    pub backend: Backend,
    server: Option<Server>,
    pub db: TestDb,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with_clock(backend, Clock::System).await
    }

    pub async fn spawn_manual(backend: Backend, start_at: DateTime<Utc>) -> TestApp {
        Self::spawn_with_clock(backend, Clock::manual(start_at)).await
    }

    pub async fn spawn_with_clock(backend: Backend, clock: Clock) -> TestApp {
        Self::spawn_configured(backend, clock, BillingConfig::default()).await
    }

    /// A manual-clock server with its own payment terms and grace period.
    pub async fn spawn_billing(
        backend: Backend,
        start_at: DateTime<Utc>,
        billing: BillingConfig,
    ) -> TestApp {
        Self::spawn_configured(backend, Clock::manual(start_at), billing).await
    }

    pub async fn spawn_configured(
        backend: Backend,
        clock: Clock,
        billing: BillingConfig,
    ) -> TestApp {
        Self::spawn_full(backend, clock, billing, |_| {}).await
    }

    /// A system-clock server that publishes integration events to NATS.
    pub async fn spawn_nats(backend: Backend, nats: NatsConfig) -> TestApp {
        Self::spawn_full(backend, Clock::System, BillingConfig::default(), |c| {
            c.nats = Some(nats)
        })
        .await
    }

    /// A system-clock server with its own per-key rate limit.
    pub async fn spawn_limited(
        backend: Backend,
        limit: tally_api::ratelimit::RateLimit,
    ) -> TestApp {
        Self::spawn_full(backend, Clock::System, BillingConfig::default(), |c| {
            c.rate_limit = limit
        })
        .await
    }

    /// A system-clock server with its configuration changed by `tune`
    /// (request limits, rate limit, …).
    pub async fn spawn_tuned(backend: Backend, tune: impl FnOnce(&mut Config)) -> TestApp {
        Self::spawn_full(backend, Clock::System, BillingConfig::default(), tune).await
    }

    async fn spawn_full(
        backend: Backend,
        clock: Clock,
        billing: BillingConfig,
        tune: impl FnOnce(&mut Config),
    ) -> TestApp {
        let db = TestDb::new(backend).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let mut config = Config {
            database_url: db.url.clone(),
            clock,
            runtime: RuntimeConfig {
                poll_interval: Duration::from_millis(200),
                ..RuntimeConfig::default()
            },
            billing,
            nats: None,
            rate_limit: Default::default(),
            limits: Default::default(),
            db_max_connections: tally_projections::db::DEFAULT_MAX_CONNECTIONS,
        };
        tune(&mut config);
        let server = start(config, listener).await.expect("start server");
        Self::on(backend, db, server)
    }

    /// A client of a server started on the fresh database `db`.
    fn on(backend: Backend, db: TestDb, server: Server) -> TestApp {
        let admin_key = server
            .bootstrap_key
            .clone()
            .expect("a bootstrap key on first start");
        TestApp {
            base: format!("http://{}", server.addr),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("client"),
            admin_key,
            backend,
            server: Some(server),
            db,
        }
    }

    pub fn state(&self) -> &tally_api::AppState {
        &self.server.as_ref().expect("running").state
    }

    /// Stops the server gracefully (the database stays).
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.expect("graceful shutdown");
        }
    }

    /// A manual-clock server with its own webhook settings (allowed hosts,
    /// retry schedule, poll interval) instead of the environment's.
    pub async fn spawn_webhooks(
        backend: Backend,
        start_at: DateTime<Utc>,
        webhooks: WebhookConfig,
    ) -> TestApp {
        let db = TestDb::new(backend).await;
        let server = start_webhook_server(&db.url, Clock::manual(start_at), webhooks).await;
        Self::on(backend, db, server)
    }

    /// A restart: stops the server gracefully and starts another on the same
    /// database and clock (on a new port), with `webhooks`.
    pub async fn restart_with_webhooks(&mut self, webhooks: WebhookConfig) {
        let clock = self.state().dispatcher.clock().clone();
        self.stop().await;
        let server = start_webhook_server(&self.db.url, clock, webhooks).await;
        self.base = format!("http://{}", server.addr);
        self.server = Some(server);
    }

    /// A new key for `tenant` with `role`.
    pub async fn key(&self, tenant: &str, role: &str) -> String {
        let role = Role::parse(role).expect("role");
        keys::create(&self.state().db, tenant, role)
            .await
            .expect("create key")
            .1
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        for (n, v) in headers {
            req = req.header(*n, v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let r = req.send().await.expect("request sent");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.expect("response body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, key: &str, path: &str, body: Value) -> Resp {
        self.post_with(key, path, body, &[]).await
    }

    pub async fn post_with(
        &self,
        key: &str,
        path: &str,
        body: Value,
        headers: &[(&str, String)],
    ) -> Resp {
        self.request(
            reqwest::Method::POST,
            path,
            Some(key),
            headers,
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn get(&self, key: &str, path: &str) -> Resp {
        self.request(reqwest::Method::GET, path, Some(key), &[], None)
            .await
    }

    /// GET that first waits for the read models to reach `position`.
    pub async fn get_after(&self, key: &str, path: &str, position: i64) -> Resp {
        self.request(
            reqwest::Method::GET,
            path,
            Some(key),
            &[("x-min-position", position.to_string())],
            None,
        )
        .await
    }

    // ---- one method per endpoint ----

    pub async fn create_plan(&self, key: &str, body: Value) -> Resp {
        self.post(key, "/v1/plans", body).await
    }

    pub async fn archive_plan(&self, key: &str, id: &str) -> Resp {
        self.post(key, &format!("/v1/plans/{id}/archive"), json!({}))
            .await
    }

    pub async fn create_subscription(&self, key: &str, body: Value) -> Resp {
        self.post(key, "/v1/subscriptions", body).await
    }

    pub async fn activate(&self, key: &str, id: &str, body: Value) -> Resp {
        self.post(key, &format!("/v1/subscriptions/{id}/activate"), body)
            .await
    }

    pub async fn change_plan(&self, key: &str, id: &str, body: Value) -> Resp {
        self.post(key, &format!("/v1/subscriptions/{id}/change-plan"), body)
            .await
    }

    pub async fn change_seats(&self, key: &str, id: &str, body: Value) -> Resp {
        self.post(key, &format!("/v1/subscriptions/{id}/change-seats"), body)
            .await
    }

    pub async fn suspend(&self, key: &str, id: &str, body: Value) -> Resp {
        self.post(key, &format!("/v1/subscriptions/{id}/suspend"), body)
            .await
    }

    pub async fn resume(&self, key: &str, id: &str) -> Resp {
        self.post(key, &format!("/v1/subscriptions/{id}/resume"), json!({}))
            .await
    }

    pub async fn end_trial(&self, key: &str, id: &str) -> Resp {
        self.post(key, &format!("/v1/subscriptions/{id}/end-trial"), json!({}))
            .await
    }

    pub async fn cancel(&self, key: &str, id: &str, body: Value) -> Resp {
        self.post(key, &format!("/v1/subscriptions/{id}/cancel"), body)
            .await
    }

    /// `PUT /v1/customers/{id}`: creates or updates the customer.
    pub async fn put_customer(&self, key: &str, id: &str, body: Value) -> Resp {
        self.request(
            reqwest::Method::PUT,
            &format!("/v1/customers/{id}"),
            Some(key),
            &[],
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn stream_events(&self, key: &str, kind: &str, id: &str) -> Resp {
        self.get(key, &format!("/v1/audit/streams/{kind}/{id}/events"))
            .await
    }

    pub async fn projections(&self, key: &str) -> Resp {
        self.get(key, "/v1/admin/projections").await
    }

    pub async fn rebuild(&self, key: &str, name: &str) -> Resp {
        self.post(
            key,
            &format!("/v1/admin/projections/{name}/rebuild"),
            json!({}),
        )
        .await
    }

    pub async fn list_keys(&self, key: &str, query: &str) -> Resp {
        self.get(key, &format!("/v1/keys{query}")).await
    }

    pub async fn revoke_key(&self, key: &str, id: &str) -> Resp {
        self.request(
            reqwest::Method::DELETE,
            &format!("/v1/keys/{id}"),
            Some(key),
            &[],
            None,
        )
        .await
    }

    pub async fn advance_clock(&self, key: &str, body: Value) -> Resp {
        self.post(key, "/v1/admin/clock/advance", body).await
    }

    /// A standard monthly plan: 10.00 EUR base + 2.50 per seat, 1–20 seats.
    pub async fn standard_plan(&self) -> String {
        let r = self
            .create_plan(&self.admin_key, standard_plan_body("std"))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.id()
    }

    /// An active subscription on `plan` with `seats`.
    pub async fn active_subscription(&self, plan: &str, seats: u32) -> (String, Resp) {
        let r = self
            .create_subscription(
                &self.admin_key,
                json!({"customer_id": "cus_1", "plan_id": plan, "seats": seats}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let id = r.id();
        let r = self.activate(&self.admin_key, &id, json!({})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        (id, r)
    }

    /// Waits (bounded) until every consumer has reached the current log head.
    async fn wait_for_head(&self) {
        assert!(
            self.state()
                .runtime
                .wait_rebuilds(Duration::from_secs(60))
                .await,
            "rebuilds did not finish"
        );
        let head = self.state().dispatcher.log().head().await.expect("head");
        if !self
            .state()
            .runtime
            .wait_for(head, Duration::from_secs(20))
            .await
            .expect("wait")
        {
            let status = self.state().runtime.status().await.expect("status");
            panic!("projections did not reach {head}: {status:#?}");
        }
    }

    /// Asserts every read model equals a fresh rebuild, on a running server
    /// that nothing else writes to: settles, dumps the tables, rebuilds every
    /// projection blue/green through the admin API, settles, dumps again.
    pub async fn assert_read_models_equal_rebuild(&self) {
        self.settle().await;
        let db = &self.state().db;
        let before = dump_read_models(db).await;
        for p in tally_projections::all_projectors() {
            let r = self.rebuild(&self.admin_key, p.name()).await;
            assert_eq!(r.status, 202, "rebuild {}: {:?}", p.name(), r.body);
        }
        self.settle().await;
        assert_same_read_models(&before, &dump_read_models(db).await);
    }

    /// Waits until every consumer has reached the head and the head stays
    /// put: policies append events (renewal invoices, suspensions) that
    /// other consumers must then read too.
    pub async fn settle(&self) {
        loop {
            let before = self.state().dispatcher.log().head().await.expect("head");
            self.wait_for_head().await;
            let after = self.state().dispatcher.log().head().await.expect("head");
            if after == before {
                return;
            }
        }
    }
}

async fn start_webhook_server(database_url: &str, clock: Clock, webhooks: WebhookConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let config = Config {
        database_url: database_url.to_string(),
        clock,
        runtime: RuntimeConfig {
            poll_interval: Duration::from_millis(200),
            ..RuntimeConfig::default()
        },
        billing: BillingConfig::default(),
        nats: None,
        rate_limit: Default::default(),
        limits: Default::default(),
        db_max_connections: tally_projections::db::DEFAULT_MAX_CONNECTIONS,
    };
    tally_api::start_with_webhooks(config, webhooks, listener)
        .await
        .expect("start server")
}

pub fn standard_plan_body(code: &str) -> Value {
    json!({
        "code": code,
        "name": "Standard",
        "currency": "EUR",
        "interval": "month",
        "base_price": "10.00",
        "seat_price": "2.50",
        "seats": {"min": 1, "max": 20},
        "meters": [{"key": "api_calls", "included": "1000", "hard_cap": "5000", "overage_unit_price": "0.01", "reset": "monthly"}]
    })
}

/// Every row of a table in a stable order (by the listed columns, which
/// must include the key), as text, for rebuild comparisons.
pub async fn table_rows(db: &Db, table: &str, columns: &str) -> Vec<Vec<String>> {
    use sqlx::Row;
    let rows = sqlx::query(&format!("SELECT {columns} FROM {table} ORDER BY {columns}"))
        .fetch_all(&db.any)
        .await
        .expect("read table");
    let n = columns.split(',').count();
    rows.iter()
        .map(|r| {
            (0..n)
                .map(|i| {
                    r.try_get::<String, _>(i)
                        .or_else(|_| r.try_get::<i64, _>(i).map(|v| v.to_string()))
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect()
}

/// Every row of a table, every column as text (NULL as `NULL`), sorted: for
/// comparing a read model with its rebuild without naming its columns.
pub async fn dump_table(db: &Db, table: &str) -> Vec<Vec<String>> {
    use sqlx::Row;
    let rows = sqlx::query(&format!("SELECT * FROM {table}"))
        .fetch_all(&db.any)
        .await
        .expect("read table");
    let mut out: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    r.try_get::<Option<String>, _>(i)
                        .map(|v| v.unwrap_or_else(|| "NULL".into()))
                        .or_else(|_| r.try_get::<Option<i64>, _>(i).map(|v| format!("{v:?}")))
                        .or_else(|_| r.try_get::<Option<f64>, _>(i).map(|v| format!("{v:?}")))
                        .or_else(|_| r.try_get::<Option<bool>, _>(i).map(|v| format!("{v:?}")))
                        .unwrap_or_else(|e| panic!("{table} column {i}: {e}"))
                })
                .collect()
        })
        .collect();
    out.sort();
    out
}

/// Every read model table with its rows (see [`dump_table`]).
pub async fn dump_read_models(db: &Db) -> std::collections::BTreeMap<String, Vec<Vec<String>>> {
    let mut out = std::collections::BTreeMap::new();
    for p in tally_projections::all_projectors() {
        for t in p.tables() {
            out.insert(t.to_string(), dump_table(db, t).await);
        }
    }
    out
}

/// Asserts that every read model of `db` equals a fresh rebuild from the
/// log. No server may be writing to `db`: the live tables are dumped, every
/// rebuildable projection is rebuilt blue/green to the head and swapped in,
/// and the tables are dumped again. A difference names the table and rows.
pub async fn assert_read_models_equal_rebuild(db: &Db) {
    use tally_projections::rebuild;
    let before = dump_read_models(db).await;
    let projectors = tally_projections::all_projectors();
    let runtime =
        tally_projections::Runtime::new(db.clone(), projectors.clone(), RuntimeConfig::default());
    let rebuildable: Vec<&dyn tally_projections::runtime::Projector> = projectors
        .iter()
        .filter(|p| p.rebuildable())
        .map(|p| p.as_ref())
        .collect();
    rebuild::run_all(&runtime, &rebuildable, &mut |_| {})
        .await
        .expect("rebuild every read model");
    let after = dump_read_models(db).await;
    assert_same_read_models(&before, &after);
}

/// Asserts two dumps of the read models (see [`dump_read_models`]) are equal,
/// naming the rows missing from or extra in `after`.
pub fn assert_same_read_models(
    before: &std::collections::BTreeMap<String, Vec<Vec<String>>>,
    after: &std::collections::BTreeMap<String, Vec<Vec<String>>>,
) {
    for (table, rows) in before {
        let missing: Vec<_> = rows.iter().filter(|r| !after[table].contains(r)).collect();
        let extra: Vec<_> = after[table].iter().filter(|r| !rows.contains(r)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{table} differs from its rebuild: missing {missing:?}, extra {extra:?}"
        );
    }
}

pub mod checks;
pub mod nats;
pub mod process;
pub mod receiver;
