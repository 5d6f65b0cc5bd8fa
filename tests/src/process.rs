//! `tally serve` as a separate OS process, for the tests that must SIGKILL
//! the server (`tests/crash.rs`) or run it against a database they stop
//! (`tests/pg_restart.rs`): spawn the real command line (`tally-under-test`,
//! the same code as `tally`; the test names it with [`tally_bin!`](crate::tally_bin)), wait
//! until `/readyz` answers, read the bootstrap admin key from stdout, kill
//! it with SIGKILL and start it again on the same database and port.
//!
//! stderr (JSON logs) goes to a file per process; a failed start or a
//! failing test prints its tail, and the file is deleted when the test
//! passes.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

/// The line `tally serve` prints before the bootstrap key (api/src/cli.rs).
const KEY_BANNER: &str = "Created tenant `default` with an admin API key";

/// How long a start may take until `/readyz` answers 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of the log shown when something goes wrong.
const LOG_TAIL_LINES: usize = 40;

/// The path of the `tally` command line built for these tests. Cargo only
/// tells integration tests where a binary is, so this expands in the test.
#[macro_export]
macro_rules! tally_bin {
    () => {
        env!("CARGO_BIN_EXE_tally-under-test")
    };
}

/// How to start `tally serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The binary: [`tally_bin!`](crate::tally_bin).
    pub bin: PathBuf,
    pub database_url: String,
    /// A manual clock starting here; the system clock when `None`.
    pub clock_start: Option<DateTime<Utc>>,
    /// More arguments for `tally serve` (`--grace-days 3`, …).
    pub args: Vec<String>,
    /// More environment variables (`TALLY_LOG`, …).
    pub env: Vec<(String, String)>,
}

