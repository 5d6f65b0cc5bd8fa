#!/usr/bin/env bash
# Runs the whole test suite, on SQLite and on PostgreSQL.
#
# PostgreSQL: DATABASE_URL when it is a postgres:// URL; else a throwaway
# cluster started for this run and removed after it (PostgreSQL is installed
# from Debian's packages, as root, when missing). The PostgreSQL tests never
# skip: without a server they fail.
#
# NATS (JetStream): TALLY_TEST_NATS_URL when set; else the server at
# 127.0.0.1:4222 when one answers; else a throwaway `nats-server -js` for this
# run. The outage test starts and stops a nats-server of its own, so the
# binary is installed from Debian's packages (as root) when missing. The NATS
# tests never skip either.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_answers() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

cleanup() { :; }
nats_cleanup() { :; }
trap 'cleanup; nats_cleanup' EXIT

pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true; }

if [[ "${DATABASE_URL:-}" == postgres://* || "${DATABASE_URL:-}" == postgresql://* ]]; then
  pg_url="$DATABASE_URL"
  echo "test.sh: PostgreSQL from DATABASE_URL"
else
  # A throwaway cluster of our own: room for the connections of parallel
  # test servers (300), and the binaries the PostgreSQL-restart test needs.
  bindir=$(pg_bindir)
  if [[ -z "$bindir" || ! -x "$bindir/initdb" ]]; then
    if [[ $(id -u) -ne 0 ]]; then
      echo "test.sh: PostgreSQL is not installed and this is not root: install it or set DATABASE_URL" >&2
      exit 1
    fi
    echo "test.sh: installing PostgreSQL from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
    bindir=$(pg_bindir)
  fi
  port=55432
  while pg_answers 127.0.0.1 "$port"; do port=$((port + 1)); done
  datadir=$(mktemp -d /tmp/tally-pg.XXXXXX)
  run_pg() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  if [[ $(id -u) -eq 0 ]]; then chown postgres "$datadir"; fi
  run_pg "$bindir/initdb" -D "$datadir" -U postgres -A trust >/dev/null
  run_pg "$bindir/pg_ctl" -D "$datadir" -l "$datadir/log" -w \
    -o "-p $port -k $datadir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on" start >/dev/null
  cleanup() { run_pg "$bindir/pg_ctl" -D "$datadir" -m fast stop >/dev/null 2>&1 || true; rm -rf "$datadir"; }
  pg_url="postgres://postgres@127.0.0.1:$port/postgres"
  echo "test.sh: PostgreSQL: a throwaway cluster at 127.0.0.1:$port ($bindir)"
fi

export TALLY_TEST_POSTGRES_URL="$pg_url"

nats_bin=$(command -v nats-server || ls /usr/sbin/nats-server /usr/local/bin/nats-server 2>/dev/null | head -n 1 || true)
if [[ -z "$nats_bin" ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: nats-server is not installed and this is not root: install it or set TALLY_TEST_NATS_SERVER" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nats-server >/dev/null
  nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
fi
export TALLY_TEST_NATS_SERVER="${TALLY_TEST_NATS_SERVER:-$nats_bin}"
if [[ -n "${TALLY_TEST_NATS_URL:-}" ]]; then
  echo "test.sh: NATS from TALLY_TEST_NATS_URL"
elif pg_answers 127.0.0.1 4222; then
  export TALLY_TEST_NATS_URL="nats://127.0.0.1:4222"
  echo "test.sh: NATS at 127.0.0.1:4222"
else
  echo "test.sh: no NATS answers; starting a throwaway nats-server -js"
  nats_port=54222
  nats_dir=$(mktemp -d /tmp/tally-nats.XXXXXX)
  "$nats_bin" -a 127.0.0.1 -p "$nats_port" -js -sd "$nats_dir" >"$nats_dir/log" 2>&1 &
  nats_pid=$!
  nats_cleanup() { kill "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; rm -rf "$nats_dir"; }
  for _ in $(seq 50); do pg_answers 127.0.0.1 "$nats_port" && break; sleep 0.2; done
  if ! pg_answers 127.0.0.1 "$nats_port"; then
    echo "test.sh: nats-server did not start:" >&2
    cat "$nats_dir/log" >&2
    exit 1
  fi
  export TALLY_TEST_NATS_URL="nats://127.0.0.1:$nats_port"
fi

cargo test --workspace --all-targets

# The contract as a client sees it (scripts/contract.sh): the OpenAPI document
# validates, a Python client generates from it without warnings, and a short
# flow runs through that client, on SQLite and on PostgreSQL.
bash scripts/contract.sh

# API fuzzing against the built server (scripts/fuzz-api.sh; ≤ 5 minutes).
bash scripts/fuzz-api.sh
