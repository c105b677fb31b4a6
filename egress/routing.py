"""Routes: the rows of the ``data-egress`` table, and finding a flag's routes cheaply.

A row's ``source_prefix`` may end in ``*`` and hold date placeholders resolved from the
event's time. Finding a flag's rows never scans the table: the partition keys a matching
row could be stored under are computed from the flag's folder (the exact folder, and
every character-prefix of it followed by ``*``, for each way the event's date strings in
it could have been written as placeholders) and fetched with PartiQL key lookups
(``source_prefix = ? OR …``, at most 50 keys per request), so the cost depends on the length of the flag's key, not
on the number of rows. Results are cached briefly, so an edited row applies within
``cache_seconds``.

The replaced system's rows load as they are (DESIGN §12): its extra columns are columns
here, an unknown column is a warning rather than a reason to refuse the row, S3 prefixes
lose a leading ``/`` and absolute SFT folders under the SFT root name the folder below it.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import KW_ONLY, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from egress.errors import PermanentError, Reason, error_code, translate_client_error
from egress.kernel.placeholders import PLACEHOLDERS, resolve_placeholders
from egress.messages import FlagEvent
from egress.route_columns import (
    as_bool,
    file_name_problems,
    folder_problems,
    sft_relative_folder,
    ssm_parameter_problem,
)
from egress.route_policy import FILTER_COLUMNS, as_patterns, pattern_problems

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TRANSFER_TYPES = ("S3", "SFT")
COMPRESS_FORMATS = ("gz", "zstd")
IN_LIMIT = 50  # DynamoDB PartiQL: at most 50 partition-key values in one statement
DEFAULT_SFT_ROOT = Path("/data-egress")
# What the replaced system's manifest_file_encryption said. Its worker encrypted the manifest
# for "encrypted" (a data key of its own key service) and "re-wrapped"/"rewrapped" (that key
# re-wrapped for the recipient), and wrote plaintext for anything else. This worker writes
# plaintext JSON manifests only, so a row that asks for an encrypted one is refused (the
# route is invalid, the flag dead-lettered with the reason) rather than answered with a
# plaintext manifest the recipient was promised would be encrypted; the values that ask for
# no encryption are accepted.
MANIFEST_PLAINTEXT = ("", "none", "false", "plaintext", "unencrypted")
MANIFEST_ENCRYPTED = ("encrypted", "re-wrapped", "rewrapped", "true")
_BOOL_COLUMNS = ("decrypt", "compress", "timestamp_files", "rewrap_datakey", "approval_required")
_NOT_COLUMNS = ("load_problems", "load_warnings")

_PLACEHOLDER_WORD = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*")
_BUCKET = re.compile(r"^(?!xn--)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_KMS_KEY = re.compile(
    r"^(arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key/[\w-]+|alias/[\w/+=,.@-]+)|alias/[\w/+=,.@-]+|[0-9a-f-]{36}|mrk-[0-9a-f]{32})$"
)
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
# A date the file-name columns are checked with: their placeholders resolve to digits.
_CHECK_DATE = datetime(2000, 1, 1)


def resolve_destination_prefix(route: Route, when: datetime, *, sft_root: Path) -> str:
    """The route's destination prefix for an event at ``when``, as the destinations take it.

    S3: a leading ``/`` is dropped (the replaced system's ``"/"`` is the bucket's root).
    SFT: an absolute folder under ``sft_root`` becomes relative to it; anything else is
    left as it is (an absolute folder elsewhere is one of the row's problems).
    """
    prefix = resolve_placeholders(route.destination_prefix, when)
    if route.transfer_type == "S3":
        return prefix.lstrip("/")
    if route.transfer_type == "SFT":
        relative = sft_relative_folder(prefix, sft_root=sft_root)
        return prefix if relative is None else relative
    return prefix


@dataclass(frozen=True)
class Route:
    """One row of the routes table (column names kept from the replaced system)."""

    source_prefix: str
    pipeline_name: str
    recipient_name: str = ""
    transfer_type: str = ""
    source_bucket: str = ""
    destination_bucket: str = ""
    destination_prefix: str = ""
    decrypt: bool = False
    compress: bool = False
    compress_fmt: str = ""
    role_arn: str = ""
    destination_kms_key_id: str = ""
    timestamp_files: bool = False
    manifest_file_name: str = ""
    enabled: bool = True
    # The replaced system's columns (DESIGN §12).
    rewrap_datakey: bool = False
    encrypting_key_ssm_parm_name: str = ""
    control_file_prefix: str = ""
    manifest_file_encryption: str = ""
    # Filters and approval (DESIGN §12, egress.route_policy).
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    approval_required: bool = False
    # Records the CLI writes: who edited, approved, switched the row. Not compared, so a row
    # read back equals the row written whoever wrote it (``routes apply`` diffs by equality).
    approved_by: str = field(default="", compare=False)
    approved_at: str = field(default="", compare=False)
    approved_digest: str = field(default="", compare=False)
    updated_by: str = field(default="", compare=False)
    updated_at: str = field(default="", compare=False)
    enabled_changed_by: str = field(default="", compare=False)
    enabled_changed_at: str = field(default="", compare=False)
    load_problems: tuple[str, ...] = field(default=(), compare=False, repr=False)
    # Columns the row holds that no version of the table defined: reported, never fatal, so
    # that a stray column does not dead-letter live traffic (they are not written back).
    load_warnings: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_plain(cls, row: Mapping[str, Any]) -> Route:
        """Build from plain Python values (YAML, deserialized DynamoDB); never raises on bad values."""
        problems: list[str] = []
        known = {f.name for f in fields(cls)} - set(_NOT_COLUMNS)
        values: dict[str, Any] = {}
        for column in known:
            value = row.get(column)
            if column in _BOOL_COLUMNS:
                values[column] = as_bool(value, column=column, problems=problems)
            elif column == "enabled":
                values[column] = as_bool(value, column=column, problems=problems, default=True)
            elif column in FILTER_COLUMNS:
                values[column] = as_patterns(value, column=column, problems=problems)
            elif value is None:
                values[column] = ""
            elif isinstance(value, str):
                values[column] = value
            else:
                problems.append(f"{column} must be a string, got {type(value).__name__}")
                values[column] = str(value)
        ignored = sorted(set(row) - known)
        warnings = [f"unknown column(s) ignored: {', '.join(ignored)}"] if ignored else []
        return cls(**values, load_problems=tuple(problems), load_warnings=tuple(warnings))

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Route:
        """Build from a low-level DynamoDB item (``{"S": …}`` values)."""
        deserializer = TypeDeserializer()
        return cls.from_plain({name: deserializer.deserialize(value) for name, value in item.items()})

    def to_plain(self) -> dict[str, Any]:
        """The row as plain values, omitting empty optional columns."""
        row: dict[str, Any] = {}
        for f in fields(self):
            if f.name in _NOT_COLUMNS:
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            if (
                f.name in {"source_prefix", "pipeline_name"}
                or value not in ("", False, [])
                or f.name == "enabled"
            ):
                row[f.name] = value
        if row.get("enabled") is True:
            del row["enabled"]
        return row

    def to_item(self) -> dict[str, Any]:
        """The row as a low-level DynamoDB item."""
        serializer = TypeSerializer()
        return {name: serializer.serialize(value) for name, value in self.to_plain().items()}

    @property
    def is_wildcard(self) -> bool:
        """Whether the row's ``source_prefix`` ends in ``*`` (any flag below it)."""
        return self.source_prefix.endswith("*")

    def problems(self, *, sft_root: Path = DEFAULT_SFT_ROOT) -> list[str]:
        """Every reason this row cannot be delivered, each a sentence naming the column.

        ``sft_root`` is the worker's SFT volume root: an absolute SFT folder below it is
        accepted (it names the folder below the root), any other absolute folder is not.
        """
        problems = list(self.load_problems)
        if not self.source_prefix:
            problems.append("source_prefix is required")
        if "*" in self.source_prefix[:-1]:
            problems.append(f"source_prefix {self.source_prefix!r}: '*' may only be the last character")
        if not self.pipeline_name:
            problems.append("pipeline_name is required")
        if not self.recipient_name:
            problems.append("recipient_name is required (it labels logs and metrics)")
        if self.transfer_type not in TRANSFER_TYPES:
            problems.append(f"transfer_type must be S3 or SFT, got {self.transfer_type!r}")
        if not self.source_bucket:
            problems.append("source_bucket is required")
        elif not _BUCKET.match(self.source_bucket):
            problems.append(f"source_bucket {self.source_bucket!r} is not a valid bucket name")
        for column in ("source_prefix", "destination_prefix", "manifest_file_name", "control_file_prefix"):
            for word in _PLACEHOLDER_WORD.findall(getattr(self, column)):
                if word not in PLACEHOLDERS:
                    problems.append(
                        f"{column}: unknown placeholder {word} (known: {', '.join(PLACEHOLDERS)})"
                    )
        if self.transfer_type == "S3":
            if not self.destination_bucket:
                problems.append("destination_bucket is required for transfer_type S3")
            elif not _BUCKET.match(self.destination_bucket):
                problems.append(f"destination_bucket {self.destination_bucket!r} is not a valid bucket name")
        if self.transfer_type == "SFT":
            problems.extend(self._sft_folder_problems(sft_root))
            for column in ("destination_bucket", "role_arn", "destination_kms_key_id"):
                if getattr(self, column):
                    problems.append(f"{column} does not apply to transfer_type SFT")
        if self.compress and (self.compress_fmt or "gz") not in COMPRESS_FORMATS:
            problems.append(f"compress_fmt must be gz or zstd, got {self.compress_fmt!r}")
        if self.compress_fmt and not self.compress:
            problems.append("compress_fmt is set but compress is not true")
        if self.role_arn and not _ROLE_ARN.match(self.role_arn):
            problems.append(f"role_arn {self.role_arn!r} is not an IAM role ARN")
        if self.destination_kms_key_id and not _KMS_KEY.match(self.destination_kms_key_id):
            problems.append(
                f"destination_kms_key_id {self.destination_kms_key_id!r} is not a KMS key id, ARN or alias"
            )
        problems.extend(self._rewrap_problems())
        problems.extend(self._file_name_column_problems())
        for column in FILTER_COLUMNS:
            problems.extend(pattern_problems(column, getattr(self, column)))
        return problems

    def warnings(self) -> list[str]:
        """What is odd about the row but does not stop it delivering (printed by ``routes`` commands)."""
        warnings = list(self.load_warnings)
        if self.encrypting_key_ssm_parm_name and not self.rewrap_datakey:
            warnings.append(
                f"encrypting_key_ssm_parm_name {self.encrypting_key_ssm_parm_name!r} is unused: "
                "rewrap_datakey is not true"
            )
        if self.manifest_file_encryption and not self.manifest_file_name:
            warnings.append("manifest_file_encryption is set but there is no manifest_file_name: unused")
        return warnings

    def _sft_folder_problems(self, sft_root: Path) -> list[str]:
        folder = self.destination_prefix
        if folder.startswith("/"):
            relative = sft_relative_folder(folder, sft_root=sft_root)
            if relative is None:
                return [
                    f"destination_prefix {folder!r} is absolute but not under the SFT root {sft_root}: "
                    f"write the folder relative to the root, or as {sft_root}/<folder>"
                ]
            if not relative:
                return [
                    f"destination_prefix {folder!r} is the SFT root itself: name a folder below it "
                    f"({sft_root}/<folder>)"
                ]
            folder = relative
        if not folder.strip("/"):
            return ["destination_prefix (the folder under the SFT root) is required for SFT"]
        return folder_problems(folder, column="destination_prefix")

    def _rewrap_problems(self) -> list[str]:
        if not self.rewrap_datakey:
            return []
        problems = []
        if self.decrypt:
            problems.append(
                "rewrap_datakey delivers objects still encrypted: it cannot be combined with decrypt = true"
            )
        if self.transfer_type != "S3":
            problems.append(
                "rewrap_datakey applies to transfer_type S3 only (the re-wrapped key travels in the "
                "object's metadata)"
            )
        if self.compress:
            problems.append("rewrap_datakey delivers the body byte-identical: compress cannot be true")
        name = self.encrypting_key_ssm_parm_name
        if not name:
            problems.append(
                "rewrap_datakey needs encrypting_key_ssm_parm_name (the SSM parameter holding the "
                "recipient's public key)"
            )
        elif (problem := ssm_parameter_problem(name)) is not None:
            problems.append(f"encrypting_key_ssm_parm_name {name!r} {problem}")
        return problems

    def _file_name_column_problems(self) -> list[str]:
        problems = []
        for column in ("manifest_file_name", "control_file_prefix"):
            template = getattr(self, column)
            if template:
                problems.extend(
                    file_name_problems(resolve_placeholders(template, _CHECK_DATE), column=column)
                )
        if self.manifest_file_name and self.manifest_file_name == self.control_file_prefix:
            problems.append("manifest_file_name and control_file_prefix name the same file")
        encryption = self.manifest_file_encryption
        if encryption.lower() in MANIFEST_ENCRYPTED:
            problems.append(
                f"manifest_file_encryption {encryption!r}: this worker writes manifests in plaintext only "
                'and will not send a plaintext one in place of an encrypted one (set it to "" to accept '
                "a plaintext manifest)"
            )
        elif encryption.lower() not in MANIFEST_PLAINTEXT:
            problems.append(f'manifest_file_encryption must be "" (plaintext), got {encryption!r}')
        return problems


@dataclass(frozen=True)
class RouteMatch:
    """A row that matches a flag, with everything resolved for this event."""

    route: Route
    problems: tuple[str, ...]
    resolved_source_prefix: str  # placeholders resolved, '*' removed
    delivery_prefix: str  # the folder the flag marks complete (the flag's own folder)
    # Placeholders resolved; S3: no leading '/'; SFT: relative to the SFT root.
    destination_prefix: str
    manifest_file_name: str = ""  # placeholders resolved
    warnings: tuple[str, ...] = ()


def placeholder_variants(prefix: str, when: datetime) -> list[str]:
    """Every way ``prefix`` could have been written with placeholders for date ``when``."""
    variants = [prefix]
    for name, fmt in PLACEHOLDERS.items():
        value = when.strftime(fmt)
        variants += [variant.replace(value, name) for variant in variants if value in variant]
    return list(dict.fromkeys(variants))


def candidate_keys(flag_prefix: str, when: datetime) -> list[str]:
    """The partition keys under which a row matching ``flag_prefix`` can be stored."""
    keys: list[str] = []
    for variant in placeholder_variants(flag_prefix, when):
        keys.append(variant)
        keys.extend(variant[:end] + "*" for end in range(len(variant) + 1))
    return list(dict.fromkeys(keys))


def match_route(
    route: Route, *, flag_prefix: str, when: datetime, sft_root: Path = DEFAULT_SFT_ROOT
) -> RouteMatch | None:
    """The match of ``route`` for a flag in ``flag_prefix``, or None if it does not match."""
    resolved = resolve_placeholders(route.source_prefix, when)
    if route.is_wildcard:
        resolved = resolved[:-1]
        if not flag_prefix.startswith(resolved):
            return None
    elif resolved != flag_prefix:
        return None
    return RouteMatch(
        route=route,
        problems=tuple(route.problems(sft_root=sft_root)),
        resolved_source_prefix=resolved,
        delivery_prefix=flag_prefix,
        destination_prefix=resolve_destination_prefix(route, when, sft_root=sft_root),
        manifest_file_name=resolve_placeholders(route.manifest_file_name, when),
        warnings=tuple(route.warnings()),
    )


@dataclass(eq=False)
class RouteTable:
    """Finds a flag's routes with a bounded number of key lookups, cached briefly."""

    dynamodb: DynamoDBClient
    table_name: str
    _: KW_ONLY
    cache_seconds: float = 30.0
    cache_size: int = 1024
    clock: Callable[[], float] = time.monotonic
    sft_root: Path = DEFAULT_SFT_ROOT

    def __post_init__(self) -> None:
        if not _TABLE_NAME.match(self.table_name):
            raise ValueError(f"{self.table_name!r} is not a DynamoDB table name")
        self._cache: OrderedDict[tuple[str, ...], tuple[float, list[Route]]] = OrderedDict()

    def find(self, event: FlagEvent) -> list[RouteMatch]:
        """The enabled rows matching the flag (invalid ones carry their problems).

        An empty list when every matching row is disabled: the flag is deliberately not
        delivered, which is no error. Raises ``PermanentError(no_route)`` when no row for
        the event's bucket matches at all.
        """
        flag_prefix = event.prefix
        when = event.event_time
        rows = self._rows(flag_prefix, when)
        matches: list[RouteMatch] = []
        other_buckets: set[str] = set()
        disabled = 0
        for route in rows:
            match = match_route(route, flag_prefix=flag_prefix, when=when, sft_root=self.sft_root)
            if match is None:
                continue
            if route.source_bucket and route.source_bucket != event.bucket:
                other_buckets.add(route.source_bucket)
                continue
            if not route.enabled:
                disabled += 1
                continue
            matches.append(match)
        if not matches and disabled:
            return []
        if not matches:
            detail = f"no route for s3://{event.bucket}/{flag_prefix} in table {self.table_name}"
            if other_buckets:
                detail += f"; {len(other_buckets)} bucket(s) have rows for this prefix: {', '.join(sorted(other_buckets))}"
            raise PermanentError(Reason.NO_ROUTE, detail)
        matches.sort(key=lambda m: (m.route.source_prefix, m.route.pipeline_name))
        return matches

    def _rows(self, flag_prefix: str, when: datetime) -> list[Route]:
        cache_key = (flag_prefix, *(when.strftime(fmt) for fmt in PLACEHOLDERS.values()))
        now = self.clock()
        cached = self._cache.get(cache_key)
        if cached is not None and now - cached[0] < self.cache_seconds:
            self._cache.move_to_end(cache_key)
            return cached[1]
        rows = list(self._lookup(candidate_keys(flag_prefix, when)))
        self._cache[cache_key] = (now, rows)
        self._cache.move_to_end(cache_key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return rows

    def _lookup(self, keys: list[str]) -> Iterator[Route]:
        for start in range(0, len(keys), IN_LIMIT):
            batch = keys[start : start + IN_LIMIT]
            # OR of partition-key equalities is a keyed lookup in DynamoDB (no scan), like IN;
            # it is used rather than IN because moto's PartiQL only honours IN's first value.
            condition = " OR ".join("source_prefix = ?" for _ in batch)
            # The table name is validated in __init__; the keys are bound parameters.
            statement = f'SELECT * FROM "{self.table_name}" WHERE {condition}'  # noqa: S608
            token: str | None = None
            while True:
                request: dict[str, Any] = {
                    "Statement": statement,
                    "Parameters": [{"S": key} for key in batch],
                    "ConsistentRead": True,
                }
                if token:
                    request["NextToken"] = token
                try:
                    response = self.dynamodb.execute_statement(**request)
                except (ClientError, BotoCoreError) as exc:
                    raise translate_client_error(
                        exc, doing=f"looking up routes in {self.table_name}"
                    ) from exc
                for item in response.get("Items", []):
                    yield Route.from_item(item)
                token = response.get("NextToken")
                if not token:
                    break


# -- table helpers for the CLI and the local stack (these may scan; the worker never does) --


def create_routes_table(dynamodb: DynamoDBClient, name: str) -> None:
    """Create the routes table (on-demand) unless it exists."""
    try:
        dynamodb.create_table(
            TableName=name,
            KeySchema=[
                {"AttributeName": "source_prefix", "KeyType": "HASH"},
                {"AttributeName": "pipeline_name", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "source_prefix", "AttributeType": "S"},
                {"AttributeName": "pipeline_name", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        dynamodb.get_waiter("table_exists").wait(TableName=name)
    except ClientError as exc:
        if error_code(exc) != "ResourceInUseException":
            raise


def route_key(source_prefix: str, pipeline_name: str) -> dict[str, dict[str, str]]:
    """A row's key as a low-level DynamoDB ``Key``."""
    return {"source_prefix": {"S": source_prefix}, "pipeline_name": {"S": pipeline_name}}


def put_route(dynamodb: DynamoDBClient, table: str, route: Route) -> None:
    dynamodb.put_item(TableName=table, Item=route.to_item())


def delete_route(dynamodb: DynamoDBClient, table: str, *, source_prefix: str, pipeline_name: str) -> bool:
    """Delete a row; True if it existed."""
    response = dynamodb.delete_item(
        TableName=table,
        Key=route_key(source_prefix, pipeline_name),
        ReturnValues="ALL_OLD",
    )
    return bool(response.get("Attributes"))


def get_route(
    dynamodb: DynamoDBClient, table: str, *, source_prefix: str, pipeline_name: str
) -> Route | None:
    item = dynamodb.get_item(
        TableName=table,
        Key=route_key(source_prefix, pipeline_name),
        ConsistentRead=True,
    ).get("Item")
    return Route.from_item(item) if item else None


def scan_routes(dynamodb: DynamoDBClient, table: str) -> Iterable[Route]:
    """Every row (operators' tools only)."""
    for page in dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for item in page.get("Items", []):
            yield Route.from_item(item)
