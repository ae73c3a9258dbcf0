# shellcheck shell=bash
# Shared by the side-by-side benchmarks (bench/*.sh); sourced, not run.
#
# Every process a script starts in the background is recorded by PID and stopped by that PID
# (TERM, then KILL) when it is done with or when the script exits; nothing is ever stopped
# by name. Every client run is wrapped in `timeout`. All traffic is on 127.0.0.0/8.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# SENSORLINK_BIN=PATH runs a prebuilt binary (e.g. an older commit's, for a before/after
# comparison in one sitting) instead of building this checkout.
bin=${SENSORLINK_BIN:-target/release/sensorlink}
tmp=$(mktemp -d /tmp/sensorlink-bench.XXXXXX)
bg_pids=()

cleanup() {
  local pid
  # A throwaway PostgreSQL first, by immediate shutdown (SIGQUIT, as tests/support/pg_cluster.rs
  # drops one): its backends go with it, before its data dir is removed below.
  if [ -n "${pg_pid:-}" ] && kill -QUIT "$pg_pid" 2>/dev/null; then
    for ((pid = 0; pid < 100; pid++)); do kill -0 "$pg_pid" 2>/dev/null || break; sleep 0.05; done
  fi
  for pid in "${bg_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  sleep 0.2
  for pid in "${bg_pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Pinning (issue 13). On 2 shared cores the scheduler decides a side-by-side ratio as much as
# the code does, so by default every server under test (ours and every reference alike) runs
# on core SERVER_CPU and its load generator on core LOAD_CPU, through `taskset`; PIN=0 runs
# both unpinned, for comparison. Scripts start servers with "${on_server[@]}" CMD and load
# generators with "${on_load[@]}" CMD (empty when unpinned); taskset execs, so a recorded
# PID is the program's own. start_ours and ours_bench below pin by themselves.
PIN=${PIN:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
on_server=()
on_load=()
if [ "$PIN" = 1 ]; then
  if [ "$(nproc)" -lt 2 ]; then
    echo "PIN=1 needs 2 cores (nproc: $(nproc)); PIN=0 runs unpinned" >&2
    exit 2
  fi
  on_server=(taskset -c "$SERVER_CPU")
  on_load=(taskset -c "$LOAD_CPU")
fi

# pinning: one line saying where the server and the load ran.
pinning() {
  if [ "$PIN" = 1 ]; then
    echo "pinned: server on core $SERVER_CPU, load generator on core $LOAD_CPU (taskset)"
  else
    echo "unpinned (PIN=0): servers and load generators share the $(nproc) cores as the scheduler decides"
  fi
}

# build: the release binary, quietly (skipped when SENSORLINK_BIN names one).
build() {
  [ -n "${SENSORLINK_BIN:-}" ] && return 0
  cargo build --release --quiet
}

# start_bg OUTFILE CMD...: start CMD in the background with stdout+stderr to OUTFILE; sets
# $last_pid and records it for the exit trap.
start_bg() {
  local out=$1
  shift
  # Emptied here, not only by the child's redirection: a caller may read OUTFILE at once
  # and must not see what a previous process left there.
  : > "$out"
  cmdlog "$@"
  "$@" > "$out" 2>&1 &
  last_pid=$!
  bg_pids+=("$last_pid")
}

# cmdlog CMD...: with CMDLOG=FILE set, appends the command line to FILE (a script prints the
# exact commands it ran from there).
cmdlog() {
  if [ -n "${CMDLOG:-}" ]; then printf '%s\n' "$*" >> "$CMDLOG"; fi
}

# stop_pid PID [GRACE_SECONDS]: TERM, wait up to GRACE (default 10), then KILL; reaps it and
# forgets it.
stop_pid() {
  local pid=$1 grace=${2:-10} i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 20; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local kept=() p
  for p in "${bg_pids[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
  bg_pids=("${kept[@]+"${kept[@]}"}")
}

# start_ours STORE FSYNC [SERVER FLAGS...]: a fresh `sensorlink server` on a free loopback
# port; sets $server_pid and $addr (127.0.0.1:PORT). `--http off`: the measured server does
# no HTTP work (and never collides on the default HTTP port). The load comes from a few
# loopback addresses, so the per-address share and connect rate are lifted; and the reading
# quotas (rate, new series) too, so a benchmark measures the pipeline, not the limits.
# SERVER_OUT=FILE (default $tmp/server.out) keeps its output apart when several run at once;
# SERVER_HTTP=127.0.0.1:0 serves /metrics (for a profile) and sets $http to its address.
start_ours() {
  local store=$1 fsync=$2 out=${SERVER_OUT:-$tmp/server.out} i
  shift 2
  start_bg "$out" "${on_server[@]}" "$bin" server --listen 127.0.0.1:0 --http "${SERVER_HTTP:-off}" --store "$store" --fsync "$fsync" -q \
    --max-connections-per-ip 1048576 --connect-rate-per-ip 1000000 \
    --max-rate-per-connection 1000000000 --max-rate-per-token 1000000000 \
    --max-new-series-per-connection 1000000000 --max-new-series-per-token 1000000000 "$@"
  server_pid=$last_pid
  addr=
  http=
  for ((i = 0; i < 200; i++)); do
    addr=$(sed -n 's/^listening on //p' "$out")
    [ -n "${SERVER_HTTP:-}" ] && http=$(sed -n 's/^http on //p' "$out")
    [ -n "$addr" ] && { [ -z "${SERVER_HTTP:-}" ] || [ -n "$http" ]; } && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "sensorlink server did not start:" >&2
  cat "$out" >&2
  exit 2
}

# fresh_db: an empty SQLite path in $tmp; prints it.
fresh_db() {
  rm -f "$tmp"/bench.db*
  echo "$tmp/bench.db"
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_tcp PORT [SECONDS]: until something accepts on 127.0.0.1:PORT (default 20 s).
wait_tcp() {
  local port=$1 secs=${2:-20} i
  for ((i = 0; i < secs * 20; i++)); do
    if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$port after ${secs}s" >&2
  return 1
}

# ours_bench OUTFILE TIMEOUT_S ARGS...: `sensorlink bench ARGS --json --no-progress` into
# OUTFILE, on the load core. Exit 1 (errors during the run) is kept: the JSON says how many.
ours_bench() {
  local out=$1 limit=$2
  shift 2
  cmdlog "${on_load[@]}" "$bin" bench "$@" --json --no-progress
  timeout --kill-after=5 "$limit" "${on_load[@]}" "$bin" bench "$@" --json --no-progress > "$out" || [ $? -eq 1 ]
}

# CPU accounting from /proc (the machine has no hardware counters; these need none).
# ticks PID: utime + stime of PID (all its threads), in clock ticks; 0 when it is gone.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2> /dev/null || echo 0; }
# reaped PID: cutime + cstime of PID: its children that exited and were waited for.
reaped() { awk '{ print $16 + $17 }' "/proc/$1/stat" 2> /dev/null || echo 0; }
# machine_busy: "busy steal" jiffies of all CPUs from /proc/stat (busy: user, nice, system, irq,
# softirq; steal: taken by the hypervisor for other guests).
machine_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat; }
# now: seconds since boot, to the 1/100 s (/proc/uptime).
now() { cut -d' ' -f1 /proc/uptime; }

# median: the median of the numbers on stdin (one per line); "nan" when there are none.
median() {
  sort -g | awk '{ a[NR] = $1 } END {
    if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.6f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# jmed FILE JQ_EXPR: median of JQ_EXPR over the JSON objects (one per line) in FILE.
jmed() {
  jq -r "$2" "$1" | median
}

# spread FILE JQ_EXPR: "min–max" of JQ_EXPR over FILE, rounded.
spread() {
  jq -r "$2" "$1" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f–%.0f", lo, hi }'
}

# spread_lines: (max − min) ÷ median of the numbers on stdin, in percent, 1 decimal; "nan"
# with fewer than 2 values or a zero median.
spread_lines() {
  sort -g | awk '{ a[NR] = $1 } END {
    if (NR < 2) { print "nan"; exit }
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
    if (m == 0) print "nan"; else printf "%.1f\n", (a[NR] - a[1]) / m * 100 }'
}

# spread_pct FILE JQ_EXPR: spread_lines of JQ_EXPR over FILE.
spread_pct() {
  jq -r "$2" "$1" | spread_lines
}

# NOISY_PCT: a figure whose spread across reps is wider than this is not reported as a result.
NOISY_PCT=${NOISY_PCT:-15}

# noisy PCT...: exit 0 (true) when any PCT is wider than NOISY_PCT (or "nan" with REPS ≥ 2).
noisy() {
  local p
  for p in "$@"; do
    [ "$p" = nan ] && [ "${REPS:-1}" -lt 2 ] && continue
    [ "$p" = nan ] && return 0
    awk -v p="$p" -v lim="$NOISY_PCT" 'BEGIN { exit !(p > lim) }' && return 0
  done
  return 1
}

# verdict CONDITION SPREAD...: "met", "**not met**", or "noisy (spread > NOISY_PCT %)" when any
# SPREAD is too wide, since then the median is not a result. CONDITION as for `met`.
verdict() {
  local cond=$1
  shift
  if noisy "$@"; then echo "**noisy** (spread > ${NOISY_PCT} %)"; else met "$cond"; fi
}

# Paired ratios. Ours and a reference run alternately in the same rep, so rep i of one was
# measured minutes from rep i of the other, on the same machine in the same state. On this
# VM both drift together from one minute to the next (sockperf's own p99 spread 79 % in one
# sitting), so the ratio of each pair is steadier than either side, and it is what a ratio
# target is about.
#
# paired FILE_A EXPR_A FILE_B EXPR_B: one line per rep, A_i ÷ B_i (the JSON objects of the two
# files paired in order; a count mismatch pairs the first min(n_a, n_b)); "nan" for a zero B.
paired() {
  paste <(jq -r "$2" "$1") <(jq -r "$4" "$3") |
    awk -F'\t' 'NF == 2 && $1 != "" && $2 != "" { if ($2 == 0) print "nan"; else printf "%.6f\n", $1 / $2 }'
}

# judge OP TARGET: the verdict on per-rep values (stdin, one per line: paired ratios, or an
# absolute figure's value in each rep) against "VALUE OP TARGET" (OP: <= or >=).
#   every rep meets it        → "met" (a wide spread cannot change that verdict:
#                               "met in every rep (spread X %)")
#   no rep meets it           → "**not met**" (likewise, "… in every rep")
#   reps disagree, spread ≤ NOISY_PCT → by the median
#   reps disagree, spread wider       → "**noisy**": the median is not a result
# One rep alone is judged by its value.
judge() {
  local op=$1 target=$2
  sort -g | awk -v op="$op" -v t="$target" -v lim="$NOISY_PCT" '
    function ok(x) { return op == "<=" ? x <= t : x >= t }
    $1 == "nan" || $1 == "" { next }
    { a[++n] = $1; if (ok($1)) good++ }
    END {
      if (n == 0) { print "**not measured**"; exit }
      m = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
      s = (n >= 2 && m != 0) ? (a[n] - a[1]) / m * 100 : 0
      wide = s > lim
      if (good == n) { if (wide) printf "met in every rep (%d of %d; spread %.0f %%)\n", good, n, s; else print "met"; exit }
      if (good == 0) { if (wide) printf "**not met** in every rep (0 of %d; spread %.0f %%)\n", n, s; else print "**not met**"; exit }
      if (wide) { printf "**noisy** (reps disagree: %d of %d met; spread %.0f %% > %s %%)\n", good, n, s, lim; exit }
      if (ok(m)) printf "met (median; %d of %d reps)\n", good, n; else printf "**not met** (median; %d of %d reps met)\n", good, n
    }'
}

# median_interval: a distribution-free 95 % confidence interval for the median of the numbers
# on stdin (one per line), the sign test's: the k-th smallest and k-th largest value, k the
# largest with P(Binomial(n, ½) < k) ≤ 2.5 %. It assumes nothing of the values' distribution
# (on this VM a slice's rate is not normal: host stalls give it a long low tail), only that
# they are independent draws. Prints "LO HI N COVERAGE" (COVERAGE in %, ≥ 95); "nan nan N nan"
# with fewer than 6 values, where no such interval reaches 95 %.
median_interval() {
  sort -g | awk '$1 != "nan" && $1 != "" { a[++n] = $1 } END {
    k = 0; tail = 0; p = 2 ^ -n     # p: P(X = i), X ~ Binomial(n, ½), from i = 0 up
    for (i = 0; i < n; i++) { if (tail + p > 0.025) break; tail += p; k = i + 1; p = p * (n - i) / (i + 1) }
    if (k == 0) { printf "nan nan %d nan\n", n; exit }
    printf "%s %s %d %.1f\n", a[k], a[n - k + 1], n, (1 - 2 * tail) * 100 }'
}

# interval_verdict OP TARGET: the verdict on the median of many paired slice ratios (stdin, one
# per line) by their median_interval: "met" when the whole interval meets "OP TARGET", "not met"
# when none of it does, "noisy" when it straddles TARGET; each with the interval and N.
interval_verdict() {
  median_interval | awk -v op="$1" -v t="$2" '{
    if ($1 == "nan") { printf "**noisy** (%d slice pairs: too few for a 95 %% interval)\n", $3; exit }
    lo = $1 + 0; hi = $2 + 0
    why = sprintf("95 %% interval of the median of %d slice ratios %.2f–%.2f×", $3, lo, hi)
    good = op == "<=" ? hi <= t : lo >= t
    bad = op == "<=" ? lo > t : hi < t
    if (good) print "met (" why ")"; else if (bad) print "**not met** (" why ")"
    else printf "**noisy** (%s, across %s×)\n", why, t }'
}

