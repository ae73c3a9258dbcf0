#!/usr/bin/env bash
# Parser throughput beside the InfluxDB 3 / IOx parser (the `influxdb-line-protocol` crate):
# the criterion group `ilp_vs_iox` of benches/codec.rs parses one mixed input (bench lines,
# escapes, quoted strings, ints/floats/bools, several tags; every line valid for both) with
# `sensorlink::protocol::ilp::parse` and with `influxdb_line_protocol::parse_lines`, pinned to
# the server core. REPS (default 10) reps, each one short criterion run per parser, the order
# alternating from rep to rep: on this VM a core's speed drifts from one minute to the next
# (one run of ours, then one of IOx, gave 3.04×, 2.30× and 1.73× within two hours), so the
# ratio is taken rep by rep, of runs seconds apart (lib.sh `pair`; noisy reps are judged on
# all the pairs' median interval). Prints each parser's median lines/s and spread, and
#   parser-vs-iox   ours ÷ IOx lines/s   target ≥ 2×
# Each run `--warm-up-time 0.5 --measurement-time 1.5` (QUICK=1: 0.2 / 0.5, 2 reps); no
# server, no network. ≈ 1 min after the build.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

QUICK=${QUICK:-0}
group=ilp_vs_iox
if [ "$QUICK" = 1 ]; then
  REPS=${REPS:-2} times=(--warm-up-time 0.2 --measurement-time 0.5)
else
  REPS=${REPS:-10} times=(--warm-up-time 0.5 --measurement-time 1.5)
fi
ALTERNATED=1
bash scripts/install-bench-deps.sh jq

# The bench binary, built once (cargo prints its path); run directly so that only it is pinned.
nice -n 5 cargo bench --bench codec --no-run --locked --quiet --message-format=json > "$tmp/build.json"
exe=$(jq -r 'select(.reason == "compiler-artifact" and .target.name == "codec" and .executable != null) | .executable' "$tmp/build.json" | tail -1)
[ -x "$exe" ] || { echo "no codec bench executable (cargo bench --bench codec --no-run)" >&2; exit 2; }

header

# run_parser FN: one criterion run of $group/FN in a fresh criterion home (no earlier run's
# estimates read or compared with); appends {"lines_per_sec"} to $tmp/FN.jsonl, from the
# mean time per iteration and the lines per iteration.
run_parser() {
  local fn=$1 dir
  export CRITERION_HOME=$tmp/criterion-$rep-$fn
  [ "$rep" = 1 ] && cmdlog "${on_server[@]}" "$exe" --bench "$group/$fn" --noplot "${times[@]}"
  timeout --kill-after=5 120 "${on_server[@]}" "$exe" --bench "$group/$fn" --noplot "${times[@]}" > "$tmp/criterion.out" 2>&1 ||
    { cat "$tmp/criterion.out" >&2; echo "the $group/$fn bench failed" >&2; exit 2; }
  grep -E '^(ilp_vs_iox/|  *(time|thrpt):)' "$tmp/criterion.out" || true
  dir=$CRITERION_HOME/$group/$fn/new
  if [ ! -f "$dir/estimates.json" ] || [ ! -f "$dir/benchmark.json" ]; then
    echo "no criterion estimates in $dir" >&2
    exit 2
  fi
  keep "$dir/estimates.json" "parser-$fn-$rep-estimates.json"
  jq -c --slurpfile b "$dir/benchmark.json" '.mean.point_estimate as $m | ($b[0].throughput.Elements // empty) as $n |
    {lines_per_sec: ($n / $m * 1e9)}' "$dir/estimates.json" >> "$tmp/$fn.jsonl"
}

for rep in $(seq "$REPS"); do
  if [ $((rep % 2)) = 1 ]; then run_parser sensorlink; run_parser iox; else run_parser iox; run_parser sensorlink; fi
done
for fn in sensorlink iox; do
  [ "$(jq -s length "$tmp/$fn.jsonl")" = "$REPS" ] || { echo "no throughput in the estimates of $fn" >&2; exit 2; }
done

ours=$(jmed "$tmp/sensorlink.jsonl" .lines_per_sec) iox=$(jmed "$tmp/iox.jsonl" .lines_per_sec)
s_ours=$(spread_pct "$tmp/sensorlink.jsonl" .lines_per_sec) s_iox=$(spread_pct "$tmp/iox.jsonl" .lines_per_sec)
# Each rep is one pair of runs seconds apart, so the reps are the slices too.
pair "$tmp/sensorlink.jsonl" .lines_per_sec "$tmp/iox.jsonl" .lines_per_sec ">=" 2 \
  "$tmp/sensorlink.jsonl" "$tmp/iox.jsonl"

echo
echo "| parser | lines/s (median of $REPS runs) | spread |"
echo "|---|---:|---:|"
echo "| sensorlink \`ilp::parse\` (split at newlines, parse each line) | $(int "$ours") | $s_ours % |"
echo "| \`influxdb_line_protocol::parse_lines\` 2.0 (IOx) | $(int "$iox") | $s_iox % |"
echo
echo "ours ÷ IOx rep by rep: $(paired "$tmp/sensorlink.jsonl" .lines_per_sec "$tmp/iox.jsonl" .lines_per_sec | xargs printf '%.2f ')"
echo "ours ÷ IOx: ${pair_ratio}× (median of the reps' ratios; target ≥ 2×), $REPS alternated reps of ${times[*]}, pinned as above"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
result parser-vs-iox "line protocol parse, same mixed input: ilp::parse ÷ influxdb-line-protocol (IOx) parse_lines" \
  "$(int "$ours") lines/s" "IOx $(int "$iox") lines/s" "${pair_ratio}×" \
  "$(pspreads "$pair_spread" "$s_ours" "$s_iox")" "≥ 2×" "$pair_verdict"
