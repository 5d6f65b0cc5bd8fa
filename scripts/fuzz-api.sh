#!/usr/bin/env bash
# API fuzzing with schemathesis: requests generated from the server's own
# /openapi.json, every operation, with the bootstrap admin key; examples,
# coverage, fuzzing and stateful (link-based) phases. It fails on any 5xx,
# and on any status code, content type, header or body the document does not
# declare, on invalid input that is accepted, and on a resource that is still
# there after its DELETE or missing after its creation. After each
# schemathesis run, scripts/fuzz-hostile.py sends what schemathesis does not
# generate (issue 19): NUL and invalid UTF-8 in path ids, queries and body
# strings, malformed JSON documents and extreme dates, on every operation;
# it fails on a 5xx, an accepted hostile request, a 4xx that is not
# problem+json and a written time without a four-digit year.
#
# The server is $CARGO_TARGET_DIR/debug/tally (built when missing or older
# than a source), on a free loopback port against a fresh SQLite file; when
# TALLY_TEST_POSTGRES_URL is set (scripts/test.sh sets it), a second run goes
# against a fresh PostgreSQL database on that server. Servers, files and the
# database go on exit.
#
# Settings (environment):
#   TALLY_FUZZ_SQLITE_SECS    time of the SQLite run (default 90)
#   TALLY_FUZZ_POSTGRES_SECS  time of the PostgreSQL run (default 60; 0: none)
#   TALLY_FUZZ_EXAMPLES       cases per operation and phase (default 20)
#   TALLY_FUZZ_MIN_CASES      fail when fewer cases ran in all (default 1000)
#   TALLY_FUZZ_SEED           replay a run's seed
#   TALLY_FUZZ_KEEP           keep the work folder (reports, server logs)
# Install and runs together stop after TALLY_FUZZ_DEADLINE_SECS (default 300).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
examples="${TALLY_FUZZ_EXAMPLES:-20}"
sqlite_time="${TALLY_FUZZ_SQLITE_SECS:-90}"
postgres_time="${TALLY_FUZZ_POSTGRES_SECS:-60}"
min_cases="${TALLY_FUZZ_MIN_CASES:-1000}"
deadline_secs="${TALLY_FUZZ_DEADLINE_SECS:-300}"
pg_admin="${TALLY_TEST_POSTGRES_URL:-}"
target="${CARGO_TARGET_DIR:-target}"
# Absolute: schemathesis runs from the work directory.
target="$(mkdir -p "$target" && cd "$target" && pwd)"
venv="$target/schemathesis-venv"
tally="$target/debug/tally"

