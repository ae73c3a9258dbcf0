#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs unit, property and
# integration tests (the integration tests start the real binary on loopback).
set -euo pipefail
cd "$(dirname "$0")"
# fonts-dejavu-core: the font `client --report` / `bench --report` draw their text with.
# chromium + nodejs: the dashboard's browser tests (tests/it/dashboard.rs, tests/browser/).
bash scripts/install-test-deps.sh fonts-dejavu-core chromium nodejs
# Their driver (playwright-core, which uses Debian's chromium and downloads no browser), from
# its lock file, when node_modules is missing or older than the lock file.
if [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  npm ci --prefix tests/browser --no-audit --no-fund
fi
cargo test --all-targets --locked "$@"