# pair FILE_A EXPR_A FILE_B EXPR_B OP TARGET [SLICES_A SLICES_B]: a ratio target judged on its
# pairs. Sets pair_ratio (the median of the per-rep ratios, 2 decimals), pair_spread (their
# spread, %) and pair_verdict (judge OP TARGET on them).
# With SLICES_A and SLICES_B (every slice of the sitting, one JSON object each, in the order
# run, so that line i of one ran seconds from line i of the other; EXPR_A and EXPR_B apply), reps
# that are noisy are judged again on all the slice pairs at once by interval_verdict: a
# handful of reps' medians cannot settle a ratio that drifts ±25 % from one 2 s run to the
# next, but 20 or more pairs can, and when even they straddle the target it stays noisy.
# shellcheck disable=SC2034 # pair_* are read by the scripts that source this file
pair() {
  local r
  r=$(paired "$1" "$2" "$3" "$4")
  pair_ratio=$(median <<< "$r" | xargs printf '%.2f')
  pair_spread=$(spread_lines <<< "$r")
  pair_verdict=$(judge "$5" "$6" <<< "$r")
  if [[ $pair_verdict == '**noisy**'* && -s ${7:-} && -s ${8:-} ]]; then
    local reps=${pair_verdict#*(}
    pair_verdict="$(paired "$7" "$2" "$8" "$4" | interval_verdict "$5" "$6"); by rep: ${reps%)}"
  fi
}

# slice_figures SLICES_FILE [EXTRA]: a rep's figures from its slices (one JSON object each, as
# `sensorlink bench --json` prints): the median readings/s and latency p50 and p99, errors
# summed, the slice count, and EXTRA (a jq object built from the array of slices, e.g.
# '{stored: (map(.stored) | add)}'); one JSON line.
slice_figures() {
  jq -sc 'def med: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    {readings_per_sec: (map(.readings_per_sec) | med),
     latency_us: {p50: (map(.latency_us.p50) | med), p99: (map(.latency_us.p99) | med)},
     errors: (map(.errors) | add), slices: length} + ('"${2:-"{}"}"')' "$1"
}

