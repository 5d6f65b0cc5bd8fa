#!/usr/bin/env bash
# Builds the benchmarks in release and runs every one of docs/benchmarks.md
# in sequence with the documented arguments, saving each output to
# docs/bench/<name>.txt (and the latency percentiles to docs/bench/*.csv),
# then draws docs/bench-latency.png. Takes about 15 minutes on the project's
# two-core machine. Needs PostgreSQL at TALLY_BENCH_DATABASE_ADMIN_URL
# (default postgres://postgres@127.0.0.1:5432/postgres) and python3.
#
#   bench/run-all.sh            # everything
#   BENCH_SECONDS=5 BENCH_INVOICES=50000 BENCH_REBUILD_SIZES=100000 bench/run-all.sh   # a quick check
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
bin="$target/release"
out=docs/bench
seconds="${BENCH_SECONDS:-30}"
invoices="${BENCH_INVOICES:-1000000}"
sizes="${BENCH_REBUILD_SIZES:-1000000}"
mkdir -p "$out"

cargo build --release -p tally-bench -p tally-replay -p tally-api

run() {
    local name="$1"
    shift
    echo "== $name: tally-bench $*"
    {
        echo "\$ tally-bench $*"
        echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(uptime | sed 's/.*load/load/')"
        "$bin/tally-bench" "$@"
        echo "# finished $(date -u '+%H:%M:%S UTC'), $(uptime | sed 's/.*load/load/')"
    } 2>&1 | tee "$out/$name.txt"
}

run commands commands --seconds "$seconds" --percentiles-csv "$out/commands.csv"
run usage usage --seconds "$seconds" --percentiles-csv "$out/usage.csv"
run rebuild rebuild --sizes "$sizes"
run queries queries --invoices "$invoices" --seconds "$seconds" \
    --server-binary "$bin/tally" --percentiles-csv "$out/queries.csv"
run long-stream long-stream --events 100000 --requests 1000 \
    --percentiles-csv "$out/long-stream.csv"
run rss-commands commands --seconds "$seconds" --server-binary "$bin/tally"

# The plot: matplotlib in a virtualenv under the target directory.
venv="$target/plot-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet matplotlib
fi
"$venv/bin/python" bench/plot.py docs/bench-latency.png \
    "$out/commands.csv" "$out/usage.csv" "$out/queries.csv" "$out/long-stream.csv"
