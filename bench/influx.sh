#!/usr/bin/env bash
# Durable ingest, side by side with InfluxDB 1.6 and with the raw SQLite ceiling, pinned:
#   ours:      `sensorlink server --store sqlite:… --fsync always` (group commit) on the server
#              core, and `sensorlink bench --connections C --pipeline B --batch B` on the load
#              core: one batch of B readings in flight per connection, acked after commit
#   InfluxDB:  `influxd` (Debian `influxdb`, `wal-fsync-delay = "0s"`: every write request is
#              fsynced to its WAL before the 204) in a temp dir on the server core, loopback
#              HTTP `POST /write?db=b`, the same line protocol (`bench,sensor=bench-<conn>
#              f0=<v> <ns>`), B lines per request, one request in flight per keep-alive
#              connection, every point unique; load from `wrk` with bench/influx_write.lua
#              (Debian `wrk`) on the load core
#   ceiling:   benches/sqlite_ceiling.rs (rusqlite alone: our schema, our pragmas with
#              synchronous=FULL, our prepared inserts (32 rows per statement, as the store), one writer thread) on the server core,
#              at OUR rows per transaction: the group commit merges the syncs of several
#              connections into one transaction, so that figure is measured, not B: the mean
#              of the server's `sensorlink_store_commit_rows` histogram (/metrics) in a
#              separate, unmeasured run of each shape (the measured runs serve no HTTP), with
#              the rows of a transaction spread over C series as ours are
# for B × C = 1 × 1, 100 × 8, 5000 × 4. And, in the same sitting, durable ÷ memory: the best
# durable figure of this run (the shapes above and `--connections 64 --pipeline 256 --batch
# 64`) ÷ ours with the memory store at pipelined.sh's best flags ($MEMORY_FLAGS), alternated.
# Each run: a fresh server and store, 1 s warm-up, DURATION (default 5) s measured (ours
# against InfluxDB and the ceiling: SLICES (3) runs of SLICE (2) s per side and rep, rotated, each rep's
# figure their median); REPS (default 3) reps, sides alternated rep by rep. Prints a Markdown table and `result:` rows
# (bench/all.sh collects them through $RESULTS). Loopback only; ≈ 4 min at the defaults.
# OUT=DIR keeps raw output; PIN=0 runs unpinned.
source "$(dirname "$0")/lib.sh"
ALTERNATED=1

DURATION=${DURATION:-5}
REPS=${REPS:-3}
# Ours ÷ InfluxDB: SLICES slices of SLICE seconds per side and rep (see slices_vs_influx).
SLICE=${SLICE:-2}
SLICES=${SLICES:-3}
# SLICES_<B>x<C>: slices for that shape alone (e.g. SLICES_1x1=7): at 1 × 1 both sides are one
# fsync per write, and a 2 s slice's rate follows the disk's fsync time of that second.
# SLICE_<B>x<C>: seconds per slice for that shape alone (e.g. SLICE_5000x4=4): at 5000 × 4 a
# 2 s slice holds only ≈ 170 requests, and whether our WAL checkpoint (every 40 MiB) or
# InfluxDB's cache snapshot falls inside it moves that slice's rate by ± 20 %.
SHAPES=${SHAPES:-"1x1 100x8 5000x4"}
# Durable at many connections: usually the best durable figure, for durable ÷ memory.
DURABLE_FLAGS=${DURABLE_FLAGS:-"--connections 64 --pipeline 256 --batch 64"}
# bench/pipelined.sh's best memory configuration.
MEMORY_FLAGS=${MEMORY_FLAGS:-"--connections 50 --pipeline 4096 --batch 1024"}
bash scripts/install-bench-deps.sh influxdb curl wrk jq
build
started=$SECONDS

# The ceiling bench, built as `cargo bench` builds it (CEILING_BIN=PATH: a prebuilt one).
ceiling_bin=${CEILING_BIN:-$(cargo bench --bench sqlite_ceiling --no-run --quiet \
  --message-format=json-render-diagnostics |
  jq -r 'select(.reason == "compiler-artifact" and .target.name == "sqlite_ceiling") | .executable // empty' |
  tail -1)}
