# Shared by bench/throughput.sh and bench/two-process.sh (sourced).

# wrk's output file -> "ok/s non2xx p50 p99"
wrk_summary() {
  python3 - "$1" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
n, secs, unit = re.search(r"(\d+) requests in ([\d.]+)(\w+)", t).groups()
secs = float(secs) * (60 if unit == "m" else 1)
bad = int((re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t) or [0, 0])[1])
p = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", t, re.M))
print(f"{(int(n) - bad) / secs:.0f} {bad} {p.get('50')} {p.get('99')}")
PY
}

# Records a second of a wrk output file whose requests carry PER records each
# (wrk's own requests/s is rounded to a whole request): wrk_records FILE PER
wrk_records() {
  awk -v per="$2" '/requests in/{sub(/s,$/, "", $4); print int($1 * per / $4)}' "$1"
}

# Starts the release server in its own process, in DIR, logging to
# DIR/LOG, and waits until it answers; its pid is left in $pid:
# start_tally BIN DIR PORT LOG
start_tally() {
  (cd "$2" && TALLY_LOG=warn exec "$1" serve --listen "127.0.0.1:$3" --rate-limit 0 > "$2/$4" 2>&1) &
  pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$3/healthz" >/dev/null && break; sleep 0.2; done
}

# Until every consumer is at the log head: wait_idle URL KEY
wait_idle() {
  for _ in $(seq 1 600); do
    curl -s "$1/v1/admin/projections" -H "Authorization: Bearer $2" | python3 -c '
import json, sys
rows = json.load(sys.stdin); rows = rows if isinstance(rows, list) else rows.get("data", [])
sys.exit(0 if rows and all(r["lag_events"] == 0 for r in rows) else 1)' && return
    sleep 0.5
  done
}

# The change-seats Lua script (random subscription of IDS_FILE, seats 1-20,
# proration on for half): seats_lua OUT IDS_FILE KEY
seats_lua() {
  cat > "$1" <<EOF
local ids = {}
for line in io.lines("$2") do ids[#ids + 1] = line end
math.randomseed(os.time() + math.floor(os.clock() * 1e6))
local n = 0
request = function()
  n = n + 1
  local proration = (n % 2 == 0) and '"prorate"' or '"none"'
  return wrk.format("POST", "/v1/subscriptions/" .. ids[math.random(#ids)] .. "/change-seats",
    {["Authorization"] = "Bearer $3", ["Content-Type"] = "application/json"},
    '{"seats":' .. math.random(1, 20) .. ',"proration":' .. proration .. '}')
end
EOF
}

# The usage-batch Lua script (1,000 records a request on the subscriptions of
# IDS_FILE, distinct transaction ids): usage_lua OUT IDS_FILE KEY
usage_lua() {
cat > "$1" <<EOF
local ids = {}
for line in io.lines("$2") do ids[#ids + 1] = line end
-- tid is each thread's global, set by setup: a local here would shadow it,
-- and two threads would send the same transaction ids.
local threads, counter = 0, 0
function setup(thread) threads = threads + 1; thread:set("tid", threads) end
request = function()
  local parts = {}
  for i = 1, 1000 do
    counter = counter + 1
    parts[i] = '{"subscription_id":"' .. ids[math.random(#ids)] .. '","meter":"api_calls","quantity":"1",' ..
      '"timestamp":"$(date -u +%FT%TZ)","transaction_id":"t' .. os.time() .. '-' .. tostring(tid) .. '-' .. counter .. '"}'
  end
  return wrk.format("POST", "/v1/usage/batch", {["Authorization"] = "Bearer $3", ["Content-Type"] = "application/json"},
    '{"records":[' .. table.concat(parts, ",") .. ']}')
end
EOF
}

# The quota probe (issue 15: a subscription suspended within 1 s of its cap
# being crossed, under load): one record over the hard cap on each capped
# subscription of FILE in turn, its status read until it is suspended, for
# SECS less 6 seconds; prints "probes p50_ms max_ms":
# quota_probe URL KEY FILE SECS
quota_probe() {
  python3 - "$1" "$2" "$3" "$4" <<'PY'
import http.client, json, sys, time
url, key, subs, secs = sys.argv[1], sys.argv[2], [l.strip() for l in open(sys.argv[3]) if l.strip()], float(sys.argv[4])
host, port = url.split("//")[1].split(":")
conn = http.client.HTTPConnection(host, int(port), timeout=30)
auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
time.sleep(2)
took, end = [], time.time() + secs - 6
for n, sub in enumerate(subs):
    if time.time() > end:
        break
    body = {"records": [{"subscription_id": sub, "meter": "api_calls", "quantity": "101",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "transaction_id": f"quota-{n}-{time.time()}"}]}
    conn.request("POST", "/v1/usage/batch", json.dumps(body), auth)
    r = conn.getresponse(); r.read()
    t = time.perf_counter()
    while r.status == 200 and time.perf_counter() - t < 20:
        conn.request("GET", f"/v1/subscriptions/{sub}", headers=auth)
        g = conn.getresponse(); state = json.loads(g.read())
        if state.get("status") == "suspended":
            took.append((time.perf_counter() - t) * 1000)
            break
        time.sleep(0.02)
    else:
        took.append(float("inf"))
took.sort()
print(f"{len(took)} {took[len(took) // 2]:.0f} {took[-1]:.0f}" if took else "0 nan nan")
PY
}
