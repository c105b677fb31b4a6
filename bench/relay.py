"""A TCP relay that makes a local S3 behave more like the cloud one: latency and a per-connection cap.

On a local emulator every request costs well under a millisecond and one connection
carries gigabytes a second; in AWS each request costs tens of milliseconds and one S3
stream carries about 90 MB/s. Both hide what concurrency and ranged reads are worth.
Put this relay in front of the emulator and point every tool of a comparison at it:

- ``--latency-ms N``: each request (a chunk from the client that starts with an HTTP
  method) waits N ms before it is forwarded: one round trip's worth.
- ``--rate-mbps R``: each connection carries at most R MB/s in each direction (a token
  bucket per connection and direction, MB = 10^6 bytes).

Run it on its own (``python bench/relay.py --upstream 127.0.0.1:5000 --latency-ms 40``
prints ``relay listening on 127.0.0.1:PORT``) or start it from a benchmark with
:func:`start_relay`. Plain HTTP only; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_REQUEST = re.compile(rb"^(GET|PUT|POST|HEAD|DELETE|OPTIONS|PATCH) ")
_READ = 256 * 1024


@dataclass(frozen=True)
class Shape:
    latency: float  # seconds added to each request
    rate: float  # bytes a second per connection and direction; 0 = no cap


class _Bucket:
    """A token bucket: ``take(n)`` sleeps until n bytes may pass at ``rate`` bytes/s."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._start = time.monotonic()
        self._sent = 0

    async def take(self, size: int) -> None:
        if self._rate <= 0:
            return
        self._sent += size
        due = self._start + self._sent / self._rate
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > 0.25:  # idle time does not bank a burst of more than 250 ms
            self._start, self._sent = now - 0.25, int(self._rate * 0.25)


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, shape: Shape, *, requests: bool
) -> None:
    bucket = _Bucket(shape.rate)
    try:
        while True:
            data = await reader.read(_READ)
            if not data:
                break
            if requests and shape.latency and _REQUEST.match(data):
                await asyncio.sleep(shape.latency)
            await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(RuntimeError):  # the loop is closing
            writer.close()


async def _serve(listen: tuple[str, int], upstream: tuple[str, int], shape: Shape) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*upstream)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            _pipe(client_reader, server_writer, shape, requests=True),
            _pipe(server_reader, client_writer, shape, requests=False),
        )

    server = await asyncio.start_server(handle, *listen, limit=_READ * 4)
    port = server.sockets[0].getsockname()[1]
    print(f"relay listening on {listen[0]}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def start_relay(
    upstream: str, *, latency_ms: float = 0, rate_mbps: float = 0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the relay as a process in front of ``upstream`` (``http://host:port``); returns it and its URL."""
    target = upstream.removeprefix("http://").rstrip("/")
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
    parser.add_argument("--upstream", required=True, help="host:port of the server behind the relay")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to each request")
    parser.add_argument(
        "--rate-mbps", type=float, default=0.0, help="cap per connection and direction (MB/s)"
    )
    args = parser.parse_args()
    shape = Shape(latency=args.latency_ms / 1000, rate=args.rate_mbps * 1_000_000)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(_host_port(args.listen), _host_port(args.upstream), shape))
    return 0


if __name__ == "__main__":
    sys.exit(main())
