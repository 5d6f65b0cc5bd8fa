#!/usr/bin/env bash
# Runs the whole test suite, on SQLite and on PostgreSQL.
#
# PostgreSQL: DATABASE_URL when it is a postgres:// URL; else the server at
# 127.0.0.1:5432 when one answers; else PostgreSQL is installed from Debian's
# packages (as root) and a throwaway cluster is started for this run and
# removed after it. The PostgreSQL tests never skip: without a server they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_answers() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

cleanup() { :; }
trap 'cleanup' EXIT

if [[ "${DATABASE_URL:-}" == postgres://* || "${DATABASE_URL:-}" == postgresql://* ]]; then
  pg_url="$DATABASE_URL"
  echo "test.sh: PostgreSQL from DATABASE_URL"
elif pg_answers 127.0.0.1 5432; then
  pg_url="postgres://postgres@127.0.0.1:5432/postgres"
  echo "test.sh: PostgreSQL at 127.0.0.1:5432"
else
  echo "test.sh: no PostgreSQL answers; starting a throwaway cluster"
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [[ -z "$bindir" || ! -x "$bindir/initdb" ]]; then
    if [[ $(id -u) -ne 0 ]]; then
      echo "test.sh: PostgreSQL is not installed and this is not root: install it or set DATABASE_URL" >&2
      exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  port=55432
  datadir=$(mktemp -d /tmp/tally-pg.XXXXXX)
  run_pg() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  if [[ $(id -u) -eq 0 ]]; then chown postgres "$datadir"; fi
  run_pg "$bindir/initdb" -D "$datadir" -U postgres -A trust >/dev/null
  run_pg "$bindir/pg_ctl" -D "$datadir" -l "$datadir/log" -w \
    -o "-p $port -k $datadir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on" start >/dev/null
  cleanup() { run_pg "$bindir/pg_ctl" -D "$datadir" -m fast stop >/dev/null 2>&1 || true; rm -rf "$datadir"; }
  pg_url="postgres://postgres@127.0.0.1:$port/postgres"
fi

export TALLY_TEST_POSTGRES_URL="$pg_url"
cargo test --workspace --all-targets
