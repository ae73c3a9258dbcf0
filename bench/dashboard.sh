#!/usr/bin/env bash
# Ingest at full rate with and without an open live dashboard (issue 13: "HTTP/SSE serving a
# dashboard while ingest runs at full rate"), one sitting, sides alternated rep by rep:
#   server:   `sensorlink server --http 127.0.0.1:0` (both sides: the HTTP side is on, the
#             only difference is whether anyone uses it), a fresh server and store per run:
#               memory:  --store memory, `sensorlink bench --connections 50 --pipeline 4096 --batch 1024`
#               sqlite:  --store sqlite:PATH --fsync always, `--connections 64 --pipeline 256 --batch 64`
#   with:     bench/dashboard_load.py during the whole bench run: SUBSCRIBERS (default 5) open
#             sensor list pages (`/api/sensors` then the `/api/events` stream of its sensors,
#             reconnecting after `lagged` as the page does) and a poller of `/api/server`,
#             `/api/sensors` and `/metrics` once a second. A run whose subscribers received no
#             `reading` event fails the script (the HTTP side was not exercised).
#   without:  the same server, nobody on its HTTP side.
# Pinned (bench/lib.sh): the server on SERVER_CPU; bench and dashboard load on LOAD_CPU (so
# the dashboard's readers compete with the load generator, not with the server for its core);
# PIN=0 unpinned. REPS (default 3) reps of DURATION (default 5) s; prints medians, spreads,
# events received, and `result` rows dashboard-ingest-memory / -sqlite (with ÷ without;
# report, expected ≥ 90 %). Loopback only; ≈ REPS × 4 × (DURATION + 3) s, ≈ 1.5 min.
source "$(dirname "$0")/lib.sh"
ALTERNATED=1

DURATION=${DURATION:-5}
REPS=${REPS:-3}
SUBSCRIBERS=${SUBSCRIBERS:-5}
STORES=${STORES:-"memory sqlite"}
bash scripts/install-bench-deps.sh python3 jq
build

# flags STORE: the bench flags of the store's full-rate configuration.
flags() {
  case $1 in
    memory) echo "--connections 50 --pipeline 4096 --batch 1024" ;;
    sqlite) echo "--connections 64 --pipeline 256 --batch 64" ;;
    *) echo "unknown store $1 (memory sqlite)" >&2; exit 2 ;;
  esac
}

# run STORE SIDE: one run; appends the bench's JSON (+ the dashboard's counts) to
# $tmp/STORE-SIDE.jsonl.
run() {
  local name=$1 side=$2 store=memory fsync=always dash_pid='' counts='{}'
  [ "$name" = sqlite ] && store="sqlite:$(fresh_db)"
  SERVER_HTTP=127.0.0.1:0 start_ours "$store" "$fsync"
  if [ "$side" = with ]; then
    # From before the warm-up to past the end of the measured window.
    cmdlog "${on_load[@]}" python3 bench/dashboard_load.py "$http" --subscribers "$SUBSCRIBERS" --seconds "$((DURATION + 3))"
    start_bg "$tmp/dash.json" "${on_load[@]}" timeout --kill-after=5 $((DURATION + 30)) \
      python3 bench/dashboard_load.py "$http" --subscribers "$SUBSCRIBERS" --seconds "$((DURATION + 3))"
    dash_pid=$last_pid
  fi
  # shellcheck disable=SC2046 # flags: a list of words
  ours_bench "$tmp/run.json" $((DURATION + 40)) "$addr" $(flags "$name") --warmup 1s --duration "${DURATION}s"
  if [ -n "$dash_pid" ]; then
    wait "$dash_pid" || true
    stop_pid "$dash_pid" 1
    counts=$(tail -1 "$tmp/dash.json")
    if ! jq -e '(.event_reading // 0) > 0' <<< "$counts" > /dev/null 2>&1; then
      echo "the dashboard's subscribers received no reading event ($store, rep $rep): $counts" >&2
      cat "$tmp/dash.json" >&2
      exit 2
    fi
    keep "$tmp/dash.json" "dashboard-load-$name-$rep.json"
  fi
  stop_pid "$server_pid"
  keep "$tmp/run.json" "dashboard-$name-$side-$rep.json"
  jq -c --argjson dash "$counts" '. + {dashboard: $dash}' "$tmp/run.json" >> "$tmp/$name-$side.jsonl"
}

header
echo "dashboard: $SUBSCRIBERS subscribers (sensor list page + its event stream) + 1 poller (/api/server, /api/sensors, /metrics once a second), python3 on the load core"
for rep in $(seq "$REPS"); do
  if [ $((rep % 2)) -eq 1 ]; then order="without with"; else order="with without"; fi
  for name in $STORES; do
    for side in $order; do run "$name" "$side"; done
  done
done

echo
echo "| store, bench flags | without: readings/s | spread | with dashboard: readings/s | spread | with ÷ without | p99 ack µs without / with | reading events received per run | streams (lagged) | polls (errors) |"
echo "|---|---:|---:|---:|---:|---:|---|---:|---|---|"
for name in $STORES; do
  fo=$tmp/$name-without.jsonl fw=$tmp/$name-with.jsonl
  o=$(jmed "$fo" .readings_per_sec) w=$(jmed "$fw" .readings_per_sec)
  label="memory"
  [ "$name" = sqlite ] && label="SQLite --fsync always"
  echo "| $label, \`$(flags "$name")\` | $(num "$o") | $(spread_pct "$fo" .readings_per_sec) % | $(num "$w") | $(spread_pct "$fw" .readings_per_sec) % | $(pct "$w" "$o") | $(num "$(jmed "$fo" .latency_us.p99)") / $(num "$(jmed "$fw" .latency_us.p99)") | $(num "$(jmed "$fw" '.dashboard.event_reading // 0')") | $(int "$(jmed "$fw" '.dashboard.streams // 0')") ($(int "$(jmed "$fw" '.dashboard.event_lagged // 0')")) | $(int "$(jmed "$fw" '.dashboard.polls // 0')") ($(int "$(jmed "$fw" '.dashboard.poll_errors // 0')")) |"
done
echo
echo "errors in bench runs: $(jq -s 'map(.errors) | add' "$tmp"/*-with*.jsonl); events, streams, polls: medians per run of $((DURATION + 3)) s (a stream that lags is ended by the server after the events already queued in its socket, which a slow reader drains first)"
footer
echo

for name in $STORES; do
  fo=$tmp/$name-without.jsonl fw=$tmp/$name-with.jsonl
  o=$(jmed "$fo" .readings_per_sec) w=$(jmed "$fw" .readings_per_sec)
  so=$(spread_pct "$fo" .readings_per_sec) sw=$(spread_pct "$fw" .readings_per_sec)
  # With ÷ without, rep by rep (they ran back to back in each rep).
  pair "$fw" .readings_per_sec "$fo" .readings_per_sec ">=" 0.9
  label="memory"
  [ "$name" = sqlite ] && label="SQLite --fsync always"
  result "dashboard-ingest-$name" "ingest with a live dashboard open ($SUBSCRIBERS event streams + polling) ÷ without, $label, \`$(flags "$name")\` (expected ≥ 90 %)" \
    "$(num "$w") readings/s" "without $(num "$o") readings/s" "$(awk -v r="$pair_ratio" 'BEGIN { printf "%.0f %%", r * 100 }')" \
    "$(pspreads "$pair_spread" "$sw" "$so")" "report" "measured; ≥ 90 %: $pair_verdict"
done
