#!/usr/bin/env bash
# Where the server's time goes: `perf record` (software clock: this VM exposes no hardware
# counters) on `sensorlink server` for SECONDS while `sensorlink bench` loads it, for
#   memory:  --store memory, `--connections 50 --pipeline 4096 --batch 1024` (bench/pipelined.sh)
#   sqlite:  --store sqlite --fsync always, `--connections 64 --pipeline 256 --batch 64`
#   idle:    --store memory, `--idle --connections 10000 --interval 1s --warmup 3s` (bench/capacity.sh)
#   rtt:     --store memory, `--connections 1 --pipeline 1 --batch 1` (bench/roundtrip.sh)
# and prints the self time by group (parsing, allocation, store, kernel, tokio, …) and the
# top symbols. PROFILES selects (default: memory sqlite idle rtt). Raw perf.data files go to
# $OUT if set. Loopback only; ≈ 1.5 min.
source "$(dirname "$0")/lib.sh"

SECONDS_=${SECONDS_:-8}
PROFILES=${PROFILES:-"memory sqlite idle rtt"}
REPS=1
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
  start_bg "$tmp/bench.json" timeout --kill-after=5 $((SECONDS_ + 60)) "$bin" bench "$addr" "$@" \
    --duration $((SECONDS_ + 4))s --json --no-progress
  local bench_pid=$last_pid
  # Let it settle (and, for idle, connect: 10 000 at 2000/s), then record the server only.
  case $name in idle) sleep 8 ;; *) sleep 2 ;; esac
  timeout $((SECONDS_ + 30)) perf record -q -F 999 -e cpu-clock --call-graph dwarf,16384 \
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

header
echo "perf $(perf --version | awk '{print $3}'), -e cpu-clock -F 999 --call-graph dwarf, server PID only, ${SECONDS_}s each"
echo
for p in $PROFILES; do
  case $p in
    memory) profile memory memory --connections 50 --pipeline 4096 --batch 1024 ;;
    sqlite) profile sqlite "sqlite:$(fresh_db)" --connections 64 --pipeline 256 --batch 64 ;;
    idle) profile idle memory --idle --connections 10000 --interval 1s --source-ips 8 --warmup 3s ;;
    rtt) profile rtt memory --connections 1 --pipeline 1 --batch 1 ;;
  esac
done
