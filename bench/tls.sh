#!/usr/bin/env bash
# TLS beside plain TCP, one sitting, alternated rep by rep (issue 13: "the new parts keep pace"):
#   server:   `sensorlink server --store memory`, plain, or with --tls-cert/--tls-key from
#             `sensorlink cert` (a fresh server per run)
#   round trip, one reading in flight: `sensorlink bench --connections 1 --pipeline 1
#             --batch 1`, plain and with `--tls --ca ca.pem`
#   ingest:   `sensorlink bench --connections 50 --pipeline P --batch B` for P/B in CONFIGS
#             (default "4096/1024 256/64", bench/pipelined.sh's), plain and with `--tls --ca`
# A `sensorlink` without `bench --tls` (SENSORLINK_BIN=an older build) is measured the old
# way: the round trip with `sensorlink client --interval 0 --count CLIENT_COUNT` (it has
# --tls), the ingest through a `socat` relay on the load core (TCP → TCP for plain, TCP →
# OPENSSL for TLS), where the relay may be what limits the rate.
# Pinned (bench/lib.sh): the server on SERVER_CPU; bench, client and relay on LOAD_CPU;
# PIN=0 unpinned. Also the server's CPU per reading (utime + stime from /proc over the run):
# the TLS cost the server pays. REPS (default 3) reps of DURATION (default 5) s per run;
# prints medians, spreads, and `result` rows tls-rtt-p50, tls-rtt-p99, tls-ingest (TLS ÷
# plain; target: report). Loopback only; ≈ REPS × 6 × (DURATION + 2) s, ≈ 2 min.
source "$(dirname "$0")/lib.sh"
ALTERNATED=1

DURATION=${DURATION:-5}
REPS=${REPS:-3}
CLIENT_COUNT=${CLIENT_COUNT:-20000}
CONFIGS=${CONFIGS:-"4096/1024 256/64"}
bash scripts/install-bench-deps.sh socat jq
build
"$bin" cert --dir "$tmp/certs" > /dev/null
ca=$tmp/certs/ca.pem
tls_flags=(--tls-cert "$tmp/certs/server.pem" --tls-key "$tmp/certs/server-key.pem")
direct=
bench_help=$("$bin" bench --help)
if grep -q -- ' --tls ' <<< "$bench_help" && grep -q -- ' --ca ' <<< "$bench_help"; then direct=1; fi
clk=$(getconf CLK_TCK)

# server MODE: a fresh memory server, plain or TLS (sets $server_pid, $addr).
server() {
  if [ "$1" = tls ]; then start_ours memory always "${tls_flags[@]}"; else start_ours memory always; fi
}

# rtt MODE: one round-trip run; appends {p50, p99, rate} to $tmp/rtt-MODE.jsonl.
rtt() {
  local mode=$1 flags=()
  server "$mode"
  if [ -n "$direct" ]; then
    [ "$mode" = tls ] && flags=(--tls --ca "$ca")
    ours_bench "$tmp/run.json" $((DURATION + 40)) "$addr" "${flags[@]+"${flags[@]}"}" --connections 1 \
      --pipeline 1 --batch 1 --warmup 1s --duration "${DURATION}s"
    stop_pid "$server_pid"
    keep "$tmp/run.json" "tls-rtt-$mode-$rep.json"
    jq -c '{p50: .latency_us.p50, p99: .latency_us.p99, rate: .readings_per_sec, lost: .errors}' \
      "$tmp/run.json" >> "$tmp/rtt-$mode.jsonl"
    return
  fi
  [ "$mode" = tls ] && flags=(--tls --ca "$ca")
  cmdlog "${on_load[@]}" "$bin" client "$addr" "${flags[@]+"${flags[@]}"}" --interval 0 --count "$CLIENT_COUNT" --json
  timeout --kill-after=5 $((CLIENT_COUNT / 500 + 60)) "${on_load[@]}" "$bin" client "$addr" \
    "${flags[@]+"${flags[@]}"}" --interval 0 --count "$CLIENT_COUNT" --sensor rtt --link-report 0 --json \
    > "$tmp/client.out" || [ $? -eq 1 ]
  stop_pid "$server_pid"
  keep "$tmp/client.out" "tls-rtt-$mode-$rep.jsonl"
  jq -c 'select(.event == "summary") | .summary
    | {p50: .rtt.p50_us, p99: .rtt.p99_us, rate: (.acked / .duration_ms * 1000), lost}' \
    "$tmp/client.out" >> "$tmp/rtt-$mode.jsonl"
}

