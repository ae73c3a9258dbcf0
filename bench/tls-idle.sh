#!/usr/bin/env bash
# Idle TLS cost: the server's RSS per idle connection, TLS beside plain TCP.
#   python3 bench/idle_conns.py ADDR N [--tls CA]   (N connections, each `ping` → `pong`, then silent)
# against `sensorlink server --store memory` (with --tls-cert/--tls-key from `sensorlink cert`
# for TLS). Reads the server's VmRSS from /proc/PID/status before any connection and again
# SETTLE seconds after all N have had their `pong` (handshakes done, buffers released):
# (after − before) / N = KiB per idle connection. Each row is a fresh server.
#
# N in $IDLE_CONNS (default 2000; the holder needs N file descriptors, ≤ `ulimit -Hn`);
# REPS (default 3). Loopback only; every process is stopped by PID, the holder is bounded.
source "$(dirname "$0")/lib.sh"

IDLE_CONNS=${IDLE_CONNS:-2000}
REPS=${REPS:-3}
SETTLE=${SETTLE:-2}
build
ulimit -n "$(ulimit -Hn)"
"$bin" cert --dir "$tmp/certs" > /dev/null

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# measure MODE N: one fresh server, N idle connections; prints "RSS0 RSS1" (KiB).
measure() {
  local mode=$1 n=$2 tls_flags=() holder_tls=() i
  if [ "$mode" = tls ]; then
    tls_flags=(--tls-cert "$tmp/certs/server.pem" --tls-key "$tmp/certs/server-key.pem")
    holder_tls=(--tls "$tmp/certs/ca.pem")
  fi
  start_ours memory os "${tls_flags[@]}"
  sleep 1
  local rss0 rss1
  rss0=$(rss_kib "$server_pid")
  start_bg "$tmp/holder.out" timeout --kill-after=5 $((n / 50 + 120)) \
    python3 bench/idle_conns.py "$addr" "$n" "${holder_tls[@]}" --hold $((n / 50 + 100))
  local holder=$last_pid
  for ((i = 0; i < (n / 50 + 60) * 10; i++)); do
    grep -q '^ready' "$tmp/holder.out" && break
    kill -0 "$holder" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q "^ready $n" "$tmp/holder.out"; then
    echo "the holder did not get $n connections up:" >&2
    cat "$tmp/holder.out" "$tmp/server.out" >&2
    exit 2
  fi
  sleep "$SETTLE"
  rss1=$(rss_kib "$server_pid")
  stop_pid "$holder" 5
  stop_pid "$server_pid" 10
  echo "$rss0 $rss1"
}

header
echo "idle connections per run: $IDLE_CONNS; RSS read $SETTLE s after the last pong"
echo
echo "| transport | connections | RSS before MiB | RSS idle MiB | KiB per idle connection (median of $REPS; spread) |"
echo "|---|---:|---:|---:|---:|"
for mode in plain tls; do
  per=() before=() after=()
  for ((r = 0; r < REPS; r++)); do
    read -r rss0 rss1 < <(measure "$mode" "$IDLE_CONNS")
    before+=("$rss0")
    after+=("$rss1")
    per+=("$(awk -v a="$rss0" -v b="$rss1" -v n="$IDLE_CONNS" 'BEGIN { printf "%.2f", (b - a) / n }')")
  done
  med=$(printf '%s\n' "${per[@]}" | median)
  lo=$(printf '%s\n' "${per[@]}" | sort -g | head -1)
  hi=$(printf '%s\n' "${per[@]}" | sort -g | tail -1)
  b=$(printf '%s\n' "${before[@]}" | median)
  a=$(printf '%s\n' "${after[@]}" | median)
  printf '| %s | %s | %.1f | %.1f | %.2f (%s–%s) |\n' "$mode" "$IDLE_CONNS" \
    "$(awk -v x="$b" 'BEGIN { print x / 1024 }')" "$(awk -v x="$a" 'BEGIN { print x / 1024 }')" "$med" "$lo" "$hi"
done
