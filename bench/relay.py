"""A TCP relay that makes a local S3 behave more like the cloud one: latency and a per-connection cap.

On a local emulator every request costs well under a millisecond and one connection
carries gigabytes a second; in AWS each request costs tens of milliseconds and one S3
stream carries about 90 MB/s. Both hide what concurrency and ranged reads are worth.
Put this relay in front of the emulator and point every tool of a comparison at it:

- ``--latency-ms N``: each request (a chunk from the client that starts with an HTTP
  method) waits N ms before it is forwarded: one round trip's worth.
- ``--rate-mbps R``: each connection carries at most R MB/s in each direction (a token
  bucket per connection and direction, MB = 10^6 bytes).

Responses are moved with ``splice(2)`` through a pipe, never copied into the relay, so the
relay itself costs little CPU beside what it measures (one thread per connection and
direction, blocked in the kernel).

Run it on its own (``python bench/relay.py --upstream 127.0.0.1:5000 --latency-ms 40``
prints ``relay listening on 127.0.0.1:PORT``) or start it from a benchmark with
:func:`start_relay`. Plain HTTP only; loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_REQUEST = re.compile(rb"^(GET|PUT|POST|HEAD|DELETE|OPTIONS|PATCH) ")
_STEP = 1024 * 1024  # the most one splice or recv moves; also the token bucket's grain
_PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ on Linux (the constant is in fcntl from Python 3.10)


@dataclass(frozen=True)
class Shape:
    latency: float  # seconds added to each request
    rate: float  # bytes a second per connection and direction; 0 = no cap


class _Bucket:
    """A token bucket: ``take(n)`` sleeps until n more bytes may pass at ``rate`` bytes/s."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._start = time.monotonic()
        self._sent = 0

    def take(self, size: int) -> None:
        if self._rate <= 0:
            return
        self._sent += size
        due = self._start + self._sent / self._rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        elif now - due > 0.25:  # idle time does not bank a burst of more than 250 ms
            self._start, self._sent = now - 0.25, int(self._rate * 0.25)


def _requests(source: socket.socket, target: socket.socket, shape: Shape) -> None:
    """Client to server: each chunk that starts a request waits ``latency`` first (read to look at it)."""
    bucket = _Bucket(shape.rate)
    while True:
        data = source.recv(_STEP)
        if not data:
            return
        if shape.latency and _REQUEST.match(data):
            time.sleep(shape.latency)
        bucket.take(len(data))
        target.sendall(data)


def _responses(source: socket.socket, target: socket.socket, shape: Shape) -> None:
    """Server to client: spliced through a pipe in the kernel, never copied into this process."""
    bucket = _Bucket(shape.rate)
    read_end, write_end = os.pipe()
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_end, _F_SETPIPE_SZ, _PIPE_SIZE)
        step = _STEP if shape.rate <= 0 else max(16 * 1024, min(_STEP, int(shape.rate / 100)))
        while True:
            moved = os.splice(source.fileno(), write_end, step)
            if moved == 0:
                return
            bucket.take(moved)
            while moved:
                moved -= os.splice(read_end, target.fileno(), moved)
    finally:
        os.close(read_end)
        os.close(write_end)


def _pump(
    direction: Callable[[socket.socket, socket.socket, Shape], None],
    source: socket.socket,
    target: socket.socket,
    shape: Shape,
) -> None:
    try:
        direction(source, target, shape)
    except OSError:
        pass
    finally:
        # Half-close what this direction writes; the other direction ends on its own.
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


def _connection(client: socket.socket, upstream: tuple[str, int], shape: Shape) -> None:
    try:
        server = socket.create_connection(upstream)
    except OSError:
        client.close()
        return
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=_pump, args=(_responses, server, client, shape), daemon=True)
    back.start()
    _pump(_requests, client, server, shape)
    back.join()
    client.close()
    server.close()


def _serve(listen: tuple[str, int], upstreams: list[tuple[str, int]], shape: Shape) -> None:
    """Accept forever; one thread per connection and direction (they spend their time in the kernel).

    Connections go to the upstreams in turn: several processes of a single-threaded
    server over the same data serve as one faster server.
    """
    listener = socket.create_server(listen, backlog=256)
    print(f"relay listening on {listen[0]}:{listener.getsockname()[1]}", flush=True)
    for upstream in itertools.cycle(upstreams):
        client, _ = listener.accept()
        threading.Thread(target=_connection, args=(client, upstream, shape), daemon=True).start()


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def start_relay(
    upstream: str, *, latency_ms: float = 0, rate_mbps: float = 0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the relay as a process in front of ``upstream`` (``http://host:port``, several
    comma-separated); returns it and its URL."""
    target = ",".join(one.strip().removeprefix("http://").rstrip("/") for one in upstream.split(","))
    process = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--upstream",
            target,
            "--latency-ms",
            str(latency_ms),
            "--rate-mbps",
            str(rate_mbps),
        ],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith("relay listening on "):
        process.kill()
        raise RuntimeError(f"relay did not start: {line!r}")
    return process, "http://" + line.split()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:0", help="host:port to listen on (port 0: any free one)"
    )
    parser.add_argument(
        "--upstream",
        required=True,
        help="host:port of the server behind the relay (several: comma-separated, in turn)",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to each request")
    parser.add_argument(
        "--rate-mbps", type=float, default=0.0, help="cap per connection and direction (MB/s)"
    )
    args = parser.parse_args()
    shape = Shape(latency=args.latency_ms / 1000, rate=args.rate_mbps * 1_000_000)
    with contextlib.suppress(KeyboardInterrupt):
        _serve(_host_port(args.listen), [_host_port(one) for one in args.upstream.split(",")], shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