# pooled_quantiles Q...: the Q-quantiles (0 < Q ≤ 1) of the samples in a histogram on stdin,
# one `value<TAB>count` line per value in any order (`#` lines skipped): histograms of several
# runs concatenated are their samples pooled, as `sensorlink bench --latency-histogram` writes
# them. Prints one line per Q, the lowest value whose cumulative count reaches Q × total (as
# HdrHistogram's value_at_quantile), then the total count; "nan" for each with no samples.
pooled_quantiles() {
  sort -g -k1,1 | awk -F'\t' -v qs="$*" '
    NF >= 2 && $1 !~ /^#/ { v[++n] = $1; c[n] = $2; total += $2 }
    END {
      nq = split(qs, q, " ")
      for (i = 1; i <= nq; i++) {
        if (total == 0) { print "nan"; continue }
        need = q[i] * total; seen = 0
        for (j = 1; j <= n; j++) { seen += c[j]; if (seen >= need) break }
        print v[j]
      }
      print total + 0
    }'
}

# quantile_interval Q: the Q-quantile of the samples in a histogram on stdin (as
# pooled_quantiles reads it) with its distribution-free 95 % confidence interval: the values at
# ranks n·Q ∓ 1.96·√(n·Q·(1 − Q)) (the binomial's normal approximation, fine for the 10⁵ and more
# samples a sitting pools). Prints "VALUE LO HI N"; "nan nan nan 0" with no samples.
quantile_interval() {
  sort -g -k1,1 | awk -F'\t' -v q="$1" '
    NF >= 2 && $1 !~ /^#/ { v[++n] = $1; c[n] = $2; total += $2 }
    END {
      if (total == 0) { print "nan nan nan 0"; exit }
      h = 1.96 * sqrt(total * q * (1 - q))
      r[1] = q * total; r[2] = q * total - h; r[3] = q * total + h
      for (k = 1; k <= 3; k++) {
        if (r[k] < 1) r[k] = 1
        if (r[k] > total) r[k] = total
        seen = 0
        for (j = 1; j <= n; j++) { seen += c[j]; if (seen >= r[k]) break }
        out[k] = v[j]
      }
      printf "%s %s %s %d\n", out[1], out[2], out[3], total
    }'
}

