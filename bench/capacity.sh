#!/usr/bin/env bash
# Capacity: many mostly idle connections, each sending one reading + sync per second:
#   `sensorlink bench --idle --connections N --interval 1s --warmup 5s --source-ips 8`
# against `sensorlink server --store memory` and `--store sqlite:PATH --fsync always`.
# Measures the server's RSS (VmRSS) before any connection and once all are established
# (→ KiB per connection; target at 10 000: ≤ 2 KiB) and its CPU time (utime + stime from
# /proc/PID/stat) over STEADY seconds of the steady N readings/s (target at 10 000
# connections: ≤ 20 % of one core, memory and SQLite alike).
# Pinned (bench/lib.sh): the server on SERVER_CPU, the bench processes on LOAD_CPU; PIN=0
# unpinned. Each run is a fresh server (and SQLite file).
#
# File descriptors: every connection costs the server one, and each bench process one. A
# process here cannot go past the hard `ulimit -n` (raising it needs CAP_SYS_RESOURCE), so a
# requested N above (hard limit − 64) is measured at that maximum instead, and said so. The
# load is split over enough bench processes that each stays under the limit.
#
# CAP_CONNS (default 10000): measured REPS (default 3) times per store, stores alternated;
# CAP_MAX (default 50000; empty: skipped): once, memory store, the max-connections line
# (report). STEADY (default 20) s of CPU per run; ≈ 40 s per run, ≈ 4.5 min by default.
# Loopback only.
source "$(dirname "$0")/lib.sh"

CAP_CONNS=${CAP_CONNS:-10000}
CAP_MAX=${CAP_MAX-50000}
REPS=${REPS:-3}
STEADY=${STEADY:-20}
# The bench measures after its own warm-up for DURATION: long enough to cover the steady window.
DURATION=${DURATION:-$((STEADY + 3))}
ALTERNATED=1
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

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2> /dev/null || echo 0; }
# utime + stime; 0 for a process that is gone (the run then says so).
cpu_ticks() {
  local stat
  stat=$(sed 's/^.*) //' "/proc/$1/stat" 2> /dev/null) || { echo 0; return; }
  awk '{ print $12 + $13 }' <<< "$stat"
}
# A descriptor closed while find lists them makes it fail (under pipefail): count what it saw.
sockets() { { find "/proc/$1/fd" -lname 'socket:*' 2> /dev/null || true; } | wc -l; }
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
      "${on_load[@]}" "$bin" bench "$addr" --idle --connections "$share" --interval 1s --warmup "${WARMUP}s" \
      --duration "${DURATION}s" --source-ips 8 --json --no-progress
    bench_pids+=("$last_pid")
  done
  # All established: the server holds n sockets besides its listener. The bench connects
  # at 2000/s per process; give it that time plus 15 s, but stop waiting once the count has
  # not grown for 2 s (connects refused, e.g. at the descriptor limit): the bench has moved on
  # to its warm-up, and the window below must fall inside its run.
  local prev=-1 grown
  grown=$(now)
  deadline=$(awk -v t="$(now)" -v n="$n" -v p="$procs" 'BEGIN { printf "%.3f", t + n / (2000 * p) + 15 }')
  while awk -v t="$(now)" -v d="$deadline" 'BEGIN { exit !(t < d) }'; do
    est=$(($(sockets "$server_pid") - 1))
    [ "$est" -ge "$n" ] && break
    if [ "$est" -gt "$prev" ]; then
      prev=$est
      grown=$(now)
    elif [ "$est" -gt 0 ] && awk -v t="$(now)" -v g="$grown" 'BEGIN { exit !(t - g > 2) }'; then
      break
    fi
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
  # A server gone by now would read as 0 CPU: say so, with its last words.
  local alive=true
  if ! kill -0 "$server_pid" 2> /dev/null; then
    alive=false
    echo "the server (N = $n, $name, rep $rep) is gone before the end of the window; its output:" >&2
    tail -5 "$tmp/server.out" >&2
  fi
  for i in "${bench_pids[@]}"; do
    wait "$i" || true
    stop_pid "$i" 1
  done
  stop_pid "$server_pid" 30
  # One JSON line: the server's figures and the bench processes' reports, merged. A bench's
  # output file also holds its stderr (warnings, e.g. connects refused at the descriptor
  # limit): only its JSON report is merged, the rest is shown.
  grep -h '^{' "$tmp"/cap-*.json > "$tmp/reports.json" || true
  if grep -qhv '^{' "$tmp"/cap-*.json; then
    echo "bench stderr ($name, N = $n, rep $rep; first 5 of $(grep -hv '^{' "$tmp"/cap-*.json | wc -l) lines):" >&2
    grep -hv '^{' "$tmp"/cap-*.json | head -5 >&2
  fi
  jq -s -c --argjson n "$n" --argjson est "$est" --argjson rss0 "$rss0" --argjson rss1 "$rss1" \
    --argjson rss2 "${rss2:-0}" --argjson alive "$alive" --argjson cpu "$(awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$clk" \
      'BEGIN { printf "%.4f", (c1 - c0) / hz / (t1 - t0) }')" '{
      requested: $n, server_sockets: $est, server_alive: $alive, rss0_kib: $rss0, rss1_kib: $rss1, rss2_kib: $rss2,
      kib_per_conn: (($rss1 - $rss0) / ([$est, 1] | max)),
      kib_per_conn_end: (($rss2 - $rss0) / ([$est, 1] | max)),
      cpu_core_fraction: $cpu,
      connections: (map(.connections) | add),
      readings_per_sec: (map(.readings_per_sec) | add),
      errors: (map(.errors) | add),
      p50: (map(.latency_us.p50) | max), p99: (map(.latency_us.p99) | max)
    }' "$tmp/reports.json" >> "$tmp/$name-$n.jsonl"
  for ((i = 0; i < procs; i++)); do keep "$tmp/cap-$i.json" "capacity-$name-$n-$rep-$i.json"; done
  rm -f "$tmp"/cap-*.json
}

