#!/usr/bin/env bash
# The whole benchmark table in ONE sitting (issue 13), then BENCHMARKS.md regenerated from it.
#
#   bench/all.sh              the sitting: ≈ 40 min on 2 cores (+ install and build), REPS ≥ 3 everywhere (5 for the round trip and pipelined ingest)
#   ALL_QUICK=1 bench/all.sh  a smoke run (≈ 7 min: REPS=2, DURATION=2, fewer configs) that
#                             checks every step end to end; its figures mean nothing
#
# In a fixed order: installs the reference tools (scripts/install-bench-deps.sh, socat,
# scripts/install-test-deps.sh postgresql), builds once (release binary, criterion benches),
# waits for a quiet machine (1-minute load average < 0.5, at most QUIET_WAIT s, default 120;
# past that it goes on and says so), then runs each script below with its REPS/DURATION
# budget, every one pinned (bench/lib.sh; PIN=0 runs all unpinned), with RESULTS set so each
# `result` row lands in one file. A script that fails or is missing is recorded as a failed
# row and the sitting goes on; all.sh exits non-zero at the end if any step failed.
#
# OUT (default /tmp/sensorlink-all-DATE) keeps everything: each script's full stdout+stderr
# (OUT/NAME.out), its raw runs (OUT/raw/NAME/), results.tsv, and the generated part.
# BENCHMARKS.md: the part between `<!-- all.sh:begin -->` and `<!-- all.sh:end -->` is
# replaced (text outside the markers is kept); ALL_WRITE=0 leaves BENCHMARKS.md alone
# (ALL_QUICK=1 implies it unless ALL_WRITE=1). ALL_ONLY="roundtrip tls" runs only those steps.
# ALL_FAULTS=0 leaves out bench/faults.sh (the full sitting runs it as root; ≈ 2.5 min).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