# pooled_verdict Q OP TARGET OURS_HIST REF_HIST: a percentile ratio target judged on every sample
# of the sitting pooled per side (ours and the reference measured in the same interleaved
# slices): met when even the ratio of the intervals' far ends (quantile_interval) meets "OP
# TARGET", not met when even their near ends miss it, noisy otherwise. One line: the verdict,
# with the pooled figures.
pooled_verdict() {
  local o r
  o=$(quantile_interval "$1" < "$4") r=$(quantile_interval "$1" < "$5")
  awk -v o="$o" -v r="$r" -v op="$2" -v t="$3" -v q="$1" 'BEGIN {
    split(o, a, " "); split(r, b, " ")
    if (a[4] == 0 || b[4] == 0 || b[2] == 0) { print "**not measured** (no pooled samples)"; exit }
    ratio = a[1] / b[1]; lo = a[2] / b[3]; hi = a[3] / b[2]
    why = sprintf("the sitting pooled: p%g %s ÷ %s µs = %.2f×, %.2f–%.2f× within their 95 %% intervals; %d ÷ %d samples", q * 100, a[1], b[1], ratio, lo, hi, a[4], b[4])
    good = op == "<=" ? hi <= t : lo >= t
    bad = op == "<=" ? lo > t : hi < t
    if (good) print "met (" why ")"; else if (bad) print "**not met** (" why ")"
    else printf "**noisy** (%s, across %s×)\n", why, t }'
}

