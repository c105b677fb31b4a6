"""Completion events: one SNS message per route outcome of a flag (DESIGN §12).

Each outcome is published once, after the ledger records it: ``delivered`` when the
worker finished a route (never for a duplicate notification, whose route the ledger
says is already delivered), ``failed`` once a route's failure is final for its message
(dead-lettered now, or the last receive before the redrive policy moves it), and
``received`` when the SFT agent sent every file of a delivered SFT route
(:mod:`egress.receipts` decides who says so). The body is the JSON of
:class:`RouteEvent`; the message attributes ``outcome`` and ``pipeline_name`` let
subscribers filter.

A publish never fails or repeats a delivery: it is retried by botocore's standard mode
(:mod:`egress.aws`, bounded and jittered, the one retry layer of an AWS call), and what
still fails is logged (``event_publish_failed``) and counted, never raised. The clients
are passed in; with no topic configured :class:`NullPublisher` stands in.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from egress.errors import error_code
from egress.receipts import Receipts

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from prometheus_client import Counter

    from egress.aws import AwsClients
    from egress.delivery import RouteResult
    from egress.errors import EgressError
    from egress.messages import FlagEvent
    from egress.queue import FlagQueue
    from egress.routing import RouteMatch
    from egress.settings import WorkerSettings

log = structlog.get_logger("egress.events")

EVENT_TYPE: Final = "egress.route"
Outcome = Literal["delivered", "failed", "received"]
OUTCOMES: Final[tuple[Outcome, ...]] = ("delivered", "failed", "received")
_DETAIL_MAX = 1000


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class RouteEvent:
    """One route's outcome for one flag upload: the body of a completion event.

    ``size`` is published as ``bytes``; ``manifest`` is the ``s3://`` URI of the manifest
    (S3 routes) or its path under the SFT root (SFT routes), ``None`` without one.
    """

    outcome: Outcome
    flag: str
    source_prefix: str
    pipeline_name: str
    recipient_name: str
    transfer_type: str
    objects: int = 0
    size: int = 0
    manifest: str | None = None
    reason: str | None = None
    detail: str = ""
    at: str = field(default_factory=_now)

    def body(self) -> dict[str, Any]:
        """The JSON document subscribers receive (the fields of DESIGN §12, in its order)."""
        return {
            "type": EVENT_TYPE,
            "outcome": self.outcome,
            "flag": self.flag,
            "source_prefix": self.source_prefix,
            "pipeline_name": self.pipeline_name,
            "recipient_name": self.recipient_name,
            "transfer_type": self.transfer_type,
            "objects": self.objects,
            "bytes": self.size,
            "manifest": self.manifest,
            "reason": self.reason,
            "detail": self.detail[:_DETAIL_MAX],
            "at": self.at,
        }

    def attributes(self) -> dict[str, Any]:
        """SNS message attributes for subscription filter policies."""
        return {
            "outcome": {"DataType": "String", "StringValue": self.outcome},
            # SNS refuses an empty string value; a route always has a pipeline name.
            "pipeline_name": {"DataType": "String", "StringValue": self.pipeline_name or "-"},
        }


def delivered_event(event: FlagEvent, result: RouteResult) -> RouteEvent:
    """The event of a route the worker just finished delivering."""
    match = result.match
    return RouteEvent(
        outcome="delivered",
        objects=result.objects,
        size=result.size,
        manifest=result.manifest,
        detail=f"{result.objects} objects delivered to {_destination(match)}",
        **_route_fields(event, match),
    )


def failed_event(event: FlagEvent, match: RouteMatch, error: EgressError) -> RouteEvent:
    """The event of a route whose failure is final for its message (reason and detail as in the DLQ)."""
    return RouteEvent(
        outcome="failed", reason=str(error.reason), detail=error.detail, **_route_fields(event, match)
    )


def received_event(row: Mapping[str, Any]) -> RouteEvent:
    """The event of an SFT delivery whose files were all sent, from its ledger route row."""
    return RouteEvent(
        outcome="received",
        flag=f"s3://{row.get('flag_bucket', '')}/{row.get('flag_key', '')}",
        source_prefix=str(row.get("source_prefix", "")),
        pipeline_name=str(row.get("pipeline_name", "")),
        recipient_name=str(row.get("recipient_name", "")),
        transfer_type=str(row.get("transfer_type", "SFT")),
        objects=int(row.get("objects", 0) or 0),
        size=int(row.get("bytes_delivered", 0) or 0),
        manifest=str(row["manifest"]) if row.get("manifest") else None,
        detail="the SFT agent sent every file of the delivery to its receiver",
    )


def _route_fields(event: FlagEvent, match: RouteMatch) -> dict[str, Any]:
    route = match.route
    return {
        "flag": event.uri,
        "source_prefix": route.source_prefix,
        "pipeline_name": route.pipeline_name,
        "recipient_name": route.recipient_name,
        "transfer_type": route.transfer_type,
    }


def _destination(match: RouteMatch) -> str:
    route = match.route
    if route.transfer_type == "S3":
        return f"s3://{route.destination_bucket}/{match.destination_prefix}"
    return f"SFT folder {match.destination_prefix or '/'}"


# -- publishing ---------------------------------------------------------------------------


class Publisher(Protocol):
    """Publishes completion events; never raises."""

    def publish(self, event: RouteEvent) -> bool:
        """Publish ``event``; True once SNS accepted it."""
        ...

    def close(self, *, timeout: float) -> None:
        """A last try for what is held for retrying; what is still unpublished is logged."""
        ...


class NullPublisher:
    """The publisher when no topic is configured: publishes nothing."""

    def publish(self, event: RouteEvent) -> bool:
        return False

    def close(self, *, timeout: float) -> None:
        return None


class EventPublisher:
    """Publishes :class:`RouteEvent` messages to one SNS topic; logs and counts what fails.

    An event SNS refuses even after botocore's retries is held and tried again in the
    background, with a backoff growing to a minute, for up to ``retry_for`` seconds (an SNS
    outage, an expired session): the delivery that produced it has long gone on. Held
    events are bounded (``max_held``, oldest dropped first), and what is given up — too
    old, too many, or still held at :meth:`close` — is logged (``event_dropped``) and
    counted. ``published``, ``failures`` (failed attempts) and ``dropped`` are Prometheus
    counters labelled ``outcome`` (the worker's in :mod:`egress.metrics`, the agent's in
    :mod:`sft_agent.metrics`).
    """

    def __init__(
        self,
        sns: SNSClient,
        topic_arn: str,
        *,
        published: Counter,
        failures: Counter,
        dropped: Counter,
        retry_for: float = 900.0,
        max_held: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sns = sns
        self.topic_arn = topic_arn
        self._published = published
        self._failures = failures
        self._dropped = dropped
        self._retry_for = retry_for
        self._max_held = max_held
        self._clock = clock
        self._held: deque[_Held] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._retrier: threading.Thread | None = None
        for outcome in OUTCOMES:  # every series from zero, so a rate() has a start
            published.labels(outcome=outcome)
            failures.labels(outcome=outcome)
            dropped.labels(outcome=outcome)

    def publish(self, event: RouteEvent) -> bool:
        """Publish ``event``; False (logged, counted, held for retrying) if SNS does not take it."""
        if self._send(event):
            return True
        self._hold(event)
        return False

    @property
    def held(self) -> int:
        """How many events wait for a retry."""
        with self._wake:
            return len(self._held)

    def close(self, *, timeout: float) -> None:
        """Stop retrying in the background; one last try for each held event within ``timeout``."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
            held, self._held = list(self._held), deque()
        if self._retrier is not None:
            self._retrier.join(timeout)
        deadline = self._clock() + timeout
        for entry in held:
            if self._clock() < deadline and self._send(entry.event):
                continue
            self._drop(entry.event, why="the process stopped before it could be published")

    def _hold(self, event: RouteEvent) -> None:
        with self._wake:
            if self._closed:
                self._drop(event, why="the publisher is closed")
                return
            self._held.append(_Held(event, first_failed=self._clock(), next_try=self._clock() + 1.0))
            while len(self._held) > self._max_held:
                self._drop(self._held.popleft().event, why=f"more than {self._max_held} events held")
            if self._retrier is None:
                self._retrier = threading.Thread(target=self._retry_loop, name="events-retry", daemon=True)
                self._retrier.start()
            self._wake.notify_all()

    def _retry_loop(self) -> None:
        while True:
            with self._wake:
                if self._closed:
                    return
                if not self._held:
                    self._wake.wait()
                    continue
                entry = min(self._held, key=lambda held: held.next_try)
                pause = entry.next_try - self._clock()
                if pause > 0:
                    self._wake.wait(pause)
                    continue
                self._held.remove(entry)
            if self._send(entry.event):
                log.info(
                    "event_published_after_retry", outcome=entry.event.outcome, attempts=entry.attempts + 1
                )
                continue
            now = self._clock()
            if now - entry.first_failed >= self._retry_for:
                self._drop(entry.event, why=f"still refused after {int(self._retry_for)} s of retries")
                continue
            entry.attempts += 1
            entry.next_try = now + min(60.0, 2.0**entry.attempts)
            with self._wake:
                if self._closed:
                    self._drop(entry.event, why="the publisher closed while it was being retried")
                    return
                self._held.append(entry)

    def _drop(self, event: RouteEvent, *, why: str) -> None:
        self._dropped.labels(outcome=event.outcome).inc()
        log.error(
            "event_dropped", outcome=event.outcome, pipeline=event.pipeline_name, flag=event.flag, why=why
        )

    def _send(self, event: RouteEvent) -> bool:
        """One publish (botocore retries it within); False, logged and counted, if it fails."""
        try:
            response = self._sns.publish(
                TopicArn=self.topic_arn,
                Message=json.dumps(event.body(), ensure_ascii=False),
                MessageAttributes=event.attributes(),
            )
        except Exception as exc:  # noqa: BLE001 - an event must never fail or repeat a delivery
            self._failures.labels(outcome=event.outcome).inc()
            log.error(
                "event_publish_failed",
                outcome=event.outcome,
                pipeline=event.pipeline_name,
                flag=event.flag,
                topic=self.topic_arn,
                error=_describe(exc),
            )
            return False
        self._published.labels(outcome=event.outcome).inc()
        log.info(
            "event_published",
            outcome=event.outcome,
            pipeline=event.pipeline_name,
            flag=event.flag,
            sns_message_id=response.get("MessageId", ""),
        )
        return True


