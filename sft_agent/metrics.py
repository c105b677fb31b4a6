"""Every metric of the agent, and its metrics server (served by :mod:`egress.kernel.probes`).

Labels are low-cardinality by design: ``route`` (a name from the config), ``outcome``
and ``reason`` (fixed sets) — never a file name.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from egress.kernel.probes import DEFAULT_LIMITS, Probe, ProbeServer, ServingLimits


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
        self.bytes_sent = self._route_counter(
            "sft_agent_bytes_sent_total", "Body bytes of successful http actions"
        )
        self.failures = Counter(
            "sft_agent_failures_total", "Failed attempts, by reason", ["route", "reason"], registry=r
        )
        self.retries = self._route_counter("sft_agent_retries_total", "Retries scheduled")
        self.backlog = self._route_gauge(
            "sft_agent_backlog_files",
            "Files waiting in the watched folder (not yet ready, ready, or waiting for a retry)",
        )
        self.oldest_age = self._route_gauge(
            "sft_agent_oldest_file_age_seconds",
            "Age (by modification time) of the oldest file waiting in the watched folder; 0 if none",
        )
        self.in_flight = self._route_gauge("sft_agent_in_flight_files", "Files being sent now")
        self.error_files = self._route_gauge(
            "sft_agent_error_folder_files", "Files in the route's error folder"
        )
        self.cert_expiry_days = self._route_gauge(
            "sft_agent_client_certificate_expiry_days",
            "Days until the route's client certificate expires (negative once expired)",
        )
        self.send_seconds = Histogram(
            "sft_agent_file_duration_seconds",
            "Time from claim to the last action's success, per file",
            ["route"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
            registry=r,
        )
        self.last_scan = self._route_gauge(
            "sft_agent_last_scan_timestamp_seconds", "When the route's folder was last scanned"
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
        self.events_published = Counter(
            "sft_agent_events_published_total",
            "Completion events published (received: every file of an SFT delivery sent), by outcome",
            ["outcome"],
            registry=r,
        )
        self.events_dropped = Counter(
            "sft_agent_events_dropped_total",
            "Completion events given up: still refused after the retry period, or held at shutdown",
            ["outcome"],
            registry=r,
        )
        self.event_publish_failures = Counter(
            "sft_agent_event_publish_failures_total",
            "Publish attempts of completion events that failed (SNS refused or unreachable), by outcome",
            ["outcome"],
            registry=r,
        )

    def _route_counter(self, name: str, documentation: str) -> Counter:
        return Counter(name, documentation, ["route"], registry=self.registry)

    def _route_gauge(self, name: str, documentation: str) -> Gauge:
        return Gauge(name, documentation, ["route"], registry=self.registry)

    def register_ledger(self) -> None:
        """Create the ledger series at zero."""
        for status in ("sending", "retry", "sent", "parked"):
            self.ledger_updates.labels(status=status)
        for operation in ("lookup", "update", "unsent_check", "receipt"):
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


class MetricsServer(ProbeServer):
    """The agent's ``/metrics`` (Prometheus text) and ``/healthz`` (200 while ``healthy()``) on one port."""

    def __init__(
        self,
        metrics: AgentMetrics,
        *,
        host: str,
        port: int,
        healthy: Callable[[], bool],
        limits: ServingLimits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(
            metrics.registry,
            host=host,
            port=port,
            probes={"/healthz": Probe(healthy, ok=b"ok\n", failing=b"stalled\n")},
            thread_name="metrics",
            limits=limits,
        )
