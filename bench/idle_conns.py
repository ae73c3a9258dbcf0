#!/usr/bin/env python3
"""Hold N idle line-mode connections to a sensorlink server, plain or TLS, for bench/tls-idle.sh.

    python3 bench/idle_conns.py ADDR N [--tls CA_PEM] [--hold SECONDS]

Opens N connections one after another (TLS: handshake with the server name `localhost`,
verified against CA_PEM), sends `ping\\n` on each and reads its `pong\\n` (so each has passed
the server's first-line rule and is in line mode), prints `ready N` on stdout, then holds
them all silent until it is terminated or SECONDS pass (default 120). Loopback only.
"""

import resource
import socket
import ssl
import sys
import time


def main():
    args = sys.argv[1:]
    addr, n = args[0], int(args[1])
    ca = args[args.index("--tls") + 1] if "--tls" in args else None
    hold = float(args[args.index("--hold") + 1]) if "--hold" in args else 120.0
    host, port = addr.rsplit(":", 1)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    context = None
    if ca:
        context = ssl.create_default_context(cafile=ca)
    held = []
    for _ in range(n):
        sock = socket.create_connection((host, int(port)), timeout=30)
        if context:
            sock = context.wrap_socket(sock, server_hostname="localhost")
        sock.sendall(b"ping\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(64)
            if not chunk:
                sys.exit(f"connection {len(held)} closed before its pong")
            reply += chunk
        if reply != b"pong\n":
            sys.exit(f"unexpected reply {reply!r}")
        held.append(sock)
    print(f"ready {len(held)}", flush=True)
    # Silent until terminated (the script stops it by PID) or the bound passes.
    time.sleep(hold)
    for sock in held:
        sock.close()


if __name__ == "__main__":
    main()
