#!/usr/bin/env bash
# The raw SQLite ceiling alone (benches/sqlite_ceiling.rs: rusqlite, our schema and pragmas,
# synchronous=FULL, prepared inserts, one writer) at each of ROWS (default "1 100 5000") rows
# per transaction, rows spread over SERIES (default 1) series, pinned on the server core
# (PIN=0: unpinned). Each run: a fresh database, 1 s warm-up, DURATION (default 5) s measured;
# REPS (default 3) reps, the sizes interleaved. Prints a Markdown table of medians and spreads;
# bench/influx.sh measures the same bench beside our server at our own rows per transaction.
# Bounded: ROWS × REPS runs of DURATION + 1 s (≈ 1 min at the defaults). OUT=DIR keeps raw output.
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-5}
REPS=${REPS:-3}
ROWS=${ROWS:-"1 100 5000"}
SERIES=${SERIES:-1}
bash scripts/install-bench-deps.sh jq
ceiling_bin=${CEILING_BIN:-$(cargo bench --bench sqlite_ceiling --no-run --quiet \
  --message-format=json-render-diagnostics |
  jq -r 'select(.reason == "compiler-artifact" and .target.name == "sqlite_ceiling") | .executable // empty' |
  tail -1)}
[ -x "$ceiling_bin" ] || { echo "no sqlite_ceiling bench binary ($ceiling_bin)" >&2; exit 2; }

header
echo "ceiling: $ceiling_bin; $SERIES series; database in $tmp ($(df -T "$tmp" | awk 'NR == 2 { print $2 }'))"
for rep in $(seq "$REPS"); do
  for rows in $ROWS; do
    cmdlog "$ceiling_bin" --bench --rows-per-txn "$rows" --series "$SERIES" --warmup 1 --seconds "$DURATION" --db DB
    "${on_server[@]}" timeout $((DURATION + 60)) "$ceiling_bin" --bench --rows-per-txn "$rows" \
      --series "$SERIES" --warmup 1 --seconds "$DURATION" --db "$(fresh_db)" > "$tmp/run.json"
    cat "$tmp/run.json" >> "$tmp/ceiling-$rows.jsonl"
    keep "$tmp/run.json" "ceiling-$rows-$rep.json"
  done
done

echo
echo "| rows per transaction | rows/s | transactions/s | spread | |"
echo "|---:|---:|---:|---:|---|"
for rows in $ROWS; do
  f="$tmp/ceiling-$rows.jsonl"
  s=$(spread_pct "$f" .rows_per_sec)
  flag=
  if noisy "$s"; then flag="**noisy** (spread > ${NOISY_PCT} %)"; fi
  echo "| $rows | $(int "$(jmed "$f" .rows_per_sec)") | $(int "$(jmed "$f" '.txns / .seconds')") | $s % | $flag |"
done