impl ServeOptions {
    pub fn new(bin: &str, database_url: &str) -> Self {
        Self {
            bin: PathBuf::from(bin),
            database_url: database_url.to_string(),
            clock_start: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// A running `tally serve` process. Dropping it SIGKILLs it.
pub struct ServerProcess {
    child: Child,
    pub port: u16,
    /// `http://127.0.0.1:<port>`
    pub base: String,
    log: PathBuf,
    key: Arc<Mutex<Option<String>>>,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl ServerProcess {
    /// Starts `tally serve` on a free port and waits until it is ready.
    pub async fn start(options: &ServeOptions) -> ServerProcess {
        Self::start_on(options, free_port()).await
    }

    /// Starts `tally serve` on `port` and waits until it is ready. A port
    /// still held by a process killed a moment ago is tried again (bounded).
    pub async fn start_on(options: &ServeOptions, port: u16) -> ServerProcess {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let mut process = Self::spawn(options, port);
            match process.wait_ready(deadline).await {
                Ok(()) => return process,
                Err(why) => {
                    let tail = process.log_tail();
                    let cannot_listen = tail.contains("cannot listen");
                    process.kill();
                    if !cannot_listen || tokio::time::Instant::now() >= deadline {
                        panic!("tally serve did not become ready: {why}\n--- log tail ---\n{tail}");
                    }
                }
            }
        }
    }

    fn spawn(options: &ServeOptions, port: u16) -> ServerProcess {
        let log =
            std::env::temp_dir().join(format!("tally-serve-{}.log", uuid::Uuid::new_v4().simple()));
        let stderr = std::fs::File::create(&log).expect("create the server log");
        let mut cmd = Command::new(&options.bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database")
            .arg(&options.database_url);
        if let Some(start) = options.clock_start {
            cmd.arg("--clock")
                .arg("manual")
                .arg("--clock-start")
                .arg(start.to_rfc3339_opts(SecondsFormat::Micros, true));
        }
        cmd.args(&options.args)
            .env("TALLY_LOG", "warn,sqlx=error")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd.spawn().expect("spawn tally serve");
        let key = Arc::new(Mutex::new(None));
        let stdout = child.stdout.take().expect("piped stdout");
        let found = key.clone();
        std::thread::spawn(move || {
            let mut after_banner = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if after_banner && !line.trim().is_empty() {
                    *found.lock().expect("key slot") = Some(line.trim().to_string());
                    after_banner = false;
                }
                if line.starts_with(KEY_BANNER) {
                    after_banner = true;
                }
            }
        });
        ServerProcess {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            log,
            key,
        }
    }

    /// Polls `/readyz` until it answers 200 or the process exits.
    async fn wait_ready(&mut self, deadline: tokio::time::Instant) -> Result<(), String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited with {status}"));
            }
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await {
                if r.status().as_u16() == 200 {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("no 200 from /readyz within {READY_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The bootstrap admin key it printed (first start on an empty
    /// database), waiting a little for stdout to be read.
    pub async fn bootstrap_key(&self) -> Option<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(k) = self.key.lock().expect("key slot").clone() {
                return Some(k);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL, then reap the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILLs this process and starts another with `options` on the same port.
    pub async fn restart(&mut self, options: &ServeOptions) {
        self.kill();
        let next = Self::start_on(options, self.port).await;
        let old = std::mem::replace(self, next);
        drop(old);
    }

    /// The last lines of its stderr.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- tally serve (port {}) log tail, {} ---\n{}",
                self.port,
                self.log.display(),
                self.log_tail()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Runs the command line `bin` with `args` to completion and returns its
/// stdout (trimmed); panics with its stderr when it fails.
pub fn run_cli(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .env("TALLY_LOG", "warn")
        .output()
        .expect("run tally");
    assert!(
        out.status.success(),
        "tally {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The whole log of the database at `url`, in position order (see [`whole_log`]).
pub async fn read_log(url: &str) -> Vec<tally_projections::StoredEvent> {
    let db = tally_projections::Db::connect(url).await.expect("connect");
    let events = whole_log(&db).await;
    db.close().await;
    events
}

/// The whole log of `db` up to its head when called, in position order. It
/// is read through the projections' reader, which stops at a hole (an
/// aborted or still open append, such as a killed process leaves) until the
/// hole is proven final, so one read may end early: this reads on (bounded)
/// until the head.
pub async fn whole_log(db: &tally_projections::Db) -> Vec<tally_projections::StoredEvent> {
    let log = tally_projections::EventLog::new(db.clone());
    let head = log.head().await.expect("log head");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut events: Vec<tally_projections::StoredEvent> = Vec::new();
    let mut after = 0;
    while after < head {
        let batch = log.read_after(after, 5000).await.expect("read the log");
        match batch.last() {
            Some(e) => after = e.position,
            None => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "cannot read the log up to {head}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        events.extend(batch);
    }
    events
}

/// Waits (bounded by `timeout`) until every consumer of the server at `base`
/// has reached the log head and the head stays put (policies append events
/// others read), asking its `GET /v1/admin/projections` with the admin `key`.
pub async fn settle_over_http(client: &reqwest::Client, base: &str, key: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_head = -1;
    loop {
        let list = consumer_status(client, base, key).await;
        let head = list
            .iter()
            .filter_map(|p| p["log_head"].as_i64())
            .max()
            .unwrap_or(0);
        let caught_up = list.iter().all(|p| p["lag_events"].as_i64() == Some(0));
        if caught_up && head == last_head {
            return;
        }
        last_head = if caught_up { head } else { -1 };
        assert!(
            tokio::time::Instant::now() < deadline,
            "projections did not settle: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `GET /v1/admin/projections` of the server at `base`: every consumer it
/// runs, with its status there (`running`, `standby` while another process
/// holds it, …), position and lag.
pub async fn consumer_status(
    client: &reqwest::Client,
    base: &str,
    key: &str,
) -> Vec<serde_json::Value> {
    let r = client
        .get(format!("{base}/v1/admin/projections"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("no projection status from {base}: {e}"));
    assert_eq!(r.status().as_u16(), 200, "projection status from {base}");
    let body: serde_json::Value = r.json().await.expect("projection status");
    body.as_array().expect("a list of consumers").clone()
}
