"""Every metric of the agent, and the HTTP endpoint serving them with ``/healthz``.

Labels are low-cardinality by design: ``route`` (a name from the config), ``outcome``
and ``reason`` (fixed sets) — never a file name.
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


class AgentMetrics:
    """The agent's metrics, in their own registry (one instance per process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.files = Counter(
            "sft_agent_files_total",
            "Files handled, by outcome: sent (every action succeeded), retry (an attempt failed, "
            "another is scheduled), error (moved to the error folder)",
            ["route", "outcome"],
            registry=r,
        )
        self.bytes_sent = Counter(
            "sft_agent_bytes_sent_total", "Body bytes of successful http actions", ["route"], registry=r
        )
        self.failures = Counter(
            "sft_agent_failures_total", "Failed attempts, by reason", ["route", "reason"], registry=r
        )
        self.retries = Counter("sft_agent_retries_total", "Retries scheduled", ["route"], registry=r)
        self.backlog = Gauge(
            "sft_agent_backlog_files",
            "Files waiting in the watched folder (not yet ready, ready, or waiting for a retry)",
            ["route"],
            registry=r,
        )
        self.oldest_age = Gauge(
            "sft_agent_oldest_file_age_seconds",
            "Age (by modification time) of the oldest file waiting in the watched folder; 0 if none",
            ["route"],
            registry=r,
        )
        self.in_flight = Gauge("sft_agent_in_flight_files", "Files being sent now", ["route"], registry=r)
        self.error_files = Gauge(
            "sft_agent_error_folder_files", "Files in the route's error folder", ["route"], registry=r
        )
        self.cert_expiry_days = Gauge(
            "sft_agent_client_certificate_expiry_days",
            "Days until the route's client certificate expires (negative once expired)",
            ["route"],
            registry=r,
        )
        self.send_seconds = Histogram(
            "sft_agent_file_duration_seconds",
            "Time from claim to the last action's success, per file",
            ["route"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
            registry=r,
        )
        self.last_scan = Gauge(
            "sft_agent_last_scan_timestamp_seconds",
            "When the route's folder was last scanned",
            ["route"],
            registry=r,
        )

        self.ledger_updates = Counter(
            "sft_agent_ledger_updates_total",
            "Ledger object rows updated, by the status recorded (sending, retry, sent, parked)",
            ["status"],
            registry=r,
        )
        self.ledger_errors = Counter(
            "sft_agent_ledger_errors_total",
            "Ledger calls that failed (they never block or fail a send), by operation",
            ["operation"],
            registry=r,
        )
        self.ledger_not_found = Counter(
            "sft_agent_ledger_rows_not_found_total",
            "Files sent or parked with no ledger row to record it on (not written by the worker, or index lag)",
            registry=r,
        )
        self.unsent_files = Gauge(
            "sft_agent_unsent_files",
            "Files the worker recorded as written longer than ledger.unsent_after ago and not yet sent or parked",
            registry=r,
        )
        self.oldest_unsent = Gauge(
            "sft_agent_oldest_unsent_seconds",
            "Age of the oldest file written and not yet sent or parked (0 if none)",
            registry=r,
        )

    def register_ledger(self) -> None:
        """Create the ledger series at zero."""
        for status in ("sending", "retry", "sent", "parked"):
            self.ledger_updates.labels(status=status)
        for operation in ("lookup", "update", "unsent_check"):
            self.ledger_errors.labels(operation=operation)

    def register_route(self, route: str) -> None:
        """Create the route's series at zero, so dashboards and alerts see them before any event."""
        for outcome in ("sent", "retry", "error"):
            self.files.labels(route=route, outcome=outcome)
        self.bytes_sent.labels(route=route)
        self.retries.labels(route=route)
        self.backlog.labels(route=route)
        self.oldest_age.labels(route=route)
        self.in_flight.labels(route=route)
        self.error_files.labels(route=route)


class MetricsServer:
    """``/metrics`` (Prometheus text) and ``/healthz`` (200 while ``healthy()``) on one port.

    On a :class:`PooledHTTPServer`: idle or stalled clients hold no thread, so ``/healthz``
    keeps answering while they are connected.
    """

    def __init__(
        self,
        metrics: AgentMetrics,
        *,
        host: str,
        port: int,
        healthy: Callable[[], bool],
        workers: int = 4,
        idle_timeout: float = 5.0,
        io_timeout: float = 5.0,
        request_timeout: float = 10.0,
    ) -> None:
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, kind = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif path == "/healthz":
                    ok = healthy()
                    body, status, kind = (b"ok\n" if ok else b"stalled\n"), (200 if ok else 503), "text/plain"
                else:
                    body, status, kind = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base
                return

        self._server = PooledHTTPServer(
            (host, port),
            Handler,
            workers=workers,
            idle_timeout=idle_timeout,
            io_timeout=io_timeout,
            request_timeout=request_timeout,
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
