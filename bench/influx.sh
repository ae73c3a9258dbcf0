#!/usr/bin/env bash
# Durable ingest, side by side with InfluxDB 1.6 (Debian `influxdb`, `wal-fsync-delay = "0s"`:
# every write request is fsynced to its WAL before the 204):
#   ours:      `sensorlink server --store sqlite:… --fsync always` (group commit), and
#              `sensorlink bench --connections C --pipeline B --batch B`: one batch of B
#              readings in flight per connection, acked after commit
#   reference: `influxd` in a temp dir, loopback, HTTP `POST /write?db=b`, the same line
#              protocol (`bench,sensor=bench-<conn> f0=<v> <ns>`), B lines per request, one
#              request in flight per keep-alive connection, every point unique; load from
#              `wrk` with bench/influx_write.lua (Debian `wrk`; see there)
# for B × C = 1 × 1, 100 × 8, 5000 × 4. Also, in the same sitting, for the derived targets:
#   - ours durable at 64 connections (`--pipeline 256 --batch 64`), ÷ ours memory with the
#     flags of bench/pipelined.sh's best (`--connections 50 --pipeline 4096 --batch 1024`):
#     target ≥ 40 %
#   - the same durable figure ÷ the seed design at 64 connections (bench/seed_server.py,
#     `sensorlink bench --legacy --connections 64`): target ≥ 10×
# Each run: a fresh server and store, 1 s warm-up, DURATION (default 5) s measured; REPS
# (default 3) reps, sides alternated. Loopback only; ≈ 4 min. OUT=DIR keeps raw output.
source "$(dirname "$0")/lib.sh"
ALTERNATED=1

DURATION=${DURATION:-5}
REPS=${REPS:-3}
SHAPES=${SHAPES:-"1x1 100x8 5000x4"}
bash scripts/install-bench-deps.sh influxdb curl wrk python3 jq
build

# start_influx: a fresh influxd with its meta/data/wal in $tmp/influx; sets $influx_pid and
# $influx_port, and creates database `b`.
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
  start_bg "$tmp/influxd.out" influxd run -config "$dir/influxdb.conf"
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

run_influx() { # BATCH CONNS
  local b=$1 c=$2 h0
  start_influx
  h0=$(($(date +%s%N) / 10000))
  # Warm-up (not measured), then the measurement; disjoint timestamps (H0 apart by 10^9).
  timeout 30 wrk -t "$c" -c "$c" -d 1s -s bench/influx_write.lua "http://127.0.0.1:$influx_port" \
    -- "$b" b "$h0" "$c" > /dev/null
  local before
  before=$(influx_count)
  timeout $((DURATION + 30)) wrk -t "$c" -c "$c" -d "${DURATION}s" --timeout 10s \
    -s bench/influx_write.lua "http://127.0.0.1:$influx_port" -- "$b" b $((h0 + 1000000000)) "$c" \
    > "$tmp/wrk.out"
  keep "$tmp/wrk.out" "influx-$b-$c-$rep.txt"
  local stored
  stored=$(($(influx_count) - before))
  stop_pid "$influx_pid" 20
  tail -1 "$tmp/wrk.out" | jq -c --argjson stored "$stored" '. + {stored: $stored}' >> "$tmp/influx-$b-$c.jsonl"
}

run_ours() { # NAME STORE BENCH-FLAGS...
  local name=$1 store=$2
  shift 2
  start_ours "$store" always
  ours_bench "$tmp/run.json" $((DURATION + 40)) "$addr" "$@" --warmup 1s --duration "${DURATION}s"
  stop_pid "$server_pid" 30
  cat "$tmp/run.json" >> "$tmp/$name.jsonl"
  keep "$tmp/run.json" "influx-ours-$name-$rep.json"
}

run_seed() {
  start_bg "$tmp/seed.out" python3 bench/seed_server.py 0
  local seed_pid=$last_pid seed_addr=
  for _ in $(seq 100); do
    seed_addr=$(sed -n 's/^listening on //p' "$tmp/seed.out" | head -1)
    [ -n "$seed_addr" ] && break
    sleep 0.05
  done
  ours_bench "$tmp/run.json" $((DURATION + 40)) "$seed_addr" --legacy --connections 64 \
    --duration "${DURATION}s" 2> /dev/null
  stop_pid "$seed_pid"
  cat "$tmp/run.json" >> "$tmp/seed.jsonl"
}