# pooled_figures SLICES_FILE HIST_FILE [EXTRA]: slice_figures, but with the latency p50 and p99
# taken over every sample of the slices pooled (HIST_FILE: their histograms concatenated), and
# the pooled sample count. A 2 s slice's p99 on this VM is decided by whether a host stall fell
# in it; pooled, each side's p99 is over the same minutes of the machine.
pooled_figures() {
  local q
  q=$(pooled_quantiles 0.5 0.99 < "$2" | paste -sd' ')
  # shellcheck disable=SC2086 # three numbers, split on purpose
  set -- "$1" "$2" "${3:-"{}"}" $q
  slice_figures "$1" "$3" | jq -c --arg p50 "$4" --arg p99 "$5" --arg n "$6" \
    '.latency_us = {p50: ($p50 | tonumber? // null), p99: ($p99 | tonumber? // null)} | .pooled_samples = ($n | tonumber)'
}

# pspreads RATIO_PCT OURS_PCT REF_PCT: the SPREAD column of a paired ratio.
pspreads() { echo "ratio $1 % (ours $2 % / ref $3 %)"; }

# result KEY WHAT OURS REFERENCE RATIO SPREAD TARGET VERDICT: one row of the summary table,
# appended (tab-separated) to $RESULTS when set (bench/all.sh collects them); always echoed
# as "result: …" so a script run alone shows it too. SPREAD: "ours X % / ref Y %".
result() {
  local row
  row=$(printf '%s\t' "$@")
  row=${row%$'\t'}
  echo "result: ${row//$'\t'/ | }"
  if [ -n "${RESULTS:-}" ]; then printf '%s\n' "$row" >> "$RESULTS"; fi
}

