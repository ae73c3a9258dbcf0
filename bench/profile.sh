#!/usr/bin/env bash
# Where the server's time goes: `perf record` (software clock: this VM exposes no hardware
# counters) on `sensorlink server` for SECONDS while `sensorlink bench` loads it, for
#   memory:  --store memory, `--connections 50 --pipeline 4096 --batch 1024` (bench/pipelined.sh)
#   sqlite:  --store sqlite --fsync always, `--connections 64 --pipeline 256 --batch 64`
#   idle:    --store memory, `--idle --connections 10000 --interval 1s --warmup 3s` (bench/capacity.sh)
#   idle-sqlite: (not in the default) the same against --store sqlite --fsync always
#   sqlite-5000x4, sqlite-100x8: (not in the default) --store sqlite --fsync always at
#            bench/influx.sh's shapes, `--connections 4 --pipeline 5000 --batch 5000` and
#            `--connections 8 --pipeline 100 --batch 100`
#   rtt:     --store memory, `--connections 1 --pipeline 1 --batch 1` (bench/roundtrip.sh)
# and prints the self time by group (parsing, allocation, store, kernel, tokio, …) and the
# top symbols. PROFILES selects (default: memory sqlite idle rtt).
#   postgres: (not in the default) a throwaway PostgreSQL (bench/lib.sh pg_start, fsync on,
#            track_wal_io_timing on), `--connections 64 --pipeline 256 --batch 64` into 1, then
#            2 collectors on one database (half the connections each). For each: the CPU split
#            (/proc/PID/stat) between the postgres processes (client backends, walwriter, …), the
#            collector(s) and the bench(es) over WINDOW_ seconds (default 4) without perf; PG's
#            own view over that window (pg_stat_wal: WAL records, bytes, writes, syncs and their
#            time; pg_stat_database: commits, rows); the collector's /metrics (commits, mean rows
#            and time per commit). With 1 collector, then `perf record` (no call graphs) of the
#            collector and of every postgres process together for SECONDS_, split by process.
# Pinned (bench/lib.sh): servers (and PostgreSQL) on SERVER_CPU; the bench and perf itself
# on LOAD_CPU, so perf's own work is not sampled on the server's core; PIN=0 unpinned.
# Raw perf.data files go to $OUT if set. Loopback only; ≈ 1.5 min (postgres: ≈ 1 min more).
source "$(dirname "$0")/lib.sh"

SECONDS_=${SECONDS_:-8}
PROFILES=${PROFILES:-"memory sqlite idle rtt"}
REPS=1
export LC_ALL=C  # sort and join agree on the order
bash scripts/install-bench-deps.sh linux-perf jq
build
ulimit -n "$(ulimit -Hn)"

