"""Every metric of the worker, and the HTTP endpoint serving them with the probes.

Labels are low-cardinality by design: pipeline, recipient, transfer_type, outcome,
reason — never a key, a prefix or a message id.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from egress.pooled_http import PooledHTTPServer

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES = Counter(
    "egress_messages_total",
    "SQS messages handled, by outcome (delivered, ignored, duplicate, retry, dead_lettered, released)",
    ["outcome"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "egress_deliveries_total",
    "Route deliveries of one flag, by outcome",
    ["pipeline", "recipient", "transfer_type", "outcome"],
    registry=REGISTRY,
)
OBJECTS = Counter(
    "egress_objects_total",
    "Objects delivered",
    ["pipeline", "recipient", "transfer_type"],
    registry=REGISTRY,
)
BYTES = Counter(
    "egress_bytes_total",
    "Bytes delivered (after transforms)",
    ["pipeline", "recipient", "transfer_type"],
    registry=REGISTRY,
)
DELIVERY_SECONDS = Histogram(
    "egress_delivery_duration_seconds",
    "Time to deliver one route of one flag",
    ["transfer_type", "outcome"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
FAILURES = Counter(
    "egress_failures_total",
    "Failures by family and reason",
    ["kind", "reason"],
    registry=REGISTRY,
)
DLQ_MOVES = Counter(
    "egress_dlq_moves_total",
    "Messages the worker moved to the DLQ itself (permanent failures), by reason",
    ["reason"],
    registry=REGISTRY,
)
IN_FLIGHT = Gauge("egress_in_flight_messages", "Messages being worked on", registry=REGISTRY)
MESSAGE_AGE = Histogram(
    "egress_message_age_seconds",
    "Age of a flag event when the worker picked it up",
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
    registry=REGISTRY,
)
OBJECTS_SKIPPED = Counter(
    "egress_objects_skipped_total",
    "Objects a resumed delivery did not move again (an earlier attempt recorded them done)",
    ["pipeline", "recipient", "transfer_type"],
    registry=REGISTRY,
)
TAKEOVERS = Counter(
    "egress_claims_taken_over_total",
    "Deliveries taken over from a claim that lapsed (its worker died or was cut off)",
    registry=REGISTRY,
)
REQUEUES = Counter(
    "egress_requeued_messages_total",
    "Duplicate messages put back with a delay while another worker held the delivery",
    registry=REGISTRY,
)
HEARTBEATS = Counter("egress_visibility_extensions_total", "Visibility timeout extensions", registry=REGISTRY)
LAST_POLL = Gauge("egress_last_poll_timestamp_seconds", "When the loop last polled SQS", registry=REGISTRY)


class ProbeServer:
    """Serves ``/metrics``, ``/healthz`` (the loop is alive) and ``/readyz`` on one port.

    On a :class:`PooledHTTPServer`: idle or stalled clients hold no thread, so the
    probes keep answering while they are connected.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
        workers: int = 4,
        idle_timeout: float = 5.0,
        io_timeout: float = 5.0,
        request_timeout: float = 10.0,
    ) -> None:
        probe = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = probe.healthy()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"loop stalled\n")
                elif path == "/readyz":
                    ok = probe.ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._send(404, b"not found\n")

            def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return  # probes every few seconds would drown the logs

        self.healthy = healthy
        self.ready = ready
        self._server = PooledHTTPServer(
            (host, port),
            Handler,
            workers=workers,
            idle_timeout=idle_timeout,
            io_timeout=io_timeout,
            request_timeout=request_timeout,
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="probes", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
