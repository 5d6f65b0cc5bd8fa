#!/usr/bin/env bash
# Issue 15.3: the bulk paths on the embedded default, SQLite. For each binary
# given (a before and an after, so one run compares them): the release
# `tally serve` on a fresh SQLite file, usage batches of 1,000 records on 100
# subscriptions over 8 connections (wrk), with the quota probe (bench/lib.sh)
# beside them; then each binary's
# `tally-replay rebuild --all` of one log, the one the first binary's run
# left (copied afresh for each). SQLite has no ceiling to print; the figures
# compare between the binaries of one run only.
#
#   bench/sqlite.sh [DIR_OF_BINARIES ...]     (default: target/release;
#                                              env: SECS=20, PORT=18395)
#
# Each DIR holds `tally` and `tally-replay`. Needs wrk and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
SECS=${SECS:-20}
PORT=${PORT:-18395}
URL=http://127.0.0.1:$PORT
[ $# -gt 0 ] || set -- target/release
echo "# $(date -u '+%F %T') UTC, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

for dir in "$@"; do
  BIN=$(realpath "$dir/tally")
  RB=$(realpath "$dir/tally-replay")
  W=$(mktemp -d /tmp/tally-sqlite.XXXXXX)
  export DATABASE_URL="sqlite://$W/tally.db?mode=rwc"
  KEY=$(cd "$W" && "$BIN" keys create --tenant bench --role admin | tail -1)
  start_tally "$BIN" "$W" "$PORT" tally.log
  trap 'kill $pid 2>/dev/null || true' EXIT
  python3 bench/seed.py "$URL" "$KEY" subs 100 "$W/ids100.txt"
  python3 bench/seed.py "$URL" "$KEY" capped 20 "$W/quota.txt"
  wait_idle "$URL" "$KEY"
  usage_lua "$W/usage.lua" "$W/ids100.txt" "$KEY"
  quota_probe "$URL" "$KEY" "$W/quota.txt" "$SECS" > "$W/quota.out" &
  quota_pid=$!
  wrk -t2 -c8 -d"${SECS}s" --timeout 30s --latency -s "$W/usage.lua" "$URL" > "$W/usage.wrk" 2>&1
  wait $quota_pid || true
  read -r q_n q_p50 q_max < "$W/quota.out" || true
  read -r _ u_bad u_p50 u_p99 < <(wrk_summary "$W/usage.wrk")
  u_rec=$(wrk_records "$W/usage.wrk" 1000)
  wait_idle "$URL" "$KEY"
  rss=$(awk '/VmHWM/{print int($2 / 1024)}' "/proc/$pid/status")
  kill $pid; wait $pid 2>/dev/null || true
  trap - EXIT
  echo "$dir: usage batches of 1,000 x8: $u_rec records/s, non-2xx $u_bad, batch p50 $u_p50, p99 $u_p99; server peak RSS $rss MB; quota ($q_n probes, answer to suspended) p50 $q_p50 ms, max $q_max ms"
  # The first binary's log (give the oldest first: newer binaries migrate
  # it forward), as one file through SQLite's backup (the WAL included).
  if [ -z "${LOG:-}" ]; then
    LOG=$(mktemp /tmp/tally-sqlite-log.XXXXXX)
    python3 -c "import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))" "$W/tally.db" "$LOG"
  fi
  rm -rf "$W"
done

# The rebuilds, each of a fresh copy of the same log.
events=$(python3 -c "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from events').fetchone()[0])" "$LOG")
for dir in "$@"; do
  RB=$(realpath "$dir/tally-replay")
  W=$(mktemp -d /tmp/tally-sqlite.XXXXXX)
  cp "$LOG" "$W/tally.db"
  export DATABASE_URL="sqlite://$W/tally.db?mode=rwc"
  start=$(date +%s.%N)
  (cd "$W" && /usr/bin/time -v "$RB" rebuild --all > "$W/rebuild.out" 2> "$W/rebuild.err")
  rb_secs=$(python3 -c "import time, sys; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$start")
  rb_rss=$(awk -F: '/Maximum resident/{gsub(/ /, "", $2); print int($2 / 1024)}' "$W/rebuild.err")
  echo "$dir: rebuild --all of the same $events events: $rb_secs s = $(python3 -c "import sys; print(round(int(sys.argv[1]) / max(float(sys.argv[2]), 0.001)))" "$events" "$rb_secs") events/s, peak RSS $rb_rss MB"
  rm -rf "$W"
done
rm -f "$LOG"
