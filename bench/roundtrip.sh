#!/usr/bin/env bash
# Round trip with one reading in flight, side by side with a bare TCP ping-pong:
#   ours:      `sensorlink bench --connections 1 --pipeline 1 --batch 1` against
#              `sensorlink server --store memory`, and against SQLite `--fsync os`
#   reference: `sockperf pp --tcp --full-rtt` against `sockperf sr --tcp` (Debian `sockperf`)
#   and the client itself: `sensorlink client --interval 0 --count CLIENT_COUNT --json`
#   (ping-pong: one reading in flight; p50/p99 from its summary) against the memory store
# Pinned (bench/lib.sh): every server (ours, `sockperf sr`) on SERVER_CPU, every load
# generator (`sensorlink bench`, `sensorlink client`, `sockperf pp`) on LOAD_CPU; PIN=0 unpinned.
# Alternated in one sitting, REPS (default 3) reps of DURATION seconds (default 5) each;
# prints medians, each figure's spread across reps, and `result` rows against the issue's
# targets (memory: p50 ≤ 1.1×, p99 ≤ 1.2× sockperf's; SQLite --fsync os: ≤ 1.5×).
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
  timeout --kill-after=5 $((DURATION + 60)) "${on_load[@]}" "$bin" client "$addr" --interval 0 \
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
  start_bg "$tmp/sr.out" "${on_server[@]}" sockperf sr --tcp -i 127.0.0.1 -p "$port"
  local sr_pid=$last_pid
  wait_tcp "$port"
  timeout --kill-after=5 $((DURATION + 30)) "${on_load[@]}" \
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
  # Alternate which side goes first, so neither always runs on a cooler machine; each
  # store's run is right beside sockperf's, since their ratio is taken rep by rep.
  if [ $((rep % 2)) -eq 1 ]; then
    run_ours memory memory always
    run_sockperf
    run_ours sqlite-os "sqlite:$(fresh_db)" os
    run_client
  else
    run_client
    run_ours sqlite-os "sqlite:$(fresh_db)" os
    run_sockperf
    run_ours memory memory always
  fi
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
# Each figure's spread across reps, in %.
sp() { spread_pct "$tmp/$1.jsonl" "$2"; }
so50=$(sp memory .latency_us.p50) so99=$(sp memory .latency_us.p99) sorate=$(sp memory .readings_per_sec)
ss50=$(sp sockperf .latency_us.p50) ss99=$(sp sockperf .latency_us.p99) ssrate=$(sp sockperf .readings_per_sec)
sq50=$(sp sqlite-os .latency_us.p50) sq99=$(sp sqlite-os .latency_us.p99) sqrate=$(sp sqlite-os .readings_per_sec)
sc50=$(sp client .latency_us.p50) sc99=$(sp client .latency_us.p99) scrate=$(sp client .readings_per_sec)

# Ratio targets judged on their pairs: rep i of ours ÷ rep i of sockperf (lib.sh `pair`).
# pr_KEY / ps_KEY / pv_KEY: each target's median ratio, ratio spread and verdict.
judge_pair() { # KEY OURS_FILE EXPR TARGET
  pair "$tmp/$2.jsonl" "$3" "$tmp/sockperf.jsonl" "$3" "<=" "$4"
  printf -v "pr_$1" '%s' "$pair_ratio"
  printf -v "ps_$1" '%s' "$pair_spread"
  printf -v "pv_$1" '%s' "$pair_verdict"
}
judge_pair m50 memory .latency_us.p50 1.1
judge_pair m99 memory .latency_us.p99 1.2
judge_pair q50 sqlite-os .latency_us.p50 1.5
judge_pair q99 sqlite-os .latency_us.p99 1.5

echo
echo "| round trip, 1 in flight | ours | spread | sockperf | spread | ratio (median of the $REPS reps' ratios) | ratio spread | target | verdict |"
echo "|---|---:|---:|---:|---:|---:|---:|---|---|"
echo "| p50 µs, memory store | $(us "$o50") | $so50 % | $(us "$s50") | $ss50 % | ${pr_m50}× | $ps_m50 % | ≤ 1.1× | $pv_m50 |"
echo "| p99 µs, memory store | $(us "$o99") | $so99 % | $(us "$s99") | $ss99 % | ${pr_m99}× | $ps_m99 % | ≤ 1.2× | $pv_m99 |"
echo "| round trips/s, memory store | $(num "$orate") | $sorate % | $(num "$srate") | $ssrate % | $(ratio "$orate" "$srate")× | | | |"
echo "| p50 µs, SQLite --fsync os | $(us "$q50") | $sq50 % | $(us "$s50") | $ss50 % | ${pr_q50}× | $ps_q50 % | ≤ 1.5× | $pv_q50 |"
echo "| p99 µs, SQLite --fsync os | $(us "$q99") | $sq99 % | $(us "$s99") | $ss99 % | ${pr_q99}× | $ps_q99 % | ≤ 1.5× | $pv_q99 |"
echo "| round trips/s, SQLite --fsync os | $(num "$qrate") | $sqrate % | | | $(ratio "$qrate" "$srate")× | | | |"
echo "| p50 µs, \`client --interval 0\`, memory | $(us "$c50") | $sc50 % | $(us "$s50") | $ss50 % | $(ratio "$c50" "$s50")× | | report | |"
echo "| p99 µs, \`client --interval 0\`, memory | $(us "$c99") | $sc99 % | $(us "$s99") | $ss99 % | $(ratio "$c99" "$s99")× | | report | |"
echo "| round trips/s, \`client --interval 0\` | $(num "$crate") | $scrate % | $(num "$srate") | $ssrate % | $(ratio "$crate" "$srate")× | | | |"
echo
echo "(ratio: each rep's ours ÷ that rep's sockperf, which ran beside it; the verdict is on those ratios: met or not met in every rep holds whatever the spread, reps that disagree are judged by the median only when the ratios spread ≤ $NOISY_PCT %)"
echo "errors in our bench runs: $errors; client: $CLIENT_COUNT readings per run, lost: $clost"
footer
echo
result rtt-p50-memory "round trip p50, 1 in flight, memory store" "$(us "$o50") µs" "sockperf $(us "$s50") µs" \
  "${pr_m50}×" "$(pspreads "$ps_m50" "$so50" "$ss50")" "≤ 1.1×" "$pv_m50"
result rtt-p99-memory "round trip p99, 1 in flight, memory store" "$(us "$o99") µs" "sockperf $(us "$s99") µs" \
  "${pr_m99}×" "$(pspreads "$ps_m99" "$so99" "$ss99")" "≤ 1.2×" "$pv_m99"
result rtt-p50-sqlite-os "round trip p50, 1 in flight, SQLite --fsync os" "$(us "$q50") µs" "sockperf $(us "$s50") µs" \
  "${pr_q50}×" "$(pspreads "$ps_q50" "$sq50" "$ss50")" "≤ 1.5×" "$pv_q50"
result rtt-p99-sqlite-os "round trip p99, 1 in flight, SQLite --fsync os" "$(us "$q99") µs" "sockperf $(us "$s99") µs" \
  "${pr_q99}×" "$(pspreads "$ps_q99" "$sq99" "$ss99")" "≤ 1.5×" "$pv_q99"
result rtt-client "round trip p50 / p99, \`sensorlink client --interval 0\`, memory store" "$(us "$c50") / $(us "$c99") µs" \
  "sockperf $(us "$s50") / $(us "$s99") µs" "$(ratio "$c50" "$s50")× / $(ratio "$c99" "$s99")×" \
  "$(spreads "$sc50" "$ss50")" "report" "measured"