# num X: X rounded to an integer, thousands apart by a space ("1 234 567").
num() {
  awk -v x="$1" 'BEGIN { s = sprintf("%.0f", x); o = ""
    while (length(s) > 3 && substr(s, length(s) - 3, 1) ~ /[0-9]/) { o = " " substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
    print s o }'
}
# us X: X (µs) with 1 decimal below 100, whole above.
us() { awk -v x="$1" 'BEGIN { printf(x < 100 ? "%.1f\n" : "%.0f\n", x) }'; }
# pct A B: A ÷ B in whole percent ("93 %"); "nan" when B is 0.
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "nan"; else printf "%.0f %%\n", 100 * a / b }'; }
# spreads OURS_PCT REF_PCT: the SPREAD column, "ours X % / ref Y %" (REF_PCT may be empty).
spreads() { echo "ours $1 %${2:+ / ref $2 %}"; }
# footer: the load average after the run (beside the header's "before").
footer() { echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"; }

# int X: X rounded to an integer.  ratio A B: A / B with 2 decimals.
int() { awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "nan"; else printf "%.2f", a / b }'; }

# met CONDITION: "met" or "not met"; CONDITION is an awk expression on numbers.
met() { awk "BEGIN { if ($1) print \"met\"; else print \"**not met**\" }"; }

# header: when and where, for the table's caption. The machine is shared: the load average
# says how busy it was.
header() {
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); nproc: $(nproc); $(lscpu | grep 'Model name' | sed 's/  */ /g'); kernel $(uname -r)"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); code: ${SENSORLINK_BIN:+$SENSORLINK_BIN (prebuilt), checkout }$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo ' + local changes in src/')"
  echo "$(pinning); $REPS reps${ALTERNATED:+, sides alternated}; a figure whose spread ((max − min) ÷ median) is over ${NOISY_PCT} % is flagged noisy"
}

# keep FILE NAME: copy a raw result to $OUT/NAME when OUT is set.
keep() {
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp "$1" "$OUT/$2"
  fi
}

# PostgreSQL (bench/postgres.sh, bench/profile.sh postgres): a throwaway cluster in $tmp/pg, made
# as tests/support/pg_cluster.rs makes it: Debian's initdb (trust auth, superuser `sensorlink`,
# --no-sync: only initdb's own files skip fsync), then `postgres` on 127.0.0.1:<free port>
# only (its unix socket in $tmp/pg), fsync on and every other setting at its default unless
# given. initdb and postgres refuse to run as root: as root both run as the Debian `postgres`
# user through setpriv, which execs, so the PID recorded is the postmaster's own.
# Pinned like every server under test: postgres (and so every process it forks) on SERVER_CPU.
pg_bin=
pg_pid=
pg_port=