# ingest MODE PIPELINE BATCH: one bench run (through the relay unless direct); appends the
# bench's JSON plus the server's CPU µs per reading to $tmp/ingest-MODE-P-B.jsonl.
ingest() {
  local mode=$1 p=$2 b=$3 target relay_pid='' c0 c1 port flags=()
  server "$mode"
  target=$addr
  if [ -n "$direct" ]; then
    [ "$mode" = tls ] && flags=(--tls --ca "$ca")
  else
    port=$(free_port)
    local upstream="TCP:$addr"
    [ "$mode" = tls ] && upstream="OPENSSL:$addr,cafile=$ca,verify=1,commonname=localhost"
    # 128 KiB copy buffers: socat's default 8 KiB caps a pipelined run at a fraction of it.
    start_bg "$tmp/relay.out" "${on_load[@]}" socat -b 131072 "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr,backlog=128" "$upstream"
    relay_pid=$last_pid
    wait_tcp "$port"
    target=127.0.0.1:$port
  fi
  c0=$(ticks "$server_pid")
  ours_bench "$tmp/run.json" $((DURATION + 40)) "$target" "${flags[@]+"${flags[@]}"}" --connections 50 \
    --pipeline "$p" --batch "$b" --warmup 1s --duration "${DURATION}s"
  c1=$(ticks "$server_pid")
  # The server first: its connections close, so the relay's children end on their own.
  stop_pid "$server_pid"
  [ -n "$relay_pid" ] && stop_pid "$relay_pid" 2
  keep "$tmp/run.json" "tls-ingest-$mode-$p-$b-$rep.json"
  # Server CPU over the whole bench run (warm-up included) per reading acked while measured:
  # an upper bound, the same for both sides.
  jq -c --argjson cpu "$(awk -v a="$c0" -v b="$c1" -v hz="$clk" 'BEGIN { printf "%.4f", (b - a) / hz }')" \
    '. + {server_cpu_s: $cpu}' "$tmp/run.json" >> "$tmp/ingest-$mode-$p-$b.jsonl"
}

header
if [ -n "$direct" ]; then
  echo "round trip and ingest: sensorlink bench, plain and --tls --ca ca.pem (the server's certificate from sensorlink cert)"
  rtt_what="sensorlink bench --connections 1 --pipeline 1 --batch 1"
else
  echo "this sensorlink bench has no --tls: ingest through a socat relay on the load core → server; plain: TCP → TCP, TLS: TCP → OPENSSL ($(socat -V | sed -n 's/^socat version \([^ ]*\).*/socat \1/p'))"
  echo "round trip: sensorlink client --interval 0 --count $CLIENT_COUNT, plain and --tls --ca ca.pem"
  rtt_what="client --interval 0"
fi
for rep in $(seq "$REPS"); do
  if [ $((rep % 2)) -eq 1 ]; then order="plain tls"; else order="tls plain"; fi
  for mode in $order; do rtt "$mode"; done
  for c in $CONFIGS; do
    for mode in $order; do ingest "$mode" "${c%/*}" "${c#*/}"; done
  done
done

