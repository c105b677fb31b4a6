"""The ledger: one row per delivery of one flag upload to one route.

It makes deliveries idempotent (a duplicate notification, or a redelivery after a
finished route, delivers nothing twice) and is the audit trail behind ``egress history``.
Claiming a delivery is a conditional write: the first worker takes a lease; others see
it in progress (retry later) or delivered (nothing to do). A flag upload is identified
by bucket, key and the event's ``sequencer`` (or the version id, or LastModified), never
by ETag: every empty flag has the same ETag, and a re-run must be delivered again.
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

from botocore.exceptions import BotoCoreError, ClientError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from egress.errors import (
    IN_PROGRESS_ELSEWHERE,
    RetryableError,
    error_code,
    translate_client_error,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

IN_PROGRESS = "in_progress"
DELIVERED = "delivered"
FAILED = "failed"


class Claim(Enum):
    """What :meth:`Ledger.begin` found."""

    ACQUIRED = "acquired"
    ALREADY_DELIVERED = "already_delivered"


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


_aws_retry = retry(
    retry=retry_if_exception_type(RetryableError),
    stop=stop_after_attempt(4),
    wait=wait_random_exponential(multiplier=0.2, max=5),
    reraise=True,
)


def create_ledger_table(dynamodb: DynamoDBClient, name: str) -> None:
    """Create the ledger table (on-demand, TTL on ``expires_at``) unless it exists."""
    try:
        dynamodb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "delivery_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "delivery_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        dynamodb.get_waiter("table_exists").wait(TableName=name)
    except ClientError as exc:
        if error_code(exc) != "ResourceInUseException":
            raise
    if _ttl_disabled(dynamodb, name):
        dynamodb.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
        )


def _ttl_disabled(dynamodb: DynamoDBClient, name: str) -> bool:
    status = dynamodb.describe_time_to_live(TableName=name).get("TimeToLiveDescription", {})
    return status.get("TimeToLiveStatus") not in {"ENABLED", "ENABLING"}


def _now_iso(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), UTC).isoformat(timespec="seconds")


class Ledger:
    """Conditional writes on the ledger table; every method translates AWS errors."""

    def __init__(
        self,
        dynamodb: DynamoDBClient,
        table_name: str,
        *,
        owner: str,
        lease_seconds: int = 900,
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
        self._tokens_lock = threading.Lock()

    @_aws_retry
    def begin(self, key: DeliveryKey, *, recipient: str, transfer_type: str) -> Claim:
        """Take the lease on a delivery, or learn it is done or held by another worker.

        Raises ``RetryableError(in_progress_elsewhere)`` while another worker's lease holds.
        """
        now = self._clock()
        token = f"{self._owner}/{uuid.uuid4().hex[:12]}"
        values: dict[str, Any] = {
            ":owner": {"S": token},
            ":lease": {"N": str(int(now + self._lease))},
            ":now": {"N": str(int(now))},
            ":delivered": {"S": DELIVERED},
            ":in_progress": {"S": IN_PROGRESS},
            ":started": {"S": _now_iso(self._clock)},
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
        try:
            self._db.update_item(
                TableName=self._table,
                Key={"delivery_id": {"S": key.delivery_id}},
                UpdateExpression=(
                    "SET #status = :in_progress, #owner = :owner, lease_until = :lease, "
                    "started_at = :started, expires_at = :expires, flag_bucket = :bucket, "
                    "flag_key = :flag, flag_upload = :upload, source_prefix = :prefix, "
                    "pipeline_name = :pipeline, recipient_name = :recipient, transfer_type = :type, "
                    "attempts = if_not_exists(attempts, :zero) + :one"
                ),
                ConditionExpression=(
                    "attribute_not_exists(delivery_id) OR "
                    "(#status <> :delivered AND lease_until < :now)"
                ),
                ExpressionAttributeNames={"#status": "status", "#owner": "owner"},
                ExpressionAttributeValues=values,
            )
            with self._tokens_lock:
                self._tokens[key.delivery_id] = token
            return Claim.ACQUIRED
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise translate_client_error(exc, doing="claiming a ledger row") from exc
        except BotoCoreError as exc:
            raise translate_client_error(exc, doing="claiming a ledger row") from exc
        item = self._get(key)
        if item and item.get("status", {}).get("S") == DELIVERED:
            return Claim.ALREADY_DELIVERED
        raise RetryableError(
            IN_PROGRESS_ELSEWHERE,
            f"delivery of {key.flag_key} by {key.pipeline_name} is leased by another worker",
        )

    @_aws_retry
    def renew(self, key: DeliveryKey) -> None:
        """Extend this worker's lease (called with the visibility heartbeat)."""
        self._update(
            key,
            "SET lease_until = :lease",
            {":lease": {"N": str(int(self._clock() + self._lease))}},
            doing="renewing a ledger lease",
        )

    @_aws_retry
    def finish(self, key: DeliveryKey, *, objects: int, size: int) -> None:
        """Mark the delivery done, with what it moved."""
        self._update(
            key,
            "SET #status = :delivered, finished_at = :finished, objects = :objects, "
            "bytes_delivered = :bytes, lease_until = :zero REMOVE last_reason",
            {
                ":delivered": {"S": DELIVERED},
                ":finished": {"S": _now_iso(self._clock)},
                ":objects": {"N": str(objects)},
                ":bytes": {"N": str(size)},
                ":zero": {"N": "0"},
            },
            doing="finishing a ledger row",
            names={"#status": "status"},
        )
        self._forget(key)

    @_aws_retry
    def fail(self, key: DeliveryKey, *, reason: str) -> None:
        """Give the lease back after a failure, recording why (the row stays for audit)."""
        self._update(
            key,
            "SET #status = :failed, last_reason = :reason, lease_until = :zero, failed_at = :at",
            {
                ":failed": {"S": FAILED},
                ":reason": {"S": reason},
                ":zero": {"N": "0"},
                ":at": {"S": _now_iso(self._clock)},
            },
            doing="releasing a ledger row",
            names={"#status": "status"},
        )
        self._forget(key)

    def _forget(self, key: DeliveryKey) -> None:
        with self._tokens_lock:
            self._tokens.pop(key.delivery_id, None)

    def history(self, *, limit: int = 1000) -> Iterator[dict[str, Any]]:
        """Ledger rows, newest first within each page (operators' audit trail; scans)."""
        paginator = self._db.get_paginator("scan")
        count = 0
        for page in paginator.paginate(TableName=self._table):
            rows = [_plain(item) for item in page.get("Items", [])]
            rows.sort(key=lambda row: str(row.get("started_at", "")), reverse=True)
            for row in rows:
                yield row
                count += 1
                if count >= limit:
                    return

    def _get(self, key: DeliveryKey) -> dict[str, Any] | None:
        try:
            response = self._db.get_item(
                TableName=self._table, Key={"delivery_id": {"S": key.delivery_id}}, ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, doing="reading a ledger row") from exc
        item = response.get("Item")
        return dict(item) if item else None

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
        with self._tokens_lock:
            token = self._tokens.get(key.delivery_id, "")
        values = {**values, ":me": {"S": token}}
        try:
            self._db.update_item(
                TableName=self._table,
                Key={"delivery_id": {"S": key.delivery_id}},
                UpdateExpression=expression,
                ConditionExpression="#owner = :me",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                raise RetryableError(
                    IN_PROGRESS_ELSEWHERE, f"{doing}: the lease was taken over by another worker"
                ) from exc
            raise translate_client_error(exc, doing=doing) from exc
        except BotoCoreError as exc:
            raise translate_client_error(exc, doing=doing) from exc


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    from decimal import Decimal

    from boto3.dynamodb.types import TypeDeserializer

    deserializer = TypeDeserializer()
    row = {name: deserializer.deserialize(value) for name, value in item.items()}
    return {
        name: (int(value) if isinstance(value, Decimal) and value == value.to_integral_value() else value)
        for name, value in row.items()
    }
