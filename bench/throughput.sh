#!/usr/bin/env bash
# The server's throughput against the database's ceilings, measured in one run
# on one PostgreSQL (issues 14 and 15): the release `tally serve` in its own
# process, driven over HTTP by wrk with Lua scripts, and pgbench for the
# ceilings. Prints each figure with its ceiling and the ratio.
#
#   bench/throughput.sh            (env: SECS=30, PG=postgres://postgres@127.0.0.1:5432,
#                                   TALLY_BIN=target/release/tally, PORT=18380)
#
# Needs wrk and pgbench (Debian: wrk, postgresql-contrib) and the release
# binaries (cargo build --release --bins). Creates and drops the databases
# tally_tp_ceiling and tally_tp.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
PG=${PG:-postgres://postgres@127.0.0.1:5432}
SECS=${SECS:-30}
PORT=${PORT:-18380}
TALLY_BIN=$(realpath "${TALLY_BIN:-target/release/tally}")
W=$(mktemp -d /tmp/tally-tp.XXXXXX)
URL=http://127.0.0.1:$PORT
echo "# $(date -u '+%F %T') UTC, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $(psql "$PG/postgres" -qAtc 'select version()' | cut -c1-16)"

ceiling() { # name sql clients -> transactions/s
  pgbench -n -M prepared -f "$2" -c "$3" -j 2 -T "$SECS" "$4" > "$W/$1.pgbench" 2>&1
  awk '/^tps/{print int($3); exit}' "$W/$1.pgbench"
}
wrk_run() { # name conns script [timeout] -> "ok/s non2xx p50 p99"
  wrk -t2 -c"$2" -d"${SECS}s" --timeout "${4:-10s}" --latency -s "$3" "$URL" > "$W/$1.wrk" 2>&1
  wrk_summary "$W/$1.wrk"
}

# 1. Ceilings: one events-shaped row per transaction (64 clients), 100 rows
# per INSERT (8 clients).
psql "$PG/postgres" -qc "drop database if exists tally_tp_ceiling" -c "create database tally_tp_ceiling"
psql "$PG/tally_tp_ceiling" -qc "create table events (aggregate_type text not null, aggregate_id text not null, sequence bigint not null, event_type text not null, event_version text not null, payload json not null, metadata json not null, primary key (aggregate_type, aggregate_id, sequence))"
payload='{"SeatsChanged":{"from":3,"to":7,"proration":{"credit":"12.34","charge":"28.79","period":{"start":"2026-11-01T00:00:00Z","end":"2026-12-01T00:00:00Z"}},"at":"2026-11-22T10:00:00Z"}}'
meta='{"tenant":"bench","actor":"key-abc","request_id":"req_0123456789"}'
echo "INSERT INTO events VALUES ('subscription', gen_random_uuid()::text, 1, 'SeatsChanged', '1', '$payload', '$meta');" > "$W/insert1.sql"
echo "INSERT INTO events SELECT 'usage_record', gen_random_uuid()::text, 1, 'UsageRecorded', '1', '$payload', '$meta' FROM generate_series(1,100);" > "$W/insert100.sql"
c_insert=$(ceiling insert1 "$W/insert1.sql" 64 "$PG/tally_tp_ceiling")
psql "$PG/tally_tp_ceiling" -qc "truncate events"
c_insert100=$(( $(ceiling insert100 "$W/insert100.sql" 8 "$PG/tally_tp_ceiling") * 100 ))
# The same 100-row insert into Tally's own log table (migration 0001: the
# position trigger and the position, event id and tenant indexes): the bound
# that the log's schema alone puts on usage ingest, before any read model.
echo "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, event_id, tenant) SELECT 'usage_record', gen_random_uuid()::text, 1, 'UsageRecorded', '1', '$payload', '$meta', gen_random_uuid()::text, 'bench' FROM generate_series(1,100);" > "$W/insertlog.sql"
psql "$PG/tally_tp_ceiling" -qc "drop table events"
psql "$PG/tally_tp_ceiling" -q -f migrations/postgres/0001_log.sql > /dev/null
c_log100=$(( $(ceiling insertlog "$W/insertlog.sql" 8 "$PG/tally_tp_ceiling") * 100 ))
psql "$PG/postgres" -qc "drop database tally_tp_ceiling"
echo "ceiling  one-row insert x64: $c_insert tx/s; 100-row insert x8: $c_insert100 rows/s; the same into the log's own table: $c_log100 rows/s"

# 2. The server: 1 plan, 1,000 active subscriptions.
psql "$PG/postgres" -qc "drop database if exists tally_tp with (force)" -c "create database tally_tp"
export DATABASE_URL="$PG/tally_tp"
KEY=$(cd "$W" && "$TALLY_BIN" keys create --tenant bench --role admin | tail -1)
start_tally "$TALLY_BIN" "$W" "$PORT" tally.log
trap 'kill $pid 2>/dev/null || true' EXIT
python3 bench/seed.py "$URL" "$KEY" subs 1001 "$W/all.txt"
# The quota probe's subscriptions (issue 15: suspended within 1 s of the cap
# being crossed, under the usage load): a plan whose meter has a hard cap.
python3 bench/seed.py "$URL" "$KEY" capped 20 "$W/quota.txt"
# The last one is the lag probe's own (see below), not in the load.
tail -n 1 "$W/all.txt" > "$W/probe.txt"
head -n 1000 "$W/all.txt" > "$W/ids.txt"
head -n 100 "$W/ids.txt" > "$W/ids100.txt"
wait_idle "$URL" "$KEY"
peak_rss() { awk '/VmHWM/{print $2}' "/proc/$pid/status"; }

# 3. change-seats x64, random subscription and seats, proration on for half.
seats_lua "$W/seats.lua" "$W/ids.txt" "$KEY"
q="select xact_commit, tup_fetched from pg_stat_database where datname='tally_tp'"
b=$(psql "$PG/postgres" -Atc "$q"); bw=$(psql "$PG/postgres" -Atc "select wal_records, wal_sync from pg_stat_wal")
# Projection lag under that load (issue 14, point 3): a probe changes the
# seats of its own subscription, then reads it with X-Min-Position set to the
# answer's X-Log-Position; the read answers once every read model has reached
# the command, so its duration bounds the lag from above.
python3 - "$URL" "$KEY" "$(cat "$W/probe.txt")" "$SECS" > "$W/lag.txt" <<'PY' &
import http.client, json, sys, time
url, key, sub, secs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
host, port = url.split("//")[1].split(":")
time.sleep(2)
conn = http.client.HTTPConnection(host, int(port), timeout=10)
auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
lags, seats, end = [], 1, time.time() + secs - 4
while time.time() < end:
    seats = seats % 20 + 1
    conn.request("POST", f"/v1/subscriptions/{sub}/change-seats", json.dumps({"seats": seats, "proration": "none"}), auth)
    r = conn.getresponse(); r.read()
    p = r.getheader("X-Log-Position")
    t = time.perf_counter()
    conn.request("GET", f"/v1/subscriptions/{sub}", headers={**auth, "X-Min-Position": p})
    g = conn.getresponse(); g.read()
    if r.status == 200 and g.status == 200:
        lags.append((time.perf_counter() - t) * 1000)
    time.sleep(0.05)
lags.sort()
q = lambda f: lags[min(len(lags) - 1, int(f * len(lags)))] if lags else float("nan")
print(f"{len(lags)} {q(0.5):.1f} {q(0.99):.1f}")
PY
lag_pid=$!
read -r s_ok s_bad s_p50 s_p99 < <(wrk_run seats 64 "$W/seats.lua")
wait $lag_pid || true
read -r l_n l_p50 l_p99 < "$W/lag.txt" || true
wait_idle "$URL" "$KEY"
a=$(psql "$PG/postgres" -Atc "$q"); aw=$(psql "$PG/postgres" -Atc "select wal_records, wal_sync from pg_stat_wal")
s_n=$(awk '/requests in/{print $1}' "$W/seats.wrk")
echo "tally    change-seats x64: $s_ok ok/s, non-2xx $s_bad, p50 $s_p50, p99 $s_p99; peak RSS $(peak_rss) kB"
echo "tally    projection lag under that load ($l_n probes, answer to read model): p50 ${l_p50} ms, p99 ${l_p99} ms (goal p99 <= 100 ms)"
python3 - "$b" "$a" "$bw" "$aw" "$s_n" <<'PY'
import sys
b, a, bw, aw = ([int(x) for x in s.split("|")] for s in sys.argv[1:5]); n = int(sys.argv[5])
print(f"tally    database work per command: {(a[0]-b[0])/n:.2f} transactions, {(aw[0]-bw[0])/n:.1f} WAL records, "
      f"{(aw[1]-bw[1])/n:.2f} WAL flushes, {(a[1]-b[1])/n:.1f} rows fetched (goal: <= 2 transactions, < 1 flush)")
PY

# 4. GET /v1/subscriptions/{id} x64, and the same indexed read in pgbench.
cat > "$W/get.lua" <<EOF
local ids = {}
for line in io.lines("$W/ids.txt") do ids[#ids + 1] = line end
request = function()
  return wrk.format("GET", "/v1/subscriptions/" .. ids[math.random(#ids)], {["Authorization"] = "Bearer $KEY"})
end
EOF
read -r g_ok g_bad g_p50 g_p99 < <(wrk_run get 64 "$W/get.lua")
echo "tally    GET subscription x64: $g_ok ok/s, non-2xx $g_bad, p50 $g_p50, p99 $g_p99; peak RSS $(peak_rss) kB"

# 5. Usage batches of 1,000 records on 100 subscriptions, 8 connections.
usage_lua "$W/usage.lua" "$W/ids100.txt" "$KEY"
# The quota probe, under that load: one record over the cap on a capped
# subscription, then its status read until it is suspended.
quota_probe "$URL" "$KEY" "$W/quota.txt" "$SECS" > "$W/quota.out" &
quota_pid=$!
read -r _ u_bad u_p50 u_p99 < <(wrk_run usage 8 "$W/usage.lua" 30s)
u_rec=$(wrk_records "$W/usage.wrk" 1000)
wait $quota_pid || true
read -r q_n q_p50 q_max < "$W/quota.out" || true
echo "tally    usage batches of 1,000 x8: $u_rec records/s, non-2xx $u_bad, batch p50 $u_p50, p99 $u_p99; peak RSS $(peak_rss) kB"
echo "tally    quota under that load ($q_n probes, answer to suspended): p50 ${q_p50} ms, max ${q_max} ms (goal <= 1000 ms)"
rss=$(peak_rss)
kill $pid; wait $pid 2>/dev/null || true
trap - EXIT

python3 - "$W/ids.txt" > "$W/read1.sql" <<'PY'
import sys
ids = [l.strip() for l in open(sys.argv[1]) if l.strip()]
print("\\set i random(1, %d)" % len(ids))
print("SELECT body, version FROM rm_subscriptions WHERE tenant = 'bench' AND id = (SELECT id FROM tp_ids WHERE n = :i);")
PY
psql "$PG/tally_tp" -qc "create table tp_ids as select row_number() over () as n, id from rm_subscriptions where tenant = 'bench'" -c "alter table tp_ids add primary key (n)" -c "analyze"
c_read=$(ceiling read1 "$W/read1.sql" 64 "$PG/tally_tp")
echo "ceiling  indexed read of the subscription row x64: $c_read tx/s"
events=$(psql "$PG/tally_tp" -Atc "select count(*) from events")
RB=$(dirname "$TALLY_BIN")/tally-replay
start=$(date +%s.%N)
(cd "$W" && /usr/bin/time -v "$RB" rebuild --all > "$W/rebuild.out" 2> "$W/rebuild.err")
rb_secs=$(python3 -c "import time, sys; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$start")
rb_rss=$(awk -F: '/Maximum resident/{gsub(/ /, "", $2); print $2}' "$W/rebuild.err")
psql "$PG/postgres" -qc "drop database tally_tp with (force)"
python3 - "$c_insert" "$s_ok" "$c_read" "$g_ok" "$c_insert100" "$u_rec" "$events" "$rb_secs" "$rb_rss" "$rss" "$c_log100" <<'PY'
import sys
ci, s, cr, g, c100, u, ev, rb, rbrss, rss, clog = (float(x) for x in sys.argv[1:12])
print(f"ratio    change-seats / one-row insert ceiling: {s/ci:.2f} (goal >= 0.6)")
print(f"ratio    GET / indexed-read ceiling: {g/cr:.2f} (goal >= 0.6)")
print(f"ratio    usage records / 100-row insert ceiling: {u/c100:.2f} (goal >= 0.5); the log's own table alone reaches {clog/c100:.2f}")
print(f"tally    rebuild --all of {ev:.0f} events: {rb} s = {ev/max(rb,0.001):.0f} events/s, peak RSS {rbrss/1024:.0f} MB")
print(f"tally    server peak RSS over the run: {rss/1024:.0f} MB (goal <= 150)")
PY
rm -rf "$W"
