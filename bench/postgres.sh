#!/usr/bin/env bash
# Durable ingest into PostgreSQL with 1 and 2 collectors, beside SQLite, in one sitting (issue 12).
# Sides, alternated rep by rep (the order flips every rep), each run on a fresh database:
#   sqlite: one `sensorlink server --store sqlite:PATH --fsync always` (the reference);
#   pg x1:  one `sensorlink server --store postgres://… --fsync always` (synchronous_commit on);
#   pg x2:  two such servers on the same database, the load split over both: two
#           `sensorlink bench` processes at once, half the connections each (measurements
#           bench_a and bench_b, so their series never collide); readings/s summed.
# PostgreSQL is a throwaway cluster made here (bench/lib.sh pg_start: Debian initdb, as the
# `postgres` user when root), fsync on, every setting at its default; it serves every PG run,
# each on a fresh database followed by CHECKPOINT.
# Shapes (SHAPES, default "pipelined rtt big"), per side (the x2 side: half on each collector):
#   pipelined: --connections 64 --pipeline 256 --batch 64
#   rtt:       --connections 1 --pipeline 1 --batch 1   (x2: one connection to each collector)
#   big:       --connections 4 --pipeline 5000 --batch 5000
# REPS (default 3) runs of DURATION (default 5s) per cell; prints a Markdown table of medians,
# the spread (min–max; a cell whose spread exceeds 15 % of its median is flagged noisy), the
# ratio to SQLite (of the medians, and paired with the SQLite run of the same rep), the CPU per
# reading of the collector(s) and of PostgreSQL and what the rest of the machine used (/proc),
# the machine, the PostgreSQL settings and the exact commands. After each PG run the rows
# stored are counted: acked ≤ stored ≤ acked + unacked (nothing acknowledged is lost, nothing
# stored twice). Raw JSON reports go to $OUT if set (RUNS=$OUT/runs.json prints the table again
# without measuring). Loopback only; every run bounded by `timeout`; about 3.5 min.
# Pinned (bench/lib.sh): PostgreSQL (every process of the cluster) and the collector(s) share
# the server core SERVER_CPU, as the SQLite side's collector (with SQLite inside it) has it
# alone; the bench(es) on LOAD_CPU. PIN=0 unpinned. Prints `result` rows pg-vs-sqlite and
# pg2-vs-sqlite (the pipelined shape; other shapes: pg-vs-sqlite-SHAPE …), target: report.
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-5s}
REPS=${REPS:-3}
SHAPES=${SHAPES:-"pipelined rtt big"}
ALTERNATED=1
if [ -z "${RUNS:-}" ]; then
  bash scripts/install-test-deps.sh postgresql
  bash scripts/install-bench-deps.sh jq
  build
fi
limit=$(($(awk -v d="${DURATION%s}" 'BEGIN { printf "%d", d + 0.999 }') + 60))
export CMDLOG=$tmp/commands.txt
: > "$CMDLOG"

# shape NAME: sets $flags1 (one collector) and $flags2 (each of two collectors).
shape() {
  case $1 in
    pipelined) flags1="--connections 64 --pipeline 256 --batch 64" flags2="--connections 32 --pipeline 256 --batch 64" ;;
    rtt) flags1="--connections 1 --pipeline 1 --batch 1" flags2=$flags1 ;;
    big) flags1="--connections 4 --pipeline 5000 --batch 5000" flags2="--connections 2 --pipeline 5000 --batch 5000" ;;
    *) echo "unknown shape $1 (pipelined rtt big)" >&2; exit 2 ;;
  esac
}

# pg_stored DB: rows in the readings table.
pg_stored() { pg_sql "$1" "SELECT count(*) FROM sensorlink_readings"; }

# snap PID...: "uptime machine-busy steal collector-ticks postgres-ticks", the PIDs' ticks summed.
snap() {
  local p c=0
  for p in "$@"; do c=$((c + $(ticks "$p"))); done
  echo "$(now) $(machine_busy) $c $(pg_ticks)"
}
# cpu_json SNAP0 SNAP1: the run's CPU in seconds: collector(s), postgres, the whole machine, and
# the wall time between the snapshots.
cpu_json() {
  echo "$1 $2" | awk -v hz="$(getconf CLK_TCK)" '{
    printf "{\"wall\": %.3f, \"collector\": %.3f, \"postgres\": %.3f, \"machine\": %.3f}\n", $6 - $1, ($9 - $4) / hz, ($10 - $5) / hz, ($7 - $2) / hz }'
}

