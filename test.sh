#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs unit, property and
# integration tests (the integration tests start the real binary on loopback).
set -euo pipefail
cd "$(dirname "$0")"
# fonts-dejavu-core: the font `client --report` / `bench --report` draw their text with.
# chromium + node: the dashboard's browser tests (tests/it/dashboard.rs, tests/browser/).
# iproute2 + irtt: the fault scenarios (tests/faults/: `ip netns`, and irtt as the
# reference beside `sensorlink probe`).
# postgresql + haproxy: the PostgreSQL store's tests and the several-collectors tests start
# their own cluster and balancer (tests/support/).
pkgs=(fonts-dejavu-core chromium iproute2 irtt postgresql haproxy jq)
# Node may come from NodeSource (its nodejs bundles npm, and conflicts with Debian's npm
# package), from nvm or a tarball (no dpkg entry at all), or from Debian (nodejs and npm are
# separate packages): only a machine without any node gets Debian's.
if ! command -v node >/dev/null; then pkgs+=(nodejs npm); fi
bash scripts/install-test-deps.sh "${pkgs[@]}"
bash scripts/check-node.sh 20
# Their driver (playwright-core, which uses Debian's chromium and downloads no browser), from
# its lock file, when node_modules is missing or older than the lock file.
if [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  npm ci --prefix tests/browser --no-audit --no-fund
fi
cargo test --all-targets --locked "$@"
# Issue 10's attack scenarios at full size (2,000 idle + 500 slowloris peers beside a client;
# 200,000 new series from one peer), #[ignore]d in plain `cargo test` for their size, run
# here on their own (~20 s) when the whole suite runs.
if [ $# -eq 0 ]; then
  cargo test --locked --test it -- --ignored --exact \
    limits::thousands_of_idle_and_slowloris_peers_leave_room_for_a_client \
    limits::two_hundred_thousand_new_series_leave_memory_bounded
fi
