"""One port serving a program's ``/metrics`` and its probes (``/healthz``, ``/readyz``).

Both programs use it: each defines its metrics in its own registry and names its
probes; this module answers them on a :class:`~egress.kernel.pooled_http.PooledHTTPServer`,
so idle or stalled clients hold no thread and the probes keep answering while they are
connected.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from egress.kernel.pooled_http import DEFAULT_LIMITS, PooledHTTPServer, ServingLimits

__all__ = ["DEFAULT_LIMITS", "Probe", "ProbeServer", "ServingLimits"]


@dataclass(frozen=True)
class Probe:
    """A probe path: ``200`` with ``ok`` while ``passing()`` is true, else ``503`` with ``failing``."""

    passing: Callable[[], bool]
    ok: bytes
    failing: bytes


class ProbeServer:
    """Serves ``/metrics`` from ``registry`` and each of ``probes`` (by path) on one port.

    Any other path is a 404; a query string is ignored. ``thread_name`` names the
    serving thread (seen in thread dumps).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str,
        port: int,
        probes: Mapping[str, Probe],
        thread_name: str = "probes",
        limits: ServingLimits = DEFAULT_LIMITS,
    ) -> None:
        paths = dict(probes)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                probe = paths.get(path)
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif probe is not None:
                    ok = probe.passing()
                    self._send(200 if ok else 503, probe.ok if ok else probe.failing)
                else:
                    self._send(404, b"not found\n")

            def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base
                return  # probes every few seconds would drown the logs

        self._server = PooledHTTPServer((host, port), Handler, limits=limits)
        self._thread = threading.Thread(target=self._server.serve_forever, name=thread_name, daemon=True)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
