//! The `tally` binary as scripts use it: exit codes, stdout, graceful stop.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tally() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tally"))
}

fn temp_db() -> (String, std::path::PathBuf) {
    let file = std::env::temp_dir().join(format!("tally_cli_{}.db", uuid::Uuid::new_v4().simple()));
    (format!("sqlite://{}", file.display()), file)
}

#[test]
fn keys_create_prints_the_key_alone() {
    let (url, file) = temp_db();
    let out = tally()
        .args([
            "keys",
            "create",
            "--tenant",
            "acme",
            "--role",
            "writer",
            "--database",
            &url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].starts_with("tally_") && lines[0].len() > 40,
        "{stdout}"
    );

    let bad = tally()
        .args([
            "keys",
            "create",
            "--tenant",
            "acme",
            "--role",
            "boss",
            "--database",
            &url,
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8(bad.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "one-line reason: {err}");
    assert!(err.contains("--role"), "{err}");

    let migrate = tally()
        .args(["migrate", "--database", &url])
        .output()
        .unwrap();
    assert!(migrate.status.success());
    let nowhere = tally()
        .args(["migrate", "--database", "mysql://nope"])
        .output()
        .unwrap();
    assert!(!nowhere.status.success());
    let _ = std::fs::remove_file(file);
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = tally().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Issue 19: keys could be created but never listed or revoked.
#[test]
fn keys_list_shows_no_secret_and_revoke_marks_the_key() {
    let (url, file) = temp_db();
    let db = ["--database", url.as_str()];
    let (ok, secret, err) = run(&[
        &["keys", "create", "--tenant", "acme", "--role", "writer"],
        &db[..],
    ]
    .concat());
    assert!(ok, "{err}");
    let (ok, listed, err) = run(&[&["keys", "list"], &db[..]].concat());
    assert!(ok, "{err}");
    assert!(
        !listed.contains(secret.trim()),
        "the secret is never shown again"
    );
    let line: Vec<&str> = listed
        .lines()
        .next()
        .expect("one key")
        .split('\t')
        .collect();
    assert_eq!(line.len(), 5, "{listed}");
    assert!(line[0].starts_with("key_"), "{listed}");
    assert_eq!((line[1], line[2], line[4]), ("acme", "writer", "-"));

    let (ok, _, err) = run(&[&["keys", "revoke", line[0]], &db[..]].concat());
    assert!(ok, "{err}");
    let (ok, listed, _) = run(&[&["keys", "list", "--tenant", "acme"], &db[..]].concat());
    assert!(ok);
    let revoked_at = listed.lines().next().unwrap().split('\t').nth(4).unwrap();
    assert!(revoked_at.starts_with("20"), "{listed}");
    let (ok, listed, _) = run(&[&["keys", "list", "--tenant", "other"], &db[..]].concat());
    assert!(ok && listed.is_empty(), "{listed}");

    let (ok, _, err) = run(&[&["keys", "revoke", "key_nope"], &db[..]].concat());
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "one-line reason: {err}");
    let _ = std::fs::remove_file(file);
}

#[test]
fn serve_prints_the_first_key_and_stops_gracefully_on_sigterm() {
    let (url, file) = temp_db();
    let mut child = tally()
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut banner = String::new();
    let mut key = String::new();
    stdout.read_line(&mut banner).unwrap();
    stdout.read_line(&mut key).unwrap();
    assert!(banner.contains("admin"), "{banner}");
    assert!(key.trim().starts_with("tally_"), "{key}");
    // The "listening" log line (JSON on stderr) names the address.
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        assert!(Instant::now() < deadline, "no listening line");
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("server exited early");
        }
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if v["fields"]["message"] == "listening" {
            break v["fields"]["addr"].as_str().unwrap().to_string();
        }
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 200);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no graceful exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    let _ = std::fs::remove_file(file);
}
