#!/usr/bin/env bash
# Capacity: many mostly idle connections, each sending one reading + sync per second:
#   `sensorlink bench --idle --connections N --interval 1s --warmup 5s --duration 30s --source-ips 8`
# against `sensorlink server --store memory` (and SQLite --fsync always for the first N).
# Measures the server's RSS (VmRSS) before any connection and once all are established
# (→ KiB per connection; target ≤ 4 KiB) and its CPU time (utime + stime from
# /proc/PID/stat) over STEADY seconds of the steady N readings/s (target at 10 000
# connections: ≤ 20 % of one core).
#
# File descriptors: every connection costs the server one, and each bench process one. A
# process here cannot go past the hard `ulimit -n` (20 000 on this workplace; raising it
# needs CAP_SYS_RESOURCE, which it lacks), so a requested N above (hard limit − 64) is
# measured at that maximum instead, and said so. The load is split over enough bench
# processes that each stays under the limit.
#
# N in $CAP_CONNS (default "10000 50000"); REPS (default 1: these are absolute figures, not
# ratios; ≈ 2.5 min per rep; the bench processes need ~0.5 GB of RAM
# per 1 000 connections before commit 0d81a87, a few MB in all since). Loopback only.
source "$(dirname "$0")/lib.sh"

CAP_CONNS=${CAP_CONNS:-"10000 50000"}
REPS=${REPS:-1}
DURATION=${DURATION:-30}
STEADY=${STEADY:-20}
# Not measured: the first seconds, while every connection's first readings and the
# server's per-connection state warm up.
WARMUP=${WARMUP:-5}
PER_PROCESS=${PER_PROCESS:-10000}
bash scripts/install-bench-deps.sh jq
build
hard=$(ulimit -Hn)
ulimit -n "$hard"
clk=$(getconf CLK_TCK)
max_conns=$((hard - 64))

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; } # utime + stime
sockets() { find "/proc/$1/fd" -lname 'socket:*' 2> /dev/null | wc -l; }
now() { date +%s.%N; }

# run NAME STORE N: one capacity run; appends a JSON line to $tmp/NAME-N.jsonl.
run() {
  local name=$1 store=$2 n=$3
  local procs=$(((n + PER_PROCESS - 1) / PER_PROCESS)) i share left=$n
  start_ours "$store" always
  sleep 1
  local rss0 t0 c0 t1 c1 rss1 rss2 est=0 deadline
  rss0=$(rss_kib "$server_pid")
  local bench_pids=()
  for ((i = 0; i < procs; i++)); do
    share=$((left / (procs - i)))
    left=$((left - share))
    start_bg "$tmp/cap-$i.json" timeout --kill-after=5 $((DURATION + 60)) \
      "$bin" bench "$addr" --idle --connections "$share" --interval 1s --warmup "${WARMUP}s" \
      --duration "${DURATION}s" --source-ips 8 --json --no-progress
    bench_pids+=("$last_pid")
  done
  # All established: the server holds n sockets besides its listener. The bench connects
  # at 2000/s per process; give it that time plus 15 s.
  deadline=$(awk -v t="$(now)" -v n="$n" -v p="$procs" 'BEGIN { printf "%.3f", t + n / (2000 * p) + 15 }')
  while awk -v t="$(now)" -v d="$deadline" 'BEGIN { exit !(t < d) }'; do
    est=$(($(sockets "$server_pid") - 1))
    [ "$est" -ge "$n" ] && break
    sleep 0.2
  done
  rss1=$(rss_kib "$server_pid")
  # Steady state: after the warm-up, STEADY seconds of CPU time.
  sleep "$WARMUP"
  t0=$(now)
  c0=$(cpu_ticks "$server_pid")
  sleep "$STEADY"
  t1=$(now)
  c1=$(cpu_ticks "$server_pid")
  rss2=$(rss_kib "$server_pid")
  for i in "${bench_pids[@]}"; do
    wait "$i" || true
    stop_pid "$i" 1
  done
  stop_pid "$server_pid" 30
  # One JSON line: the server's figures and the bench processes' reports, merged.
  jq -s -c --argjson n "$n" --argjson est "$est" --argjson rss0 "$rss0" --argjson rss1 "$rss1" \
    --argjson rss2 "$rss2" --argjson cpu "$(awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$clk" \
      'BEGIN { printf "%.4f", (c1 - c0) / hz / (t1 - t0) }')" '{
      requested: $n, server_sockets: $est, rss0_kib: $rss0, rss1_kib: $rss1, rss2_kib: $rss2,
      kib_per_conn: (($rss1 - $rss0) / ([$est, 1] | max)),
      kib_per_conn_end: (($rss2 - $rss0) / ([$est, 1] | max)),
      cpu_core_fraction: $cpu,
      connections: (map(.connections) | add),
      readings_per_sec: (map(.readings_per_sec) | add),
      errors: (map(.errors) | add),
      p50: (map(.latency_us.p50) | max), p99: (map(.latency_us.p99) | max)
    }' "$tmp"/cap-*.json >> "$tmp/$name-$n.jsonl"
  for ((i = 0; i < procs; i++)); do keep "$tmp/cap-$i.json" "capacity-$name-$n-$rep-$i.json"; done
  rm -f "$tmp"/cap-*.json
}