# group: reads `perf report --no-children --sort dso,sym` lines (pct, dso, [k]/[.], symbol)
# and sums self time per group.
group() {
  awk '
    /^#/ || NF < 4 { next }
    {
      pct = $1; sub("%", "", pct); dso = $2; sym = ""
      for (i = 4; i <= NF; i++) sym = sym " " $i
      g = "other (sensorlink)"
      if (dso ~ /kernel/) g = "kernel (syscalls, TCP, scheduler, page faults)"
      else if (sym ~ /push_escaped|series_key/) g = "store: series keys (escaping, building)"
      else if (sym ~ /flt2dec|core::fmt/) g = "store: numbers formatted as text"
      else if (sym ~ /sha2|Sha256|sha256/) g = "store: series keys (escaping, building)"
      else if (sym ~ /tokio_postgres|postgres_protocol|postgres_types|deadpool|store::postgres/) g = "store: PostgreSQL driver, COPY encoding"
      else if (sym ~ /sqlite3|rusqlite|store::sqlite/) g = "store: SQLite"
      else if (sym ~ /store::memory|hashbrown|rustc_hash|FxHash/) g = "store: memory (hash set, vectors)"
      else if (sym ~ /store::writer/) g = "store: group-commit writer"
      else if (sym ~ /protocol::ilp|protocol::codec|protocol::legacy|protocol::control|memchr|LineDecoder|from_utf8|core::str|core::num|lexical|parse/) g = "parsing and framing (ilp, codec, UTF-8, numbers)"
      else if (sym ~ /^ ?_?mi_|mimalloc|malloc|free|realloc|alloc::|RawVec|drop_in_place|memcpy|memmove|memset|as core::clone::Clone/) g = "allocation, copies, drops (mimalloc, memcpy)"
      else if (sym ~ /tokio|mio::|parking_lot|futex|std::sync|std::thread|crossbeam|tracing::instrument/) g = "tokio runtime, channels, wake-ups"
      else if (dso ~ /sensorlink/ && sym !~ /::|</) g = "store: SQLite"  # C code linked in: SQLite itself
      else if (sym ~ /server::connection|server::listener/) g = "connection loop (server::connection)"
      else if (sym ~ /tracing|metrics/) g = "tracing, metrics"
      else if (dso !~ /sensorlink/) g = "other libraries (" dso ")"
      sum[g] += pct
    }
    END { for (g in sum) printf "%6.1f %%  %s\n", sum[g], g }' | sort -rn
}

profile() { # NAME STORE BENCH-FLAGS...
  local name=$1 store=$2
  shift 2
  start_ours "$store" always
  start_bg "$tmp/bench.json" timeout --kill-after=5 $((SECONDS_ + 60)) "${on_load[@]}" "$bin" bench "$addr" "$@" \
    --duration $((SECONDS_ + 4))s --json --no-progress
  local bench_pid=$last_pid
  # Let it settle (and, for idle, connect: 10 000 at 2000/s), then record the server only.
  case $name in idle*) sleep 8 ;; *) sleep 2 ;; esac
  timeout $((SECONDS_ + 30)) "${on_load[@]}" perf record -q -F 999 -e cpu-clock --call-graph dwarf,16384 \
    -p "$server_pid" -o "$tmp/$name.data" -- sleep "$SECONDS_" > /dev/null 2>&1 || true
  wait "$bench_pid" || true
  stop_pid "$bench_pid" 1
  stop_pid "$server_pid" 30
  echo "### $name: server $store, bench $*"
  jq -c '{readings_per_sec, errors, connections, p50: .latency_us.p50, p99: .latency_us.p99}' "$tmp/bench.json" || true
  perf report -i "$tmp/$name.data" --no-children --sort dso,sym --stdio -g none 2> /dev/null > "$tmp/$name.txt"
  echo "self time by group:"
  group < "$tmp/$name.txt"
  echo "top symbols (self):"
  grep -v '^#' "$tmp/$name.txt" | grep '%' | head -25 | cut -c1-150 || true
  echo
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp "$tmp/$name.data" "$tmp/$name.txt" "$OUT/"
  fi
}

