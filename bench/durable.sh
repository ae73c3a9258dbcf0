#!/usr/bin/env bash
# Durable ingest: `sensorlink bench` against `sensorlink server` on loopback, for each store
# setting (memory; SQLite with --fsync always; SQLite with --fsync os) and load shape:
#   pipelined: --connections C --pipeline 256 --batch 64, C in {1, 64}
#   per-reading RTT: --connections 1 --pipeline 1 --batch 1
# Each cell runs REPS times (default 3) for DURATION (default 5s), each on a fresh server and
# a fresh database; prints a Markdown table of medians. Raw JSON reports go to $OUT if set.
# Pinned (PIN=0: unpinned): the server on the server core, `sensorlink bench` on the load
# core. Loopback only; bounded: 3 settings x 3 shapes x REPS runs of DURATION (about 2.5 min).
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-5s}
REPS=${REPS:-3}
bash scripts/install-test-deps.sh jq
build

# name|store|fsync
settings=(
  "memory|memory|always"
  "sqlite fsync=always|sqlite|always"
  "sqlite fsync=os|sqlite|os"
)
# name|bench flags
shapes=(
  "pipelined|--connections 1 --pipeline 256 --batch 64"
  "pipelined|--connections 64 --pipeline 256 --batch 64"
  "per-reading RTT|--connections 1 --pipeline 1 --batch 1"
)

header
echo "each cell: median of $REPS runs of $DURATION; latency is sync write -> ack, in µs; spread: (max − min) ÷ median of readings/s"
echo
echo "| setting | shape | connections | readings/s | spread | p50 µs | p99 µs | errors | bench flags |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---|"
for setting in "${settings[@]}"; do
  IFS='|' read -r sname skind fsync <<< "$setting"
  for shape in "${shapes[@]}"; do
    IFS='|' read -r shname flags <<< "$shape"
    runs="$tmp/runs.json"
    : > "$runs"
    for rep in $(seq "$REPS"); do
      if [ "$skind" = sqlite ]; then
        rm -f "$tmp"/bench.db*
        store="sqlite:$tmp/bench.db"
      else
        store=memory
      fi
      start_ours "$store" "$fsync"
      # Exit 1 means errors, which the table shows; anything else stops the script.
      # shellcheck disable=SC2086 # $flags is a list of words
      ours_bench "$tmp/run.json" 120 "$addr" $flags --duration "$DURATION"
      stop_pid "$server_pid"
      cat "$tmp/run.json" >> "$runs"
      if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT"
        cp "$tmp/run.json" "$OUT/$(printf '%s' "$sname-$shname-$flags-$rep" | tr -c 'a-zA-Z0-9=-' _).json"
      fi
    done
    conns=$(jq -s '.[0].connections_requested' "$runs")
    rate=$(int "$(jmed "$runs" .readings_per_sec)")
    p50=$(int "$(jmed "$runs" .latency_us.p50)")
    p99=$(int "$(jmed "$runs" .latency_us.p99)")
    errors=$(jq -s 'map(.errors) | add' "$runs")
    echo "| $sname | $shname | $conns | $rate | $(spread_pct "$runs" .readings_per_sec) % | $p50 | $p99 | $errors | \`$flags --duration $DURATION\` |"
  done
done
