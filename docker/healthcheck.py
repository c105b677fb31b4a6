#!/usr/bin/env python3
"""Container health check with nothing but the standard library (no curl in the images).

    healthcheck.py http /healthz --port-env EGRESS_METRICS_PORT --port 9090
    healthcheck.py tcp --port-env SFT_RECEIVER_PORT --port 8091

``http``: GET http://127.0.0.1:<port><path>; healthy on 2xx. ``tcp``: healthy if the port
accepts a connection (for the mTLS receiver, whose every request needs a client
certificate). The port is read from the named environment variable, else ``--port``.
Exit 0 healthy, 1 unhealthy: what Docker's HEALTHCHECK expects.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    """Run one check and return the exit code."""
    parser = argparse.ArgumentParser(prog="healthcheck.py")
    parser.add_argument("kind", choices=["http", "tcp"])
    parser.add_argument("path", nargs="?", default="/healthz")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port-env", default="")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    port = int(os.environ.get(args.port_env, "") or args.port) if args.port_env else args.port
    try:
        if args.kind == "tcp":
            socket.create_connection((args.host, port), timeout=args.timeout).close()
            return 0
        url = f"http://{args.host}:{port}{args.path}"
        with urllib.request.urlopen(url, timeout=args.timeout) as response:  # noqa: S310 - loopback only
            return 0 if 200 <= response.status < 300 else 1
    except (OSError, urllib.error.URLError, ValueError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