# run SIDE SHAPE REP: one run; appends one JSON line to $tmp/runs.json.
run() {
  local side=$1 shname=$2 rep=$3 a=$tmp/a.json b=$tmp/b.json url stored=null sa sb pa pb s0 s1
  shape "$shname"
  case $side in
    sqlite)
      start_ours "sqlite:$(fresh_db)" always
      s0=$(snap "$server_pid")
      # shellcheck disable=SC2086 # $flags1 is a list of words
      ours_bench "$a" "$limit" "$addr" $flags1 --duration "$DURATION"
      s1=$(snap "$server_pid")
      stop_pid "$server_pid" 30
      jq -c --arg side "$side" --arg shape "$shname" --argjson rep "$rep" --argjson cpu "$(cpu_json "$s0" "$s1")" \
        '{side: $side, shape: $shape, rep: $rep, rate: .readings_per_sec, p50: .latency_us.p50,
          p99: .latency_us.p99, errors, acked: .readings, unacked, stored: null, cpu: $cpu}' "$a" >> "$tmp/runs.json"
      keep "$a" "$side-$shname-$rep.json"
      ;;
    pg1)
      url=$(pg_fresh_db bench)
      start_ours "$url" always
      s0=$(snap "$server_pid")
      # shellcheck disable=SC2086
      ours_bench "$a" "$limit" "$addr" $flags1 --duration "$DURATION"
      s1=$(snap "$server_pid")
      stop_pid "$server_pid" 30
      stored=$(pg_stored bench)
      jq -c --arg side "$side" --arg shape "$shname" --argjson rep "$rep" --argjson stored "$stored" --argjson cpu "$(cpu_json "$s0" "$s1")" \
        '{side: $side, shape: $shape, rep: $rep, rate: .readings_per_sec, p50: .latency_us.p50,
          p99: .latency_us.p99, errors, acked: .readings, unacked, stored: $stored, cpu: $cpu}' "$a" >> "$tmp/runs.json"
      keep "$a" "$side-$shname-$rep.json"
      ;;
    pg2)
      url=$(pg_fresh_db bench)
      SERVER_OUT=$tmp/server-a.out start_ours "$url" always
      sa=$server_pid pa=$addr
      SERVER_OUT=$tmp/server-b.out start_ours "$url" always
      sb=$server_pid pb=$addr
      # Both benches at once, each to its own collector.
      # shellcheck disable=SC2086
      cmdlog "${on_load[@]}" "$bin" bench "$pa" $flags2 --measurement bench_a --duration "$DURATION" --json --no-progress
      # shellcheck disable=SC2086
      cmdlog "${on_load[@]}" "$bin" bench "$pb" $flags2 --measurement bench_b --duration "$DURATION" --json --no-progress
      CMDLOG='' start_bg "$tmp/bench-a.err" "${on_load[@]}" sh -c 'timeout --kill-after=5 "$1" "$2" bench "$3" '"$flags2"' --measurement bench_a --duration "$4" --json --no-progress > "$5" || [ $? -eq 1 ]' \
        sh "$limit" "$bin" "$pa" "$DURATION" "$a"
      local ba=$last_pid
      CMDLOG='' start_bg "$tmp/bench-b.err" "${on_load[@]}" sh -c 'timeout --kill-after=5 "$1" "$2" bench "$3" '"$flags2"' --measurement bench_b --duration "$4" --json --no-progress > "$5" || [ $? -eq 1 ]' \
        sh "$limit" "$bin" "$pb" "$DURATION" "$b"
      local bb=$last_pid
      s0=$(snap "$sa" "$sb")
      wait "$ba" || { cat "$tmp/bench-a.err" >&2; exit 2; }
      wait "$bb" || { cat "$tmp/bench-b.err" >&2; exit 2; }
      s1=$(snap "$sa" "$sb")
      stop_pid "$ba" 1
      stop_pid "$bb" 1
      stop_pid "$sa" 30
      stop_pid "$sb" 30
      stored=$(pg_stored bench)
      jq -c -s --arg side "$side" --arg shape "$shname" --argjson rep "$rep" --argjson stored "$stored" --argjson cpu "$(cpu_json "$s0" "$s1")" \
        '{side: $side, shape: $shape, rep: $rep, rate: (map(.readings_per_sec) | add),
          rates: map(.readings_per_sec), p50s: map(.latency_us.p50), p99s: map(.latency_us.p99),
          p50: (map(.latency_us.p50) | max), p99: (map(.latency_us.p99) | max),
          errors: (map(.errors) | add), acked: (map(.readings) | add), unacked: (map(.unacked) | add),
          stored: $stored, cpu: $cpu}' "$a" "$b" >> "$tmp/runs.json"
      keep "$a" "$side-$shname-$rep-a.json"
      keep "$b" "$side-$shname-$rep-b.json"
      ;;
  esac
}

