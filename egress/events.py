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
from collections.abc import Iterable, Mapping
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


class NullPublisher:
    """The publisher when no topic is configured: publishes nothing."""

    def publish(self, event: RouteEvent) -> bool:
        return False


class EventPublisher:
    """Publishes :class:`RouteEvent` messages to one SNS topic; logs and counts what fails.

    ``published`` and ``failures`` are Prometheus counters labelled ``outcome`` (the
    worker's are in :mod:`egress.metrics`, the agent's in :mod:`sft_agent.metrics`).
    """

    def __init__(self, sns: SNSClient, topic_arn: str, *, published: Counter, failures: Counter) -> None:
        self._sns = sns
        self.topic_arn = topic_arn
        self._published = published
        self._failures = failures
        for outcome in OUTCOMES:  # every series from zero, so a rate() has a start
            published.labels(outcome=outcome)
            failures.labels(outcome=outcome)

    def publish(self, event: RouteEvent) -> bool:
        """Publish ``event`` (botocore retries it); False, logged and counted, if it still fails."""
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
        aws.sns, topic_arn, published=metrics.EVENTS_PUBLISHED, failures=metrics.EVENT_PUBLISH_FAILURES
    )
    return RouteAnnouncer(publisher, receipts=Receipts(aws.dynamodb, settings.ledger_table))
