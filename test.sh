#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs unit, property and
# integration tests (the integration tests start the real binary on loopback).
set -euo pipefail
cd "$(dirname "$0")"
# fonts-dejavu-core: the font `client --report` / `bench --report` draw their text with.
bash scripts/install-test-deps.sh fonts-dejavu-core
cargo test --all-targets --locked "$@"
