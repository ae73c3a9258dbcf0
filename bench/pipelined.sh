#!/usr/bin/env bash
# Pipelined ingest into memory, 50 connections, side by side with Redis SET, pinned:
#   ours:      `sensorlink bench --connections 50 --pipeline P --batch B` (load core) against
#              `sensorlink server --store memory` (server core), for each P/B in $CONFIGS
#   reference: `redis-benchmark -P 64 -c 50 -t set -n N` (load core) against
#              `redis-server --save '' --appendonly no` (server core) (Debian `redis-server`,
#              `redis-tools`); keys overwritten (one key), and with `-r 100000000` (random
#              keys: new entries, as our readings are)
# Alternated in one sitting, REPS (default 3) reps, each of SLICES (default 1) alternated runs
# per side (see SLICES below). Prints, per side, the medians and their
# spread across reps, the server's CPU share over the measured window (utime + stime from
# /proc) and so the server CPU per reading (per SET for Redis); then `result` rows:
#   redis-ratio           best config ÷ Redis SET, keys overwritten      target ≥ 1.0×
#   redis-random-ratio    best config ÷ Redis SET, random keys           report
#   fair-ack-p99-p50      ack p99 ÷ p50 at the best config               ≤ 5×
#   fair-slowest-fastest  slowest ÷ fastest connection, best config      ≥ 50 %
#                         (FAIR_REPS runs of FAIR_DURATION s, default REPS × 15 s)
#   starved               connections with nothing acked, best config    0 (any run)
#   cpu-per-reading       server CPU µs per reading ÷ redis-server's per SET   report
# The best config is the one with the highest median readings/s. Ratios are judged rep by rep:
# rep i of ours ÷ rep i of Redis, which ran beside it (lib.sh `pair`, `judge`). Loopback only; ≈ 1.7 min
# on a quiet machine with the defaults (REPS=3, DURATION=5, three configs), plus ≈ 1 min of fairness runs.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
ALTERNATED=1

DURATION=${DURATION:-5}
REPS=${REPS:-3}
REDIS_N=${REDIS_N:-5000000}
# Fairness (slowest ÷ fastest connection, starved) is measured apart, at the best config, over a
# longer window: which connection a one-core scheduler serves first can stick for seconds (one
# connection at 2× the median over a 5 s run), so a 5 s window judges luck as much as fairness.
FAIR_DURATION=${FAIR_DURATION:-15}
# Each rep: SLICES (default 1) runs per side, alternated, of SLICE (default DURATION) s for ours
# and REDIS_N ÷ SLICES SETs for Redis; a rep's figures are the medians of its slices, so the two
# sides of a pair are measured seconds apart when SLICES > 1.
SLICES=${SLICES:-1}
SLICE=${SLICE:-$DURATION}
FAIR_REPS=${FAIR_REPS:-$REPS}
WARMUP_S=1
# "pipeline/batch" pairs: one sync of 64 in flight per connection, 4 syncs of 64, 4 syncs of
# 1024. Searched pinned on the shared 2-core machine (64/64, 256/64, 1024/256, 4096/1024; too
# noisy there to rank them), so the sitting itself picks the best of these three.
CONFIGS=${CONFIGS:-"64/64 256/64 4096/1024"}
bash scripts/install-bench-deps.sh redis-server redis-tools jq python3
build
hz=$(getconf CLK_TCK)
redis_n=$((REDIS_N / SLICES))

# pin_server PID: the server under test (all its threads) on the server core when pinned.
# Idempotent: a lib.sh whose start_ours already pins makes this a no-op.
pin_server() {
  if [ "$PIN" = 1 ]; then taskset -a -p -c "$SERVER_CPU" "$1" > /dev/null; fi
}

