#!/usr/bin/env bash
# The fault scenarios (tests/faults/) on their own, as root: two network namespaces joined by
# a user-space link emulator (TUN devices + relay threads, no qdisc), with delay, jitter,
# loss, outages and a SIGSTOPped server injected; `sensorlink client`, irtt and (once it
# exists) `sensorlink probe` measure them. Prints the measured-vs-injected table (BENCHMARKS.md,
# under faults.sh: bench/all.sh runs it as root) with the date and commit. ≈ 2.5 min.
# Debug build, like `cargo test`: the figures compare against the injected conditions and a
# baseline taken on the same link in the same test, not against speed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then echo "bench/faults.sh: needs root (network namespaces)" >&2; exit 1; fi
bash scripts/install-test-deps.sh iproute2 irtt
table="${CARGO_TARGET_DIR:-target}/tmp/faults-table.md"
rm -f "$table"
log=$(mktemp /tmp/sensorlink-faults.XXXXXX)
trap 'rm -f "$log"' EXIT
start=$(date -u '+%Y-%m-%d %H:%M')
SENSORLINK_REQUIRE_NETNS=1 cargo test --locked --test faults -- --nocapture >"$log" 2>&1 || {
  grep -E 'injected:|panicked|SKIPPED|test result' -A3 "$log" >&2; exit 1; }
grep -E '^relay |: injected: ' "$log"
echo
echo "$start–$(date -u '+%H:%M') UTC, commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' + local changes'), $(uname -r), nproc $(nproc)"
echo
cat "$table"