# pg_start [-c NAME=VALUE]...: initdb + postgres; sets $pg_bin, $pg_pid, $pg_port.
pg_start() {
  local dir=$tmp/pg as=() i
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$pg_bin/initdb" ] || { echo "no PostgreSQL (scripts/install-test-deps.sh postgresql)" >&2; exit 2; }
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    chmod 711 "$tmp"  # the postgres user may enter $tmp, not list it
    chown postgres: "$dir"
    as=(setpriv --reuid=postgres --regid=postgres --init-groups --)
  fi
  if ! (cd "$dir" && timeout 120 "${as[@]}" "$pg_bin/initdb" -D "$dir/data" -A trust -U sensorlink \
    -E UTF8 --locale=C --no-sync --no-instructions > "$tmp/initdb.out" 2>&1); then
    echo "initdb failed:" >&2
    cat "$tmp/initdb.out" >&2
    exit 2
  fi
  pg_port=$(free_port)
  start_bg "$tmp/pg.out" "${on_server[@]}" "${as[@]}" "$pg_bin/postgres" -D "$dir/data" -k "$dir" -h 127.0.0.1 \
    -p "$pg_port" -c listen_addresses=127.0.0.1 -c fsync=on "$@"
  pg_pid=$last_pid
  for ((i = 0; i < 600; i++)); do
    "$pg_bin/pg_isready" -q -t 2 -h 127.0.0.1 -p "$pg_port" -U sensorlink -d postgres && return 0
    kill -0 "$pg_pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "postgres did not start:" >&2
  cat "$tmp/pg.out" >&2
  exit 2
}

# pg_sql DB SQL: runs SQL as `sensorlink` over TCP; prints rows one a line, columns `|`-separated.
pg_sql() {
  PGCONNECT_TIMEOUT=10 PGOPTIONS="-c client_min_messages=warning" timeout --kill-after=5 120 "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U sensorlink \
    -d "$1" -X -q -At -v ON_ERROR_STOP=1 -c "$2"
}

# pg_url DB: the store URL of database DB.
pg_url() { echo "postgres://sensorlink@127.0.0.1:$pg_port/$1"; }

# pg_fresh_db NAME: drops NAME if it exists, creates it empty, then CHECKPOINT, so every run
# starts from the same WAL state (no checkpoint owed by the previous run); prints its URL.
pg_fresh_db() {
  pg_sql postgres "DROP DATABASE IF EXISTS \"$1\"" > /dev/null
  pg_sql postgres "CREATE DATABASE \"$1\"" > /dev/null
  pg_sql postgres "CHECKPOINT" > /dev/null
  pg_url "$1"
}

# pg_settings: the settings that decide durable ingest (as SHOW prints them), one line.
pg_settings() {
  pg_sql postgres "SELECT string_agg(n || '=' || current_setting(n), ', ') FROM unnest(ARRAY['server_version',
    'fsync', 'synchronous_commit', 'wal_sync_method', 'full_page_writes', 'shared_buffers', 'wal_buffers',
    'max_wal_size', 'checkpoint_timeout', 'max_connections']) AS n"
}

# pg_ticks: CPU ticks of the whole cluster so far: the postmaster, its live children (backends,
# walwriter, …) and the children it reaped.
pg_ticks() {
  local p sum
  sum=$(($(ticks "$pg_pid") + $(reaped "$pg_pid")))
  for p in $(pgrep -P "$pg_pid"); do sum=$((sum + $(ticks "$p"))); done
  echo "$sum"
}

# pg_stop: stops the cluster: TERM, a smart shutdown, which does not wait here (no client is
# connected by then) and ends with its shutdown checkpoint.
pg_stop() {
  [ -n "$pg_pid" ] || return 0
  stop_pid "$pg_pid" 30
  pg_pid=
}
