#!/usr/bin/env python3
"""The seed's server design, as a baseline: one thread per connection, `listen(5)`, and for
every `recv(1024)` the answer `pong`, whatever arrived (it stores nothing).

    python3 bench/seed_server.py PORT [--quiet]

Binds 127.0.0.1:PORT (0 picks a free port) and prints `listening on 127.0.0.1:PORT`. Like
the seed, it prints `Received: <data>` for every message, on stdout; `--quiet` leaves that
out. Runs until killed (SIGTERM/SIGINT).
"""

import signal
import socket
import sys
import threading


def handle(conn, quiet):
    with conn:
        while True:
            try:
                data = conn.recv(1024)
            except OSError:
                return
            if not data:
                return
            if not quiet:
                print(f"Received: {data.decode(errors='replace')}")
            try:
                conn.sendall(b"pong")
            except OSError:
                return


def main():
    args = [a for a in sys.argv[1:] if a != "--quiet"]
    quiet = "--quiet" in sys.argv[1:]
    if len(args) != 1:
        sys.exit("usage: seed_server.py PORT [--quiet]")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", int(args[0])))
    server.listen(5)
    print(f"listening on 127.0.0.1:{server.getsockname()[1]}", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn, quiet), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