[ -x "$ceiling_bin" ] || { echo "no sqlite_ceiling bench binary ($ceiling_bin)" >&2; exit 2; }

# grouped N: N rounded, digits in groups of three ("1 234 567").
grouped() { int "$1" | sed ':a;s/\B[0-9]\{3\}\>/ &/;ta'; }
# pct A B: A ÷ B in percent, no decimals.
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "nan"; else printf "%.0f %%", 100 * a / b }'; }

# start_influx: a fresh influxd with its meta/data/wal in $tmp/influx, on the server core;
# sets $influx_pid and $influx_port, and creates database `b`.
start_influx() {
  local dir=$tmp/influx rpc_port
  rm -rf "$dir"
  mkdir -p "$dir"
  influx_port=$(free_port)
  rpc_port=$(free_port)
  # `reporting-enabled` is the Debian build's name for upstream's `reporting-disabled`.
  cat > "$dir/influxdb.conf" << EOF
reporting-enabled = false
bind-address = "127.0.0.1:$rpc_port"
[meta]
  dir = "$dir/meta"
  logging-enabled = false
[data]
  dir = "$dir/data"
  wal-dir = "$dir/wal"
  wal-fsync-delay = "0s"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:$influx_port"
  log-enabled = false
[continuous_queries]
  enabled = false
[ifql]
  enabled = false
[logging]
  level = "warn"
EOF
  start_bg "$tmp/influxd.out" "${on_server[@]}" influxd run -config "$dir/influxdb.conf"
  influx_pid=$last_pid
  wait_tcp "$influx_port" 30
  timeout 30 curl -sS -XPOST "http://127.0.0.1:$influx_port/query" \
    --data-urlencode 'q=CREATE DATABASE b' > /dev/null
}

# influx_count: points stored in measurement `bench`.
influx_count() {
  timeout 60 curl -sS -G "http://127.0.0.1:$influx_port/query?db=b" \
    --data-urlencode 'q=SELECT count(f0) FROM bench' | jq '.results[0].series[0].values[0][1] // 0'
}

run_influx() { # BATCH CONNS [SECONDS]
  local b=$1 c=$2 secs=${3:-$DURATION} h0
  start_influx
  h0=$(($(date +%s%N) / 10000))
  # Warm-up (not measured), then the measurement; disjoint timestamps (H0 apart by 10^9).
  cmdlog wrk -t "$c" -c "$c" -d "${secs}s" --timeout 10s -s bench/influx_write.lua \
    "http://127.0.0.1:$influx_port" -- "$b" b H0 "$c"
  "${on_load[@]}" timeout 30 wrk -t "$c" -c "$c" -d 1s -s bench/influx_write.lua \
    "http://127.0.0.1:$influx_port" -- "$b" b "$h0" "$c" > /dev/null
  local before
  before=$(influx_count)
  "${on_load[@]}" timeout $((secs + 30)) wrk -t "$c" -c "$c" -d "${secs}s" --timeout 10s \
    -s bench/influx_write.lua "http://127.0.0.1:$influx_port" -- "$b" b $((h0 + 1000000000)) "$c" \
    > "$tmp/wrk.out"
  keep "$tmp/wrk.out" "influx-$b-$c-$rep${slice:+-$slice}.txt"
  local stored
  stored=$(($(influx_count) - before))
  stop_pid "$influx_pid" 20
  tail -1 "$tmp/wrk.out" | jq -c --argjson stored "$stored" '. + {stored: $stored}' >> "$tmp/${sink}influx-$b-$c.jsonl"
}

run_ours() { # NAME STORE BENCH-FLAGS... (SECS=S: measured seconds, default DURATION)
  local name=$1 store=$2 secs=${SECS:-$DURATION}
  shift 2
  start_ours "$store" always
  ours_bench "$tmp/run.json" $((secs + 40)) "$addr" "$@" --warmup 1s --duration "${secs}s"
  stop_pid "$server_pid" 30
  jq -c . "$tmp/run.json" >> "$tmp/$sink$name.jsonl"
  keep "$tmp/run.json" "influx-ours-$name-$rep${slice:+-$slice}.json"
}