header
echo "influxd $(influxd version 2>/dev/null | awk '{print $2}'), wal-fsync-delay 0s; load: wrk $(dpkg-query -W -f '${Version}' wrk)"
for rep in $(seq "$REPS"); do
  for shape in $SHAPES; do
    b=${shape%x*} c=${shape#*x}
    if [ $((rep % 2)) -eq 1 ]; then
      run_influx "$b" "$c"
      run_ours "durable-$b-$c" "sqlite:$(fresh_db)" --connections "$c" --pipeline "$b" --batch "$b"
    else
      run_ours "durable-$b-$c" "sqlite:$(fresh_db)" --connections "$c" --pipeline "$b" --batch "$b"
      run_influx "$b" "$c"
    fi
  done
  run_ours durable-64 "sqlite:$(fresh_db)" --connections 64 --pipeline 256 --batch 64
  run_ours memory-50 memory --connections 50 --pipeline 4096 --batch 1024
  run_seed
done

echo
echo "| lines per request × connections | ours readings/s | InfluxDB points/s | ours ÷ InfluxDB | target ≥ 1× | ours p50 / p99 µs | InfluxDB p50 / p99 µs | errors (ours, Influx) | Influx stored ÷ acked |"
echo "|---|---:|---:|---:|---|---|---|---|---:|"
for shape in $SHAPES; do
  b=${shape%x*} c=${shape#*x}
  o="$tmp/durable-$b-$c.jsonl" i="$tmp/influx-$b-$c.jsonl"
  or=$(jmed "$o" .readings_per_sec) ir=$(jmed "$i" .readings_per_sec)
  # Points stored during the measured run ÷ points wrk counted as acknowledged: slightly
  # above 1 (requests in flight when wrk stops are stored too); below 1 would mean merged
  # (overwritten) points.
  chk=$(jq -r '.stored / .readings' "$i" | median)
  echo "| $b × $c | $(int "$or") | $(int "$ir") | $(ratio "$or" "$ir")× | $(met "$or >= $ir") | $(int "$(jmed "$o" .latency_us.p50)") / $(int "$(jmed "$o" .latency_us.p99)") | $(int "$(jmed "$i" .latency_us.p50)") / $(int "$(jmed "$i" .latency_us.p99)") | $(jq -s 'map(.errors) | add' "$o"), $(jq -s 'map(.errors) | add' "$i") | $(printf '%.2f' "$chk") |"
done
d=$(jmed "$tmp/durable-64.jsonl" .readings_per_sec)
m=$(jmed "$tmp/memory-50.jsonl" .readings_per_sec)
s=$(jmed "$tmp/seed.jsonl" .readings_per_sec)
echo
echo "| derived | figure | ÷ | ratio | target | |"
echo "|---|---:|---:|---:|---|---|"
echo "| durable (SQLite fsync=always, 64 conns, \`--pipeline 256 --batch 64\`) ÷ memory (50 conns, \`--pipeline 4096 --batch 1024\`) | $(int "$d") | $(int "$m") | $(awk -v a="$d" -v b="$m" 'BEGIN { printf "%.0f %%", 100 * a / b }') | ≥ 40 % | $(met "$d >= 0.4 * $m") |"
echo "| durable 64 conns ÷ seed design (Python, \`--legacy --connections 64\`) | $(int "$d") | $(int "$s") | $(ratio "$d" "$s")× | ≥ 10× | $(met "$d >= 10 * $s") |"
echo
echo "spread (readings/s): durable 64 $(spread "$tmp/durable-64.jsonl" .readings_per_sec); memory 50 $(spread "$tmp/memory-50.jsonl" .readings_per_sec); seed 64 $(spread "$tmp/seed.jsonl" .readings_per_sec)"
for shape in $SHAPES; do
  b=${shape%x*} c=${shape#*x}
  echo "spread $b × $c: ours $(spread "$tmp/durable-$b-$c.jsonl" .readings_per_sec), InfluxDB $(spread "$tmp/influx-$b-$c.jsonl" .readings_per_sec)"
done
