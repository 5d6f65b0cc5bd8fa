//! The dependency arrows of ARCHITECTURE.md, read from `cargo metadata`:
//! api / replay-tools → commands → projections → aggregates, and the domain
//! crate free of I/O crates. Fails when a new dependency breaks them.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let run = |extra: &[&str]| {
        std::process::Command::new(&cargo)
            .args(["metadata", "--format-version", "1"])
            .args(extra)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo metadata")
    };
    // Offline first; metadata also wants the manifests of other platforms'
    // packages, which a build never fetched: then let cargo fetch them.
    let mut out = run(&["--offline"]);
    if !out.status.success() {
        out = run(&[]);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("metadata json")
}

/// Package name → names of its normal (non-dev, non-build) dependencies.
fn graph(meta: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null())
                })
                .map(|d| names[d["pkg"].as_str().unwrap()].to_string())
                .collect();
            (names[n["id"].as_str().unwrap()].to_string(), deps)
        })
        .collect()
}

fn closure(g: &BTreeMap<String, BTreeSet<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![root.to_string()];
    while let Some(p) = stack.pop() {
        for d in g.get(&p).into_iter().flatten() {
            if seen.insert(d.clone()) {
                stack.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn aggregates_depend_on_no_io_crate() {
    let g = graph(&metadata());
    let deps = closure(&g, "tally-aggregates");
    let forbidden = [
        "sqlx",
        "sqlx-core",
        "sqlx-postgres",
        "sqlx-sqlite",
        "libsqlite3-sys",
        "axum",
        "axum-core",
        "hyper",
        "reqwest",
        "tower",
        "tower-http",
        "postgres-es",
        "sqlite-es",
        "tokio-postgres",
    ];
    let found: Vec<_> = forbidden.iter().filter(|f| deps.contains(**f)).collect();
    assert!(
        found.is_empty(),
        "tally-aggregates pulls in I/O crates: {found:?}"
    );
}

#[test]
fn tally_crates_depend_along_the_arrows() {
    let g = graph(&metadata());
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("tally-aggregates", &[][..]),
        ("tally-projections", &["tally-aggregates"][..]),
        (
            "tally-commands",
            &["tally-aggregates", "tally-projections"][..],
        ),
        (
            "tally-api",
            &["tally-aggregates", "tally-projections", "tally-commands"][..],
        ),
        (
            "tally-replay",
            &["tally-aggregates", "tally-projections", "tally-commands"][..],
        ),
    ]);
    for (krate, ok) in &allowed {
        let direct: BTreeSet<_> = g[*krate]
            .iter()
            .filter(|d| d.starts_with("tally-"))
            .cloned()
            .collect();
        let bad: Vec<_> = direct
            .iter()
            .filter(|d| !ok.contains(&d.as_str()))
            .collect();
        assert!(
            bad.is_empty(),
            "{krate} depends against the arrows on {bad:?}"
        );
    }
    // Nothing but tests and benchmarks depends on the API crate.
    for (krate, deps) in &g {
        if deps.contains("tally-api") {
            assert!(
                ["tally-tests", "tally-bench"].contains(&krate.as_str()),
                "{krate} depends on tally-api"
            );
        }
    }
}

/// The `.rs` files under `api/src/<folder>`, with their text.
fn api_sources(folder: &str) -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../api/src")
        .join(folder);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read source");
            (p.display().to_string(), text)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no sources under {}", dir.display());
    files
}

/// Issue 16: request and response shapes live in `api/src/dto/`, one module
/// per resource, and depend on no handler (the old `dto.rs` ↔
/// `routes/usage.rs` cycle).
#[test]
fn api_dtos_do_not_reach_into_routes() {
    for (path, text) in api_sources("dto") {
        assert!(
            !text.contains("crate::routes") && !text.contains("super::routes"),
            "{path} depends on a route module"
        );
    }
}

/// Issue 16: a route's roles are declared once, in its handler's signature
/// (`ReadAccess`, `WriteAccess`, `AuditAccess`, `AdminAccess`), not checked
/// by hand in its body.
#[test]
fn handlers_declare_roles_in_their_signature() {
    for (path, text) in api_sources("routes") {
        assert!(
            !text.contains(".require(Access::"),
            "{path} checks a role by hand; take an access extractor instead"
        );
    }
}
