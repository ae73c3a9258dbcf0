#!/usr/bin/env python3
"""HTTP /write load for InfluxDB 1.x: the same line-protocol readings `sensorlink bench` sends.

One thread per connection, each on one keep-alive `http.client` connection, each sending
`--batch` lines per request and waiting for its 204 before the next (one request in flight,
as InfluxDB's clients do). Lines look like `sensorlink bench`'s:

    bench,sensor=bench-<conn> f0=<v> <timestamp ns>

Every point is unique: connection `c` writes series `sensor=bench-<c>`, and request `j` of it
carries the timestamps H_j * 10^4 + i (i = 0 … batch-1), H_j distinct per request. The body
is built once per connection with a 15-byte placeholder for H in each line; a request only
replaces the placeholder (`bytes.replace`, C speed), so the loader stays cheap.

Loopback only (--host must be in 127.0.0.0/8); bounded by --duration and --max-requests.
Prints one JSON object like `sensorlink bench --json`: readings (points acknowledged with
204 during the measurement), seconds, readings_per_sec, errors, latency_us per request, and
the loader's own CPU seconds.
"""

import argparse
import http.client
import ipaddress
import json
import resource
import sys
import threading
import time

PLACEHOLDER = b"@" * 15


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--db", default="b")
    ap.add_argument("--batch", type=int, default=1, help="lines per request (≤ 10000)")
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds not measured, first")
    ap.add_argument("--max-requests", type=int, default=1_000_000, help="per connection")
    args = ap.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        sys.exit("influx_load: --host must be a loopback address")
    if not 1 <= args.batch <= 10_000:
        sys.exit("influx_load: --batch must be 1 to 10000")

    h0 = time.time_ns() // 10_000
    start = time.monotonic()
    measure_from = start + args.warmup
    stop_at = measure_from + args.duration
    lock = threading.Lock()
    totals = {"readings": 0, "requests": 0, "errors": 0, "last": measure_from, "first_error": None}
    latencies = []

    def worker(conn_index):
        lines = []
        for i in range(args.batch):
            v = (i * 31) % 10_000
            lines.append(b"bench,sensor=bench-%d f0=%d.%d %s%04d\n" % (conn_index, v // 10, v % 10, PLACEHOLDER, i))
        template = b"".join(lines)
        path = "/write?db=%s" % args.db
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        conn = http.client.HTTPConnection(args.host, args.port, timeout=30)
        readings = requests = errors = 0
        last = measure_from
        lat = []
        first_error = None
        # Disjoint H per connection: H = h0 + j * connections + conn_index.
        for j in range(args.max_requests):
            if time.monotonic() >= stop_at:
                break
            h = b"%015d" % (h0 + j * args.connections + conn_index)
            body = template.replace(PLACEHOLDER, h)
            t0 = time.monotonic()
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                ok = resp.status == 204
            except (OSError, http.client.HTTPException) as err:
                ok = False
                payload = repr(err).encode()
                conn.close()
                conn = http.client.HTTPConnection(args.host, args.port, timeout=30)
            t1 = time.monotonic()
            if not ok:
                errors += 1
                if first_error is None:
                    first_error = payload[:200].decode(errors="replace")
                continue
            if t0 >= measure_from:
                readings += args.batch
                requests += 1
                last = t1
                lat.append((t1 - t0) * 1e6)
        conn.close()
        with lock:
            totals["readings"] += readings
            totals["requests"] += requests
            totals["errors"] += errors
            totals["last"] = max(totals["last"], last)
            totals["first_error"] = totals["first_error"] or first_error
            latencies.extend(lat)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = max(totals["last"] - measure_from, 1e-9)
    latencies.sort()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = {
        "readings": totals["readings"],
        "requests": totals["requests"],
        "seconds": seconds,
        "readings_per_sec": totals["readings"] / seconds,
        "errors": totals["errors"],
        "first_error": totals["first_error"],
        "connections": args.connections,
        "batch": args.batch,
        "latency_us": {
            "p50": percentile(latencies, 0.50),
            "p90": percentile(latencies, 0.90),
            "p99": percentile(latencies, 0.99),
            "max": latencies[-1] if latencies else 0.0,
        },
        "loader_cpu_s": usage.ru_utime + usage.ru_stime,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
