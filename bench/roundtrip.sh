#!/usr/bin/env bash
# Round trip with one reading in flight, side by side with a bare TCP ping-pong:
#   ours:      `sensorlink bench --connections 1 --pipeline 1 --batch 1` against
#              `sensorlink server --store memory`, and against SQLite `--fsync os`
#   reference: `sockperf pp --tcp --full-rtt` against `sockperf sr --tcp` (Debian `sockperf`)
#   and the client itself: `sensorlink client --interval 0 --count CLIENT_COUNT --json`
#   (ping-pong: one reading in flight; p50/p99 from its summary) against the memory store
# Pinned (bench/lib.sh): every server (ours, `sockperf sr`) on SERVER_CPU, every load
# generator (`sensorlink bench`, `sensorlink client`, `sockperf pp`) on LOAD_CPU; PIN=0 unpinned.
# Interleaved in one sitting: REPS (default 3) reps, each of SLICES (default 8) rotating
# slices of SLICE seconds (default 2) per side (see start_rep_servers); a rep's p50 and p99 are
# over all its slices' samples pooled (`sensorlink bench --latency-histogram`, sockperf
# `--full-log`). Prints medians across reps, each figure's spread, and `result` rows against the
# issue's targets (memory: p50 ≤ 1.1×, p99 ≤ 1.2× sockperf's; SQLite --fsync os: ≤ 1.5×).
# Loopback only; about REPS × (SLICES × 3 × (SLICE + 0.8) + 5) s in all (≈ 75 s a rep).
# OUT=DIR keeps raw output.
source "$(dirname "$0")/lib.sh"
ALTERNATED=1

REPS=${REPS:-3}
# Seconds per slice and slices per rep (see start_rep_servers).
SLICE=${SLICE:-2}
SLICES=${SLICES:-8}
SLICE_WARMUP_MS=${SLICE_WARMUP_MS:-500}
# Readings per client run: bounded, and a few seconds at loopback round trips.
CLIENT_COUNT=${CLIENT_COUNT:-20000}
bash scripts/install-bench-deps.sh sockperf jq python3
build

# A rep runs all three servers at once (idle but for the one being measured) and alternates
# short slices between them, SLICES times, in a rotating order: on this VM a cross-core wake-up
# costs more or less from one second to the next, and slices seconds apart see the same
# machine. A rep's figure is the median of its slices, so each rep's ratio (ours ÷ sockperf) is
# of figures measured interleaved, not minutes apart.
start_rep_servers() {
  SERVER_OUT=$tmp/server-memory.out start_ours memory always
  mem_pid=$server_pid mem_addr=$addr
  SERVER_OUT=$tmp/server-sqlite.out start_ours "sqlite:$(fresh_db)" os
  sql_pid=$server_pid sql_addr=$addr
  sr_port=$(free_port)
  start_bg "$tmp/sr.out" "${on_server[@]}" sockperf sr --tcp -i 127.0.0.1 -p "$sr_port"
  sr_pid=$last_pid
  wait_tcp "$sr_port"
  local side
  for side in memory sqlite-os sockperf; do
    : > "$tmp/slices-$side.jsonl"
    : > "$tmp/hist-$side.tsv"
  done
}

stop_rep_servers() {
  stop_pid "$mem_pid"
  stop_pid "$sql_pid"
  stop_pid "$sr_pid"
}

slice_ours() { # NAME ADDR
  ours_bench "$tmp/run.json" $((SLICE + 30)) "$2" --connections 1 --pipeline 1 --batch 1 \
    --warmup "${SLICE_WARMUP_MS}ms" --duration "${SLICE}s" --latency-histogram "$tmp/hist.tsv"
  jq -c . "$tmp/run.json" >> "$tmp/slices-$1.jsonl"
  cat "$tmp/hist.tsv" >> "$tmp/hist-$1.tsv"
  keep "$tmp/run.json" "roundtrip-$1-$rep-$slice.json"
}