# cpu_window PID DELAY_S LENGTH_S: after DELAY_S, PID's CPU (all threads) over the next
# LENGTH_S, in cores (1.0 = one core busy all the time); prints it.
cpu_window() {
  local pid=$1 t1 t2 k1 k2
  sleep "$2"
  t1=$(now) k1=$(ticks "$pid")
  sleep "$3"
  t2=$(now) k2=$(ticks "$pid")
  awk -v k="$((k2 - k1))" -v t="$(awk -v a="$t1" -v b="$t2" 'BEGIN { print b - a }')" -v hz="$hz" \
    'BEGIN { if (t <= 0) print "nan"; else printf "%.4f\n", k / hz / t }'
}

# forget_pid PID: PID was waited for (reaped): the exit trap must not signal it, as its number
# may be reused by then.
forget_pid() {
  local kept=() p
  for p in "${bg_pids[@]}"; do [ "$p" = "$1" ] || kept+=("$p"); done
  bg_pids=("${kept[@]+"${kept[@]}"}")
}

run_ours() { # PIPELINE BATCH [SECONDS [TAG]]: TAG (default "ours") names the output
  local bench_pid share secs=${3:-$DURATION} tag=${4:-ours}
  start_ours memory always
  pin_server "$server_pid"
  # The load runs in the background while the server's CPU is sampled over the measured
  # window (after connect + warm-up, before the end); the subshell pins itself (and so the
  # bench it starts) to the load core, and `timeout` bounds it.
  (
    if [ "$PIN" = 1 ]; then taskset -p -c "$LOAD_CPU" "$BASHPID" > /dev/null; fi
    ours_bench "$tmp/run.json" $((secs + 30)) "$addr" --connections 50 --pipeline "$1" --batch "$2" \
      --warmup "${WARMUP_S}s" --duration "${secs}s"
  ) &
  bench_pid=$!
  bg_pids+=("$bench_pid")
  share=$(cpu_window "$server_pid" "$(awk -v w="$WARMUP_S" 'BEGIN { print w + 0.3 }')" \
    "$(awk -v d="$secs" 'BEGIN { print d - 0.5 }')")
  wait "$bench_pid" || { echo "sensorlink bench failed (pipeline $1, batch $2)" >&2; exit 2; }
  forget_pid "$bench_pid"
  stop_pid "$server_pid"
  jq -c --argjson cpu "$share" '. + {server_cpu: $cpu}' "$tmp/run.json" >> "$tmp/$sink$tag-$1-$2.jsonl"
  keep "$tmp/run.json" "pipelined-$tag-$1-$2-$rep${slice:+-$slice}.json"
}

run_redis() { # NAME [EXTRA redis-benchmark FLAGS...]
  local name=$1 port redis_pid t1 t2 k1 k2
  shift
  port=$(free_port)
  mkdir -p "$tmp/redis"
  start_bg "$tmp/redis.out" "${on_server[@]}" redis-server --save '' --appendonly no --port "$port" \
    --bind 127.0.0.1 --dir "$tmp/redis"
  redis_pid=$last_pid
  wait_tcp "$port"
  t1=$(now) k1=$(ticks "$redis_pid")
  cmdlog "${on_load[@]}" redis-benchmark -h 127.0.0.1 -p "$port" -P 64 -c 50 -t set -n "$redis_n" -q --csv "$@"
  timeout --kill-after=5 120 "${on_load[@]}" redis-benchmark -h 127.0.0.1 -p "$port" -P 64 -c 50 -t set \
    -n "$redis_n" -q --csv "$@" > "$tmp/rb.csv"
  t2=$(now) k2=$(ticks "$redis_pid")
  stop_pid "$redis_pid"
  keep "$tmp/rb.csv" "pipelined-$name-$rep${slice:+-$slice}.csv"
  # "SET","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  # server_cpu: redis-server's share of a core over the whole run (its connects are a
  # negligible part of it); us_per_op: its CPU per SET.
  tr -d '"' < "$tmp/rb.csv" | awk -F, -v k="$((k2 - k1))" -v t="$(awk -v a="$t1" -v b="$t2" 'BEGIN { print b - a }')" \
    -v hz="$hz" -v n="$redis_n" '$1 == "SET" {
    printf "{\"readings_per_sec\":%s,\"latency_us\":{\"p50\":%s,\"p99\":%s},\"server_cpu\":%.4f,\"us_per_op\":%.4f}\n",
      $2, $5 * 1000, $7 * 1000, (t > 0 ? k / hz / t : 0), k / hz / n * 1e6 }' \
    >> "$tmp/$sink$name.jsonl"
  [ -s "$tmp/$sink$name.jsonl" ] || { echo "redis-benchmark printed no SET row:" >&2; cat "$tmp/rb.csv" >&2; exit 2; }
}

