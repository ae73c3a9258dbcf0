#!/usr/bin/env bash
# The seed's exchange against the seed's design: `sensorlink bench --legacy --connections N`
# (one `ping / ('<time>', <n>)` in flight per connection, each answered by `pong`) against
#   ours:      `sensorlink server` with --store memory, and with SQLite --fsync always
#              (a `pong` only after the reading is committed)
#   baseline:  bench/seed_server.py: thread per connection, listen(5), `pong` for every
#              recv(1024), `Received: …` printed per message (as the seed did; stdout to a
#              file); it stores nothing. For information, also with --quiet at 64 connections.
# N in $CONNS (default 1 64 512); alternated in one sitting, REPS (default 3) reps of
# DURATION seconds (default 5). Prints medians: readings/s, p50/p99 per exchange, and how
# many connections were established. Loopback only; ≈ 4 min (512 connections to the seed
# design wait up to 10 s for connects that never complete).
# Pinned (bench/lib.sh): every server (ours, seed_server.py) on SERVER_CPU, the bench on
# LOAD_CPU; PIN=0 unpinned. Prints `result` rows: ours (SQLite fsync=always, and memory) ÷
# the seed design at 64 connections (or the largest N below it), target: report.
source "$(dirname "$0")/lib.sh"
ALTERNATED=1

DURATION=${DURATION:-5}
REPS=${REPS:-3}
CONNS=${CONNS:-"1 64 512"}
bash scripts/install-bench-deps.sh python3 jq
build
# 512 connections: the bench and each server need a descriptor per connection.
ulimit -n "$(ulimit -Hn)"

# run SIDE N: one measured run; appends its JSON to $tmp/SIDE-N.jsonl.
run() {
  local side=$1 n=$2
  case $side in
    memory) start_ours memory always ;;
    sqlite) start_ours "sqlite:$(fresh_db)" always ;;
    python | python-quiet)
      local flags=()
      [ "$side" = python-quiet ] && flags=(--quiet)
      start_bg "$tmp/server.out" "${on_server[@]}" python3 bench/seed_server.py 0 "${flags[@]+"${flags[@]}"}"
      server_pid=$last_pid
      addr=
      for _ in $(seq 100); do
        addr=$(sed -n 's/^listening on //p' "$tmp/server.out" | head -1)
        [ -n "$addr" ] && break
        sleep 0.05
      done
      [ -n "$addr" ] || { echo "seed_server.py did not start" >&2; exit 2; }
      ;;
  esac
  ours_bench "$tmp/run.json" $((DURATION + 40)) "$addr" --legacy --connections "$n" \
    --duration "${DURATION}s" 2> "$tmp/bench.err"
  stop_pid "$server_pid"
  cat "$tmp/run.json" >> "$tmp/$side-$n.jsonl"
  keep "$tmp/run.json" "seed-$side-$n-$rep.json"
}

header
echo "seed_server.py prints Received: per message; ulimit -n $(ulimit -n)"
for rep in $(seq "$REPS"); do
  for n in $CONNS; do
    if [ $((rep % 2)) -eq 1 ]; then sides="memory sqlite python"; else sides="python sqlite memory"; fi
    for side in $sides; do run "$side" "$n"; done
    if [ "$n" = 64 ]; then run python-quiet 64; fi
  done
done

echo
echo "| connections | server | established | readings/s | spread | p50 µs | p99 µs | errors | readings/s ÷ seed design |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
for n in $CONNS; do
  base=$(jmed "$tmp/python-$n.jsonl" .readings_per_sec)
  for side in memory sqlite python python-quiet; do
    f="$tmp/$side-$n.jsonl"
    [ -s "$f" ] || continue
    case $side in
      memory) name="sensorlink, memory" ;;
      sqlite) name="sensorlink, SQLite fsync=always" ;;
      python) name="seed design (Python)" ;;
      python-quiet) name="seed design, --quiet (no Received: print)" ;;
    esac
    r=$(jmed "$f" .readings_per_sec)
    echo "| $n | $name | $(int "$(jmed "$f" .connections)") | $(num "$r") | $(spread_pct "$f" .readings_per_sec) % | $(int "$(jmed "$f" .latency_us.p50)") | $(int "$(jmed "$f" .latency_us.p99)") | $(int "$(jmed "$f" .errors)") | $(ratio "$r" "$base")× |"
  done
done
echo
echo "(established, errors: medians over the reps; errors are mostly connects that timed out after 10 s)"
footer
echo
# The seed comparison's row at 64 connections (the seed design's own shape), else the largest N.
n=
for c in $CONNS; do [ "$c" -le 64 ] && n=$c; done
[ -n "$n" ] || n=${CONNS%% *}
base=$(jmed "$tmp/python-$n.jsonl" .readings_per_sec) sbase=$(spread_pct "$tmp/python-$n.jsonl" .readings_per_sec)
for side in sqlite memory; do
  f=$tmp/$side-$n.jsonl
  r=$(jmed "$f" .readings_per_sec) sr=$(spread_pct "$f" .readings_per_sec)
  label="SQLite --fsync always (a pong only after commit)"
  [ "$side" = memory ] && label="memory store"
  result "seed-$side-$n" "the seed's exchange (\`bench --legacy\`), $n connections, ours $label ÷ the seed's design (seed_server.py)" \
    "$(num "$r") readings/s" "seed design $(num "$base") readings/s" "$(ratio "$r" "$base")×" "$(spreads "$sr" "$sbase")" "report" "measured"
done