header
echo "ulimit -n: soft $(ulimit -n), hard $hard (per process); CLK_TCK $clk"
cap() { if [ "$1" -gt "$max_conns" ]; then echo "$max_conns"; else echo "$1"; fi; }
for n in $CAP_CONNS $CAP_MAX; do
  if [ "$n" -gt "$max_conns" ]; then
    echo "N = $n is more than one server process may hold here (hard ulimit -n $hard, not raisable without CAP_SYS_RESOURCE): measuring N = $max_conns instead"
  fi
done
runs=()
for rep in $(seq "$REPS"); do
  for n in $CAP_CONNS; do
    n=$(cap "$n")
    if [ $((rep % 2)) -eq 1 ]; then order="memory sqlite"; else order="sqlite memory"; fi
    for name in $order; do
      store=memory
      [ "$name" = sqlite ] && store="sqlite:$(fresh_db)"
      run "$name" "$store" "$n"
      if [ "$rep" = 1 ]; then runs+=("$name|$n"); fi
    done
  done
done
if [ -n "$CAP_MAX" ]; then
  n=$(cap "$CAP_MAX")
  rep=1
  run max memory "$n"
  runs+=("max|$n")
fi

echo
echo "| store | connections (established) | reps | RSS before MiB | RSS all established MiB | KiB per connection | spread | RSS after ${STEADY}+ s MiB (KiB/conn) | server CPU, % of one core | spread | readings/s | ack p50 / p99 µs | errors |"
echo "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---:|"
for r in "${runs[@]}"; do
  IFS='|' read -r name n <<< "$r"
  f="$tmp/$name-$n.jsonl"
  sname=memory
  [ "$name" = sqlite ] && sname="SQLite fsync=always"
  [ "$name" = max ] && sname="memory (max connections)"
  kib=$(jmed "$f" .kib_per_conn)
  cpu=$(jmed "$f" '.cpu_core_fraction * 100')
  echo "| $sname | $n ($(int "$(jmed "$f" .connections)")) | $(wc -l < "$f") | $(printf '%.1f' "$(jmed "$f" '.rss0_kib / 1024')") | $(printf '%.1f' "$(jmed "$f" '.rss1_kib / 1024')") | $(printf '%.2f' "$kib") | $(spread_pct "$f" .kib_per_conn) % | $(printf '%.1f' "$(jmed "$f" '.rss2_kib / 1024')") ($(printf '%.2f' "$(jmed "$f" .kib_per_conn_end)")) | $(printf '%.1f' "$cpu") | $(spread_pct "$f" .cpu_core_fraction) % | $(num "$(jmed "$f" .readings_per_sec)") | $(int "$(jmed "$f" .p50)") / $(int "$(jmed "$f" .p99)") | $(int "$(jmed "$f" .errors)") |"
done
echo
echo "(RSS after: includes the readings stored meanwhile: the memory store keeps them all, SQLite's page cache grows up to 64 MiB)"
footer
echo

# The issue's targets, at the first N of CAP_CONNS (10 000 by default), judged rep by rep
# (lib.sh `judge`: met or not met in every rep holds whatever the spread).
n=$(cap "${CAP_CONNS%% *}")
f=$tmp/memory-$n.jsonl
kib=$(jmed "$f" .kib_per_conn) sk=$(spread_pct "$f" .kib_per_conn)
result idle-rss-per-conn "server RSS per idle connection at $(num "$n") connections, memory store" \
  "$(printf '%.2f' "$kib") KiB" "" "" "$(spreads "$sk")" "≤ 2 KiB" "$(jq -r .kib_per_conn "$f" | judge "<=" 2)"
for name in memory sqlite; do
  f=$tmp/$name-$n.jsonl
  cpu=$(jmed "$f" '.cpu_core_fraction * 100') sc=$(spread_pct "$f" .cpu_core_fraction)
  label=memory
  [ "$name" = sqlite ] && label="SQLite --fsync always"
  result "idle-cpu-$name" "server CPU, $(num "$n") connections × 1 reading/s, $label" \
    "$(printf '%.1f' "$cpu") % of a core" "" "" "$(spreads "$sc")" "≤ 20 %" "$(jq -r '.cpu_core_fraction * 100' "$f" | judge "<=" 20)"
done
if [ -n "$CAP_MAX" ]; then
  n=$(cap "$CAP_MAX")
  f=$tmp/max-$n.jsonl
  result idle-max-conns "the most connections one server holds here (hard ulimit -n $hard), memory store" \
    "$(int "$(jmed "$f" .connections)") established, $(printf '%.2f' "$(jmed "$f" .kib_per_conn)") KiB each, $(printf '%.1f' "$(jmed "$f" '.cpu_core_fraction * 100')") % of a core$(jq -e .server_alive "$f" > /dev/null || echo ', **the server was gone before the window ended**')" \
    "" "" "1 run" "report" "measured"
fi
