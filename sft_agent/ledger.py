"""Recording each file's fate in the worker's ledger table: ``sending``, ``retry``, ``sent``, ``parked``.

The worker writes an object row (status ``written``) for every file before it renames it
into place (docs/exactly-once.md). The agent finds the rows of a file it sends through
the ``by_sft_path`` index — the file's path relative to the SFT root and its SHA-256 (hex)
— and moves them on with conditional updates (the row exists and has that digest).
Updates are written by one background thread, in order, so a slow or unreachable
DynamoDB never holds a send up: ledger errors are logged and counted, never raised.

With ``events_topic_arn`` set, the file whose ``sent`` completes a delivered SFT route
(every object row sent) makes the agent claim the delivery ``received`` and, if it won
the claim (:mod:`egress.receipts`), publish the ``received`` completion event
(:mod:`egress.events`): once per delivery, whichever agent or worker looks first.

It also counts, every ``unsent_check_interval``, the rows of the ``unsent`` index written
longer than ``unsent_after`` ago (files written and neither sent nor parked), for the
alarm: gauges ``sft_agent_unsent_files`` / ``sft_agent_oldest_unsent_seconds`` and one
``unsent_files`` log line.
"""

from __future__ import annotations

import base64
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from egress.events import EventPublisher, received_event
from egress.kernel.timefmt import iso_from_epoch
from egress.ledger_table import (
    PARKED,
    RETRY,
    SENDING,
    SENT,
    SFT_PATH_INDEX,
    UNSENT_INDEX,
    UNSENT_KEY,
    WRITTEN,
)
from egress.receipts import Receipts
from sft_agent.metrics import AgentMetrics
from sft_agent.settings import LedgerSettings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sns import SNSClient

# The table's names and states are the worker's (one definition: egress.ledger_table).
NOT_FINAL = frozenset({WRITTEN, SENDING, RETRY})

_QUEUE_SIZE = 10_000
_CACHE_SIZE = 10_000
_DETAIL_MAX = 1000
# The worker writes the row just before it renames the file into place; the index may lag.
# (Looking again after these waits is for an empty answer, not for a failed call.)
_LOOKUP_WAITS = (0.25, 0.75)


def build_dynamodb_client(settings: LedgerSettings) -> DynamoDBClient:
    """The agent's DynamoDB client: short timeouts and few retries, since ledger calls must stay cheap.

    Its standard retry mode is the only retry of a ledger call (none is layered on top:
    a call that still fails is logged and counted). Region from the settings
    (``AWS_REGION``), endpoint and credentials from the standard environment
    (``AWS_ENDPOINT_URL``, the task role, …).
    """
    return boto3.session.Session().client("dynamodb", config=_client_config(settings))


def build_sns_client(settings: LedgerSettings) -> SNSClient:
    """The agent's SNS client for completion events, configured as its DynamoDB client.

    botocore's standard retry mode retries a publish (bounded, jittered); one that still
    fails is logged and counted, never raised.
    """
    return boto3.session.Session().client("sns", config=_client_config(settings))


def _client_config(settings: LedgerSettings) -> Config:
    return Config(
        region_name=settings.region,
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=3,
        read_timeout=5,
        max_pool_connections=4,
    )


@dataclass(frozen=True)
class FileKey:
    """What identifies a file's ledger rows: its path relative to the SFT root, its SHA-256 (hex)."""

    sft_path: str
    sha256: str


@dataclass(frozen=True)
class _Update:
    key: FileKey
    status: str
    at: float
    values: dict[str, str | int | None] = field(default_factory=dict)


def _attribute(value: str | int) -> dict[str, str]:
    return {"N": str(value)} if isinstance(value, int) else {"S": value}


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'ClientError')}: {error.get('Message', '')}"
    return f"{type(exc).__name__}: {exc}"