# pg_kind PID: the postgres process's role, from its title ("postgres: walwriter", "postgres:
# sensorlink bench 127.0.0.1(…) COPY", …): client backends are the collectors' connections.
pg_kind() {
  local title
  title=$(tr '\0' ' ' < "/proc/$1/cmdline" 2> /dev/null) || { echo gone; return; }
  case $title in
    *"sensorlink bench"*) echo "client backends (COPY, INSERT … SELECT, COMMIT)" ;;
    *autovacuum*) echo "autovacuum" ;;
    postgres:\ *) title=${title#postgres: }; echo "${title%% *}" ;;
    *) echo "postmaster" ;;
  esac
}
# cpu_snapshot FILE PID...: "pid ticks kind" per process (postgres children and the named PIDs).
cpu_snapshot() {
  local out=$1 p
  shift
  : > "$out"
  for p in $(pgrep -P "$pg_pid") "$pg_pid"; do printf '%s\t%s\tpg:%s\n' "$p" "$(ticks "$p")" "$(pg_kind "$p")" >> "$out"; done
  printf 'r%s\t%s\tpg:exited (reaped by the postmaster)\n' "$pg_pid" "$(reaped "$pg_pid")" >> "$out"
  for p in "$@"; do printf '%s\t%s\t%s\n' "$p" "$(ticks "$p")" "$(cat "/proc/$p/comm" 2> /dev/null || echo gone)" >> "$out"; done
}
# pg_view DB: pg_stat_wal and pg_stat_database counters, "name value" per line.
pg_view() {
  pg_sql "$1" "SELECT 'wal_records ' || wal_records, 'wal_fpi ' || wal_fpi, 'wal_bytes ' || wal_bytes,
    'wal_buffers_full ' || wal_buffers_full, 'wal_write ' || wal_write, 'wal_sync ' || wal_sync,
    'wal_write_time_ms ' || wal_write_time, 'wal_sync_time_ms ' || wal_sync_time FROM pg_stat_wal" | tr '|' '\n'
  pg_sql "$1" "SELECT 'xact_commit ' || xact_commit, 'tup_inserted ' || tup_inserted, 'blks_read ' || blks_read
    FROM pg_stat_database WHERE datname = current_database()" | tr '|' '\n'
  pg_sql "$1" "SELECT 'checkpoints ' || (checkpoints_timed + checkpoints_req) FROM pg_stat_bgwriter"
  pg_sql "$1" "SELECT 'lsn ' || (pg_current_wal_lsn() - '0/0')"
}
# store_metrics HTTP: the collector's commit counters, "name value" per line.
store_metrics() {
  curl -fsS --max-time 5 "${1}metrics" | awk '
    /^sensorlink_store_commit_rows_(sum|count)[ {]/ { sub(/\{.*\}/, "", $1); v[$1] += $NF }
    /^sensorlink_store_commit_duration_seconds_(sum|count)[ {]/ { sub(/\{.*\}/, "", $1); v[$1] += $NF }
    /^sensorlink_readings_committed_total\{outcome="inserted"\}/ { v["inserted"] += $NF }
    END { for (k in v) print k, v[k] }'
}

# pg_group: as group, for the postgres processes' samples (PostgreSQL 15 function names).
pg_group() {
  awk '
    /^#/ || NF < 4 { next }
    {
      pct = $1; sub("%", "", pct); dso = $2; sym = $4
      g = "other (postgres)"
      if (dso ~ /kernel/) g = "kernel (WAL write + fdatasync, socket I/O, page faults, scheduler)"
      else if (sym ~ /^_bt_|^bt[a-z0-9]*cmp|^btint|^bt/) g = "B-tree (primary key insert and lookups)"
      else if (sym ~ /^XLog|^XLogInsert|^CopyXLog|^ReserveXLog|^WALInsert|^pg_comp_crc|^log_heap|^XLogRecord/) g = "WAL records (XLogInsert, CRC)"
      else if (sym ~ /hash_search|hash_bytes|^Buf|Buffer|^LWLock|^LockBuf|^PinBuffer|^Unpin/) g = "buffer manager, shared hash tables, LWLocks"
      else if (sym ~ /^heap_|^heapam|^RelationPutHeapTuple|^RelationGetBufferForTuple|^PageAdd|^toast/) g = "heap tuples (readings, staging, deltas)"
      else if (sym ~ /Copy|copy/) g = "COPY (binary input)"
      else if (sym ~ /^tuplesort|^qsort|^comparetup|^ApplySortComparator|^sort/) g = "sort (DISTINCT ON, ORDER BY)"
      else if (sym ~ /^Exec|^exec|^ExecInterp|slot_|^tts_|^Hash|^MultiExec/) g = "executor (INSERT … SELECT, joins, ON CONFLICT)"
      else if (sym ~ /yy|^raw_parser|^parse|^transform|^plan|^pg_plan|^standard_planner|^make_|^create_|^cost_|^set_|^query_/) g = "parse and plan"
      else if (sym ~ /^Memory|^palloc|^pfree|^AllocSet|malloc|free|memmove|memcpy|memset|memcmp/) g = "memory (palloc, memcpy)"
      else if (sym ~ /^Resource|^Catalog|^SearchCat|^Relation|^Lock|^LockAcquire|^LockRelease|^pgstat/) g = "catalog cache, relation locks, stats"
      else if (sym ~ /^0x/) g = "postgres, unresolved addresses"
      sum[g] += pct
    }
    END { for (g in sum) printf "%6.1f %%  %s\n", sum[g], g }' | sort -rn
}

profile_postgres() { # COLLECTORS
  local n=$1 i url window=${WINDOW_:-8} hz servers=() https=() benches=() bench_children=() flags
  hz=$(getconf CLK_TCK)
  flags="--connections $((64 / n)) --pipeline 256 --batch 64"
  url=$(pg_fresh_db "bench$n")
  for ((i = 0; i < n; i++)); do
    SERVER_OUT=$tmp/server-$i.out SERVER_HTTP=127.0.0.1:0 start_ours "$url" always
    servers+=("$server_pid")
    https+=("$http")
    # shellcheck disable=SC2086 # $flags is a list of words
    start_bg "$tmp/bench-$i.json" timeout --kill-after=5 $((SECONDS_ + window + 60)) "${on_load[@]}" "$bin" bench "$addr" $flags \
      --measurement "bench_$i" --duration "$((2 + window + 8 + (n == 1 ? SECONDS_ : 0)))s" --json --no-progress
    benches+=("$last_pid")
  done
  sleep 2
  for i in "${!benches[@]}"; do bench_children+=("$(pgrep -P "${benches[$i]}" | head -1)"); done
  # Window 1, no perf: who uses the CPU, and PG's and the collectors' own counters.
  # Each source is read twice; its own elapsed time (/proc/uptime) divides its deltas.
  local busy0 busy1 t=()
  t[0]=$(now) busy0=$(machine_busy)
  cpu_snapshot "$tmp/cpu0" "${servers[@]}" "${bench_children[@]}"
  t[1]=$(now)
  pg_view "bench$n" > "$tmp/pg0"
  t[2]=$(now)
  for i in "${!https[@]}"; do store_metrics "${https[$i]}" > "$tmp/m0-$i"; done
  t[3]=$(now)
  sleep "$window"
  t[4]=$(now) busy1=$(machine_busy)
  cpu_snapshot "$tmp/cpu1" "${servers[@]}" "${bench_children[@]}"
  t[5]=$(now)
  pg_view "bench$n" > "$tmp/pg1"
  t[6]=$(now)
  for i in "${!https[@]}"; do store_metrics "${https[$i]}" > "$tmp/m1-$i"; done
  t[7]=$(now)
  local w_machine w_cpu w_pg w_m
  w_machine=$(awk -v a="${t[0]}" -v b="${t[4]}" 'BEGIN { print b - a }')
  w_cpu=$(awk -v a="${t[0]}" -v b="${t[1]}" -v c="${t[4]}" -v d="${t[5]}" 'BEGIN { print (c + d) / 2 - (a + b) / 2 }')
  w_pg=$(awk -v a="${t[1]}" -v b="${t[2]}" -v c="${t[5]}" -v d="${t[6]}" 'BEGIN { print (c + d) / 2 - (a + b) / 2 }')
  w_m=$(awk -v a="${t[2]}" -v b="${t[3]}" -v c="${t[6]}" -v d="${t[7]}" 'BEGIN { print (c + d) / 2 - (a + b) / 2 }')
  # Window 2 (1 collector only): perf of the collector and every postgres process at once.
  local pids
  pids=$(pgrep -P "$pg_pid" | paste -sd, -)
  if [ "$n" -eq 1 ]; then
    timeout $((SECONDS_ + 30)) "${on_load[@]}" perf record -q -F 999 -e cpu-clock -p "${servers[0]},$pg_pid,$pids" \
      -o "$tmp/postgres.data" -- sleep "$SECONDS_" > /dev/null 2>&1 || true
  fi
  for i in "${!benches[@]}"; do
    wait "${benches[$i]}" || true
    stop_pid "${benches[$i]}" 1
  done
  for i in "${!servers[@]}"; do stop_pid "${servers[$i]}" 30; done

  echo "### postgres x$n: $n collector(s) on one database, each loaded by \`sensorlink bench $flags\`"
  for i in "${!benches[@]}"; do
    jq -c '{readings_per_sec, errors, connections, p50: .latency_us.p50, p99: .latency_us.p99}' "$tmp/bench-$i.json" || true
  done
  echo "CPU over ${w_cpu} s (cores; /proc/PID/stat utime+stime, no perf running):"
  join -t "$(printf '\t')" -a 2 -e 0 -o 0,1.2,2.2,2.3 <(sort "$tmp/cpu0") <(sort "$tmp/cpu1") | awk -F '\t' -v hz="$hz" -v w="$w_cpu" \
    -v n="$n" -v servers="${servers[*]}" -v benches="${bench_children[*]}" '
    BEGIN { split(servers, s, " "); for (i in s) role[s[i]] = "collector" ; split(benches, b, " "); for (i in b) role[b[i]] = "bench" }
    {
      d = ($3 - $2) / hz / w; kind = $4
      if ($1 in role) kind = role[$1] (n > 1 ? "s" : "") " (" kind ")"
      else sub(/^pg:/, "postgres: ", kind)
      c[kind] += d; total += d
      if (kind ~ /^postgres/) pg += d
    }
    END {
      for (k in c) printf "  %5.2f  %s\n", c[k], k
      printf "  %5.2f  postgres, all processes\n  %5.2f  all of the above\n", pg, total
    }' | sort -rn
  echo "$busy0 $busy1" | awk -v hz="$hz" -v w="$w_machine" '{ printf "  %5.2f  the whole machine (/proc/stat: every process, other work included; %.2f more stolen by the hypervisor)\n", ($3 - $1) / hz / w, ($4 - $2) / hz / w }'
  echo "the collectors' /metrics over ${w_m} s, PostgreSQL's view over ${w_pg} s (its statistics reach the views up to ~1 s late):"
  local inserted=0 per
  for i in "${!https[@]}"; do
    join <(sort "$tmp/m0-$i") <(sort "$tmp/m1-$i") | awk -v w="$w_m" -v i="$i" '{ d[$1] = $3 - $2 } END {
      c = d["sensorlink_store_commit_rows_count"]
      printf "%.0f  collector %d: %.0f readings inserted/s (sensorlink_readings_committed_total); %.0f batches answered/s, %.0f readings and %.1f ms each (sensorlink_store_commit_rows, _duration_seconds: the PostgreSQL store counts a batch, not a transaction)\n", d["inserted"] / w, i, d["inserted"] / w, c / w, (c > 0 ? d["sensorlink_store_commit_rows_sum"] / c : 0), (c > 0 ? 1000 * d["sensorlink_store_commit_duration_seconds_sum"] / c : 0)
    }' > "$tmp/per"
    per=$(cut -d' ' -f1 "$tmp/per")
    inserted=$(awk -v a="$inserted" -v b="$per" 'BEGIN { print a + b }')
    sed 's/^[^ ]*//' "$tmp/per"
  done
  join <(sort "$tmp/pg0") <(sort "$tmp/pg1") | awk -v w="$w_pg" -v ins="$inserted" '{ d[$1] = $3 - $2 } END {
    printf "  transactions %.0f/s (xact_commit, upkeep included), readings per transaction %.0f (inserted ÷ xact_commit); rows inserted %.0f/s (tup_inserted: readings + staging + totals rows)\n", d["xact_commit"] / w, (d["xact_commit"] > 0 ? ins * w / d["xact_commit"] : 0), d["tup_inserted"] / w
    printf "  WAL (pg_current_wal_lsn: %.0f bytes per reading): %.0f records/s, %.1f MB/s, %.0f full-page images/s, %.0f writes/s, %.0f syncs/s, buffers full %.0f/s, checkpoints %d\n", (ins > 0 ? d["lsn"] / w / ins : 0), d["wal_records"] / w, d["lsn"] / w / 1e6, d["wal_fpi"] / w, d["wal_write"] / w, d["wal_sync"] / w, d["wal_buffers_full"] / w, d["checkpoints"]
    if (d["wal_sync"] > 0) printf "  WAL sync time: %.0f ms per s of wall time (%.2f ms per sync); write time %.0f ms per s\n", d["wal_sync_time_ms"] / w, d["wal_sync_time_ms"] / d["wal_sync"], d["wal_write_time_ms"] / w
  }'
  if [ "$n" -eq 1 ]; then
    echo "perf ${SECONDS_} s (self time, no call graphs), share of all samples by process:"
    perf report -i "$tmp/postgres.data" --no-children --sort comm --stdio 2> /dev/null | grep '%' | grep -v '^#' | head -8
    echo "collector: self time by group (share of the collector's samples)"
    perf report -i "$tmp/postgres.data" --no-children --pid "${servers[0]}" --percentage relative --sort dso,sym --stdio -g none 2> /dev/null > "$tmp/pg-collector.txt"
    group < "$tmp/pg-collector.txt"
    echo "collector: top symbols"
    grep -v '^#' "$tmp/pg-collector.txt" | grep '%' | head -15 | cut -c1-150 || true
    perf report -i "$tmp/postgres.data" --no-children --comms postgres --percentage relative --sort dso,sym --stdio -g none 2> /dev/null > "$tmp/pg-postgres.txt"
    echo "postgres processes: self time by group (share of postgres's samples)"
    pg_group < "$tmp/pg-postgres.txt"
    echo "postgres processes: top symbols"
    grep -v '^#' "$tmp/pg-postgres.txt" | grep '%' | head -25 | cut -c1-150 || true
    if [ -n "${OUT:-}" ]; then
      mkdir -p "$OUT"
      cp "$tmp/postgres.data" "$tmp/pg-collector.txt" "$tmp/pg-postgres.txt" "$OUT/"
    fi
  fi
  echo
}

