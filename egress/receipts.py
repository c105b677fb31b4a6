"""SFT receipts: a delivery is ``received`` once every file of it was sent; one caller wins the right to say so.

A delivered SFT route whose object rows are all ``sent`` (the agent recorded each 2xx,
docs/exactly-once.md) is received; a route with no file never is (as ``egress history``
derives it). Two programs look: the agent after it records a file ``sent``, and the
worker when it finishes an SFT delivery, since the agent may have sent every file before
the route row said ``delivered``. Whoever wins the conditional write of ``received_at``
on the route row (it must be delivered and not yet received) announces it, once;
every other caller sees the condition fail.

Sent is final for an object row, so the rows found sent are not read again: a cursor per
delivery remembers how far they go, and a delivery of n files costs O(n) rows read in
all, not O(n) per file sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from egress.errors import error_code
from egress.kernel.timefmt import iso_from_epoch
from egress.ledger_table import DELIVERED, OBJECT_PREFIX, ROUTE_RECORD, SENT, plain_item

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_PAGE = 100  # object rows read per request: the first unsent one ends the look
_CURSORS = 10_000  # deliveries whose progress is remembered at once


@dataclass(eq=False)
class Receipts:
    """Decides, on the ledger table, whether a delivery was received and who announces it.

    Raises botocore's errors (the callers log and count them: a receipt must never hold a
    delivery or a send up). Thread-safe.
    """

    dynamodb: DynamoDBClient
    table: str
    clock: Callable[[], float] = time.time
    _cursors: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def claim(self, delivery_id: str) -> dict[str, Any] | None:
        """The route row, if this call recorded the delivery ``received``; None otherwise.

        None when the route is not a delivered SFT route yet, already received, has a file
        not sent, or another caller won.
        """
        key = {"delivery_id": {"S": delivery_id}, "record": {"S": ROUTE_RECORD}}
        item = self.dynamodb.get_item(TableName=self.table, Key=key, ConsistentRead=True).get("Item")
        row = plain_item(item or {})
        if row.get("status") != DELIVERED or row.get("transfer_type") != "SFT" or "received_at" in row:
            self._forget(delivery_id)  # not yet delivered (the worker looks when it is), or settled
            return None
        if not self._all_sent(delivery_id):
            return None
        self._forget(delivery_id)
        try:
            response = self.dynamodb.update_item(
                TableName=self.table,
                Key=key,
                UpdateExpression="SET received_at = :at",
                ConditionExpression="#status = :delivered AND attribute_not_exists(received_at)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":at": {"S": iso_from_epoch(self.clock(), timespec="seconds")},
                    ":delivered": {"S": DELIVERED},
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return None  # another caller announced it
            raise
        return plain_item(response.get("Attributes", {}))

    def _all_sent(self, delivery_id: str) -> bool:
        """Every object row sent, and at least one (reading on from where the last look stopped)."""
        with self._lock:
            start = self._cursors.get(delivery_id)
        seen = start is not None
        while True:
            query: dict[str, Any] = {
                "TableName": self.table,
                "KeyConditionExpression": "delivery_id = :id AND begins_with(#record, :obj)",
                "ProjectionExpression": "#record, #status",
                "ExpressionAttributeNames": {"#record": "record", "#status": "status"},
                "ExpressionAttributeValues": {":id": {"S": delivery_id}, ":obj": {"S": OBJECT_PREFIX}},
                "ConsistentRead": True,
                "Limit": _PAGE,
            }
            if start is not None:
                query["ExclusiveStartKey"] = start
            page = self.dynamodb.query(**query)
            for item in page.get("Items", []):
                if item.get("status", {}).get("S") != SENT:
                    return False
                start = {"delivery_id": {"S": delivery_id}, "record": item["record"]}
                seen = True
                self._remember(delivery_id, start)
            if "LastEvaluatedKey" not in page:
                return seen
            start = page["LastEvaluatedKey"]

    def _remember(self, delivery_id: str, cursor: dict[str, Any]) -> None:
        with self._lock:
            if delivery_id not in self._cursors and len(self._cursors) >= _CURSORS:
                self._cursors.clear()  # forgetting costs a re-read, never a wrong answer
            self._cursors[delivery_id] = cursor

    def _forget(self, delivery_id: str) -> None:
        with self._lock:
            self._cursors.pop(delivery_id, None)