# Ours against InfluxDB and the raw SQLite ceiling, rep by rep, in SLICES short slices each
# (SLICE seconds measured, fresh servers and stores each time, the order rotating): all three
# are fsync-bound, and this disk's fsync time drifts from one second to the next, so a rep's
# figure is the median of slices measured seconds apart rather than one run minutes from the
# other sides'.
sink='' slice=''
slices_vs_influx() { # BATCH CONNS
  local b=$1 c=$2 slices_var="SLICES_${1}x${2}" secs_var="SLICE_${1}x${2}"
  local secs=${!secs_var:-$SLICE}
  sink=slice- slice=
  rm -f "$tmp/slice-influx-$b-$c.jsonl" "$tmp/slice-durable-$b-$c.jsonl" "$tmp/slice-ceiling-$b-$c.jsonl"
  for slice in $(seq "${!slices_var:-$SLICES}"); do
    # Rotate the order, so no side always runs first or last in a slice.
    case $(((rep + slice) % 3)) in
      0) run_influx "$b" "$c" "$secs"; slice_ours "$b" "$c" "$secs"; run_ceiling "$b" "$c" "$secs" ;;
      1) slice_ours "$b" "$c" "$secs"; run_ceiling "$b" "$c" "$secs"; run_influx "$b" "$c" "$secs" ;;
      2) run_ceiling "$b" "$c" "$secs"; run_influx "$b" "$c" "$secs"; slice_ours "$b" "$c" "$secs" ;;
    esac
  done
  sink='' slice=''
  # Every slice of the sitting too, in order (lib.sh `pair` judges noisy reps on them).
  local side
  for side in durable influx ceiling; do cat "$tmp/slice-$side-$b-$c.jsonl" >> "$tmp/all-$side-$b-$c.jsonl"; done
  # The rep's figures: medians of its slices; errors, readings and points stored summed.
  slice_figures "$tmp/slice-durable-$b-$c.jsonl" >> "$tmp/durable-$b-$c.jsonl"
  slice_figures "$tmp/slice-influx-$b-$c.jsonl" '{readings: (map(.readings) | add), stored: (map(.stored) | add)}' \
    >> "$tmp/influx-$b-$c.jsonl"
  jq -sc 'map(.rows_per_sec) | sort | {rows_per_sec: (if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end), slices: length}' \
    "$tmp/slice-ceiling-$b-$c.jsonl" >> "$tmp/ceiling-$b-$c.jsonl"
}

slice_ours() { # BATCH CONNS SECONDS
  SECS=$3 run_ours "durable-$1-$2" "sqlite:$(fresh_db)" --connections "$2" --pipeline "$1" --batch "$1"
}