@dataclass
class _Held:
    """An event SNS refused, waiting for its next try."""

    event: RouteEvent
    first_failed: float
    next_try: float
    attempts: int = 0


def _describe(exc: BaseException) -> str:
    """What went wrong, in one short line (AWS error code and message; no request data)."""
    if isinstance(exc, ClientError):
        message = str(exc.response.get("Error", {}).get("Message", ""))[:200]
        return f"{error_code(exc) or 'ClientError'}: {message}"
    if isinstance(exc, BotoCoreError):
        return type(exc).__name__
    return f"{type(exc).__name__}: {str(exc)[:200]}"


# -- the worker's side ----------------------------------------------------------------------


class RouteAnnouncer:
    """What the worker tells subscribers about the routes of its messages.

    ``delivered`` publishes at once (the ledger has just recorded it); for an SFT route it
    also asks ``receipts`` whether the agent already sent every file, since then no later
    ``sent`` would announce it. A failure (:func:`failed_event`) is held with its message
    and published by :meth:`settle` once the message's fate makes it final: a route failing
    on a message that will be received again is tried again, and announced then.
    """

    def __init__(self, publisher: Publisher, *, receipts: Receipts | None = None) -> None:
        self._publisher = publisher
        self._receipts = receipts

    def delivered(self, event: FlagEvent, result: RouteResult) -> None:
        """Announce a route just delivered (not one skipped as already delivered)."""
        if result.skipped:
            return
        self._publisher.publish(delivered_event(event, result))
        if self._receipts is None or result.match.route.transfer_type != "SFT" or not result.delivery_id:
            return
        try:
            row = self._receipts.claim(result.delivery_id)
        except Exception as exc:  # noqa: BLE001 - a receipt must never fail or repeat a delivery
            log.warning(
                "receipt_check_failed", pipeline=result.match.route.pipeline_name, error=_describe(exc)
            )
            return
        if row is not None:
            self._publisher.publish(received_event(row))

    def close(self, *, timeout: float = 5.0) -> None:
        """At shutdown: a last try for events held for retrying (see :class:`EventPublisher`)."""
        self._publisher.close(timeout=timeout)

    def settle(self, failures: Iterable[RouteEvent], *, final: bool) -> None:
        """Publish a message's failed routes if its fate is final (dead-lettered, or its last receive)."""
        if final:
            for failure in failures:
                self._publisher.publish(failure)


def worker_announcer(aws: AwsClients, settings: WorkerSettings, queue: FlagQueue) -> RouteAnnouncer:
    """The worker's announcer: publishing to ``settings.events_topic_arn``, or nothing when it is not set."""
    topic_arn = settings.events_topic_arn
    if topic_arn is None:
        return RouteAnnouncer(NullPublisher())
    from egress import metrics  # the worker's counters, imported here: the agent counts in its own

    log.info(
        "events_enabled",
        topic=topic_arn,
        max_receive_count=queue.max_receive_count,
        detail="failures that are retried are announced on the last receive"
        if queue.max_receive_count
        else "the queue's receive limit is unknown: only failures dead-lettered by the worker are announced",
    )
    publisher = EventPublisher(
        aws.sns,
        topic_arn,
        published=metrics.EVENTS_PUBLISHED,
        failures=metrics.EVENT_PUBLISH_FAILURES,
        dropped=metrics.EVENTS_DROPPED,
    )
    return RouteAnnouncer(publisher, receipts=Receipts(aws.dynamodb, settings.ledger_table))
