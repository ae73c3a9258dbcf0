#!/usr/bin/env bash
# Run every fuzz target for SECONDS (default 60) each, one after another, on the stable
# toolchain (RUSTC_BOOTSTRAP=1 unlocks the sanitizer flags cargo-fuzz needs). Installs
# cargo-fuzz if it is missing. Prints each target's executions; exits non-zero, naming the
# target, if one found a crash (the input is left in fuzz/artifacts/<target>/).
#
#   fuzz/run.sh 60
#
# The corpus grows in fuzz/corpus/<target>/; only the seed-* files are kept in git.
set -euo pipefail

seconds="${1:-60}"
case "$seconds" in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS]" >&2
    exit 2
    ;;
esac
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=(line_decoder ilp_parse legacy_decoder control_line probe_wire proxy_header)
# Build all first, so the time budget goes to fuzzing, not to compiling.
cargo fuzz build

failed=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="artifacts/$target/last-run.log"
    # -jobs/-workers stay at 1: the machine is shared; rss_limit keeps a leak from
    # taking it down.
    if cargo fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024 -max_len=4096 -print_final_stats=1 \
        >"$log" 2>&1; then
        outcome=ok
    else
        outcome=CRASH
        failed+=("$target")
    fi
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
    corpus=$(find "corpus/$target" -type f | wc -l)
    echo "$target: $outcome, $runs executions in ${seconds}s, corpus $corpus files (log: fuzz/$log)"
done

if ((${#failed[@]})); then
    echo "crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
