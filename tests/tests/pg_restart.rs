//! PostgreSQL restarted under load (issue 8): the server keeps running while
//! its database goes away, answers 503 `unavailable` problem+json (never a
//! 500, never hanging past the request timeout), says it is not ready, and
//! recovers by itself when the database is back: commands succeed again,
//! every consumer catches up, every command acknowledged before, during or
//! after the outage has its events, and the read models equal a rebuild.
//!
//! The test runs its own throwaway cluster (initdb of the newest
//! `/usr/lib/postgresql/*/bin`, on a free port, deleted at the end even on
//! a panic), since it must stop and start it. Without those binaries it
//! fails: `scripts/test.sh` installs PostgreSQL when missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tally_tests::process::{free_port, read_log, ServeOptions, ServerProcess};
use tally_tests::{assert_read_models_equal_rebuild, standard_plan_body, tally_bin};

/// The server answers every request within this (`tally_api::REQUEST_TIMEOUT`)
/// plus a margin for the client.
const ANSWER_WITHIN: Duration = Duration::from_secs(32);
/// How long the database stays down.
const OUTAGE: Duration = Duration::from_secs(8);
/// How long the server may take to serve commands again once the database is back.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent clients.
const CLIENTS: usize = 4;

/// A PostgreSQL cluster of its own in a temporary directory; stopped and
/// deleted on drop.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb` and `pg_ctl`.
fn postgres_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "the PostgreSQL restart test needs the server binaries (initdb, pg_ctl) in \
             /usr/lib/postgresql/*/bin; install PostgreSQL (scripts/test.sh does when missing)"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Cluster {
    fn create() -> Cluster {
        let bin = postgres_bin();
        let dir = std::env::temp_dir().join(format!("tally-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let as_postgres = is_root();
        let cluster = Cluster {
            bin,
            dir,
            port: free_port(),
            as_postgres,
        };
        if as_postgres {
            // PostgreSQL refuses to run as root: the cluster belongs to `postgres`.
            let out = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&cluster.dir)
                .output()
                .expect("chown");
            assert!(
                out.status.success(),
                "chown: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// One of the cluster's binaries, run as `postgres` when we are root.
    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.arg("-u").arg("postgres").arg("--").arg(&path);
            c
        } else {
            Command::new(&path)
        };
        cmd.current_dir(&self.dir);
        cmd
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let mut cmd = self.command(tool);
        let out = cmd
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A command the server acknowledged: its events must be in the log.
#[derive(Debug, Clone)]
struct Ack {
    kind: &'static str,
    id: String,
    version: i64,
    position: i64,
}

#[derive(Default)]
struct Seen {
    acks: Vec<Ack>,
    /// (status, code) → count, for the figures.
    answers: std::collections::BTreeMap<(u16, String), u64>,
    failures: Vec<String>,
    slowest: Duration,
}

struct Load {
    base: String,
    key: String,
    client: reqwest::Client,
    stop: AtomicBool,
    seen: Mutex<Seen>,
    n: AtomicU64,
}

struct Answer {
    status: u16,
    content_type: String,
    body: Value,
    position: Option<i64>,
}

impl Load {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Option<Answer> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = &body {
            req = req.json(b);
        }
        let started = Instant::now();
        let r = req.send().await;
        let took = started.elapsed();
        {
            let mut seen = self.seen.lock().expect("seen");
            seen.slowest = seen.slowest.max(took);
            if took > ANSWER_WITHIN {
                seen.failures.push(format!("{method} {path} took {took:?}"));
            }
        }
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.fail(format!("{method} {path}: no answer: {e}"));
                return None;
            }
        };
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let position = r
            .headers()
            .get("x-log-position")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let code = if content_type == "application/problem+json" {
            body["code"].as_str().unwrap_or("").to_string()
        } else {
            String::new()
        };
        *self
            .seen
            .lock()
            .expect("seen")
            .answers
            .entry((status, code.clone()))
            .or_default() += 1;
        if status >= 500
            && !(status == 503
                && code == "unavailable"
                && content_type == "application/problem+json")
        {
            self.fail(format!("{method} {path}: {status} {content_type} {body}"));
        }
        Some(Answer {
            status,
            content_type,
            body,
            position,
        })
    }

    fn fail(&self, what: String) {
        self.seen.lock().expect("seen").failures.push(what);
    }

    /// A command; a 2xx is acknowledged.
    async fn command(&self, kind: &'static str, path: &str, body: Value) -> Option<Answer> {
        let a = self.send(reqwest::Method::POST, path, Some(body)).await?;
        if (200..300).contains(&a.status) {
            let id = a.body["id"].as_str().unwrap_or_default().to_string();
            let version = a.body["version"].as_i64().unwrap_or(0);
            self.seen.lock().expect("seen").acks.push(Ack {
                kind,
                id,
                version,
                position: a.position.unwrap_or(0),
            });
        }
        Some(a)
    }
}

/// One client: a plan, subscriptions on it, usage, tickets and reads, until stopped.
async fn client(load: Arc<Load>, me: usize) {
    let mut plan: Option<String> = None;
    let mut subs: Vec<String> = Vec::new();
    while !load.stop.load(Ordering::Relaxed) {
        let n = load.n.fetch_add(1, Ordering::Relaxed);
        let Some(plan_id) = plan.clone() else {
            if let Some(a) = load
                .command("plan", "/v1/plans", standard_plan_body(&format!("p{me}")))
                .await
            {
                if a.status == 201 {
                    plan = a.body["id"].as_str().map(str::to_string);
                }
            }
            continue;
        };
        match n % 5 {
            0 => {
                let body =
                    json!({"customer_id": format!("cus_{me}_{n}"), "plan_id": plan_id, "seats": 2});
                if let Some(a) = load
                    .command("subscription", "/v1/subscriptions", body)
                    .await
                {
                    if a.status == 201 {
                        let id = a.body["id"].as_str().unwrap_or_default().to_string();
                        load.command(
                            "subscription",
                            &format!("/v1/subscriptions/{id}/activate"),
                            json!({}),
                        )
                        .await;
                        subs.push(id);
                    }
                }
            }
            1 | 2 if !subs.is_empty() => {
                let sub = &subs[n as usize % subs.len()];
                let body = json!({
                    "subscription_id": sub, "meter": "api_calls", "quantity": "3",
                    "timestamp": chrono::Utc::now().to_rfc3339(), "transaction_id": format!("pg-{me}-{n}"),
                });
                load.command("usage_record", "/v1/usage", body).await;
            }
            3 => {
                let body = json!({"subject": "Down?", "description": "pg restart", "requester": format!("customer:cus_{me}"), "priority": "high"});
                load.command("ticket", "/v1/tickets", body).await;
            }
            _ => {
                load.send(reqwest::Method::GET, "/v1/subscriptions?limit=5", None)
                    .await;
            }
        }
    }
}

async fn get(load: &Load, path: &str) -> Answer {
    load.send(reqwest::Method::GET, path, None)
        .await
        .unwrap_or_else(|| panic!("GET {path}: no answer"))
}

fn assert_unavailable(a: &Answer, what: &str) {
    assert_eq!(
        a.status, 503,
        "{what} while the database is down: {}",
        a.body
    );
    assert_eq!(a.content_type, "application/problem+json", "{what}");
    assert_eq!(a.body["code"], "unavailable", "{what}: {}", a.body);
    assert_eq!(a.body["status"], 503, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_mid_load() {
    let cluster = Cluster::create();
    cluster.start();
    let server = ServerProcess::start(&ServeOptions::new(tally_bin!(), &cluster.url())).await;
    let key = server.bootstrap_key().await.expect("bootstrap key");
    let load = Arc::new(Load {
        base: server.base.clone(),
        key,
        client: reqwest::Client::builder()
            .timeout(ANSWER_WITHIN + Duration::from_secs(5))
            .build()
            .expect("client"),
        stop: AtomicBool::new(false),
        seen: Mutex::new(Seen::default()),
        n: AtomicU64::new(0),
    });
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|me| tokio::spawn(client(load.clone(), me)))
        .collect();
    wait_for_acks(&load, 20).await;
    let before = load.seen.lock().expect("seen").acks.len();

    // The database goes away under the load.
    cluster.stop();
    let down_at = Instant::now();
    let r = load
        .command("plan", "/v1/plans", standard_plan_body("during"))
        .await
        .expect("an answer");
    assert_unavailable(&r, "a command");
    assert_unavailable(&get(&load, "/v1/plans").await, "a query");
    assert_unavailable(&get(&load, "/readyz").await, "/readyz");
    let healthz = get(&load, "/healthz").await;
    assert_eq!(
        healthz.status, 200,
        "the process is alive: {}",
        healthz.body
    );
    let remaining = OUTAGE.saturating_sub(down_at.elapsed());
    tokio::time::sleep(remaining).await;
    let during = load.seen.lock().expect("seen").acks.len();

    // Back: the server recovers by itself.
    cluster.start();
    let up_at = Instant::now();
    loop {
        let r = load
            .command("plan", "/v1/plans", standard_plan_body("after"))
            .await
            .expect("an answer");
        let ready = get(&load, "/readyz").await;
        if r.status == 201 && ready.status == 200 {
            break;
        }
        assert!(
            up_at.elapsed() < RECOVERY_TIMEOUT,
            "no recovery {RECOVERY_TIMEOUT:?} after the database came back: {} {} / readyz {}",
            r.status,
            r.body,
            ready.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered_in = up_at.elapsed();
    wait_for_acks(&load, during + 20).await;
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client");
    }

    // Every consumer catches up with the log.
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    loop {
        let r = get(&load, "/v1/admin/projections").await;
        let list = r.body.as_array().cloned().unwrap_or_default();
        if !list.is_empty()
            && list
                .iter()
                .all(|p| p["lag_events"] == 0 && p["status"] != "failed")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "consumers did not catch up: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let seen = std::mem::take(&mut *load.seen.lock().expect("seen"));
    println!(
        "acknowledged: {before} before the stop, {} while it stopped, {} in all; recovered {recovered_in:?} after the restart; slowest answer {:?}; answers {:?}",
        during - before,
        seen.acks.len(),
        seen.slowest,
        seen.answers
    );
    assert!(
        seen.failures.is_empty(),
        "unexpected answers: {:#?}",
        seen.failures
    );
    let unavailable = seen
        .answers
        .get(&(503, "unavailable".to_string()))
        .copied()
        .unwrap_or(0);
    assert!(unavailable > 0, "the outage was seen as 503 unavailable");

    drop(server);
    let events = read_log(&cluster.url()).await;
    let streams: std::collections::HashSet<(&str, &str, i64)> = events
        .iter()
        .map(|e| (e.aggregate_type.as_str(), e.resource_id(), e.sequence))
        .collect();
    let positions: std::collections::HashSet<i64> = events.iter().map(|e| e.position).collect();
    for a in &seen.acks {
        assert!(
            streams.contains(&(a.kind, a.id.as_str(), a.version)),
            "acknowledged but not in the log: {a:?}"
        );
        assert!(
            positions.contains(&a.position),
            "acknowledged position not in the log: {a:?}"
        );
    }
    let db = tally_projections::Db::connect(&cluster.url())
        .await
        .expect("connect");
    assert_read_models_equal_rebuild(&db).await;
    db.close().await;
    cluster_dir_removed_on_drop(cluster);
}

/// Waits (bounded) until the clients have `n` acknowledged commands.
async fn wait_for_acks(load: &Load, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while load.seen.lock().expect("seen").acks.len() < n {
        assert!(Instant::now() < deadline, "the load made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cluster_dir_removed_on_drop(cluster: Cluster) {
    let dir = cluster.dir.clone();
    drop(cluster);
    assert!(
        !Path::new(&dir).exists(),
        "the cluster directory is deleted"
    );
}
