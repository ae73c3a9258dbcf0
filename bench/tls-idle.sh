#!/usr/bin/env bash
# Idle TLS cost: the server's RSS per idle connection, TLS beside plain TCP.
#   python3 bench/idle_conns.py ADDR N [--tls CA]   (N connections, each `ping` → `pong`, then silent)
# against `sensorlink server --store memory` (with --tls-cert/--tls-key from `sensorlink cert`
# for TLS). Reads the server's VmRSS from /proc/PID/status before any connection and again
# SETTLE seconds after all N have had their `pong` (handshakes done, buffers released):
# (after − before) / N = KiB per idle connection. Each run is a fresh server; plain and TLS
# alternate rep by rep. Pinned (bench/lib.sh): the server on SERVER_CPU, the holder on
# LOAD_CPU; PIN=0 unpinned. Prints a `result` row (TLS beside plain: report).
#
# N in $IDLE_CONNS (default 2000; the holder needs N file descriptors, ≤ `ulimit -Hn`);
# REPS (default 3). Loopback only; every process is stopped by PID, the holder is bounded.
source "$(dirname "$0")/lib.sh"

IDLE_CONNS=${IDLE_CONNS:-2000}
REPS=${REPS:-3}
ALTERNATED=1
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
    "${on_load[@]}" python3 bench/idle_conns.py "$addr" "$n" "${holder_tls[@]}" --hold $((n / 50 + 100))
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
: > "$tmp/plain.jsonl"
: > "$tmp/tls.jsonl"
for ((r = 1; r <= REPS; r++)); do
  if [ $((r % 2)) -eq 1 ]; then order="plain tls"; else order="tls plain"; fi
  for mode in $order; do
    read -r rss0 rss1 < <(measure "$mode" "$IDLE_CONNS")
    echo "{\"rss0\":$rss0,\"rss1\":$rss1,\"kib\":$(awk -v a="$rss0" -v b="$rss1" -v n="$IDLE_CONNS" 'BEGIN { printf "%.3f", (b - a) / n }')}" >> "$tmp/$mode.jsonl"
  done
done
echo
echo "| transport | connections | RSS before MiB | RSS idle MiB | KiB per idle connection (median of $REPS) | spread |"
echo "|---|---:|---:|---:|---:|---:|"
for mode in plain tls; do
  f=$tmp/$mode.jsonl
  printf '| %s | %s | %.1f | %.1f | %.2f | %s %% |\n' "$mode" "$IDLE_CONNS" "$(jmed "$f" '.rss0 / 1024')" \
    "$(jmed "$f" '.rss1 / 1024')" "$(jmed "$f" .kib)" "$(spread_pct "$f" .kib)"
done
footer
echo
plain=$(jmed "$tmp/plain.jsonl" .kib) tls=$(jmed "$tmp/tls.jsonl" .kib)
result tls-idle-rss "server RSS per idle connection, TLS beside plain TCP, $(num "$IDLE_CONNS") connections" \
  "$(printf '%.2f' "$tls") KiB" "plain $(printf '%.2f' "$plain") KiB" "$(ratio "$tls" "$plain")×" \
  "$(spreads "$(spread_pct "$tmp/tls.jsonl" .kib)" "$(spread_pct "$tmp/plain.jsonl" .kib)")" "report" "measured"
