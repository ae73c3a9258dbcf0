#!/usr/bin/env bash
# Checks that node (major version ≥ $1) and npm are on PATH, for the dashboard's browser
# tests (playwright-core's engines); says exactly what to do when they are not.
set -euo pipefail
min="${1:?usage: check-node.sh MIN_MAJOR}"
if ! command -v node >/dev/null; then
  echo "node not found: install Node $min or later (e.g. apt-get install nodejs npm on Debian 13+," >&2
  echo "  or NodeSource's nodejs $min.x package, or nvm)" >&2
  exit 1
fi
version="$(node --version)"
major="${version#v}"
major="${major%%.*}"
if ! [[ "$major" =~ ^[0-9]+$ ]] || [ "$major" -lt "$min" ]; then
  echo "node $version is too old for the browser tests (playwright-core needs Node >= $min)." >&2
  if dpkg -s nodejs 2>/dev/null | grep -q '^Version:' && ! dpkg -s nodejs | grep -q '^Version:.*nodesource'; then
    echo "  It is Debian's nodejs package: replace it with NodeSource's Node $min.x" >&2
    echo "  (https://github.com/nodesource/distributions: apt-get remove nodejs npm, add the" >&2
    echo "  node_$min.x repository, apt-get install nodejs — it bundles npm), or install Node $min+" >&2
    echo "  with nvm ahead of it on PATH; then rerun test.sh." >&2
  else
    echo "  Install Node $min or later (NodeSource's nodejs $min.x, or nvm) ahead of it on PATH" >&2
    echo "  and rerun test.sh." >&2
  fi
  exit 1
fi
if ! command -v npm >/dev/null; then
  echo "npm not found beside node $version: with Debian's nodejs, apt-get install npm;" >&2
  echo "  NodeSource's nodejs and nvm bring their own npm (reinstall node that way)." >&2
  exit 1
fi
