#!/usr/bin/env bash
# Debian packages the test suite needs, named by the caller (test.sh): today
# fonts-dejavu-core (the font run pictures are drawn with), chromium, nodejs + npm (the
# dashboard's browser tests; test.sh names them only when node is missing, and
# scripts/check-node.sh then checks the version), iproute2 and irtt (the fault scenarios of
# tests/faults/: network namespaces, and the UDP reference tool), postgresql and haproxy
# (issue 12: tests start a throwaway PostgreSQL cluster, tests/support/pg_cluster.rs, and
# HAProxy in front of several collectors, tests/support/haproxy.rs). SQLite is bundled into
# the binary.
set -euo pipefail
need=()
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then echo "missing packages: ${need[*]} (run as root)" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup)" >&2; exit 1; }