# measure_rows_per_txn BATCH CONNS: our mean rows per SQLite transaction at this shape into
# rpt[BATCH-CONNS], from /metrics (sum ÷ count of sensorlink_store_commit_rows) after a short
# run of its own: the measured runs serve no HTTP (it would feed the live view).
declare -A rpt
measure_rows_per_txn() {
  local b=$1 c=$2 metrics
  SERVER_HTTP=127.0.0.1:0 start_ours "sqlite:$(fresh_db)" always
  ours_bench "$tmp/probe.json" 40 "$addr" --connections "$c" --pipeline "$b" --batch "$b" --duration 2s
  metrics=$(timeout 30 curl -sS "${http%/}/metrics")
  stop_pid "$server_pid" 30
  rpt[$b-$c]=$(awk '$1 == "sensorlink_store_commit_rows_sum" { s = $2 } $1 == "sensorlink_store_commit_rows_count" { n = $2 }
    END { if (n > 0) printf "%.1f\n", s / n; else print "nan" }' <<< "$metrics")
  if [ "${rpt[$b-$c]}" = nan ]; then
    echo "no sensorlink_store_commit_rows in /metrics at $b × $c" >&2
    exit 2
  fi
}

run_ceiling() { # BATCH CONNS [SECONDS]
  local b=$1 c=$2 secs=${3:-$DURATION} rows
  rows=$(int "${rpt[$b-$c]}")
  [ "$rows" -ge 1 ] || rows=1
  cmdlog "$ceiling_bin" --bench --rows-per-txn "$rows" --series "$c" --warmup 1 --seconds "$secs" --db DB
  "${on_server[@]}" timeout $((secs + 60)) "$ceiling_bin" --bench --rows-per-txn "$rows" --series "$c" \
    --warmup 1 --seconds "$secs" --db "$(fresh_db)" > "$tmp/ceiling.json"
  cat "$tmp/ceiling.json" >> "$tmp/${sink}ceiling-$b-$c.jsonl"
  keep "$tmp/ceiling.json" "influx-ceiling-$b-$c-$rep${slice:+-$slice}.json"
}

header
echo "influxd $(influxd version 2>/dev/null | awk '{print $2}'), wal-fsync-delay 0s; load: wrk $(dpkg-query -W -f '${Version}' wrk); ceiling: $ceiling_bin"
echo "pinned, a process's thread pools size themselves to the one core they may use (tokio's workers, influxd's GOMAXPROCS)"

# Our rows per transaction, once per shape, before the measured reps.
for shape in $SHAPES; do
  measure_rows_per_txn "${shape%x*}" "${shape#*x}"
done

for rep in $(seq "$REPS"); do
  for shape in $SHAPES; do
    slices_vs_influx "${shape%x*}" "${shape#*x}"
  done
  # shellcheck disable=SC2086 # the flags are lists of words
  if [ $((rep % 2)) -eq 1 ]; then
    run_ours durable-many "sqlite:$(fresh_db)" $DURABLE_FLAGS
    run_ours memory memory $MEMORY_FLAGS
  else
    run_ours memory memory $MEMORY_FLAGS
    run_ours durable-many "sqlite:$(fresh_db)" $DURABLE_FLAGS
  fi
done

echo
echo "readings/s: medians of $REPS reps (ours and InfluxDB: each rep the median of its $SLICES (1 × 1: ${SLICES_1x1:-$SLICES}; 5000 × 4: ${SLICES_5000x4:-$SLICES}) alternated ${SLICE} s (5000 × 4: ${SLICE_5000x4:-$SLICE} s) runs per side); spread: (max − min) ÷ median across reps; ratios: the median of each rep's ours ÷ that rep's reference (which ran beside it), judged rep by rep; ceiling: rusqlite alone at our rows per transaction (mean of sensorlink_store_commit_rows from /metrics, separate run), rows spread over C series, in the same slices as ours and InfluxDB"
echo
echo "| lines per request × connections | ours readings/s | InfluxDB points/s | ours ÷ InfluxDB (≥ 1×; ratio spread) | our rows/txn | ceiling rows/s | ours ÷ ceiling (≥ 80 %; ratio spread) | spread ours / Influx / ceiling | ours p50 / p99 µs | InfluxDB p50 / p99 µs | errors (ours, Influx) | Influx stored ÷ acked |"
echo "|---|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|"
rows=()
for shape in $SHAPES; do
  b=${shape%x*} c=${shape#*x}
  o="$tmp/durable-$b-$c.jsonl" i="$tmp/influx-$b-$c.jsonl" x="$tmp/ceiling-$b-$c.jsonl"
  or=$(jmed "$o" .readings_per_sec) ir=$(jmed "$i" .readings_per_sec) xr=$(jmed "$x" .rows_per_sec)
  so=$(spread_pct "$o" .readings_per_sec) si=$(spread_pct "$i" .readings_per_sec) sx=$(spread_pct "$x" .rows_per_sec)
  # Points stored during the measured run ÷ points wrk counted as acknowledged: slightly
  # above 1 (requests in flight when wrk stops are stored too); below 1 would mean merged
  # (overwritten) points.
  chk=$(jq -r '.stored / .readings' "$i" | median)
  # Ratios rep by rep (lib.sh `pair`): rep i of ours ÷ rep i of InfluxDB, and of the ceiling.
  pair "$o" .readings_per_sec "$i" .readings_per_sec ">=" 1.0 "$tmp/all-durable-$b-$c.jsonl" "$tmp/all-influx-$b-$c.jsonl"
  ir_ratio=$pair_ratio ir_spread=$pair_spread ir_verdict=$pair_verdict
  pair "$o" .readings_per_sec "$x" .rows_per_sec ">=" 0.8 "$tmp/all-durable-$b-$c.jsonl" "$tmp/all-ceiling-$b-$c.jsonl"
  xr_pct=$(awk -v r="$pair_ratio" 'BEGIN { printf "%.0f %%", r * 100 }') xr_spread=$pair_spread xr_verdict=$pair_verdict
  echo "| $b × $c | $(grouped "$or") | $(grouped "$ir") | ${ir_ratio}× ($ir_spread %) | ${rpt[$b-$c]} | $(grouped "$xr") | $xr_pct ($xr_spread %) | $so % / $si % / $sx % | $(int "$(jmed "$o" .latency_us.p50)") / $(int "$(jmed "$o" .latency_us.p99)") | $(int "$(jmed "$i" .latency_us.p50)") / $(int "$(jmed "$i" .latency_us.p99)") | $(jq -s 'map(.errors) | add' "$o"), $(jq -s 'map(.errors) | add' "$i") | $(printf '%.2f' "$chk") |"
  rows+=("influx-${b}x$c|durable ingest, $b × $c (lines per request or sync × connections): SQLite \`--fsync always\` vs InfluxDB 1.6 fsync'd \`/write\`|$(grouped "$or") readings/s|InfluxDB $(grouped "$ir") points/s|${ir_ratio}×|$(pspreads "$ir_spread" "$so" "$si")|≥ 1.0×|$ir_verdict")
  rows+=("ceiling-${b}x$c|durable ingest, $b × $c, ÷ rusqlite alone at our ${rpt[$b-$c]} rows per transaction (WAL, synchronous=FULL, our schema, one writer)|$(grouped "$or") readings/s|ceiling $(grouped "$xr") rows/s|$xr_pct|$(pspreads "$xr_spread" "$so" "$sx")|≥ 80 %|$xr_verdict")
done

# The best durable figure of this sitting (by median) ÷ the memory store's.
best="" best_r=0 best_what=""
for name in $(for shape in $SHAPES; do echo "durable-${shape%x*}-${shape#*x}"; done) durable-many; do
  r=$(jmed "$tmp/$name.jsonl" .readings_per_sec)
  if awk -v a="$r" -v b="$best_r" 'BEGIN { exit !(a > b) }'; then
    best=$name best_r=$r
  fi
done
case $best in
  durable-many) best_what=$DURABLE_FLAGS ;;
  *) b=${best#durable-} c=${b#*-} b=${b%-*}; best_what="--connections $c --pipeline $b --batch $b" ;;
esac
m=$(jmed "$tmp/memory.jsonl" .readings_per_sec)
sd=$(spread_pct "$tmp/$best.jsonl" .readings_per_sec) sm=$(spread_pct "$tmp/memory.jsonl" .readings_per_sec)
pair "$tmp/$best.jsonl" .readings_per_sec "$tmp/memory.jsonl" .readings_per_sec ">=" 0.6
dm_pct=$(awk -v r="$pair_ratio" 'BEGIN { printf "%.0f %%", r * 100 }')
echo
echo "| derived | durable readings/s | memory readings/s | ratio | target | spread durable / memory | |"
echo "|---|---:|---:|---:|---|---|---|"
echo "| best durable (SQLite \`--fsync always\`, \`$best_what\`) ÷ memory (\`$MEMORY_FLAGS\`) | $(grouped "$best_r") | $(grouped "$m") | $dm_pct ($pair_spread %) | ≥ 60 % | $sd % / $sm % | $pair_verdict |"
echo "(durable \`$DURABLE_FLAGS\`: $(grouped "$(jmed "$tmp/durable-many.jsonl" .readings_per_sec)") readings/s, spread $(spread_pct "$tmp/durable-many.jsonl" .readings_per_sec) %)"
rows+=("durable-vs-memory|best durable ingest (SQLite \`--fsync always\`, \`$best_what\`) ÷ best pipelined memory ingest (\`$MEMORY_FLAGS\`)|$(grouped "$best_r") readings/s|memory $(grouped "$m") readings/s|$dm_pct|$(pspreads "$pair_spread" "$sd" "$sm")|≥ 60 %|$pair_verdict")

echo
for row in "${rows[@]}"; do
  IFS='|' read -r -a cols <<< "$row"
  result "${cols[@]}"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg); runtime $((SECONDS - started)) s (after the build)"