cpu='.server_cpu_s / (.readings_per_sec * .seconds) * 1e6'
echo
echo "| figure | plain TCP | spread | TLS | spread | TLS ÷ plain |"
echo "|---|---:|---:|---:|---:|---:|"
for q in p50 p99; do
  pl=$(jmed "$tmp/rtt-plain.jsonl" ".$q") tl=$(jmed "$tmp/rtt-tls.jsonl" ".$q")
  echo "| round trip $q µs, $rtt_what | $(us "$pl") | $(spread_pct "$tmp/rtt-plain.jsonl" ".$q") % | $(us "$tl") | $(spread_pct "$tmp/rtt-tls.jsonl" ".$q") % | $(ratio "$tl" "$pl")× |"
done
for c in $CONFIGS; do
  fp=$tmp/ingest-plain-${c%/*}-${c#*/}.jsonl ft=$tmp/ingest-tls-${c%/*}-${c#*/}.jsonl
  pl=$(jmed "$fp" .readings_per_sec) tl=$(jmed "$ft" .readings_per_sec)
  echo "| readings/s, \`--connections 50 --pipeline ${c%/*} --batch ${c#*/}\` | $(num "$pl") | $(spread_pct "$fp" .readings_per_sec) % | $(num "$tl") | $(spread_pct "$ft" .readings_per_sec) % | $(ratio "$tl" "$pl")× |"
  pl=$(jmed "$fp" "$cpu") tl=$(jmed "$ft" "$cpu")
  echo "| server CPU µs per reading, same runs | $(printf '%.2f' "$pl") | | $(printf '%.2f' "$tl") | | $(ratio "$tl" "$pl")× |"
done
echo
echo "errors: plain $(jq -s 'map(.errors) | add' "$tmp"/ingest-plain-*.jsonl), TLS $(jq -s 'map(.errors) | add' "$tmp"/ingest-tls-*.jsonl); round trip errors (or readings lost by the client): plain $(jq -s 'map(.lost) | add' "$tmp/rtt-plain.jsonl"), TLS $(jq -s 'map(.lost) | add' "$tmp/rtt-tls.jsonl")"
echo "(server CPU: utime + stime over the whole bench run, warm-up included, ÷ readings acked while measured: an upper bound, alike for both sides)"
footer
echo

for q in p50 p99; do
  pl=$(jmed "$tmp/rtt-plain.jsonl" ".$q") tl=$(jmed "$tmp/rtt-tls.jsonl" ".$q")
  result "tls-rtt-$q" "round trip $q, 1 in flight, TLS beside plain TCP ($rtt_what, memory store)" \
    "$(us "$tl") µs" "plain $(us "$pl") µs" "$(ratio "$tl" "$pl")×" \
    "$(spreads "$(spread_pct "$tmp/rtt-tls.jsonl" ".$q")" "$(spread_pct "$tmp/rtt-plain.jsonl" ".$q")")" "report" "measured"
done
via=", through a socat relay (the relay may limit the rate: server CPU per reading beside it)"
[ -n "$direct" ] && via=
first=1
cpu='.server_cpu_s / (.readings_per_sec * .seconds) * 1e6'
for c in $CONFIGS; do
  fp=$tmp/ingest-plain-${c%/*}-${c#*/}.jsonl ft=$tmp/ingest-tls-${c%/*}-${c#*/}.jsonl
  pl=$(jmed "$fp" .readings_per_sec) tl=$(jmed "$ft" .readings_per_sec)
  pc=$(jmed "$fp" "$cpu") tc=$(jmed "$ft" "$cpu")
  key=tls-ingest
  [ "$first" = 1 ] || key=tls-ingest-${c%/*}-${c#*/}
  first=
  result "$key" "pipelined memory ingest, TLS beside plain TCP, \`--connections 50 --pipeline ${c%/*} --batch ${c#*/}\`$via" \
    "$(num "$tl") readings/s, server $(printf '%.2f' "$tc") µs CPU/reading" \
    "plain $(num "$pl") readings/s, $(printf '%.2f' "$pc") µs" "$(ratio "$tl" "$pl")× rate, $(ratio "$tc" "$pc")× CPU" \
    "$(spreads "$(spread_pct "$ft" .readings_per_sec)" "$(spread_pct "$fp" .readings_per_sec)")" "report" "measured"
done
