# shellcheck shell=bash
# Shared by the side-by-side benchmarks (bench/*.sh); sourced, not run.
#
# Every process a script starts in the background is recorded by PID and stopped by that PID
# (TERM, then KILL) when it is done with or when the script exits; nothing is ever stopped
# by name. Every client run is wrapped in `timeout`. All traffic is on 127.0.0.0/8.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# SENSORLINK_BIN=PATH runs a prebuilt binary (e.g. an older commit's, for a before/after
# comparison in one sitting) instead of building this checkout.
bin=${SENSORLINK_BIN:-target/release/sensorlink}
tmp=$(mktemp -d /tmp/sensorlink-bench.XXXXXX)
bg_pids=()

cleanup() {
  local pid
  for pid in "${bg_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  sleep 0.2
  for pid in "${bg_pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# build: the release binary, quietly (skipped when SENSORLINK_BIN names one).
build() {
  [ -n "${SENSORLINK_BIN:-}" ] && return 0
  cargo build --release --quiet
}

# start_bg OUTFILE CMD...: start CMD in the background with stdout+stderr to OUTFILE; sets
# $last_pid and records it for the exit trap.
start_bg() {
  local out=$1
  shift
  # Emptied here, not only by the child's redirection: a caller may read OUTFILE at once
  # and must not see what a previous process left there.
  : > "$out"
  "$@" > "$out" 2>&1 &
  last_pid=$!
  bg_pids+=("$last_pid")
}

# stop_pid PID [GRACE_SECONDS]: TERM, wait up to GRACE (default 10), then KILL; reaps it and
# forgets it.
stop_pid() {
  local pid=$1 grace=${2:-10} i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 20; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local kept=() p
  for p in "${bg_pids[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
  bg_pids=("${kept[@]+"${kept[@]}"}")
}

# start_ours STORE FSYNC [SERVER FLAGS...]: a fresh `sensorlink server` on a free loopback
# port; sets $server_pid and $addr (127.0.0.1:PORT). `--http off`: the measured server does
# no HTTP work (and never collides on the default HTTP port). The load comes from a few
# loopback addresses, so the per-address share and connect rate are lifted; and the reading
# quotas (rate, new series) too, so a benchmark measures the pipeline, not the limits.
start_ours() {
  local store=$1 fsync=$2 i
  shift 2
  start_bg "$tmp/server.out" "$bin" server --listen 127.0.0.1:0 --http off --store "$store" --fsync "$fsync" -q \
    --max-connections-per-ip 1048576 --connect-rate-per-ip 1000000 \
    --max-rate-per-connection 1000000000 --max-rate-per-token 1000000000 \
    --max-new-series-per-connection 1000000000 --max-new-series-per-token 1000000000 "$@"
  server_pid=$last_pid
  addr=
  for ((i = 0; i < 200; i++)); do
    addr=$(sed -n 's/^listening on //p' "$tmp/server.out")
    [ -n "$addr" ] && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "sensorlink server did not start:" >&2
  cat "$tmp/server.out" >&2
  exit 2
}

# fresh_db: an empty SQLite path in $tmp; prints it.
fresh_db() {
  rm -f "$tmp"/bench.db*
  echo "$tmp/bench.db"
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_tcp PORT [SECONDS]: until something accepts on 127.0.0.1:PORT (default 20 s).
wait_tcp() {
  local port=$1 secs=${2:-20} i
  for ((i = 0; i < secs * 20; i++)); do
    if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$port after ${secs}s" >&2
  return 1
}

# ours_bench OUTFILE TIMEOUT_S ARGS...: `sensorlink bench ARGS --json --no-progress` into
# OUTFILE. Exit 1 (errors during the run) is kept: the JSON says how many.
ours_bench() {
  local out=$1 limit=$2
  shift 2
  timeout --kill-after=5 "$limit" "$bin" bench "$@" --json --no-progress > "$out" || [ $? -eq 1 ]
}

# median: the median of the numbers on stdin (one per line); "nan" when there are none.
median() {
  sort -g | awk '{ a[NR] = $1 } END {
    if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.6f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# jmed FILE JQ_EXPR: median of JQ_EXPR over the JSON objects (one per line) in FILE.
jmed() {
  jq -r "$2" "$1" | median
}

# spread FILE JQ_EXPR: "min–max" of JQ_EXPR over FILE, rounded.
spread() {
  jq -r "$2" "$1" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f–%.0f", lo, hi }'
}

# int X: X rounded to an integer.  ratio A B: A / B with 2 decimals.
int() { awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "nan"; else printf "%.2f", a / b }'; }

# met CONDITION: "met" or "not met"; CONDITION is an awk expression on numbers.
met() { awk "BEGIN { if ($1) print \"met\"; else print \"**not met**\" }"; }

# header: when and where, for the table's caption. The machine is shared: the load average
# says how busy it was.
header() {
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); nproc: $(nproc); $(lscpu | grep 'Model name' | sed 's/  */ /g'); kernel $(uname -r)"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); code: ${SENSORLINK_BIN:+$SENSORLINK_BIN (prebuilt), checkout }$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' + local changes in src/')"
  echo "the server (ours or the reference) shares the machine's $(nproc) cores with its load generator; $REPS reps${ALTERNATED:+, sides alternated}"
}

# keep FILE NAME: copy a raw result to $OUT/NAME when OUT is set.
keep() {
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp "$1" "$OUT/$2"
  fi
}
