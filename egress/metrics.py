"""Every metric of the worker, and its probe server (served by :mod:`egress.kernel.probes`).

Labels are low-cardinality by design: pipeline, recipient, transfer_type, outcome,
reason — never a key, a prefix or a message id.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from egress.kernel.probes import DEFAULT_LIMITS, Probe, ProbeServer, ServingLimits

REGISTRY = CollectorRegistry(auto_describe=True)


def _per_route(name: str, documentation: str) -> Counter:
    """A counter of one route's deliveries (labels: pipeline, recipient, transfer type)."""
    return Counter(name, documentation, ["pipeline", "recipient", "transfer_type"], registry=REGISTRY)


MESSAGES = Counter(
    "egress_messages_total",
    "SQS messages handled, by outcome (delivered, disabled, ignored, retry, requeued, dead_lettered, released)",
    ["outcome"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "egress_deliveries_total",
    "Route deliveries of one flag, by outcome",
    ["pipeline", "recipient", "transfer_type", "outcome"],
    registry=REGISTRY,
)
OBJECTS = _per_route("egress_objects_total", "Objects delivered")
BYTES = _per_route("egress_bytes_total", "Bytes delivered (after transforms)")
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
OBJECTS_SKIPPED = _per_route(
    "egress_objects_skipped_total",
    "Objects a resumed delivery did not move again (an earlier attempt recorded them done)",
)
OBJECTS_EXCLUDED = _per_route(
    "egress_objects_excluded_total",
    "Objects a route's include/exclude patterns kept from delivery (skipped, never a failure)",
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
EVENTS_PUBLISHED = Counter(
    "egress_events_published_total",
    "Completion events published to the events topic, by outcome (delivered, failed, received)",
    ["outcome"],
    registry=REGISTRY,
)
EVENT_PUBLISH_FAILURES = Counter(
    "egress_event_publish_failures_total",
    "Publish attempts of completion events that failed (SNS refused or unreachable), by outcome",
    ["outcome"],
    registry=REGISTRY,
)
EVENTS_DROPPED = Counter(
    "egress_events_dropped_total",
    "Completion events given up: still refused after the retry period, too many held, or held at shutdown",
    ["outcome"],
    registry=REGISTRY,
)
HEARTBEATS = Counter("egress_visibility_extensions_total", "Visibility timeout extensions", registry=REGISTRY)
LAST_POLL = Gauge("egress_last_poll_timestamp_seconds", "When the loop last polled SQS", registry=REGISTRY)


class WorkerProbeServer(ProbeServer):
    """The worker's ``/metrics``, ``/healthz`` (the loop is alive) and ``/readyz`` on one port."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
        limits: ServingLimits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(
            REGISTRY,
            host=host,
            port=port,
            probes={
                "/healthz": Probe(healthy, ok=b"ok\n", failing=b"loop stalled\n"),
                "/readyz": Probe(ready, ok=b"ready\n", failing=b"not ready\n"),
            },
            thread_name="probes",
            limits=limits,
        )
