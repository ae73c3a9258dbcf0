#!/usr/bin/env bash
# Parser throughput beside the InfluxDB 3 / IOx parser (the `influxdb-line-protocol` crate):
# the criterion group `ilp_vs_iox` of benches/codec.rs parses one mixed input (bench lines,
# escapes, quoted strings, ints/floats/bools, several tags; every line valid for both) with
# `sensorlink::protocol::ilp::parse` and with `influxdb_line_protocol::parse_lines`, pinned to
# the server core. Prints lines/s for both from criterion's estimates (mean, and its 95 %
# confidence interval as the spread: (upper − lower) ÷ mean), and the `result` row
#   parser-vs-iox   ours ÷ IOx lines/s   target ≥ 2×
# One criterion run (`--warm-up-time 1 --measurement-time 3`; QUICK=1: 0.5 / 1); no server,
# no network. ≈ 10 s after the build.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

QUICK=${QUICK:-0}
REPS=1
group=ilp_vs_iox
if [ "$QUICK" = 1 ]; then times=(--warm-up-time 0.5 --measurement-time 1); else times=(--warm-up-time 1 --measurement-time 3); fi
bash scripts/install-bench-deps.sh jq

# The bench binary, built once (cargo prints its path); run directly so that only it is pinned.
nice -n 5 cargo bench --bench codec --no-run --locked --quiet --message-format=json > "$tmp/build.json"
exe=$(jq -r 'select(.reason == "compiler-artifact" and .target.name == "codec" and .executable != null) | .executable' "$tmp/build.json" | tail -1)
[ -x "$exe" ] || { echo "no codec bench executable (cargo bench --bench codec --no-run)" >&2; exit 2; }

header
# A fresh criterion home: no earlier run's estimates can be read by mistake, nor compared with.
export CRITERION_HOME=$tmp/criterion
cmdlog "${on_server[@]}" "$exe" --bench "$group" "${times[@]}"
timeout --kill-after=5 300 "${on_server[@]}" "$exe" --bench "$group" "${times[@]}" > "$tmp/criterion.out" 2>&1 ||
  { cat "$tmp/criterion.out" >&2; echo "the $group bench failed" >&2; exit 2; }
grep -E '^(ilp_vs_iox/|  *(time|thrpt):)' "$tmp/criterion.out" || true

# estimate FN: "lines/s spread% low high" of function FN: lines per iteration ÷ the mean time,
# the mean's 95 % confidence interval width ÷ the mean, and lines/s at the interval's slow and
# fast ends.
estimate() {
  local dir=$CRITERION_HOME/$group/$1/new
  if [ ! -f "$dir/estimates.json" ] || [ ! -f "$dir/benchmark.json" ]; then
    echo "no criterion estimates in $dir" >&2
    exit 2
  fi
  keep "$dir/estimates.json" "parser-$1-estimates.json"
  jq -r --slurpfile b "$dir/benchmark.json" '.mean as $m | ($b[0].throughput.Elements // empty) as $n |
    "\($n / $m.point_estimate * 1e9) \(($m.confidence_interval.upper_bound - $m.confidence_interval.lower_bound) / $m.point_estimate * 100) \($n / $m.confidence_interval.upper_bound * 1e9) \($n / $m.confidence_interval.lower_bound * 1e9)"' \
    "$dir/estimates.json"
}
read -r ours s_ours ours_lo ours_hi < <(estimate sensorlink)
read -r iox s_iox iox_lo iox_hi < <(estimate iox)
if [ -z "${ours:-}" ] || [ -z "${iox:-}" ]; then echo "no throughput in the estimates" >&2; exit 2; fi
s_ours=$(printf '%.1f' "$s_ours")
s_iox=$(printf '%.1f' "$s_iox")
r=$(ratio "$ours" "$iox")
# The verdict: where even our slowest ÷ IOx's fastest (the 95 % intervals' far ends) meets the
# target, or even our fastest ÷ IOx's slowest misses it, the intervals' width cannot change it
# (as `judge` holds a verdict that every rep agrees on); in between, the noisy rule decides.
worst=$(ratio "$ours_lo" "$iox_hi")
best=$(ratio "$ours_hi" "$iox_lo")
if awk -v w="$worst" 'BEGIN { exit !(w >= 2) }'; then
  parser_verdict="met (within the 95 % intervals: ${worst}–${best}×)"
elif awk -v b="$best" 'BEGIN { exit !(b < 2) }'; then
  parser_verdict="**not met** (within the 95 % intervals: ${worst}–${best}×)"
else
  parser_verdict=$(verdict "$r >= 2" "$s_ours" "$s_iox")
fi

echo
echo "| parser | lines/s (mean) | 95 % CI width ÷ mean |"
echo "|---|---:|---:|"
echo "| sensorlink \`ilp::parse\` (split at newlines, parse each line) | $(int "$ours") | $s_ours % |"
echo "| \`influxdb_line_protocol::parse_lines\` 2.0 (IOx) | $(int "$iox") | $s_iox % |"
echo
echo "ours ÷ IOx: ${r}× (target ≥ 2×; from the intervals' far ends ${worst}–${best}×); one criterion run ${times[*]}, pinned as above"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
result parser-vs-iox "line protocol parse, same mixed input: ilp::parse ÷ influxdb-line-protocol (IOx) parse_lines" \
  "$(int "$ours") lines/s" "IOx $(int "$iox") lines/s" "${r}×" "ours $s_ours % / ref $s_iox %" "≥ 2×" \
  "$parser_verdict"
