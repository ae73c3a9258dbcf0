#!/usr/bin/env bash
# SQLite WAL pages written per one-reading commit: a figure the machine's noise cannot move.
#   sensorlink server --store sqlite:FRESH --fsync os
#   sensorlink bench ADDR --connections 1 --pipeline 1 --batch 1 --count N
# then the WAL's size, read while the server still runs (N stays under the 10,000-page
# autocheckpoint), gives (bytes − 32-byte header) / (4096 + 24 per frame) / N.
# BINS="A B" compares prebuilt binaries (default: this checkout's release build). Loopback only.
source "$(dirname "$0")/lib.sh"
N=${N:-3000}
bash scripts/install-bench-deps.sh jq
[ -n "${BINS:-}" ] || build
for b in ${BINS:-$bin}; do
  bin=$b
  db=$(fresh_db)
  start_ours "sqlite:$db" os
  readings=$(timeout 60 "$bin" bench "$addr" --connections 1 --pipeline 1 --batch 1 --count "$N" \
    --json --no-progress | jq -r .readings)
  wal=$(stat -c %s "$db-wal")
  stop_pid "$server_pid"
  awk -v b="$b" -v r="$readings" -v w="$wal" \
    'BEGIN { printf "%s: %d readings, WAL %d bytes, %.3f pages per commit\n", b, r, w, (w - 32) / 4120 / r }'
done
