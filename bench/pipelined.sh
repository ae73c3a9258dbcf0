#!/usr/bin/env bash
# Pipelined ingest into memory, 50 connections, side by side with Redis SET:
#   ours:      `sensorlink bench --connections 50 --pipeline P --batch B` against
#              `sensorlink server --store memory`, for each P/B in $CONFIGS
#   reference: `redis-benchmark -P 64 -c 50 -t set -n N` against
#              `redis-server --save '' --appendonly no` (Debian `redis-server`, `redis-tools`);
#              also, for information, with `-r 100000000` (random keys: new entries, as our
#              readings are, instead of overwriting one key)
# Alternated in one sitting, REPS (default 3) reps; prints medians and the ratio against the
# target (our readings/s ≥ Redis SET requests/s). Loopback only; ≈ 2 min.
source "$(dirname "$0")/lib.sh"
ALTERNATED=1

DURATION=${DURATION:-5}
REPS=${REPS:-3}
REDIS_N=${REDIS_N:-5000000}
# "pipeline batch" pairs: 4 syncs of 64 in flight per connection (as in durable.sh), and
# 4 syncs of 1024 (the best of 256/64, 1024/256, 4096/1024, 2048/2048, 8192/2048 when tried).
CONFIGS=${CONFIGS:-"256/64 4096/1024"}
bash scripts/install-bench-deps.sh redis-server redis-tools jq python3
build

run_ours() { # PIPELINE BATCH
  start_ours memory always
  ours_bench "$tmp/run.json" $((DURATION + 30)) "$addr" --connections 50 --pipeline "$1" --batch "$2" \
    --warmup 1s --duration "${DURATION}s"
  stop_pid "$server_pid"
  cat "$tmp/run.json" >> "$tmp/ours-$1-$2.jsonl"
  keep "$tmp/run.json" "pipelined-ours-$1-$2-$rep.json"
}

run_redis() { # NAME [EXTRA redis-benchmark FLAGS...]
  local name=$1 port
  shift
  port=$(free_port)
  mkdir -p "$tmp/redis"
  start_bg "$tmp/redis.out" redis-server --save '' --appendonly no --port "$port" --bind 127.0.0.1 \
    --dir "$tmp/redis"
  local redis_pid=$last_pid
  wait_tcp "$port"
  timeout --kill-after=5 120 redis-benchmark -h 127.0.0.1 -p "$port" -P 64 -c 50 -t set \
    -n "$REDIS_N" -q --csv "$@" > "$tmp/rb.csv"
  stop_pid "$redis_pid"
  keep "$tmp/rb.csv" "pipelined-$name-$rep.csv"
  # "SET","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  tr -d '"' < "$tmp/rb.csv" | awk -F, '$1 == "SET" {
    printf "{\"readings_per_sec\":%s,\"latency_us\":{\"p50\":%s,\"p99\":%s}}\n", $2, $5 * 1000, $7 * 1000 }' \
    >> "$tmp/$name.jsonl"
}

header
for rep in $(seq "$REPS"); do
  if [ $((rep % 2)) -eq 1 ]; then
    for c in $CONFIGS; do run_ours "${c%/*}" "${c#*/}"; done
    run_redis redis
  else
    run_redis redis
    for c in $CONFIGS; do run_ours "${c%/*}" "${c#*/}"; done
  fi
  run_redis redis-random -r 100000000
done

redis=$(jmed "$tmp/redis.jsonl" .readings_per_sec)
best=0
best_cfg=
echo
echo "| side | flags | readings (requests)/s | p50 µs | p99 µs | ÷ Redis SET | target ≥ 1× | spread /s |"
echo "|---|---|---:|---:|---:|---:|---|---|"
for c in $CONFIGS; do
  f="$tmp/ours-${c%/*}-${c#*/}.jsonl"
  r=$(jmed "$f" .readings_per_sec)
  e=$(jq -s 'map(.errors) | add' "$f")
  echo "| ours, memory | \`--connections 50 --pipeline ${c%/*} --batch ${c#*/}\` ($e errors) | $(int "$r") | $(int "$(jmed "$f" .latency_us.p50)") | $(int "$(jmed "$f" .latency_us.p99)") | $(ratio "$r" "$redis")× | $(met "$r >= $redis") | $(spread "$f" .readings_per_sec) |"
  if awk -v a="$r" -v b="$best" 'BEGIN { exit !(a > b) }'; then best=$r; best_cfg=$c; fi
done
for name in redis redis-random; do
  f="$tmp/$name.jsonl"
  r=$(jmed "$f" .readings_per_sec)
  flags="-P 64 -c 50 -t set -n $REDIS_N"
  [ "$name" = redis-random ] && flags="$flags -r 100000000"
  echo "| Redis | \`$flags\` | $(int "$r") | $(int "$(jmed "$f" .latency_us.p50)") | $(int "$(jmed "$f" .latency_us.p99)") | $(ratio "$r" "$redis")× | | $(spread "$f" .readings_per_sec) |"
done
echo
echo "best of ours: $(int "$best") readings/s with --pipeline ${best_cfg%/*} --batch ${best_cfg#*/}: $(ratio "$best" "$redis")× Redis SET ($(met "$best >= $redis"))"
echo "(latency: ours per sync of B readings, write → ack; Redis per request, p50/p99 from redis-benchmark in ms × 1000)"
# For bench/influx.sh: the memory figure the durable one is divided by.
echo "$best" > "${MEMORY_FIGURE_FILE:-/dev/null}"
