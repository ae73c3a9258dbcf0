#!/usr/bin/env bash
# What the server's TCP_INFO sampling costs (issue 11): server CPU with N mostly idle
# connections, each sending one reading + sync per second
#   `sensorlink bench --idle --connections N --interval 1s --warmup 5s --duration D --source-ips 8`
# against `sensorlink server --store memory --http 127.0.0.1:0 --udp off` (the live view on,
# as in production; no UDP socket, so the server's sockets are its TCP and HTTP listeners
# plus the connections) with `--tcp-info-interval 0s` (off) and `1s` (exaggerated: a sample
# is due once the last is 1 s old and readings come 1 s apart, so a connection samples about
# every other reading; the default is 10 s), sides alternated in one sitting.
# Server CPU = utime + stime from /proc/PID/stat over STEADY seconds after the warm-up;
# samples taken = `sensorlink_tcp_srtt_seconds_count` from /metrics at the end.
#
# N in $CONNS (default 10000), REPS (default 3). Loopback only; every process is stopped by
# its PID (lib.sh).
source "$(dirname "$0")/lib.sh"

CONNS=${CONNS:-10000}
REPS=${REPS:-3}
DURATION=${DURATION:-30}
STEADY=${STEADY:-20}
WARMUP=${WARMUP:-5}
ALTERNATED=1
bash scripts/install-bench-deps.sh jq
build
hard=$(ulimit -Hn)
ulimit -n "$hard"
clk=$(getconf CLK_TCK)

cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; } # utime + stime
# A descriptor closed while find lists them makes it fail (under pipefail): count what it saw.
sockets() { { find "/proc/$1/fd" -lname 'socket:*' 2> /dev/null || true; } | wc -l; }
now() { date +%s.%N; }

# run INTERVAL: one run; appends a JSON line to $tmp/INTERVAL.jsonl.
run() {
  local interval=$1 i http t0 c0 t1 c1 samples deadline est=0
  start_bg "$tmp/server.out" "${on_server[@]}" "$bin" server --listen 127.0.0.1:0 --http 127.0.0.1:0 \
    --store memory -q --tcp-info-interval "$interval" --udp off \
    --max-connections-per-ip 1048576 --connect-rate-per-ip 1000000 \
    --max-rate-per-connection 1000000000 --max-rate-per-token 1000000000 \
    --max-new-series-per-connection 1000000000 --max-new-series-per-token 1000000000
  local server_pid=$last_pid addr=
  for ((i = 0; i < 200; i++)); do
    addr=$(sed -n 's/^listening on //p' "$tmp/server.out")
    [ -n "$addr" ] && break
    sleep 0.05
  done
  [ -n "$addr" ] || { cat "$tmp/server.out" >&2; exit 2; }
  http=$(sed -n 's/^http on //p' "$tmp/server.out")
  start_bg "$tmp/bench.json" timeout --kill-after=5 $((DURATION + 60)) \
    "${on_load[@]}" "$bin" bench "$addr" --idle --connections "$CONNS" --interval 1s --warmup "${WARMUP}s" \
    --duration "${DURATION}s" --source-ips 8 --json --no-progress
  local bench_pid=$last_pid
  deadline=$(awk -v t="$(now)" -v n="$CONNS" 'BEGIN { printf "%.3f", t + n / 2000 + 15 }')
  while awk -v t="$(now)" -v d="$deadline" 'BEGIN { exit !(t < d) }'; do
    # Less the TCP and HTTP listeners (UDP is off).
    est=$(($(sockets "$server_pid") - 2))
    [ "$est" -ge "$CONNS" ] && break
    sleep 0.2
  done
  sleep "$WARMUP"
  t0=$(now)
  c0=$(cpu_ticks "$server_pid")
  sleep "$STEADY"
  t1=$(now)
  c1=$(cpu_ticks "$server_pid")
  samples=$(curl -s "${http}metrics" | awk '$1 == "sensorlink_tcp_srtt_seconds_count" { print $2 }')
  wait "$bench_pid" || true
  stop_pid "$server_pid" 30
  jq -c --arg interval "$interval" --argjson est "$est" --argjson samples "${samples:-0}" \
    --argjson cpu "$(awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$clk" \
      'BEGIN { printf "%.4f", (c1 - c0) / hz / (t1 - t0) }')" '{
      interval: $interval, server_sockets: $est, cpu_core_fraction: $cpu, samples: $samples,
      readings_per_sec, errors, p50: .latency_us.p50, p99: .latency_us.p99
    }' "$tmp/bench.json" | tee -a "$tmp/$interval.jsonl"
}

header
for rep in $(seq "$REPS"); do
  if [ $((rep % 2)) = 1 ]; then order="0s 1s"; else order="1s 0s"; fi
  for interval in $order; do run "$interval"; done
done

echo
echo "| --tcp-info-interval | server sockets (10,000 connections + listeners) | server CPU, % of one core (median; each rep) | TCP_INFO samples taken | readings/s | ack p50 / p99 µs | errors |"
echo "|---|---:|---|---:|---:|---|---:|"
for interval in 0s 1s; do
  f="$tmp/$interval.jsonl"
  echo "| $interval | $(int "$(jmed "$f" .server_sockets)") | $(printf '%.1f' "$(jmed "$f" '.cpu_core_fraction * 100')") ($(jq -r '.cpu_core_fraction * 100 | . * 10 | round / 10' "$f" | paste -sd' ')) | $(int "$(jmed "$f" .samples)") | $(int "$(jmed "$f" .readings_per_sec)") | $(int "$(jmed "$f" .p50)") / $(int "$(jmed "$f" .p99)") | $(int "$(jmed "$f" .errors)") |"
done
