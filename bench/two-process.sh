#!/usr/bin/env bash
# Issue 14.6: two `tally serve` processes on one PostgreSQL, the change-seats
# load split between them, against one process with the whole load, in one
# run (and pgbench's one-row insert ceiling beside them).
#
#   bench/two-process.sh     (env: SECS=20, PG=postgres://postgres@127.0.0.1:5432,
#                             TALLY_BIN=target/release/tally)
#
# Needs wrk and pgbench. Creates and drops the databases tally_tp2 and
# tally_tp2_ceiling.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
PG=${PG:-postgres://postgres@127.0.0.1:5432}
SECS=${SECS:-20}
TALLY_BIN=$(realpath "${TALLY_BIN:-target/release/tally}")
W=$(mktemp -d /tmp/tally-tp2.XXXXXX)
echo "# $(date -u '+%F %T') UTC, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

psql "$PG/postgres" -qc "drop database if exists tally_tp2_ceiling" -c "create database tally_tp2_ceiling"
psql "$PG/tally_tp2_ceiling" -qc "create table events (aggregate_type text not null, aggregate_id text not null, sequence bigint not null, event_type text not null, event_version text not null, payload json not null, metadata json not null, primary key (aggregate_type, aggregate_id, sequence))"
echo "INSERT INTO events VALUES ('subscription', gen_random_uuid()::text, 1, 'SeatsChanged', '1', '{\"SeatsChanged\":{\"from\":3,\"to\":7}}', '{\"tenant\":\"bench\"}');" > "$W/insert1.sql"
pgbench -n -M prepared -f "$W/insert1.sql" -c 64 -j 2 -T "$SECS" "$PG/tally_tp2_ceiling" > "$W/ceiling.out" 2>&1
ceiling=$(awk '/^tps/{print int($3); exit}' "$W/ceiling.out")
psql "$PG/postgres" -qc "drop database tally_tp2_ceiling"
echo "ceiling  one-row insert x64: $ceiling tx/s"

psql "$PG/postgres" -qc "drop database if exists tally_tp2 with (force)" -c "create database tally_tp2"
export DATABASE_URL="$PG/tally_tp2"
KEY=$(cd "$W" && "$TALLY_BIN" keys create --tenant bench --role admin | tail -1)
pids=()
for port in 18381 18382; do
  (cd "$W" && TALLY_LOG=warn exec "$TALLY_BIN" serve --listen "127.0.0.1:$port" --rate-limit 0 > "$W/tally-$port.log" 2>&1) &
  pids+=($!)
done
trap 'kill ${pids[*]} 2>/dev/null || true' EXIT
for port in 18381 18382; do
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
done
python3 bench/seed.py http://127.0.0.1:18381 "$KEY" subs 1000 "$W/ids.txt"
wait_idle http://127.0.0.1:18381 "$KEY"
seats_lua "$W/seats.lua" "$W/ids.txt" "$KEY"
# Two processes, 32 connections each, at once.
wrk -t1 -c32 -d"${SECS}s" --timeout 10s -s "$W/seats.lua" http://127.0.0.1:18381 > "$W/a.wrk" 2>&1 &
wa=$!
wrk -t1 -c32 -d"${SECS}s" --timeout 10s -s "$W/seats.lua" http://127.0.0.1:18382 > "$W/b.wrk" 2>&1
wait $wa
read -r a_ok a_bad _ < <(wrk_summary "$W/a.wrk")
read -r b_ok b_bad _ < <(wrk_summary "$W/b.wrk")
conns=$(psql "$PG/postgres" -Atc "select count(*) from pg_stat_activity where datname = 'tally_tp2'")
wait_idle http://127.0.0.1:18381 "$KEY"
# One process, all 64 connections: a fresh one, whose cache has not seen
# the other process.
kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
(cd "$W" && TALLY_LOG=warn exec "$TALLY_BIN" serve --listen "127.0.0.1:18381" --rate-limit 0 > "$W/tally-one.log" 2>&1) &
pids=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:18381/healthz" >/dev/null && break; sleep 0.2; done
wrk -t2 -c64 -d"${SECS}s" --timeout 10s -s "$W/seats.lua" http://127.0.0.1:18381 > "$W/one.wrk" 2>&1
read -r o_ok o_bad _ < <(wrk_summary "$W/one.wrk")
kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
trap - EXIT
psql "$PG/postgres" -qc "drop database tally_tp2 with (force)"
echo "tally    two processes, change-seats x32 each: $a_ok + $b_ok = $((a_ok + b_ok)) ok/s, non-2xx $((a_bad + b_bad)); database connections of both after the load: $conns"
echo "tally    one process, change-seats x64: $o_ok ok/s, non-2xx $o_bad"
python3 -c "import sys; a,b,o,c=map(float,sys.argv[1:]); print(f'ratio    two processes / one: {(a+b)/o:.2f} (goal >= 1.0); two processes / ceiling: {(a+b)/c:.2f}, one / ceiling: {o/c:.2f}')" "$a_ok" "$b_ok" "$o_ok" "$ceiling"
rm -rf "$W"