# A rep's figures: the medians of its slices (per_connection too; starved: the worst slice).
ours_extra='{server_cpu: (map(.server_cpu) | med),
  per_connection: {min: (map(.per_connection.min) | med), p50: (map(.per_connection.p50) | med),
    max: (map(.per_connection.max) | med), slowest_share: (map(.per_connection.slowest_share // 0) | med),
    starved: (map(.per_connection.starved) | max)}}'
redis_extra='{server_cpu: (map(.server_cpu) | med), us_per_op: (map(.us_per_op) | med)}'

header
echo "$REPS reps of $SLICES alternated slices (ours ${SLICE} s after a ${WARMUP_S} s warm-up per config; Redis $redis_n SETs per run)"
sink='' slice=''
for rep in $(seq "$REPS"); do
  sink=slice-
  rm -f "$tmp"/slice-*.jsonl
  for slice in $(seq "$SLICES"); do
    if [ $(((rep + slice) % 2)) -eq 1 ]; then
      for c in $CONFIGS; do run_ours "${c%/*}" "${c#*/}" "$SLICE"; done
      run_redis redis
    else
      run_redis redis
      for c in $CONFIGS; do run_ours "${c%/*}" "${c#*/}" "$SLICE"; done
    fi
    # Random keys: reported beside, not a target; once a rep.
    if [ "$slice" = 1 ]; then run_redis redis-random -r 100000000; fi
  done
  sink='' slice=''
  for c in $CONFIGS; do
    slice_figures "$tmp/slice-ours-${c%/*}-${c#*/}.jsonl" "$ours_extra" >> "$tmp/ours-${c%/*}-${c#*/}.jsonl"
    # Every slice of the sitting too, in order (lib.sh `pair` judges noisy reps on them).
    cat "$tmp/slice-ours-${c%/*}-${c#*/}.jsonl" >> "$tmp/all-ours-${c%/*}-${c#*/}.jsonl"
  done
  slice_figures "$tmp/slice-redis.jsonl" "$redis_extra" >> "$tmp/redis.jsonl"
  cat "$tmp/slice-redis.jsonl" >> "$tmp/all-redis.jsonl"
  slice_figures "$tmp/slice-redis-random.jsonl" "$redis_extra" >> "$tmp/redis-random.jsonl"
done

# Per run: ack p99 ÷ p50 and the server's CPU per reading (µs) from its share and the rate.
q_tail='.latency_us.p99 / .latency_us.p50'
q_cpu_us='.server_cpu / .readings_per_sec * 1e6'
q_share='.per_connection.slowest_share // 0'
redis=$(jmed "$tmp/redis.jsonl" .readings_per_sec)
best=0
best_cfg=
echo
echo "| side | flags | readings (requests)/s | spread | ÷ Redis SET | ack p50 µs | ack p99 µs | p99 ÷ p50 | slowest ÷ fastest conn | starved (max) | server CPU | server µs per reading |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in $CONFIGS; do
  f="$tmp/ours-${c%/*}-${c#*/}.jsonl"
  r=$(jmed "$f" .readings_per_sec)
  e=$(jq -s 'map(.errors) | add' "$f")
  echo "| ours, memory | \`--connections 50 --pipeline ${c%/*} --batch ${c#*/}\` ($e errors) | $(int "$r") | $(spread_pct "$f" .readings_per_sec) % | $(ratio "$r" "$redis")× | $(int "$(jmed "$f" .latency_us.p50)") | $(int "$(jmed "$f" .latency_us.p99)") | $(ratio "$(jmed "$f" "$q_tail")" 1)× | $(printf '%.0f' "$(jmed "$f" "($q_share) * 100")") % | $(jq -s 'map(.per_connection.starved) | max' "$f") | $(printf '%.0f' "$(jmed "$f" '.server_cpu * 100')") % | $(printf '%.3f' "$(jmed "$f" "$q_cpu_us")") |"
  if awk -v a="$r" -v b="$best" 'BEGIN { exit !(a > b) }'; then best=$r; best_cfg=$c; fi
done
for name in redis redis-random; do
  f="$tmp/$name.jsonl"
  r=$(jmed "$f" .readings_per_sec)
  flags="-P 64 -c 50 -t set -n $redis_n"
  [ "$name" = redis-random ] && flags="$flags -r 100000000"
  echo "| Redis | \`$flags\` | $(int "$r") | $(spread_pct "$f" .readings_per_sec) % | $(ratio "$r" "$redis")× | $(int "$(jmed "$f" .latency_us.p50)") | $(int "$(jmed "$f" .latency_us.p99)") | $(ratio "$(jmed "$f" "$q_tail")" 1)× | | | $(printf '%.0f' "$(jmed "$f" '.server_cpu * 100')") % | $(printf '%.3f' "$(jmed "$f" .us_per_op)") |"
done
echo
echo "(ack latency: ours per sync of B readings, write → ack; Redis per request, p50/p99 from redis-benchmark in ms × 1000."
echo " server CPU: utime + stime of the server over the measured window (ours: after warm-up, $(awk -v d="$SLICE" 'BEGIN { print d - 0.5 }') s; Redis: the whole run), in % of one core;"
echo " µs per reading: that CPU ÷ the rate (Redis: per SET). Each rep: the medians of its $SLICES slices. Spreads: (max − min) ÷ median across $REPS reps.)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

if [ -z "$best_cfg" ]; then
  echo "no config of ours acked anything" >&2
  exit 2
fi
f="$tmp/ours-${best_cfg%/*}-${best_cfg#*/}.jsonl"
flags="--pipeline ${best_cfg%/*} --batch ${best_cfg#*/}"
random=$(jmed "$tmp/redis-random.jsonl" .readings_per_sec)
s_ours=$(spread_pct "$f" .readings_per_sec)
s_redis=$(spread_pct "$tmp/redis.jsonl" .readings_per_sec)
s_random=$(spread_pct "$tmp/redis-random.jsonl" .readings_per_sec)
echo "best of ours: $(int "$best") readings/s with $flags: $(ratio "$best" "$redis")× Redis SET"

all_ours="$tmp/all-ours-${best_cfg%/*}-${best_cfg#*/}.jsonl"
read -r lo hi n _ < <(paired "$all_ours" .readings_per_sec "$tmp/all-redis.jsonl" .readings_per_sec | median_interval)
echo "ours ÷ Redis over all $n slice pairs: median $(paired "$all_ours" .readings_per_sec "$tmp/all-redis.jsonl" .readings_per_sec | median | xargs printf '%.2f')×, 95 % interval of the median $(printf '%.2f–%.2f×' "$lo" "$hi")"
pair "$f" .readings_per_sec "$tmp/redis.jsonl" .readings_per_sec ">=" 1.0 "$all_ours" "$tmp/all-redis.jsonl"
result redis-ratio "pipelined memory ingest, 50 conns ($flags) ÷ Redis SET -P 64 -c 50 (keys overwritten)" \
  "$(int "$best") readings/s" "Redis $(int "$redis") SET/s" "${pair_ratio}×" \
  "$(pspreads "$pair_spread" "$s_ours" "$s_redis")" "≥ 1.0×" "$pair_verdict"
result redis-random-ratio "pipelined memory ingest ($flags) ÷ Redis SET with random keys (-r 100000000)" \
  "$(int "$best") readings/s" "Redis $(int "$random") SET/s" "$(ratio "$best" "$random")×" \
  "ours $s_ours % / ref $s_random %" "report" "measured"

tail_ratio=$(jmed "$f" "$q_tail")
s_tail=$(spread_pct "$f" "$q_tail")
result fair-ack-p99-p50 "fairness: ack latency p99 ÷ p50 at the best pipelined config ($flags)" \
  "p99 $(int "$(jmed "$f" .latency_us.p99)") µs, p50 $(int "$(jmed "$f" .latency_us.p50)") µs" "" \
  "$(ratio "$tail_ratio" 1)×" "ours $s_tail %" "≤ 5×" "$(jq -r "$q_tail" "$f" | judge "<=" 5)"

# The fairness runs: the best config again, FAIR_REPS × FAIR_DURATION s.
for rep in $(seq "$FAIR_REPS"); do run_ours "${best_cfg%/*}" "${best_cfg#*/}" "$FAIR_DURATION" fair; done
ff="$tmp/fair-${best_cfg%/*}-${best_cfg#*/}.jsonl"
if jq -e 'has("per_connection") | not' "$ff" > /dev/null; then
  # A prebuilt binary (SENSORLINK_BIN) from before the per-connection figures.
  for key in fair-slowest-fastest starved; do
    result "$key" "fairness at the best config ($flags)" "n/a" "" "" "" "see target" \
      "**not measured** (this bench reports no per_connection)"
  done
else
  share=$(jmed "$ff" "$q_share")
  s_share=$(spread_pct "$ff" "$q_share")
  echo "fairness runs ($FAIR_REPS × ${FAIR_DURATION} s, $flags): slowest ÷ fastest per rep: $(jq -r "($q_share) * 100 | floor" "$ff" | paste -sd' ') %;" \
    "fastest ÷ median: $(jq -r '.per_connection.max / .per_connection.p50 * 100 | floor' "$ff" | paste -sd' ') %"
  result fair-slowest-fastest "fairness: slowest ÷ fastest connection's readings/s at the best config ($flags), ${FAIR_DURATION} s runs" \
    "slowest $(int "$(jmed "$ff" .per_connection.min)"), median $(int "$(jmed "$ff" .per_connection.p50)"), fastest $(int "$(jmed "$ff" .per_connection.max)") readings/s" "" \
    "$(printf '%.0f' "$(awk -v s="$share" 'BEGIN { print s * 100 }')") %" "ours $s_share %" "≥ 50 %" \
    "$(jq -r "$q_share" "$ff" | judge ">=" 0.5)"
  # The worst rep counts: one starved connection in any rep is a starvation.
  starved=$(jq -s 'map(.per_connection.starved) | max' "$f" "$ff")
  result starved "fairness: connections with nothing acked during the measurement, best config ($flags), worst of $REPS + $FAIR_REPS runs" \
    "$starved of 50" "" "" "" "0" "$(met "$starved == 0")"
fi

cpu_ours=$(jmed "$f" "$q_cpu_us")
cpu_redis=$(jmed "$tmp/redis.jsonl" .us_per_op)
s_cpu_ours=$(spread_pct "$f" "$q_cpu_us")
s_cpu_redis=$(spread_pct "$tmp/redis.jsonl" .us_per_op)
pair "$f" "$q_cpu_us" "$tmp/redis.jsonl" .us_per_op "<=" 1.0
result cpu-per-reading "server CPU per reading ($flags, $(printf '%.0f' "$(jmed "$f" '.server_cpu * 100')") % of a core) ÷ redis-server's per SET (keys overwritten)" \
  "$(printf '%.3f' "$cpu_ours") µs" "Redis $(printf '%.3f' "$cpu_redis") µs" "${pair_ratio}×" \
  "$(pspreads "$pair_spread" "$s_cpu_ours" "$s_cpu_redis")" "report" "measured"

# For bench/influx.sh: the memory figure the durable one is divided by.
echo "$best" > "${MEMORY_FIGURE_FILE:-/dev/null}"