slice_sockperf() {
  timeout --kill-after=5 $((SLICE + 30)) "${on_load[@]}" \
    sockperf pp --tcp -i 127.0.0.1 -p "$sr_port" --full-rtt -t "$SLICE" --full-log "$tmp/pp.csv" > "$tmp/pp.out" 2>&1
  keep "$tmp/pp.out" "roundtrip-sockperf-$rep-$slice.txt"
  # --full-log: the summary again, then `packet, txTime, rxTime, rtt(usec)` per message of the
  # measured interval.
  awk -F', *' 'NF == 4 && $1 ~ /^[0-9]+$/ { print $4 "\t1" }' "$tmp/pp.csv" >> "$tmp/hist-sockperf.tsv"
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
    END { printf "{\"latency_us\":{\"p50\":%s,\"p99\":%s},\"readings_per_sec\":%s,\"errors\":0}\n", p50, p99, n / secs }
  ' >> "$tmp/slices-sockperf.jsonl"
}

# rep_figures NAME: the rep's figures for NAME, appended to NAME.jsonl (one line per rep):
# round trips/s the median of its slices, p50 and p99 over their samples pooled.
rep_figures() {
  pooled_figures "$tmp/slices-$1.jsonl" "$tmp/hist-$1.tsv" >> "$tmp/$1.jsonl"
  cat "$tmp/hist-$1.tsv" >> "$tmp/hist-all-$1.tsv"
  keep "$tmp/hist-$1.tsv" "roundtrip-hist-$1-$rep.tsv"
}

# run_client: `sensorlink client --interval 0` (ping-pong) against a fresh memory store; its
# summary's RTT percentiles (µs) and acked readings per second of the run (connect and the
# last link report included, so a little under the bench's rate). Reported, not a target.
run_client() {
  start_ours memory always
  timeout --kill-after=5 $((CLIENT_COUNT / 1000 + 60)) "${on_load[@]}" "$bin" client "$addr" --interval 0 \
    --count "$CLIENT_COUNT" --sensor roundtrip --link-report 0 --json > "$tmp/client.out" ||
    [ $? -eq 1 ] # exit 1: readings lost; the summary says how many
  stop_pid "$server_pid"
  keep "$tmp/client.out" "roundtrip-client-$rep.jsonl"
  jq -c 'select(.event == "summary") | .summary
    | {latency_us: {p50: .rtt.p50_us, p99: .rtt.p99_us},
       readings_per_sec: (.acked / .duration_ms * 1000), lost: .lost}' \
    "$tmp/client.out" >> "$tmp/client.jsonl"
}

header
echo "$REPS reps of $SLICES interleaved slices of ${SLICE} s (+ ${SLICE_WARMUP_MS} ms warm-up for ours, sockperf's own 0.4 s) per side; a rep's p50/p99 over its slices' samples pooled"
for rep in $(seq "$REPS"); do
  start_rep_servers
  for slice in $(seq "$SLICES"); do
    # Rotate the order, so no side always runs first or last in a slice.
    case $(((rep + slice) % 3)) in
      0) slice_ours memory "$mem_addr"; slice_sockperf; slice_ours sqlite-os "$sql_addr" ;;
      1) slice_sockperf; slice_ours sqlite-os "$sql_addr"; slice_ours memory "$mem_addr" ;;
      2) slice_ours sqlite-os "$sql_addr"; slice_ours memory "$mem_addr"; slice_sockperf ;;
    esac
  done
  stop_rep_servers
  rep_figures memory
  rep_figures sqlite-os
  rep_figures sockperf
  run_client
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
# Reps that are noisy are judged again on the sitting's samples pooled per side (lib.sh
# pooled_verdict): a rep's p99 is decided by whether a host stall fell in its 16 s, and five
# reps cannot outvote that; the whole sitting's samples can.
judge_pair() { # KEY OURS_FILE EXPR TARGET
  pair "$tmp/$2.jsonl" "$3" "$tmp/sockperf.jsonl" "$3" "<=" "$4"
  if [[ $pair_verdict == '**noisy**'* ]]; then
    local reps=${pair_verdict#*(} q=0.5
    [ "$3" = .latency_us.p99 ] && q=0.99
    pair_verdict="$(pooled_verdict "$q" "<=" "$4" "$tmp/hist-all-$2.tsv" "$tmp/hist-all-sockperf.tsv"); by rep: ${reps%)}"
  fi
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