if [ -n "${RUNS:-}" ]; then
  # Only the table again, from a previous run's $OUT/runs.json.
  cp "$RUNS" "$tmp/runs.json"
  echo "(table printed again from $RUNS)"
else
  pg_start
  settings=$(pg_settings)
  echo "## PostgreSQL store: 1 and 2 collectors beside SQLite, one sitting (bench/postgres.sh)"
  echo
  header
  echo "PostgreSQL: $settings"
  [ "$PIN" = 1 ] && echo "PostgreSQL (all its processes) and the collector(s) on core $SERVER_CPU, the bench(es) on core $LOAD_CPU"
  echo "collectors: --fsync always, --pg-pool-size default ($(grep -o 'DEFAULT_POOL_SIZE: usize = [0-9]*' src/store/postgres.rs | grep -o '[0-9]*$') transactions in flight each); database, WAL and SQLite file on $(df -T "$tmp" | awk 'NR == 2 { print $2 " (" $1 ")" }')"
  echo "each cell: median of $REPS runs of $DURATION, a fresh server (servers) and database per run; latency: sync write -> ack, µs"
  echo

  : > "$tmp/runs.json"
  for shname in $SHAPES; do
    shape "$shname"
    for rep in $(seq "$REPS"); do
      if [ $((rep % 2)) -eq 1 ]; then order="sqlite pg1 pg2"; else order="pg2 pg1 sqlite"; fi
      for side in $order; do
        run "$side" "$shname" "$rep"
      done
    done
  done
fi

# The table: one row per shape × side.
echo "| shape | side | connections | readings/s | spread (min–max) | | ÷ SQLite | ÷ SQLite, same rep (min–max) | per collector readings/s | p50 ack µs | p99 ack µs | collector CPU µs/reading | postgres CPU µs/reading | rest of the machine, cores | errors | stored − acked |"
echo "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for shname in $SHAPES; do
  shape "$shname"
  ref=$(jq -r "select(.shape == \"$shname\" and .side == \"sqlite\") | .rate" "$tmp/runs.json" | median)
  for side in sqlite pg1 pg2; do
    sel="select(.shape == \"$shname\" and .side == \"$side\")"
    f=$tmp/cell.json
    jq -c "$sel" "$tmp/runs.json" > "$f"
    rate=$(jmed "$f" .rate)
    lo=$(jq -r .rate "$f" | sort -g | head -1)
    hi=$(jq -r .rate "$f" | sort -g | tail -1)
    pct=$(awk -v lo="$lo" -v hi="$hi" -v m="$rate" 'BEGIN { printf "%.0f", (m > 0 ? 100 * (hi - lo) / m : 0) }')
    noisy=$(awk -v p="$pct" -v n="$NOISY_PCT" 'BEGIN { if (p > n) print "**noisy** (" p " %)"; else print p " %" }')
    errors=$(jq -s 'map(.errors) | add' "$f")
    # Paired: each rep's rate over the SQLite rate of the same rep (run next to it), so that
    # a slower or faster stretch of the shared machine cancels out of the ratio.
    paired=$(jq -rs --arg shape "$shname" --arg side "$side" '
      (map(select(.shape == $shape and .side == "sqlite")) | map({key: (.rep | tostring), value: .rate}) | from_entries) as $ref
      | map(select(.shape == $shape and .side == $side) | .rate / $ref[.rep | tostring]) | .[]' "$tmp/runs.json")
    paired="$(echo "$paired" | median | xargs printf '%.2f') ($(echo "$paired" | sort -g | head -1 | xargs printf '%.2f')–$(echo "$paired" | sort -g | tail -1 | xargs printf '%.2f'))"
    case $side in
      sqlite) name="SQLite fsync=always, 1 collector" conns=$(echo "$flags1" | awk '{ print $2 }') ;;
      pg1) name="PostgreSQL, 1 collector" conns=$(echo "$flags1" | awk '{ print $2 }') ;;
      pg2) name="PostgreSQL, 2 collectors" conns="$(echo "$flags2" | awk '{ print $2 }') + $(echo "$flags2" | awk '{ print $2 }')" ;;
    esac
    if [ "$side" = pg2 ]; then
      each="$(int "$(jmed "$f" '.rates[0]')") + $(int "$(jmed "$f" '.rates[1]')")"
      p50="$(int "$(jmed "$f" '.p50s[0]')") / $(int "$(jmed "$f" '.p50s[1]')")"
      p99="$(int "$(jmed "$f" '.p99s[0]')") / $(int "$(jmed "$f" '.p99s[1]')")"
    else
      each=
      p50=$(int "$(jmed "$f" .p50)")
      p99=$(int "$(jmed "$f" .p99)")
    fi
    coll_us=$(us "$(jmed "$f" '.cpu.collector / .acked * 1e6')")
    pg_us=$(us "$(jmed "$f" '.cpu.postgres / .acked * 1e6')")
    rest=$(jmed "$f" '(.cpu.machine - .cpu.collector - .cpu.postgres) / .cpu.wall' | xargs printf '%.2f')
    if [ "$side" = sqlite ]; then
      pg_us="–"
      paired="–"
      stored="(not counted)"
    else
      # Each run: stored − acked, which must lie in [0, unacked]: nothing acked is missing,
      # nothing stored twice or out of nowhere.
      stored=$(jq -r '"+\(.stored - .acked)\(if .stored >= .acked and .stored <= .acked + .unacked then "" else " **!**" end)"' "$f" | paste -sd' ' -)
    fi
    echo "| $shname \`$flags1\` | $name | $conns | $(int "$rate") | $(int "$lo")–$(int "$hi") | $noisy | $(ratio "$rate" "$ref") | $paired | $each | $p50 | $p99 | $coll_us | $pg_us | $rest | $errors | $stored |"
  done