ALL_QUICK=${ALL_QUICK:-0}
if [ "$ALL_QUICK" = 1 ]; then ALL_WRITE=${ALL_WRITE:-0}; else ALL_WRITE=${ALL_WRITE:-1}; fi
QUIET_WAIT=${QUIET_WAIT:-120}
OUT=${OUT:-/tmp/sensorlink-all-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/raw"
RESULTS=$OUT/results.tsv
: > "$RESULTS"
export RESULTS PIN="${PIN:-1}"
steps_log=$OUT/steps.tsv # name, exit status, seconds, result rows
: > "$steps_log"
failed=0
started=$(date +%s)

say() { echo "[all.sh $(date -u +%H:%M:%S)] $*" >&2; }

# step NAME SCRIPT [VAR=VALUE...]: runs SCRIPT with the variables, its output to OUT/NAME.out.
step() {
  local name=$1 script=$2 t0 rc rows0 rows
  shift 2
  if [ -n "${ALL_ONLY:-}" ] && ! [[ " $ALL_ONLY " == *" $name "* ]]; then return 0; fi
  rows0=$(wc -l < "$RESULTS")
  t0=$(date +%s)
  if [ ! -f "$script" ]; then
    say "$name: $script is missing: skipped"
    echo "$script is not in this checkout" > "$OUT/$name.out"
    rc=127
  else
    say "$name: $* bash $script"
    env "$@" OUT="$OUT/raw/$name" bash "$script" > "$OUT/$name.out" 2>&1
    rc=$?
  fi
  rows=$(($(wc -l < "$RESULTS") - rows0))
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$rows" "$*" >> "$steps_log"
  if [ "$rc" -ne 0 ]; then
    failed=1
    say "$name: FAILED (exit $rc), see $OUT/$name.out"
    printf '%s\t%s\t\t\t\t\t\t%s\n' "$name-failed" "$script failed (exit $rc): its rows are missing or partial; see its output below" \
      "**failed** (exit $rc)" >> "$RESULTS"
  elif [ "$rows" -eq 0 ]; then
    say "$name: done, but it printed no result row"
  else
    say "$name: done, $rows result rows, $(($(date +%s) - t0)) s"
  fi
}

# --- dependencies and build, before the machine is asked to be quiet ----------------------
say "installing the reference tools and building (once)"
{
  bash scripts/install-bench-deps.sh &&
    bash scripts/install-bench-deps.sh socat &&
    bash scripts/install-test-deps.sh postgresql
} > "$OUT/deps.out" 2>&1 || { say "installing dependencies failed: see $OUT/deps.out"; failed=1; }
if [ -z "${SENSORLINK_BIN:-}" ]; then
  nice -n 5 cargo build --release --locked --quiet > "$OUT/build.out" 2>&1 ||
    { say "cargo build --release failed: see $OUT/build.out"; cat "$OUT/build.out" >&2; exit 2; }
fi
nice -n 5 cargo bench --locked --no-run --bench '*' --quiet >> "$OUT/build.out" 2>&1 ||
  { say "cargo bench --no-run --bench '*' failed: see $OUT/build.out"; failed=1; }
# The fault scenarios (bench/faults.sh: root, network namespaces; a debug test binary): in the
# full sitting only, built here so that the sitting does not compile.
if [ "$ALL_QUICK" = 1 ] || [ "$(id -u)" -ne 0 ]; then ALL_FAULTS=${ALL_FAULTS:-0}; else ALL_FAULTS=${ALL_FAULTS:-1}; fi
if [ "$ALL_FAULTS" = 1 ]; then
  nice -n 5 cargo test --locked --test faults --no-run --quiet >> "$OUT/build.out" 2>&1 ||
    { say "cargo test --test faults --no-run failed: see $OUT/build.out"; failed=1; }
fi
# The parser comparison is bench/parser.sh (criterion, with its `result` row); where it is not
# (yet) in the checkout, the codec benches run as they are, without a row.
parser=bench/parser.sh
if [ ! -f "$parser" ]; then
  parser=$OUT/parser-fallback.sh
  printf '%s\n' '# bench/parser.sh is not in this checkout: the codec benches as they are, no result row.' \
    'echo "bench/parser.sh missing: cargo bench --bench codec (no result row)"' \
    'set -o pipefail' \
    'cargo bench --locked --bench codec -- --warm-up-time 1 --measurement-time "${DURATION:-3}" 2>&1 | grep -vE "^(Benchmarking |Found [0-9]+ outliers|  [0-9]+ \\()"' > "$parser"
fi

# --- a quiet machine ----------------------------------------------------------------------
load1() { cut -d' ' -f1 /proc/loadavg; }
quiet_note="load average < 0.5 at the start"
waited=0
while awk -v l="$(load1)" 'BEGIN { exit !(l >= 0.5) }'; do
  if [ "$waited" -ge "$QUIET_WAIT" ]; then
    quiet_note="**the machine was not quiet**: 1-minute load average $(load1) after waiting ${waited} s (wanted < 0.5); figures may be noisier than their spreads say"
    say "$quiet_note"
    break
  fi
  [ "$waited" -eq 0 ] && say "waiting for a quiet machine (1-minute load average $(load1), want < 0.5, up to ${QUIET_WAIT} s)"
  sleep 5
  waited=$((waited + 5))
done
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
sitting_start=$(date +%s)

# --- the sitting, in a fixed order ----------------------------------------------------------
if [ "$ALL_QUICK" = 1 ]; then
  q=(REPS=2 DURATION=2)
  step roundtrip bench/roundtrip.sh "${q[@]}" SLICES=2 SLICE=1 CLIENT_COUNT=3000
  step pipelined bench/pipelined.sh "${q[@]}" SLICES=2 SLICE=1 CONFIGS=4096/1024 REDIS_N=1000000 FAIR_DURATION=3
  step influx bench/influx.sh "${q[@]}" SLICES=2 SLICE=1 SHAPES=100x8
  [ -f bench/sqlite_ceiling.sh ] && ! grep -q sqlite_ceiling bench/influx.sh &&
    step sqlite_ceiling bench/sqlite_ceiling.sh "${q[@]}"
  step capacity bench/capacity.sh REPS=2 CAP_CONNS=2000 CAP_MAX= STEADY=3
  step tls bench/tls.sh "${q[@]}" CLIENT_COUNT=3000 CONFIGS=4096/1024
  step tls-idle bench/tls-idle.sh REPS=2 IDLE_CONNS=300 SETTLE=1
  step dashboard bench/dashboard.sh "${q[@]}"
  step postgres bench/postgres.sh REPS=2 DURATION=2s SHAPES=pipelined
  step seed bench/seed.sh "${q[@]}" CONNS=64
  step parser "$parser" QUICK=1 DURATION=1
else
  step roundtrip bench/roundtrip.sh REPS=5 SLICES=8 SLICE=2
  step pipelined bench/pipelined.sh REPS=5 SLICES=4 SLICE=2 REDIS_N=12000000
  step influx bench/influx.sh REPS=3 DURATION=5 SLICES=5 SLICES_1x1=7 SLICES_5000x4=7 SLICE_5000x4=4
  [ -f bench/sqlite_ceiling.sh ] && ! grep -q sqlite_ceiling bench/influx.sh &&
    step sqlite_ceiling bench/sqlite_ceiling.sh REPS=3
  step capacity bench/capacity.sh REPS=3 CAP_CONNS=10000 CAP_MAX=50000 STEADY=10
  step tls bench/tls.sh REPS=3 DURATION=4
  step tls-idle bench/tls-idle.sh REPS=3 IDLE_CONNS=2000
  step dashboard bench/dashboard.sh REPS=3 DURATION=4
  step postgres bench/postgres.sh REPS=3 DURATION=4s
  step seed bench/seed.sh REPS=3 DURATION=3 CONNS="1 64"
  step parser "$parser"
  [ "$ALL_FAULTS" = 1 ] && step faults bench/faults.sh
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
ended=$(date +%s)

# --- BENCHMARKS.md's generated part ----------------------------------------------------------
commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
git diff --quiet HEAD -- src bench benches 2>/dev/null || commit="$commit + local changes"
mins() { awk -v s="$1" 'BEGIN { printf "%d min %02d s", s / 60, s % 60 }'; }
if [ "${PIN}" = 1 ]; then
  pin_note="pinned: every server under test (ours and each reference) on core ${SERVER_CPU:-0}, every load generator on core ${LOAD_CPU:-1} (taskset)"
else
  pin_note="unpinned (PIN=0)"
fi

# render: a script's output as Markdown: its tables as they are, every other line in a text
# block (a script's own ``` blocks as they are); `result:` lines are left out (they are the
# summary table).
render() {
  awk '
    /^```/ {
      if (intable) { print ""; intable = 0 }
      if (intext) { print "```"; print ""; intext = 0 }
      print; infence = !infence; next
    }
    infence { print; next }
    /^result: / { next }
    /^\|/ { if (intext) { print "```"; print ""; intext = 0 } ; if (!intable) { intable = 1 } ; print; next }
    {
      if (intable) { print ""; intable = 0 }
      if ($0 ~ /^#+ /) { if (intext) { print "```"; print ""; intext = 0 } ; sub(/^#+ /, "#### "); print; print ""; next }
      if (!intext) { if ($0 == "") next; print "```text"; intext = 1; blanks = 0 }
      # Blank lines only between text lines, never before a closing fence.
      if ($0 == "") { blanks++; next }
      for (; blanks > 0; blanks--) print ""
      print
    }
    END { if (intext) print "```"; if (intable) print "" }'
}

{
  echo "<!-- all.sh:begin -->"
  echo "<!-- Generated by bench/all.sh: edit outside the markers only; everything between them is replaced by the next sitting. -->"
  echo
  echo "## This sitting"
  echo
  echo "- date: $(date -u -d "@$sitting_start" '+%Y-%m-%d %H:%M UTC'); total $(mins $((ended - started))) (measuring $(mins $((ended - sitting_start))))$([ "$ALL_QUICK" = 1 ] && echo '; **ALL_QUICK=1 smoke run: the figures mean nothing**')"
  echo "- machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), kernel $(uname -r), $(awk '/^MemTotal:/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
  echo "- code: commit $commit"
  echo "- $pin_note"
  echo "- load average (1, 5, 15 min): before $load_before, after $load_after; $quiet_note"
  echo "- spread: (max − min) ÷ median across reps. A ratio is judged on its pairs: rep i of ours ÷ rep i of the reference, which ran beside it (alternated), so drift that moves both cancels; the ratio shown is the median of those, with its own spread. A verdict is on the reps: met (or not met) in every rep holds whatever the spread; reps that disagree are judged by the median only when the spread is at most ${NOISY_PCT:-15} %, else the row is **noisy** and its median is not a result. Where a script keeps its slices (pipelined ÷ Redis; durable ÷ InfluxDB and ÷ the ceiling), noisy reps are judged again on every slice pair of the sitting (slice i of ours ÷ slice i of the reference, seconds apart): met when the whole distribution-free 95 % confidence interval of their median (the sign test's: k-th smallest to k-th largest ratio) meets the target, not met when none of it does, still noisy when it straddles the target. The round trip's percentiles, taken over each rep's samples pooled, are judged when their reps are noisy on every sample of the sitting pooled per side: met when even the ratio of the two quantiles' 95 % order-statistic intervals' far ends meets the target, not met when even their near ends miss it"
  echo
  echo "## Summary"
  echo
  echo "| benchmark | ours | reference | ratio | spread | target | verdict |"
  echo "|---|---|---|---|---|---|---|"
  # awk, not `read`: a tab is IFS white space, so `read` would merge empty columns.
  awk -F '\t' '$1 != "" { printf "| %s (`%s`) | %s | %s | %s | %s | %s | %s |\n", $2, $1, $3, $4, $5, $6, $7, $8 }' "$RESULTS"
  echo
  echo "Steps (script, exit status, seconds, result rows):"
  echo
  echo "| step | exit | seconds | rows | budget |"
  echo "|---|---:|---:|---:|---|"
  while IFS=$'\t' read -r name rc secs rows vars; do
    echo "| \`bench/$name.sh\` | $rc | $secs | $rows | \`${vars:-defaults}\` |"
  done < "$steps_log"
  echo
  echo "## Each script's output"
  echo
  while IFS=$'\t' read -r name rc _ _ _; do
    echo "### $name.sh"
    echo
    if [ "$rc" -ne 0 ]; then echo "**exit status $rc**: the output up to the failure:"; echo; fi
    render < "$OUT/$name.out"
    echo
  done < "$steps_log"
  echo "<!-- all.sh:end -->"
} > "$OUT/generated.md"

if [ "$ALL_WRITE" = 1 ]; then
  python3 - "$OUT/generated.md" BENCHMARKS.md << 'EOF'
import sys
gen, path = open(sys.argv[1]).read().rstrip("\n"), sys.argv[2]
begin, end = "<!-- all.sh:begin -->", "<!-- all.sh:end -->"
try:
    text = open(path).read()
except FileNotFoundError:
    text = "# sensorlink benchmarks\n"
if begin in text and end in text:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    text = head + gen + tail
else:
    text = text.rstrip("\n") + "\n\n" + gen + "\n"
open(path, "w").write(text)
EOF
  say "BENCHMARKS.md: the part between the markers rewritten"
else
  say "BENCHMARKS.md left alone (ALL_WRITE=0); the generated part is $OUT/generated.md"
fi
say "done in $(mins $((ended - started))); results: $RESULTS; outputs: $OUT"
if [ "$failed" -ne 0 ]; then
  say "some steps failed:"
  awk -F '\t' '$2 != 0 { print "  " $1 ": exit " $2 }' "$steps_log" >&2
  exit 1
fi
