"""The ledger: claims on deliveries, progress per object, and the audit trail.

One delivery is one flag upload delivered by one route. Its row (``record = "route"``)
holds the claim: the first worker takes a lease with a conditional write, renews it
with the heartbeat that extends its message, and a dead worker's lease lapses about
when its message reappears, so the next receive takes the delivery over. Every object
of the delivery has a row of its own (``record = "obj#<destination name>"``): what was
delivered (name, size, SHA-256), the open multipart upload of a streamed S3 object, and
for SFT files what the agent did with them (sent, parked). A resumed, retried or
redriven delivery reads these rows and moves only what is not done.

Every write a claim makes on object rows is fenced: a transaction that checks the
route row is still held by this claim. A worker that lost its lease (paused past it,
cut off) can no longer record anything, and learns so at its next write or renewal.

A flag upload is identified by bucket, key and the event's ``sequencer`` (or the
version id, or the event time), never by ETag: every empty flag has the same ETag, and a
re-run must be delivered again. The table layout is in ``docs/exactly-once.md``.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

import structlog
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from egress.errors import EgressError, Reason, RetryableError, error_code, translate_client_error
from egress.kernel.timefmt import iso_from_epoch
from egress.ledger_table import (
    DELIVERED,
    FAILED,
    IN_PROGRESS,
    OBJECT_PREFIX,
    ROUTE_RECORD,
    ObjectRecord,
    object_record_name,
    plain_item,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

log = structlog.get_logger("egress.ledger")

_ROWS_PER_BATCH = 25

_serializer = TypeSerializer()


class Claim(Enum):
    """What :meth:`Ledger.begin` found."""

    ACQUIRED = "acquired"
    ALREADY_DELIVERED = "already_delivered"


@dataclass(frozen=True)
class Lease:
    """The outcome of :meth:`Ledger.begin`.

    ``resumed`` is true when an earlier attempt at the same delivery exists (its object
    rows say what is done); ``taken_over`` names the earlier claim when it never ended
    (its worker died or was cut off), whose open uploads and temp files must be cleaned.
    """

    claim: Claim
    token: str = ""
    resumed: bool = False
    taken_over: str | None = None


class LeaseHeld(RetryableError):
    """Another live worker holds the delivery; try again after ``retry_after`` seconds."""

    def __init__(self, detail: str, *, retry_after: float) -> None:
        super().__init__(Reason.IN_PROGRESS_ELSEWHERE, detail)
        self.retry_after = retry_after


@dataclass(frozen=True)
class DeliveryKey:
    """Which flag upload, delivered by which route."""

    bucket: str
    flag_key: str
    upload_id: str  # the event's sequencer, else version id, else LastModified
    source_prefix: str
    pipeline_name: str

    @property
    def delivery_id(self) -> str:
        raw = "\x00".join(
            (self.bucket, self.flag_key, self.upload_id, self.source_prefix, self.pipeline_name)
        )
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _route_key(key: DeliveryKey) -> dict[str, Any]:
    return {"delivery_id": {"S": key.delivery_id}, "record": {"S": ROUTE_RECORD}}


class Ledger:
    """Conditional writes on the ledger table; every method translates AWS errors.

    Each DynamoDB call is made once here: botocore's standard retry mode (:mod:`egress.aws`)
    retries throttling, 5xx and connection errors. Only a batch write's unprocessed items,
    which DynamoDB answers with success, are sent again here.
    """

    def __init__(
        self,
        dynamodb: DynamoDBClient,
        table_name: str,
        *,
        owner: str,
        lease_seconds: int = 120,
        ttl_days: int = 90,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = dynamodb
        self._table = table_name
        self._owner = owner
        self._lease = lease_seconds
        self._ttl = ttl_days * 86400
        self._clock = clock
        # One token per claim: two deliveries of the same flag in one process (a duplicate
        # notification handled concurrently) must not both hold the lease.
        self._tokens: dict[str, str] = {}
        self._renewed: dict[str, float] = {}  # when each held lease was last confirmed (clock)
        self._tokens_lock = threading.Lock()

    @property
    def table_name(self) -> str:
        return self._table

    @property
    def lease_seconds(self) -> int:
        return self._lease

    # -- the claim -------------------------------------------------------------------------
    def begin(
        self, key: DeliveryKey, *, recipient: str, transfer_type: str, event_time: datetime | None = None
    ) -> Lease:
        """Take the lease on a delivery, or learn it is done, or that a live worker holds it.

        ``event_time`` (the flag event's time, which resolved the placeholders) is recorded
        so that ``egress replay`` delivers again with the same dates.
        Raises :class:`LeaseHeld` while another worker's lease holds.
        """
        now = self._clock()
        token = f"{self._owner}/{uuid.uuid4().hex[:12]}"
        values: dict[str, Any] = {
            ":owner": {"S": token},
            ":lease": {"N": str(int(now + self._lease))},
            ":now": {"N": str(int(now))},
            ":delivered": {"S": DELIVERED},
            ":in_progress": {"S": IN_PROGRESS},
            ":started": {"S": iso_from_epoch(now, timespec="seconds")},
            ":expires": {"N": str(int(now + self._ttl))},
            ":bucket": {"S": key.bucket},
            ":flag": {"S": key.flag_key},
            ":upload": {"S": key.upload_id},
            ":prefix": {"S": key.source_prefix},
            ":pipeline": {"S": key.pipeline_name},
            ":recipient": {"S": recipient},
            ":type": {"S": transfer_type},
            ":one": {"N": "1"},
            ":zero": {"N": "0"},
        }
        recorded_time = ""
        if event_time is not None:
            values[":event_time"] = {"S": event_time.astimezone(UTC).isoformat()}
            recorded_time = ", event_time = :event_time"
        try:
            response = self._db.update_item(
                TableName=self._table,
                Key=_route_key(key),
                UpdateExpression=(
                    "SET #status = :in_progress, #owner = :owner, lease_until = :lease, "
                    "started_at = :started, expires_at = :expires, "
                    "flag_bucket = :bucket, flag_key = :flag, flag_upload = :upload, "
                    "source_prefix = :prefix, pipeline_name = :pipeline, recipient_name = :recipient, "
                    "transfer_type = :type, attempts = if_not_exists(attempts, :zero) + :one" + recorded_time
                ),
                ConditionExpression=(
                    "attribute_not_exists(delivery_id) OR (#status <> :delivered AND lease_until < :now)"
                ),
                ExpressionAttributeNames={"#status": "status", "#owner": "owner"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_OLD",
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise translate_client_error(exc, doing="claiming a ledger row") from exc
        except BotoCoreError as exc:
            raise translate_client_error(exc, doing="claiming a ledger row") from exc
        else:
            with self._tokens_lock:
                self._tokens[key.delivery_id] = token
                self._renewed[key.delivery_id] = now
            old = plain_item(response.get("Attributes") or {})
            lapsed = old.get("status") == IN_PROGRESS
            return Lease(
                claim=Claim.ACQUIRED,
                token=token,
                resumed=bool(old),
                taken_over=str(old.get("owner", "")) if lapsed else None,
            )
        row = self.route_row(key)
        if row and row.get("status") == DELIVERED:
            return Lease(claim=Claim.ALREADY_DELIVERED)
        remaining = float(row.get("lease_until", now) if row else now) - now
        raise LeaseHeld(
            f"delivery of {key.flag_key} by {key.pipeline_name} is held by another worker for "
            f"{max(0, int(remaining))}s more",
            retry_after=max(0.0, remaining),
        )

    def renew(self, key: DeliveryKey) -> None:
        """Extend this worker's lease (called with the visibility heartbeat, before it).

        Raises ``RetryableError(lease_lost)`` if another worker took the delivery over.
        """
        now = self._clock()
        self._update(
            key,
            "SET lease_until = :lease",
            {":lease": {"N": str(int(now + self._lease))}},
            doing="renewing a ledger lease",
        )
        with self._tokens_lock:
            if key.delivery_id in self._tokens:
                self._renewed[key.delivery_id] = now

    def finish(
        self, key: DeliveryKey, *, objects: int, size: int, excluded: int = 0, manifest: str | None = None
    ) -> None:
        """Mark the delivery done, with what it moved (and how many objects its patterns kept back).

        ``manifest`` (its URI) is kept for the ``received`` completion event the agent publishes.
        """
        values: dict[str, Any] = {
            ":delivered": {"S": DELIVERED},
            ":finished": {"S": iso_from_epoch(self._clock(), timespec="seconds")},
            ":objects": {"N": str(objects)},
            ":bytes": {"N": str(size)},
            ":excluded": {"N": str(excluded)},
            ":zero": {"N": "0"},
        }
        if manifest:
            values[":manifest"] = {"S": manifest}
        self._update(
            key,
            "SET #status = :delivered, finished_at = :finished, objects = :objects, "
            "bytes_delivered = :bytes, objects_excluded = :excluded, lease_until = :zero"
            + (", manifest = :manifest" if manifest else "")
            + " REMOVE last_reason",
            values,
            doing="finishing a ledger row",
            names={"#status": "status"},
        )
        self._forget(key)

    def fail(self, key: DeliveryKey, *, reason: str) -> None:
        """Give the lease back after a failure, recording why (the row stays for audit)."""
        self._update(
            key,
            "SET #status = :failed, last_reason = :reason, lease_until = :zero, failed_at = :at",
            {
                ":failed": {"S": FAILED},
                ":reason": {"S": reason},
                ":zero": {"N": "0"},
                ":at": {"S": iso_from_epoch(self._clock(), timespec="seconds")},
            },
            doing="releasing a ledger row",
            names={"#status": "status"},
        )
        self._forget(key)

    def token(self, key: DeliveryKey) -> str:
        with self._tokens_lock:
            return self._tokens.get(key.delivery_id, "")

    def _forget(self, key: DeliveryKey) -> None:
        with self._tokens_lock:
            self._tokens.pop(key.delivery_id, None)
            self._renewed.pop(key.delivery_id, None)

    # -- progress per object ----------------------------------------------------------------
    def object_item(
        self,
        key: DeliveryKey,
        *,
        name: str,
        status: str,
        source_key: str,
        size: int = 0,
        sha256: str | None = None,
        **extra: str | int | None,
    ) -> dict[str, Any]:
        """The DynamoDB item of an object row written by this delivery's claim."""
        now = self._clock()
        row: dict[str, Any] = {
            "delivery_id": key.delivery_id,
            "record": object_record_name(name),
            "name": name,
            "status": status,
            "source_key": source_key,
            "size": size,
            "claim": self.token(key),
            "written_at": iso_from_epoch(now, timespec="seconds"),
            "written_epoch": int(now),
            "expires_at": int(now + self._ttl),
        }
        if sha256:
            row["sha256"] = sha256
        row.update({name: value for name, value in extra.items() if value is not None})
        return {name: _serializer.serialize(value) for name, value in row.items()}

    def record(self, key: DeliveryKey, items: list[dict[str, Any]]) -> None:
        """Write object rows, fenced by this claim's lease (``RetryableError(lease_lost)`` if gone).

        The fence is a conditional renewal of the lease, made first; the rows follow in
        batches. (A transaction would make the two one step, but it would not close the
        window that matters — between a row and the rename it precedes — and the emulator
        copies the whole table for every transaction.) A lease confirmed less than half a
        lease ago needs no fence: nobody can take a delivery over before its lease lapses,
        so a burst of small objects does not pay one extra request per batch.
        """
        with self._tokens_lock:
            confirmed = self._renewed.get(key.delivery_id)
        if confirmed is None or self._clock() - confirmed >= self._lease / 2:
            self.renew(key)
        for start in range(0, len(items), _ROWS_PER_BATCH):
            self._write_batch(items[start : start + _ROWS_PER_BATCH])

    def objects(self, key: DeliveryKey) -> dict[str, ObjectRecord]:
        """Every object row of the delivery, by destination name (consistent read)."""
        return {
            record.name: record
            for record in (ObjectRecord.from_row(row) for row in self.object_rows(key.delivery_id))
        }

    def object_rows(self, delivery_id: str) -> Iterator[dict[str, Any]]:
        """The object rows of a delivery as plain dicts (``egress history --files``)."""
        paginator = self._db.get_paginator("query")
        try:
            for page in paginator.paginate(
                TableName=self._table,
                KeyConditionExpression="delivery_id = :id AND begins_with(#record, :obj)",
                ExpressionAttributeNames={"#record": "record"},
                ExpressionAttributeValues={":id": {"S": delivery_id}, ":obj": {"S": OBJECT_PREFIX}},
                ConsistentRead=True,
            ):
                for item in page.get("Items", []):
                    yield plain_item(item)
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, doing="reading a delivery's object rows") from exc

    def object_row(self, key: DeliveryKey, name: str) -> ObjectRecord | None:
        """One object row, read consistently."""
        item = self._get({"delivery_id": {"S": key.delivery_id}, "record": {"S": object_record_name(name)}})
        return ObjectRecord.from_row(item) if item else None

    # -- reading ---------------------------------------------------------------------------
    def route_row(self, key: DeliveryKey) -> dict[str, Any] | None:
        """The delivery's route row (consistent read), as a plain dict."""
        return self._get(_route_key(key))

    def history(self, *, limit: int = 1000) -> Iterator[dict[str, Any]]:
        """Route rows, newest first within each page (operators' audit trail; scans)."""
        paginator = self._db.get_paginator("scan")
        count = 0
        for page in paginator.paginate(
            TableName=self._table,
            FilterExpression="#record = :route",
            ExpressionAttributeNames={"#record": "record"},
            ExpressionAttributeValues={":route": {"S": ROUTE_RECORD}},
        ):
            rows = [plain_item(item) for item in page.get("Items", [])]
            rows.sort(key=lambda row: str(row.get("started_at", "")), reverse=True)
            for row in rows:
                yield row
                count += 1
                if count >= limit:
                    return

    def flag_deliveries(self, bucket: str, flag_key: str) -> Iterator[dict[str, Any]]:
        """Route rows of every delivery of one flag, any upload and route (``egress replay``; scans)."""
        paginator = self._db.get_paginator("scan")
        try:
            for page in paginator.paginate(
                TableName=self._table,
                FilterExpression="#record = :route AND flag_bucket = :bucket AND flag_key = :flag",
                ExpressionAttributeNames={"#record": "record"},
                ExpressionAttributeValues={
                    ":route": {"S": ROUTE_RECORD},
                    ":bucket": {"S": bucket},
                    ":flag": {"S": flag_key},
                },
            ):
                for item in page.get("Items", []):
                    yield plain_item(item)
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(
                exc, doing=f"reading the deliveries of s3://{bucket}/{flag_key}"
            ) from exc

    def _get(self, item_key: dict[str, Any]) -> dict[str, Any] | None:
        try:
            response = self._db.get_item(TableName=self._table, Key=item_key, ConsistentRead=True)
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, doing="reading a ledger row") from exc
        item = response.get("Item")
        return plain_item(item) if item else None

    # -- conditional writes ------------------------------------------------------------------
    def _update(
        self,
        key: DeliveryKey,
        expression: str,
        values: dict[str, Any],
        *,
        doing: str,
        names: dict[str, str] | None = None,
    ) -> None:
        names = {**(names or {}), "#owner": "owner"}
        values = {**values, ":me": {"S": self.token(key)}}
        try:
            self._db.update_item(
                TableName=self._table,
                Key=_route_key(key),
                UpdateExpression=expression,
                ConditionExpression="#owner = :me",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise RetryableError(
                    Reason.LEASE_LOST, f"{doing}: the lease was taken over by another worker"
                ) from exc
            raise translate_client_error(exc, doing=doing) from exc
        except BotoCoreError as exc:
            raise translate_client_error(exc, doing=doing) from exc

    def _write_batch(self, items: list[dict[str, Any]]) -> None:
        # Unprocessed items come back in a successful answer, so botocore does not retry them.
        requests: list[Any] = [{"PutRequest": {"Item": item}} for item in items]
        delay = 0.05
        for _ in range(8):
            try:
                response = self._db.batch_write_item(RequestItems={self._table: requests})
            except (ClientError, BotoCoreError) as exc:
                raise translate_client_error(exc, doing="recording progress in the ledger") from exc
            requests = list(response.get("UnprocessedItems", {}).get(self._table, []))
            if not requests:
                return
            time.sleep(delay)
            delay = min(2.0, delay * 2)
        raise RetryableError(Reason.THROTTLED, f"recording progress: {len(requests)} rows left unprocessed")


class ProgressLog:
    """Object rows of one delivery, written in batches (a checkpoint every ``interval`` or ``batch``).

    Small objects finish by the hundred a second; one fenced transaction per object
    would double their cost, so finished rows are collected and written together, a
    full batch (DynamoDB's 25 a request) at a time while objects finish, the remainder
    when ``interval`` has passed or on :meth:`flush`. A crash loses at most the last
    ``interval`` of records, whose objects a resumed delivery then moves again (S3
    rewrites the same bytes; SFT files are never batched: they are recorded before they
    become visible, see :meth:`record_now`).
    """

    def __init__(self, ledger: Ledger, key: DeliveryKey, *, batch: int = 25, interval: float = 0.25) -> None:
        self._ledger = ledger
        self._key = key
        self._batch = batch
        self._interval = interval
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._timer: threading.Timer | None = None
        self._error: EgressError | None = None

    def add(self, item: dict[str, Any]) -> None:
        """Queue a finished object's row; writes the full batches when one is full."""
        self.raise_if_failed()
        with self._lock:
            self._pending.append(item)
            full = len(self._pending) >= self._batch
            if not full and self._timer is None:
                self._timer = threading.Timer(self._interval, self._flush_in_background)
                self._timer.daemon = True
                self._timer.start()
        if full:
            self._write(whole_batches=True)

    def record_now(self, items: list[dict[str, Any]]) -> None:
        """Write rows at once (an open multipart upload, an SFT file about to appear)."""
        self.raise_if_failed()
        self._ledger.record(self._key, items)

    def flush(self) -> None:
        """Write every queued row now (raises if a background checkpoint failed)."""
        self.raise_if_failed()
        self._write(whole_batches=False)

    def _write(self, *, whole_batches: bool) -> None:
        # Threads that found a batch full while another was writing wait here; each then
        # takes only whole batches, so 32 finishing objects make one request, not a
        # cascade of small ones. What is left waits for the timer or a flush.
        with self._flushing:
            with self._lock:
                count = len(self._pending)
                if whole_batches:
                    count -= count % self._batch
                if not count:
                    return
                taken, self._pending = self._pending[:count], self._pending[count:]
                if not self._pending and self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            self._ledger.record(self._key, taken)

    def close(self) -> None:
        """Stop the timer (queued rows are dropped: call :meth:`flush` first to keep them)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _flush_in_background(self) -> None:
        with self._lock:
            self._timer = None
        try:
            self.flush()
        except EgressError as exc:
            log.warning("progress_not_recorded", reason=exc.reason, detail=exc.detail)
            self._error = exc
