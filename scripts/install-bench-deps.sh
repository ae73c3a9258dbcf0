#!/usr/bin/env bash
# Debian packages the side-by-side benchmarks (bench/*.sh) need: the reference tools and the
# helpers the scripts use. With arguments, installs only those packages; without, all of them.
#   sockperf                  bench/roundtrip.sh   (TCP ping-pong reference)
#   redis-server redis-tools  bench/pipelined.sh   (redis-server + redis-benchmark)
#   influxdb curl             bench/influx.sh      (influxd 1.6, database creation)
#   wrk                       bench/influx.sh      (HTTP /write load with a Lua script)
#   python3                   bench/seed.sh        (the seed-style server), bench/influx.sh
#   jq                        every script         (medians of the JSON reports)
#   linux-perf                profiling (BENCHMARKS.md, "Profile")
# Package post-install scripts must not start services (redis, influxd would listen on
# their default ports): Debian containers ship /usr/sbin/policy-rc.d that refuses them; if
# it is missing, one is put there for the install and removed after.
set -euo pipefail
all=(sockperf redis-server redis-tools influxdb curl wrk python3 jq linux-perf)
[ "$#" -gt 0 ] || set -- "${all[@]}"
need=()
for pkg in "$@"; do
  dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed' || need+=("$pkg")
done
[ "${#need[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then echo "missing packages: ${need[*]} (run as root)" >&2; exit 1; fi
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
# A package list older than a day (or none) is refreshed first.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
  apt-get update -qq
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