header
echo "ulimit -n: soft $(ulimit -n), hard $hard (per process); CLK_TCK $clk"
runs=()
first=1
for n in $CAP_CONNS; do
  eff=$n
  if [ "$n" -gt "$max_conns" ]; then
    eff=$max_conns
    echo "N = $n is more than one server process may hold here (hard ulimit -n $hard, not raisable without CAP_SYS_RESOURCE): measuring N = $eff instead"
  fi
  runs+=("memory|memory|$eff")
  if [ "$first" = 1 ]; then runs+=("sqlite|sqlite|$eff"); first=0; fi
done
for rep in $(seq "$REPS"); do
  for r in "${runs[@]}"; do
    IFS='|' read -r name kind n <<< "$r"
    store=memory
    [ "$kind" = sqlite ] && store="sqlite:$(fresh_db)"
    run "$name" "$store" "$n"
  done
done

echo
echo "| store | connections (established) | RSS before MiB | RSS all established MiB | KiB per connection | target ≤ 4 | RSS after ${STEADY}+ s MiB (KiB/conn) | server CPU, % of one core | target ≤ 20 % (10k) | readings/s | ack p50 / p99 µs | errors |"
echo "|---|---|---:|---:|---:|---|---|---:|---|---:|---|---:|"
for r in "${runs[@]}"; do
  IFS='|' read -r name kind n <<< "$r"
  f="$tmp/$name-$n.jsonl"
  sname=memory
  [ "$kind" = sqlite ] && sname="SQLite fsync=always"
  kib=$(jmed "$f" .kib_per_conn)
  cpu=$(jmed "$f" '.cpu_core_fraction * 100')
  cpu_target=
  [ "$n" -le 10000 ] && cpu_target=$(met "$cpu <= 20")
  echo "| $sname | $n ($(jmed "$f" .connections)) | $(printf '%.1f' "$(jmed "$f" '.rss0_kib / 1024')") | $(printf '%.1f' "$(jmed "$f" '.rss1_kib / 1024')") | $(printf '%.2f' "$kib") | $(met "$kib <= 4") | $(printf '%.1f' "$(jmed "$f" '.rss2_kib / 1024')") ($(printf '%.2f' "$(jmed "$f" .kib_per_conn_end)")) | $(printf '%.1f' "$cpu") | $cpu_target | $(int "$(jmed "$f" .readings_per_sec)") | $(int "$(jmed "$f" .p50)") / $(int "$(jmed "$f" .p99)") | $(jmed "$f" .errors) |"
done
echo
echo "(RSS after: includes the readings stored meanwhile: the memory store keeps them all, SQLite's page cache grows up to 64 MiB)"
