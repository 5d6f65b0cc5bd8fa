#!/usr/bin/env bash
# The HTTP contract as a client sees it (issue 16), against the built server:
# fetch GET /openapi.json, validate it with openapi-spec-validator, generate a
# Python client from it with openapi-python-client (the step fails on any
# warning the generator prints), and run scripts/contract_flow.py through that
# client only: create a plan, put and read a customer, create and activate a
# subscription, list a customer's subscriptions over two cursor pages, read
# the invoice the activation issued (with the customer's details), create a
# tax rate and a coupon and read the discounted, taxed invoice of a
# subscription that took both, read a 404 as a parsed problem.
#
# Both backends: a fresh SQLite file, then, when TALLY_TEST_POSTGRES_URL is
# set (scripts/test.sh sets it), a fresh PostgreSQL database on that server.
# The tools are pinned and installed into a venv under the target directory
# ($CARGO_TARGET_DIR/contract-venv), reused while the pins hold. The server is
# $CARGO_TARGET_DIR/debug/tally, built when missing or older than a source.
# Servers, files and the database go on exit (TALLY_CONTRACT_KEEP keeps the
# work folder: the document, the generated client, server logs).
set -euo pipefail
cd "$(dirname "$0")/.."

OPENAPI_SPEC_VALIDATOR_VERSION=0.9.0
OPENAPI_PYTHON_CLIENT_VERSION=0.29.1
pg_admin="${TALLY_TEST_POSTGRES_URL:-}"
target="${CARGO_TARGET_DIR:-target}"
target="$(mkdir -p "$target" && cd "$target" && pwd)"
venv="$target/contract-venv"
tally="$target/debug/tally"
scripts="$(pwd)/scripts"

work=$(mktemp -d /tmp/tally-contract.XXXXXX)
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
  [[ -n "${TALLY_CONTRACT_KEEP:-}" ]] || rm -rf "$work"
}
trap cleanup EXIT

if [[ ! -x "$tally" ]] || [[ -n "$(find aggregates/src projections/src commands/src api/src migrations \
  -newer "$tally" -type f -print -quit)" ]]; then
  cargo build -p tally-api --bin tally
fi

pins="openapi-spec-validator==$OPENAPI_SPEC_VALIDATOR_VERSION openapi-python-client==$OPENAPI_PYTHON_CLIENT_VERSION"
if [[ "$(cat "$venv/pins" 2>/dev/null)" != "$pins" ]]; then
  echo "contract.sh: installing $pins into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086 # the pins are words
  timeout 300 "$venv/bin/pip" install -q --disable-pip-version-check $pins
  echo "$pins" >"$venv/pins"
fi

# The generator's only post hooks run ruff, which is not part of the
# contract: without this it warns "ruff is not in PATH".
printf 'post_hooks: []\n' >"$work/generator.yaml"

# Starts the server on $2 (a database URL) on a free port; sets $base, $key.
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
    echo "contract.sh: the server did not start:" >&2
    cat "$log" >&2
    exit 1
  fi
  base="http://$base"
  key=$(tail -n 1 "$out")
}

passed=0
# Validates, generates and runs the flow against the started server.
contract() {
  local label=$1 dir="$work/$1"
  mkdir -p "$dir"
  curl -sSf "$base/openapi.json" -o "$dir/openapi.json"
  "$venv/bin/openapi-spec-validator" "$dir/openapi.json"
  echo "contract.sh: $label: the document validates"
  passed=$((passed + 1))

  local gen_out rc=0
  gen_out=$("$venv/bin/openapi-python-client" generate --path "$dir/openapi.json" \
    --output-path "$dir/client" --overwrite --config "$work/generator.yaml" 2>&1) || rc=$?
  echo "$gen_out" | sed 's/^/  generator: /'
  if (( rc != 0 )); then
    echo "contract.sh: $label: openapi-python-client failed (exit $rc)" >&2
    exit 1
  fi
  # The generator prints only "Generating <path>" when all is well; anything
  # else is a warning (a skipped operation, schema or property).
  if echo "$gen_out" | grep -v "^Generating " | grep -q '[^[:space:]]'; then
    echo "contract.sh: $label: openapi-python-client warned (above); the document must generate cleanly" >&2
    exit 1
  fi
  echo "contract.sh: $label: the client generates without warnings"
  passed=$((passed + 1))

  PYTHONPATH="$dir/client" timeout 120 "$venv/bin/python" "$scripts/contract_flow.py" "$base" "$key"
  passed=$((passed + 1))
}

start_server sqlite "sqlite://$work/contract.db"
contract sqlite
stop_server

if [[ -n "$pg_admin" ]]; then
  pg_db="tally_contract_$(date +%s)_$$"
  psql_admin "CREATE DATABASE $pg_db"
  start_server postgres "${pg_admin%/*}/$pg_db"
  contract postgres
  stop_server
else
  echo "contract.sh: TALLY_TEST_POSTGRES_URL is not set; the PostgreSQL run is left out"
fi

# The closing line in the form test runners end with.
echo "contract: $passed passed, 0 failed"
