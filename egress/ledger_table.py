"""The ledger table: its key schema and indexes, the names of its records and their states.

What the worker's :mod:`egress.ledger` and the agent's :mod:`sft_agent.ledger` agree on:
one row per delivery (``record = "route"``), one per object (``record = "obj#<name>"``),
the states each can be in, and two sparse indexes the agent reads (``by_sft_path`` to
find a file's row, ``unsent`` for files not yet sent). The layout is in
``docs/exactly-once.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from egress.errors import error_code

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# Route row states.
IN_PROGRESS = "in_progress"
DELIVERED = "delivered"
FAILED = "failed"
RECEIVED = "received"  # derived for SFT routes: every file sent (never stored on the route row)

# Object row states: S3 …
UPLOADING = "uploading"
DONE = "done"
# … and SFT, the first written by the worker, the others by the agent.
WRITTEN = "written"
SENDING = "sending"
RETRY = "retry"
SENT = "sent"
PARKED = "parked"
SFT_DELIVERED_STATES = frozenset({WRITTEN, SENDING, RETRY, SENT, PARKED})

ROUTE_RECORD = "route"
OBJECT_PREFIX = "obj#"
SFT_PATH_INDEX = "by_sft_path"
UNSENT_INDEX = "unsent"
UNSENT_KEY = "sft"

# BatchWriteItem's limit.


class LedgerSchemaError(RuntimeError):
    """The ledger table exists with another key schema; the message says what to do."""


@dataclass(frozen=True)
class ObjectRecord:
    """One object row: what a delivery did (or is doing) with one destination name."""

    name: str
    status: str
    source_key: str = ""
    size: int = 0
    sha256: str | None = None
    claim: str = ""
    mpu_id: str | None = None
    bucket: str | None = None
    temp_name: str | None = None
    # The source's encrypted format as the worker found it (decrypt and re-wrap routes):
    # ``none`` for an object delivered as it is; absent where the route does not look.
    encryption: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ObjectRecord:
        return cls(
            name=str(row.get("name", "")),
            status=str(row.get("status", "")),
            source_key=str(row.get("source_key", "")),
            size=int(row.get("size", 0) or 0),
            sha256=row.get("sha256") or None,
            claim=str(row.get("claim", "")),
            mpu_id=row.get("mpu_id") or None,
            bucket=row.get("bucket") or None,
            temp_name=row.get("temp_name") or None,
            encryption=row.get("encryption") or None,
        )

    def manifest_entry(self, relative_name: str) -> dict[str, Any]:
        """The object's entry in the route's manifest (``encryption`` where the row has it)."""
        entry: dict[str, Any] = {
            "name": relative_name,
            "size": self.size,
            "sha256": self.sha256,
            "source_key": self.source_key,
        }
        if self.encryption:
            entry["encryption"] = self.encryption
        return entry


def create_ledger_table(dynamodb: DynamoDBClient, name: str) -> None:
    """Create the ledger table (on-demand, TTL on ``expires_at``, two sparse indexes) unless it exists.

    Raises :class:`LedgerSchemaError` if a table of that name has another key schema.
    """
    try:
        dynamodb.create_table(
            TableName=name,
            KeySchema=[
                {"AttributeName": "delivery_id", "KeyType": "HASH"},
                {"AttributeName": "record", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "delivery_id", "AttributeType": "S"},
                {"AttributeName": "record", "AttributeType": "S"},
                {"AttributeName": "sft_path", "AttributeType": "S"},
                {"AttributeName": "sha256", "AttributeType": "S"},
                {"AttributeName": "unsent", "AttributeType": "S"},
                {"AttributeName": "written_epoch", "AttributeType": "N"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": SFT_PATH_INDEX,
                    "KeySchema": [
                        {"AttributeName": "sft_path", "KeyType": "HASH"},
                        {"AttributeName": "sha256", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                },
                {
                    "IndexName": UNSENT_INDEX,
                    "KeySchema": [
                        {"AttributeName": "unsent", "KeyType": "HASH"},
                        {"AttributeName": "written_epoch", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                },
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        dynamodb.get_waiter("table_exists").wait(TableName=name)
    except ClientError as exc:
        if error_code(exc) != "ResourceInUseException":
            raise
        check_ledger_schema(dynamodb, name)
    if _ttl_disabled(dynamodb, name):
        dynamodb.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
        )


def check_ledger_schema(dynamodb: DynamoDBClient, name: str) -> None:
    """Raise :class:`LedgerSchemaError` unless ``name`` is keyed by ``delivery_id`` + ``record``."""
    table = dynamodb.describe_table(TableName=name)["Table"]
    keys = {entry["AttributeName"]: entry["KeyType"] for entry in table.get("KeySchema", [])}
    if keys != {"delivery_id": "HASH", "record": "RANGE"}:
        raise LedgerSchemaError(
            f"ledger table {name} is keyed {keys}; this version needs partition key delivery_id and "
            "sort key record (progress is recorded per object). Recreate the table (it holds only "
            "the audit trail) or point EGRESS_LEDGER_TABLE at a new one."
        )


def _ttl_disabled(dynamodb: DynamoDBClient, name: str) -> bool:
    status = dynamodb.describe_time_to_live(TableName=name).get("TimeToLiveDescription", {})
    return status.get("TimeToLiveStatus") not in {"ENABLED", "ENABLING"}


def object_record_name(name: str) -> str:
    """The sort key of the object row for destination ``name``."""
    return OBJECT_PREFIX + name


_deserialize = TypeDeserializer().deserialize


def plain_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A ledger item as plain values (``{"S": …}`` unwrapped; whole numbers as ``int``)."""
    row = {name: _deserialize(value) for name, value in item.items()}
    return {
        name: (int(value) if isinstance(value, Decimal) and value == value.to_integral_value() else value)
        for name, value in row.items()
    }