work=$(mktemp -d /tmp/tally-fuzz.XXXXXX)
server_pid=""
pg_db=""
psql_admin() { psql -X -q -v ON_ERROR_STOP=1 "$pg_admin" -c "$1" >/dev/null; }
stop_server() {
  if [[ -n "$server_pid" ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
cleanup() {
  stop_server
  if [[ -n "$pg_db" ]]; then
    psql_admin "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" || true
  fi
  [[ -n "${TALLY_FUZZ_KEEP:-}" ]] || rm -rf "$work"
}
trap cleanup EXIT

# The binary `cargo test` left (scripts/test.sh), rebuilt when a source is newer.
if [[ ! -x "$tally" ]] || [[ -n "$(find aggregates/src projections/src commands/src api/src migrations \
  -newer "$tally" -type f -print -quit)" ]]; then
  cargo build -p tally-api --bin tally
fi

# From here on everything shares one deadline.
deadline=$((SECONDS + deadline_secs))
left() { echo $((deadline - SECONDS)); }

# Install (or reuse) schemathesis, pinned, in a venv of its own.
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "fuzz-api.sh: installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  python3 -m venv "$venv"
  timeout "$(left)" "$venv/bin/pip" install -q --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION"
fi

# Starts the server on $2 (a database URL) on a free port, its output in
# $work/$1.*; sets $base and $key.
start_server() {
  local out="$work/$1.stdout" log="$work/$1.stderr"
  "$tally" serve --database "$2" --listen 127.0.0.1:0 >"$out" 2>"$log" &
  server_pid=$!
  base=""
  for _ in $(seq 300); do # 30 s at most
    base=$(grep -so '"addr":"127.0.0.1:[0-9]*"' "$log" | head -n 1 | cut -d'"' -f4 || true)
    [[ -n "$base" ]] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  if [[ -z "$base" ]]; then
    echo "fuzz-api.sh: the server did not start:" >&2
    cat "$log" >&2
    exit 1
  fi
  base="http://$base"
  key=$(tail -n 1 "$out")
}

# The checks, and two per-operation exceptions: a batch of usage records
# answers 200 with a result per record, rejected records included (API.md: one
# bad record does not reject the others), so a batch holding an invalid record
# is not expected to be refused as a whole; and key revocation is left out,
# since the stateful phase revokes the run's own key (read from GET /v1/keys)
# and the rest of the run is then 401 (fuzz-hostile.py still sends it hostile
# ids, and tests/tests/hostile.rs tests it).
cat >"$work/schemathesis.toml" <<'TOML'
[checks]
enabled = false
not_a_server_error.enabled = true
status_code_conformance.enabled = true
content_type_conformance.enabled = true
response_headers_conformance.enabled = true
response_schema_conformance.enabled = true
negative_data_rejection.enabled = true
use_after_free.enabled = true
ensure_resource_availability.enabled = true

[[operations]]
include-path = "/v1/usage/batch"
include-method = "POST"
checks.negative_data_rejection.enabled = false

[[operations]]
include-operation-id = "keys_revoke"
enabled = false
TOML

# Read-your-writes as API.md tells a client to get it: read models are
# eventually consistent, so every GET carries the highest X-Log-Position seen
# so far as X-Min-Position. The stateful checks that a created resource can be
# read (and a deleted one cannot) then test what the contract promises.
cat >"$work/hooks.py" <<'PY'
import schemathesis

head = 0


@schemathesis.hook
def after_call(context, case, response):
    global head
    for name, value in (response.headers or {}).items():
        if name.lower() == "x-log-position":
            value = value[0] if isinstance(value, list) else value
            if str(value).isdigit():
                head = max(head, int(value))


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.method.upper() != "GET":
        return
    # The document declares X-Min-Position on reads; a generated value past
    # the log head would only wait 2 s for a 503, so it is always replaced
    # by the head seen so far (or left out before any write).
    headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "x-min-position"}
    if head > 0:
        headers["X-Min-Position"] = str(head)
    case.headers = headers
PY

total_cases=0
failed=0
# Runs schemathesis for $2 seconds against the started server; adds its cases
# to total_cases and sets failed on any failure.
fuzz() {
  local label=$1 budget=$2 seed_args=()
  # Room for schemathesis to start, finish its last cases and report.
  if (( budget > $(left) - 30 )); then budget=$(( $(left) - 30 )); fi
  if (( budget < 10 )); then
    echo "fuzz-api.sh: no time left for the $label run" >&2
    failed=1
    return
  fi
  [[ -n "${TALLY_FUZZ_SEED:-}" ]] && seed_args=(--seed "$TALLY_FUZZ_SEED")
  echo "fuzz-api.sh: schemathesis against $label at $base for ${budget}s"
  local rc=0
  # From $work: schemathesis keeps its replay files in the working directory.
  # One worker: with two, Hypothesis internals sometimes failed (a race).
  (cd "$work" && SCHEMATHESIS_HOOKS="$work/hooks.py" timeout --kill-after=5 "$(left)" "$venv/bin/st" --config-file "$work/schemathesis.toml" \
    run "$base/openapi.json" \
    --header "Authorization: Bearer $key" \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$examples" \
    --max-time "$budget" \
    --workers 1 \
    --request-timeout 10 \
    --suppress-health-check all \
    --generation-database none \
    --no-color \
    --report ndjson --report-ndjson-path "$work/$label.ndjson" \
    "${seed_args[@]}") || rc=$?
  local cases counts query_cases query_params
  # Cases in all, those that sent query parameters, and how many of the
  # document's declared query parameters they covered: a list whose
  # parameters the document misplaced (issue 16: `in: path`) gets none.
  counts=$(python3 - "$work/$label.ndjson" "$base/openapi.json" <<'PY'
import json, sys, urllib.request
doc = json.load(urllib.request.urlopen(sys.argv[2], timeout=10))
declared = {
    (path, p["name"])
    for path, item in doc["paths"].items()
    for op in item.values()
    for p in op.get("parameters", [])
    if p["in"] == "query"
}
n = q = 0
pairs = set()
for line in open(sys.argv[1]):
    e = json.loads(line)
    if "ScenarioFinished" in e:
        for case in e["ScenarioFinished"].get("recorder", {}).get("cases", {}).values():
            n += 1
            value = case.get("value") or {}
            query = value.get("query") if isinstance(value, dict) else None
            if query:
                q += 1
                pairs.update((value.get("path"), k) for k in query)
print(n, q, len(pairs & declared))
PY
  ) || counts="0 0 0"
  read -r cases query_cases query_params <<<"$counts"
  echo "fuzz-api.sh: $label: $cases cases ($query_cases with query parameters, covering $query_params of the document's query parameters), schemathesis exit $rc"
  total_cases=$((total_cases + cases))
  if (( rc != 0 )); then failed=1; fi
  if (( query_params == 0 )); then
    echo "fuzz-api.sh: $label: no case sent a query parameter" >&2
    failed=1
  fi
}

# The hostile strategies against the started server; adds their cases to
# total_cases and sets failed on any failure.
hostile() {
  local label=$1 rc=0 out
  if (( $(left) < 10 )); then
    echo "fuzz-api.sh: no time left for the $label hostile run" >&2
    failed=1
    return
  fi
  out=$(timeout "$(left)" python3 scripts/fuzz-hostile.py "$base" "$key") || rc=$?
  echo "$out" | tail -n 20
  local cases
  cases=$(echo "$out" | sed -n 's/^hostile: \([0-9]*\) cases.*/\1/p' | tail -n 1)
  echo "fuzz-api.sh: $label: ${cases:-0} hostile cases, exit $rc"
  total_cases=$((total_cases + ${cases:-0}))
  if (( rc != 0 )); then failed=1; fi
}

start_server sqlite "sqlite://$work/fuzz.db"
fuzz sqlite "$sqlite_time"
hostile sqlite
stop_server

# PostgreSQL too when the test suite has one (scripts/test.sh exports it):
# a fresh database on that server, dropped on exit.
if [[ -n "$pg_admin" && "$postgres_time" -gt 0 ]]; then
  if command -v psql >/dev/null; then
    pg_db="tally_fuzz_$(date +%s)_$$"
    psql_admin "CREATE DATABASE $pg_db"
    start_server postgres "${pg_admin%/*}/$pg_db"
    fuzz postgres "$postgres_time"
    hostile postgres
    stop_server
  else
    echo "fuzz-api.sh: no psql to create a database with; the PostgreSQL run is left out"
  fi
fi

echo "fuzz-api.sh: $total_cases cases in total"
if (( failed )); then
  echo "fuzz-api.sh: schemathesis found failures (above)" >&2
  exit 1
fi
if (( total_cases < min_cases )); then
  echo "fuzz-api.sh: fewer than $min_cases cases ran" >&2
  exit 1
fi
# The closing line in the form test runners end with.
echo "fuzz: $total_cases passed, 0 failed"
