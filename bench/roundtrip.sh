#!/usr/bin/env bash
# Round trip with one reading in flight, side by side with a bare TCP ping-pong:
#   ours:      `sensorlink bench --connections 1 --pipeline 1 --batch 1` against
#              `sensorlink server --store memory` (and, for information, SQLite --fsync os)
#   reference: `sockperf pp --tcp --full-rtt` against `sockperf sr --tcp` (Debian `sockperf`)
#   and the client itself: `sensorlink client --interval 0 --count CLIENT_COUNT --json`
#   (ping-pong: one reading in flight; p50/p99 from its summary) against the memory store
# Alternated in one sitting, REPS (default 3) reps of DURATION seconds (default 5) each;
# prints medians and the ratios against the targets (p50 ≤ 1.3×, p99 ≤ 1.5× sockperf's).
# Loopback only; about REPS × 4 × (DURATION + 2) s in all (≈ 1.5 min). OUT=DIR keeps raw output.
source "$(dirname "$0")/lib.sh"
ALTERNATED=1

DURATION=${DURATION:-5}
REPS=${REPS:-3}
# Readings per client run: bounded, and a few seconds at loopback round trips.
CLIENT_COUNT=${CLIENT_COUNT:-20000}
bash scripts/install-bench-deps.sh sockperf jq python3
build

run_ours() { # NAME STORE FSYNC
  local name=$1 store=$2 fsync=$3
  start_ours "$store" "$fsync"
  ours_bench "$tmp/run.json" $((DURATION + 30)) "$addr" --connections 1 --pipeline 1 --batch 1 \
    --warmup 1s --duration "${DURATION}s"
  stop_pid "$server_pid"
  cat "$tmp/run.json" >> "$tmp/$name.jsonl"
  keep "$tmp/run.json" "roundtrip-$name-$rep.json"
}

# run_client: `sensorlink client --interval 0` (ping-pong) against a fresh memory store; its
# summary's RTT percentiles (µs) and acked readings per second of the run (connect and the
# last link report included, so a little under the bench's rate).
run_client() {
  start_ours memory always
  timeout --kill-after=5 $((DURATION + 60)) "$bin" client "$addr" --interval 0 \
    --count "$CLIENT_COUNT" --sensor roundtrip --link-report 0 --json > "$tmp/client.out" ||
    [ $? -eq 1 ] # exit 1: readings lost; the summary says how many
  stop_pid "$server_pid"
  keep "$tmp/client.out" "roundtrip-client-$rep.jsonl"
  jq -c 'select(.event == "summary") | .summary
    | {latency_us: {p50: .rtt.p50_us, p99: .rtt.p99_us},
       readings_per_sec: (.acked / .duration_ms * 1000), lost: .lost}' \
    "$tmp/client.out" >> "$tmp/client.jsonl"
}

run_sockperf() {
  local port
  port=$(free_port)
  start_bg "$tmp/sr.out" sockperf sr --tcp -i 127.0.0.1 -p "$port"
  local sr_pid=$last_pid
  wait_tcp "$port"
  timeout --kill-after=5 $((DURATION + 30)) \
    sockperf pp --tcp -i 127.0.0.1 -p "$port" --full-rtt -t "$DURATION" > "$tmp/pp.out" 2>&1
  stop_pid "$sr_pid"
  keep "$tmp/pp.out" "roundtrip-sockperf-$rep.txt"
  # sockperf colours its output; drop the escapes, then pick the percentiles (µs) and the
  # message count of the measured interval (its 400 ms warm-up excluded).
  sed 's/\x1b\[[0-9;]*m//g' "$tmp/pp.out" | awk '
    /percentile 50.000 =/ { p50 = $NF }
    /percentile 99.000 =/ { p99 = $NF }
    /\[Valid Duration\]/ {
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^RunTime=/) { split($i, a, "="); secs = a[2] }
        if ($i ~ /^ReceivedMessages=/) { split($i, b, "="); n = b[2] + 0 }
      }
    }
    END { printf "{\"latency_us\":{\"p50\":%s,\"p99\":%s},\"readings_per_sec\":%s}\n", p50, p99, n / secs }
  ' >> "$tmp/sockperf.jsonl"
}

