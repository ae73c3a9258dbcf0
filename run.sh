#!/usr/bin/env bash
# Quick start: build, start the server on the embedded SQLite store, and run a client beside it.
# Extra arguments go to the client (e.g. `./run.sh --count 10 --interval 200ms`).
# Ctrl-C stops the client (it prints its summary); the server is then stopped gracefully.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --quiet
bin=target/release/sensorlink
store=${SENSORLINK_STORE:-sqlite:sensorlink.db}
listen=${SENSORLINK_LISTEN:-127.0.0.1:8889}
# The dashboard on the server's default HTTP address (SENSORLINK_HTTP=127.0.0.1:0 picks a free
# port, `off` disables it).
http=${SENSORLINK_HTTP:-127.0.0.1:9889}

"$bin" server --listen "$listen" --http "$http" --store "$store" -q > .server-addr &
server=$!
stop_server() { kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null || true; }
trap stop_server EXIT
for _ in $(seq 100); do
  grep -q '^listening on ' .server-addr 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "server failed to start" >&2; exit 2; }
  sleep 0.05
done
addr=$(sed -n 's/^listening on //p' .server-addr)
dashboard=$(sed -n 's/^http on //p' .server-addr)
rm -f .server-addr
echo "server listening on $addr, storing in $store (query it: $bin query --store $store)"
if [ -n "$dashboard" ]; then echo "dashboard: $dashboard"; fi
status=0
"$bin" client "$addr" "$@" || status=$?
exit "$status"