header
echo "perf $(perf --version | awk '{print $3}'), -e cpu-clock -F 999 --call-graph dwarf, server PID only, ${SECONDS_}s each (postgres: no call graphs, collector and postgres PIDs)"
echo
for p in $PROFILES; do
  case $p in
    memory) profile memory memory --connections 50 --pipeline 4096 --batch 1024 ;;
    sqlite) profile sqlite "sqlite:$(fresh_db)" --connections 64 --pipeline 256 --batch 64 ;;
    idle) profile idle memory --idle --connections 10000 --interval 1s --source-ips 8 --warmup 3s ;;
    sqlite-5000x4) profile sqlite-5000x4 "sqlite:$(fresh_db)" --connections 4 --pipeline 5000 --batch 5000 ;;
    sqlite-100x8) profile sqlite-100x8 "sqlite:$(fresh_db)" --connections 8 --pipeline 100 --batch 100 ;;
    idle-sqlite) profile idle-sqlite "sqlite:$(fresh_db)" --idle --connections 10000 --interval 1s --source-ips 8 --warmup 3s ;;
    rtt) profile rtt memory --connections 1 --pipeline 1 --batch 1 ;;
    postgres)
      bash scripts/install-test-deps.sh postgresql
      bash scripts/install-bench-deps.sh curl
      pg_start -c track_wal_io_timing=on
      echo "PostgreSQL: $(pg_settings), track_wal_io_timing=on"
      profile_postgres 1
      profile_postgres 2
      pg_stop
      ;;
  esac
done