header
for rep in $(seq "$REPS"); do
  # Alternate which side goes first, so neither always runs on a cooler machine.
  if [ $((rep % 2)) -eq 1 ]; then
    run_ours memory memory always
    run_sockperf
    run_client
  else
    run_client
    run_sockperf
    run_ours memory memory always
  fi
  run_ours sqlite-os "sqlite:$(fresh_db)" os
done

o50=$(jmed "$tmp/memory.jsonl" .latency_us.p50)
o99=$(jmed "$tmp/memory.jsonl" .latency_us.p99)
orate=$(jmed "$tmp/memory.jsonl" .readings_per_sec)
s50=$(jmed "$tmp/sockperf.jsonl" .latency_us.p50)
s99=$(jmed "$tmp/sockperf.jsonl" .latency_us.p99)
srate=$(jmed "$tmp/sockperf.jsonl" .readings_per_sec)
q50=$(jmed "$tmp/sqlite-os.jsonl" .latency_us.p50)
q99=$(jmed "$tmp/sqlite-os.jsonl" .latency_us.p99)
qrate=$(jmed "$tmp/sqlite-os.jsonl" .readings_per_sec)
errors=$(jq -s 'map(.errors) | add' "$tmp/memory.jsonl" "$tmp/sqlite-os.jsonl")
c50=$(jmed "$tmp/client.jsonl" .latency_us.p50)
c99=$(jmed "$tmp/client.jsonl" .latency_us.p99)
crate=$(jmed "$tmp/client.jsonl" .readings_per_sec)
clost=$(jq -s 'map(.lost) | add' "$tmp/client.jsonl")

echo
echo "| round trip, 1 in flight | ours (memory store) | sockperf | ratio | target | |"
echo "|---|---:|---:|---:|---|---|"
echo "| p50 µs | $(printf '%.1f' "$o50") | $(printf '%.1f' "$s50") | $(ratio "$o50" "$s50")× | ≤ 1.3× | $(met "$o50 <= 1.3 * $s50") |"
echo "| p99 µs | $(printf '%.1f' "$o99") | $(printf '%.1f' "$s99") | $(ratio "$o99" "$s99")× | ≤ 1.5× | $(met "$o99 <= 1.5 * $s99") |"
echo "| round trips/s | $(int "$orate") | $(int "$srate") | $(ratio "$orate" "$srate")× | | |"
echo
echo "for information, SQLite --fsync os: p50 $(printf '%.1f' "$q50") µs, p99 $(printf '%.1f' "$q99") µs, $(int "$qrate") readings/s"
echo "spread (p50 µs): ours $(spread "$tmp/memory.jsonl" .latency_us.p50), sockperf $(spread "$tmp/sockperf.jsonl" .latency_us.p50); errors in our runs: $errors"

echo
echo "### client --interval 0 vs sockperf ping-pong"
echo
echo "| round trip, 1 in flight | client --interval 0 (memory store) | sockperf ping-pong | ratio |"
echo "|---|---:|---:|---:|"
echo "| p50 µs | $(printf '%.1f' "$c50") | $(printf '%.1f' "$s50") | $(ratio "$c50" "$s50")× |"
echo "| p99 µs | $(printf '%.1f' "$c99") | $(printf '%.1f' "$s99") | $(ratio "$c99" "$s99")× |"
echo "| round trips/s | $(int "$crate") | $(int "$srate") | $(ratio "$crate" "$srate")× |"
echo
echo "client: $CLIENT_COUNT readings per run; spread (p50 µs): $(spread "$tmp/client.jsonl" .latency_us.p50); lost in client runs: $clost"
