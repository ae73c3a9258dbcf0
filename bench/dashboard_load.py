#!/usr/bin/env python3
"""What an open live dashboard asks of the HTTP side, for bench/dashboard.sh.

    python3 bench/dashboard_load.py HTTP_URL [--subscribers N] [--seconds S]

HTTP_URL is the server's `http on` address (`http://127.0.0.1:PORT/`). Mirrors the page's
requests (src/http/assets/app.js): N subscribers (default 5), each like one open sensor list
page: `GET /api/sensors?limit=50&offset=0`, then the event stream
`GET /api/events?every=250ms&sensor=<those names>` (every sensor while there are none yet), read to its
end; after `lagged` (the server ends a stream that falls behind) it reconnects after 100 ms
and refetches the page, as the page does, after any other end after 500 ms. Beside them, one
poller asks `/api/server`, `/api/sensors?limit=50&offset=0` and `/metrics` once a second (the
page refreshes every 3 s; a Prometheus scrape and a second page make up the rest).
Runs S seconds (default 10), then prints one JSON object: events by type, reconnects, polls
and errors. Loopback only; stdlib only.
"""

import http.client
import json
import sys
import threading
import time
import urllib.parse


def arg(args, name, default):
    return type(default)(args[args.index(name) + 1]) if name in args else default


class Totals:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}

    def add(self, key, n=1):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n


def get(host, port, path, timeout=10.0):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Cache-Control": "no-store"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body
    finally:
        conn.close()


def page_names(host, port):
    status, body = get(host, port, "/api/sensors?limit=50&offset=0")
    if status != 200:
        raise OSError(f"/api/sensors: HTTP {status}")
    page = json.loads(body)
    items = page.get("sensors", page.get("items", [])) if isinstance(page, dict) else page
    return [s["sensor"] for s in items if isinstance(s, dict) and "sensor" in s]


def subscriber(host, port, deadline, totals):
    while time.monotonic() < deadline:
        lagged = False
        try:
            names = page_names(host, port)
            # As the list page: readings folded to the newest per sensor every 250 ms.
            path = "/api/events?every=250ms"
            if names:
                path += "&sensor=" + urllib.parse.quote(",".join(names), safe=",")
            conn = http.client.HTTPConnection(host, port, timeout=max(1.0, deadline - time.monotonic()))
            conn.request("GET", path, headers={"Accept": "text/event-stream"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise OSError(f"/api/events: HTTP {resp.status}")
            totals.add("streams")
            while time.monotonic() < deadline:
                line = resp.fp.readline()
                if not line:
                    break
                if line.startswith(b"event:"):
                    kind = line[6:].strip().decode(errors="replace")
                    totals.add("event_" + kind)
                    lagged = lagged or kind == "lagged"
            conn.close()
        except (OSError, ValueError, http.client.HTTPException):
            if time.monotonic() >= deadline:
                break
            totals.add("stream_errors")
        if time.monotonic() < deadline:
            totals.add("reconnects")
            time.sleep(0.1 if lagged else 0.5)


def poller(host, port, deadline, totals):
    paths = ["/api/server", "/api/sensors?limit=50&offset=0", "/metrics"]
    while time.monotonic() < deadline:
        started = time.monotonic()
        for path in paths:
            try:
                status, _ = get(host, port, path)
                totals.add("polls" if status == 200 else "poll_errors")
            except (OSError, http.client.HTTPException):
                totals.add("poll_errors")
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


def main():
    args = sys.argv[1:]
    url = urllib.parse.urlsplit(args[0])
    host, port = url.hostname, url.port
    n = arg(args, "--subscribers", 5)
    seconds = arg(args, "--seconds", 10.0)
    deadline = time.monotonic() + seconds
    totals = Totals()
    threads = [threading.Thread(target=subscriber, args=(host, port, deadline, totals), daemon=True) for _ in range(n)]
    threads.append(threading.Thread(target=poller, args=(host, port, deadline, totals), daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()) + 15)
    with totals.lock:
        print(json.dumps(dict(sorted(totals.counts.items()))), flush=True)


if __name__ == "__main__":
    main()