@dataclass(eq=False)
class LedgerRecorder:
    """Writes the agent's progress on object rows from one background thread; checks unsent files.

    With ``sns`` and ``settings.events_topic_arn`` it also announces deliveries received.
    """

    settings: LedgerSettings
    _: KW_ONLY
    dynamodb: DynamoDBClient
    agent_id: str
    metrics: AgentMetrics
    clock: Callable[[], float] = time.time
    sns: SNSClient | None = None

    def __post_init__(self) -> None:
        self.log = structlog.get_logger("sft_agent.ledger").bind(table=self.settings.table)
        self._queue: queue.Queue[_Update | None] = queue.Queue(maxsize=_QUEUE_SIZE)
        self._rows: dict[FileKey, list[dict[str, Any]]] = {}  # row keys found for files in progress
        self._not_found: set[FileKey] = set()
        self._dropped = 0
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="ledger", daemon=True)
        self._checker = threading.Thread(target=self._check_loop, name="ledger-unsent", daemon=True)
        self.metrics.register_ledger()
        self._receipts: Receipts | None = None
        self._events: EventPublisher | None = None
        if self.sns is not None and self.settings.events_topic_arn:
            self._receipts = Receipts(self.dynamodb, self.settings.table, clock=self.clock)
            self._events = EventPublisher(
                self.sns,
                self.settings.events_topic_arn,
                published=self.metrics.events_published,
                failures=self.metrics.event_publish_failures,
                dropped=self.metrics.events_dropped,
            )

    # -- life ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writing thread and the periodic unsent check."""
        self._writer.start()
        self._checker.start()

    def stop(self, *, timeout: float) -> None:
        """Write what is queued (up to ``timeout`` seconds), then stop; what is left is logged."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=max(0.1, timeout))
        self._writer.join(timeout)
        if self._events is not None:
            self._events.close(timeout=min(5.0, max(0.1, timeout)))
        left = self._queue.qsize() + self._dropped
        if self._writer.is_alive() or left:
            self.log.warning(
                "ledger_updates_dropped", count=left, detail="not written before the agent stopped"
            )

    # -- what the sending threads call (never blocks, never raises) ------------------------

    def key_for(self, path: Path, digest_b64: str | None) -> FileKey | None:
        """The ledger key of a file at ``path`` in a watched folder; None if it cannot have one."""
        if digest_b64 is None:
            return None
        try:
            relative = path.relative_to(self.settings.sft_root).as_posix()
            digest = base64.b64decode(digest_b64, validate=True).hex()
        except ValueError:
            return None
        return FileKey(sft_path=relative, sha256=digest)

    def sending(self, key: FileKey | None, *, attempt: int) -> None:
        """The file was claimed for its ``attempt``-th attempt."""
        self._put(key, SENDING, sending_at=None, attempts=attempt)

    def retry(self, key: FileKey | None, *, attempts: int, reason: str, detail: str) -> None:
        """An attempt failed; another is scheduled."""
        self._put(key, RETRY, attempts=attempts, last_reason=reason, last_detail=detail[:_DETAIL_MAX])

    def sent(self, key: FileKey | None, *, attempts: int, http_status: int | None, bytes_sent: int) -> None:
        """Every action succeeded (an http action's 2xx came after the whole body)."""
        self._put(
            key,
            SENT,
            sent_at=None,
            attempts=attempts,
            http_status=http_status,
            bytes_sent=bytes_sent,
            sent_sha256=key.sha256 if key else None,
        )

    def parked(self, key: FileKey | None, *, attempts: int, reason: str, detail: str) -> None:
        """The file was moved to the error folder."""
        self._put(
            key,
            PARKED,
            parked_at=None,
            attempts=attempts,
            parked_reason=reason,
            last_detail=detail[:_DETAIL_MAX],
        )

    def _put(self, key: FileKey | None, status: str, **values: str | int | None) -> None:
        if key is None:
            return
        try:
            self._queue.put_nowait(_Update(key=key, status=status, at=self.clock(), values=values))
        except queue.Full:
            self._dropped += 1
            self.metrics.ledger_errors.labels(operation="update").inc()
            self.log.warning("ledger_queue_full", sft_path=key.sft_path, status=status)

    # -- the writing thread ----------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            update = self._queue.get()
            if update is None:
                return
            try:
                self._apply(update)
            except Exception as exc:  # noqa: BLE001 - the ledger must never take the agent down
                self.metrics.ledger_errors.labels(operation="update").inc()
                self.log.error("ledger_error", operation="update", error=_error_text(exc))

    def _apply(self, update: _Update) -> None:
        key = update.key
        rows = self._rows.get(key)
        if rows is None:
            first = key not in self._not_found
            rows = self._lookup(key, waits=_LOOKUP_WAITS if first else ())
            if rows is None:
                return  # lookup failed: logged and counted
            if not rows:
                if first:
                    self._remember(self._not_found, key)
                    self.metrics.ledger_not_found.inc()
                    self.log.warning(
                        "ledger_row_not_found",
                        sft_path=key.sft_path,
                        status=update.status,
                        detail="no object row with this path and digest awaits it (not written by the worker?)",
                    )
                return
            self._not_found.discard(key)
        for row in rows:
            if self._update_row(row, update) and update.status == SENT:
                self._announce_receipt(row["delivery_id"]["S"])
        if update.status in (SENT, PARKED):
            self._rows.pop(key, None)
        else:
            if len(self._rows) >= _CACHE_SIZE:
                self._rows.clear()
            self._rows[key] = rows

    def _remember(self, found: set[FileKey], key: FileKey) -> None:
        if len(found) >= _CACHE_SIZE:
            found.clear()
        found.add(key)

    def _lookup(self, key: FileKey, *, waits: tuple[float, ...]) -> list[dict[str, Any]] | None:
        """Keys of the rows awaiting this file (not final; else parked ones an operator put back)."""
        for wait in (0.0, *waits):
            if wait:
                time.sleep(wait)
            try:
                items = self._query_rows(key)
            except (BotoCoreError, ClientError) as exc:
                self.metrics.ledger_errors.labels(operation="lookup").inc()
                self.log.error(
                    "ledger_error", operation="lookup", sft_path=key.sft_path, error=_error_text(exc)
                )
                return None
            open_rows = [i for i in items if i.get("status", {}).get("S") in NOT_FINAL]
            if not open_rows:
                open_rows = [i for i in items if i.get("status", {}).get("S") == PARKED]
            if open_rows:
                return [{"delivery_id": i["delivery_id"], "record": i["record"]} for i in open_rows]
        return []

    def _query_rows(self, key: FileKey) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        paginator = self.dynamodb.get_paginator("query")
        for page in paginator.paginate(
            TableName=self.settings.table,
            IndexName=SFT_PATH_INDEX,
            KeyConditionExpression="sft_path = :path AND sha256 = :sha",
            ExpressionAttributeValues={":path": {"S": key.sft_path}, ":sha": {"S": key.sha256}},
        ):
            items += page.get("Items", [])
        return items

    def _update_row(self, row: dict[str, Any], update: _Update) -> bool:
        """Record ``update`` on one object row; True if this call changed it."""
        # Every attribute through a placeholder: many names (status, agent, …) are reserved words.
        names = {"#status": "status", "#agent": "agent", "#sha256": "sha256"}
        values: dict[str, Any] = {
            ":status": {"S": update.status},
            ":sha": {"S": update.key.sha256},
            ":sent": {"S": SENT},
            ":agent": {"S": self.agent_id},
        }
        sets = ["#status = :status", "#agent = :agent"]
        for name, value in update.values.items():
            if name.endswith("_at"):
                value = iso_from_epoch(update.at)  # times are the update's own
            if value is None:
                continue
            names[f"#{name}"] = name
            values[f":{name}"] = _attribute(value)
            sets.append(f"#{name} = :{name}")
        expression = "SET " + ", ".join(sets)
        if update.status in (SENT, PARKED):
            names["#unsent"] = "unsent"
            expression += " REMOVE #unsent"
        try:
            self.dynamodb.update_item(
                TableName=self.settings.table,
                Key=row,
                UpdateExpression=expression,
                ConditionExpression="attribute_exists(delivery_id) AND #sha256 = :sha AND #status <> :sent",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                self.log.info(
                    "ledger_row_already_final",
                    sft_path=update.key.sft_path,
                    status=update.status,
                    delivery_id=row["delivery_id"]["S"],
                )
                return False
            self.metrics.ledger_errors.labels(operation="update").inc()
            self.log.error(
                "ledger_error", operation="update", sft_path=update.key.sft_path, error=_error_text(exc)
            )
            return False
        except BotoCoreError as exc:
            self.metrics.ledger_errors.labels(operation="update").inc()
            self.log.error(
                "ledger_error", operation="update", sft_path=update.key.sft_path, error=_error_text(exc)
            )
            return False
        self.metrics.ledger_updates.labels(status=update.status).inc()
        return True

    def _announce_receipt(self, delivery_id: str) -> None:
        """Publish ``received`` if this file completed its delivery and this agent won the claim."""
        if self._receipts is None or self._events is None:
            return
        try:
            row = self._receipts.claim(delivery_id)
        except (BotoCoreError, ClientError) as exc:
            self.metrics.ledger_errors.labels(operation="receipt").inc()
            self.log.error(
                "ledger_error", operation="receipt", delivery_id=delivery_id, error=_error_text(exc)
            )
            return
        if row is None:
            return
        self.log.info(
            "delivery_received",
            delivery_id=delivery_id,
            pipeline=row.get("pipeline_name"),
            recipient=row.get("recipient_name"),
            objects=row.get("objects"),
        )
        self._events.publish(received_event(row))

    # -- files written and not sent ----------------------------------------------------------

    def _check_loop(self) -> None:
        while not self._stop.is_set():
            self.check_unsent()
            self._stop.wait(self.settings.unsent_check_interval)

    def check_unsent(self) -> tuple[int, float] | None:
        """Count rows written over ``unsent_after`` ago and not sent/parked; None if the query failed."""
        now = self.clock()
        values = {":key": {"S": UNSENT_KEY}, ":cutoff": {"N": str(int(now - self.settings.unsent_after))}}
        condition = "unsent = :key AND written_epoch < :cutoff"
        try:
            count = 0
            paginator = self.dynamodb.get_paginator("query")
            for page in paginator.paginate(
                TableName=self.settings.table,
                IndexName=UNSENT_INDEX,
                KeyConditionExpression=condition,
                ExpressionAttributeValues=values,
                Select="COUNT",
            ):
                count += int(page.get("Count", 0))
            oldest = 0.0
            if count:
                first = self.dynamodb.query(
                    TableName=self.settings.table,
                    IndexName=UNSENT_INDEX,
                    KeyConditionExpression=condition,
                    ExpressionAttributeValues=values,
                    ScanIndexForward=True,
                    Limit=1,
                )
                items = first.get("Items", [])
                if items:
                    oldest = max(0.0, now - float(items[0]["written_epoch"]["N"]))
        except (BotoCoreError, ClientError, KeyError, ValueError) as exc:
            self.metrics.ledger_errors.labels(operation="unsent_check").inc()
            self.log.error("ledger_error", operation="unsent_check", error=_error_text(exc))
            return None
        self.metrics.unsent_files.set(count)
        self.metrics.oldest_unsent.set(round(oldest, 3))
        log = self.log.warning if count else self.log.info
        log(
            "unsent_files",
            count=count,
            oldest_seconds=int(oldest),
            older_than_s=int(self.settings.unsent_after),
        )
        return count, oldest
