#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs unit, property and
# integration tests (the integration tests start the real binary on loopback).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install-test-deps.sh
cargo test --all-targets --locked "$@"