done
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "CPU: utime + stime from /proc over the bench run (collector: its process, both for x2; postgres: the postmaster, its children and the children it reaped), per reading acked; rest of the machine: /proc/stat busy time minus those two, in cores: the bench(es) and any other work on this shared machine."
echo "÷ SQLite: ratio of the medians; same rep: the median (and range) of each rep's ratio to the SQLite run of that rep, which ran beside it."
echo "x2 rows: readings/s is the sum of the two benches' (run at once); p50/p99 are each bench's median."
echo "stored − acked: rows in the database after the run minus readings acked, per run; the rest were written but their ack not read before the bench stopped (its \"unacked\"); **!** marks a run where stored < acked (a loss) or stored > acked + unacked (more rows than readings sent)."
echo
echo "commands (TMP = this run's temp dir, PORT = a free loopback port):"
echo '```'
[ -n "${RUNS:-}" ] || sed -e "s|$tmp|TMP|g" -e 's|127\.0\.0\.1:[0-9][0-9]*|127.0.0.1:PORT|g' -e "s|-p $pg_port|-p PORT|" "$CMDLOG" | awk '!seen[$0]++'
echo "then per PG run: psql -c 'DROP DATABASE IF EXISTS bench' -c 'CREATE DATABASE bench' -c CHECKPOINT; after it: SELECT count(*) FROM sensorlink_readings"
echo '```'
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$tmp/runs.json" "$OUT/runs.json"
fi
pg_stop
echo
for shname in $SHAPES; do
  shape "$shname"
  jq -c "select(.shape == \"$shname\" and .side == \"sqlite\")" "$tmp/runs.json" > "$tmp/ref.json"
  ref=$(jmed "$tmp/ref.json" .rate) sref=$(spread_pct "$tmp/ref.json" .rate)
  for side in pg1 pg2; do
    jq -c "select(.shape == \"$shname\" and .side == \"$side\")" "$tmp/runs.json" > "$tmp/cell.json"
    rate=$(jmed "$tmp/cell.json" .rate) srate=$(spread_pct "$tmp/cell.json" .rate)
    key=pg-vs-sqlite what="PostgreSQL store, 1 collector"
    [ "$side" = pg2 ] && key=pg2-vs-sqlite what="PostgreSQL store, 2 collectors on one database"
    [ "$shname" = pipelined ] || key=$key-$shname
    result "$key" "$what ÷ SQLite --fsync always, \`$flags1\`" "$(num "$rate") readings/s" \
      "SQLite $(num "$ref") readings/s" "$(pct "$rate" "$ref")" "$(spreads "$srate" "$sref")" "report" "measured"
  done
done
