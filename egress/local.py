"""The local stack: create the AWS side on any endpoint, publish test data, run everything.

``egress local bootstrap`` creates, idempotently, what the worker needs on an endpoint
(the moto server, LocalStack or a sandbox account): the buckets, the queue and its DLQ,
the routes and ledger tables, a KMS key and the S3 → SQS notification for the flag.
``egress local publish`` uploads a folder like a producer does: the data, then the flag.
``egress local up`` runs the moto server in-process, bootstraps it and starts the
receiver, the worker and the SFT agent as child processes until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, TextIO

import yaml
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.futures import TransferFuture
from s3transfer.subscribers import BaseSubscriber

from egress.aws import EMULATOR_CREDENTIALS, AwsClients, AwsConfig, build_clients, emulator_session
from egress.errors import error_code
from egress.streams import ChunkReader

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

    from egress.cli import CliContext

DEFAULT_SOURCE_BUCKET = "egress-source"
DEFAULT_DESTINATION_BUCKET = "egress-destination"
DEFAULT_QUEUE = "data-egress"
DEFAULT_KMS_ALIAS = "alias/data-egress-local"
DEFAULT_FLAG_NAME = "pipeline_success.flag"
DEFAULT_ROUTES_FILE = Path("config/routes.local.yaml")
DEFAULT_SAMPLE_DIR = Path("config/sample-data")
DEFAULT_PUBLISH_PREFIX = "exports/opsmi/"
DEFAULT_PORT = 4566
DEFAULT_STATE_DIR = Path(".local-stack")

MAX_RECEIVE_COUNT = 5
VISIBILITY_TIMEOUT_SECONDS = 120
DLQ_RETENTION_SECONDS = 14 * 24 * 3600
NOTIFICATION_ID = "data-egress-flag"

MIB = 1024 * 1024
PART_SIZE = 16 * MIB
PROGRESS_THRESHOLD = 8 * MIB
READ_CHUNK = 1 * MIB

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MISSING_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


class LocalSetupError(Exception):
    """A local command could not do its job; the message says why, for a human."""


# ---------------------------------------------------------------------------------------
# bootstrap


@dataclass(frozen=True)
class Step:
    """One thing bootstrap did: ``created``, ``reused``, ``updated`` or ``applied``."""

    action: str
    what: str

    def __str__(self) -> str:
        return f"{self.action:>8}  {self.what}"


@dataclass(frozen=True)
class LocalResources:
    """Everything bootstrap made sure exists, and how the worker reaches it."""

    region: str
    endpoint_url: str | None
    source_bucket: str
    destination_bucket: str
    queue_url: str
    queue_arn: str
    dlq_url: str
    dlq_arn: str
    routes_table: str
    ledger_table: str
    kms_alias: str
    kms_key_arn: str
    flag_name: str
    steps: tuple[Step, ...] = ()

    def worker_env(self) -> dict[str, str]:
        """The environment variables ``egress run`` needs to use these resources."""
        env = {
            "AWS_REGION": self.region,
            "EGRESS_QUEUE_URL": self.queue_url,
            "EGRESS_DLQ_URL": self.dlq_url,
            "EGRESS_ROUTES_TABLE": self.routes_table,
            "EGRESS_LEDGER_TABLE": self.ledger_table,
            "EGRESS_FLAG_NAME": self.flag_name,
            "EGRESS_KMS_KEY_ARNS": self.kms_key_arn,
        }
        if self.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.endpoint_url
        return env

    def worker_config(self) -> dict[str, Any]:
        """The same as a YAML settings mapping (``EGRESS_CONFIG`` / ``egress run --config``)."""
        aws: dict[str, Any] = {"region": self.region}
        if self.endpoint_url:
            aws["endpoint_url"] = self.endpoint_url
        return {
            "queue_url": self.queue_url,
            "dlq_url": self.dlq_url,
            "routes_table": self.routes_table,
            "ledger_table": self.ledger_table,
            "flag_name": self.flag_name,
            "kms_key_arns": [self.kms_key_arn],
            "aws": aws,
        }

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (steps as strings)."""
        data = asdict(self)
        data["steps"] = [str(step) for step in self.steps]
        return data


def ensure_bucket(s3: S3Client, name: str, *, region: str) -> Step:
    """Create the bucket unless this account already has it."""
    try:
        s3.head_bucket(Bucket=name)
    except ClientError as exc:
        if error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
            raise LocalSetupError(f"bucket {name}: {_describe(exc)}") from exc
    else:
        return Step("reused", f"bucket s3://{name}")
    kwargs: dict[str, Any] = {"Bucket": name}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as exc:
        if error_code(exc) == "BucketAlreadyOwnedByYou":
            return Step("reused", f"bucket s3://{name}")
        if error_code(exc) == "BucketAlreadyExists":
            raise LocalSetupError(
                f"bucket name {name!r} is taken by another account; pick another with --source-bucket/"
                "--destination-bucket"
            ) from exc
        raise LocalSetupError(f"creating bucket {name}: {_describe(exc)}") from exc
    return Step("created", f"bucket s3://{name}")


@dataclass(frozen=True)
class QueueRef:
    """A queue's URL and ARN."""

    url: str
    arn: str


def _queue_url(sqs: SQSClient, name: str) -> str | None:
    try:
        return sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as exc:
        if error_code(exc) in _MISSING_QUEUE_CODES:
            return None
        raise LocalSetupError(f"queue {name}: {_describe(exc)}") from exc


def _ensure_queue(sqs: SQSClient, name: str, *, attributes: Mapping[str, str]) -> tuple[QueueRef, Step]:
    """Create the queue with ``attributes``, or bring an existing one's attributes in line."""
    url = _queue_url(sqs, name)
    if url is None:
        url = sqs.create_queue(QueueName=name, Attributes=dict(attributes))["QueueUrl"]  # type: ignore[arg-type]
        step = Step("created", f"queue {name}")
    else:
        answer = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]).get("Attributes", {})
        current = {str(k): v for k, v in answer.items()}
        differing = {k: v for k, v in attributes.items() if not _same_attribute(k, current.get(k), wanted=v)}
        if differing:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=differing)  # type: ignore[arg-type]
            step = Step("updated", f"queue {name} ({', '.join(sorted(differing))})")
        else:
            step = Step("reused", f"queue {name}")
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return QueueRef(url=url, arn=arn), step


def _same_attribute(name: str, current: str | None, *, wanted: str) -> bool:
    if current is None:
        return False
    if name in {"RedrivePolicy", "Policy"}:
        try:
            return _normalise_json(json.loads(current)) == _normalise_json(json.loads(wanted))
        except ValueError:
            return False
    return current == wanted


def _normalise_json(value: Any) -> Any:
    """Numbers and strings compare equal ("5" == 5): SQS returns redrive counts either way."""
    if isinstance(value, dict):
        return {k: _normalise_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise_json(v) for v in value]
    return str(value)


def queue_policy(*, queue_arn: str, source_bucket: str) -> str:
    """The queue policy letting S3 send notifications from the source bucket only."""
    _, partition, _, _, account, _ = queue_arn.split(":", 5)
    statement: dict[str, Any] = {
        "Sid": "AllowFlagNotificationsFromSourceBucket",
        "Effect": "Allow",
        "Principal": {"Service": "s3.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": {
            "ArnLike": {"aws:SourceArn": f"arn:{partition}:s3:::{source_bucket}"},
            "StringEquals": {"aws:SourceAccount": account},
        },
    }
    return json.dumps({"Version": "2012-10-17", "Id": "data-egress-notifications", "Statement": [statement]})


def ensure_queues(
    sqs: SQSClient, queue_name: str, *, dlq_name: str, source_bucket: str
) -> tuple[QueueRef, QueueRef, list[Step]]:
    """The DLQ, then the queue with its redrive policy, visibility timeout and S3 policy."""
    dlq, dlq_step = _ensure_queue(
        sqs, dlq_name, attributes={"MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS)}
    )
    redrive = json.dumps({"deadLetterTargetArn": dlq.arn, "maxReceiveCount": MAX_RECEIVE_COUNT})
    attributes = {
        "VisibilityTimeout": str(VISIBILITY_TIMEOUT_SECONDS),
        "ReceiveMessageWaitTimeSeconds": "20",
        "RedrivePolicy": redrive,
    }
    queue, queue_step = _ensure_queue(sqs, queue_name, attributes=attributes)
    # The policy names the queue's own ARN, known only once it exists.
    policy = queue_policy(queue_arn=queue.arn, source_bucket=source_bucket)
    current = sqs.get_queue_attributes(QueueUrl=queue.url, AttributeNames=["Policy"]).get("Attributes", {})
    steps = [dlq_step, queue_step]
    if not _same_attribute("Policy", current.get("Policy"), wanted=policy):
        sqs.set_queue_attributes(QueueUrl=queue.url, Attributes={"Policy": policy})
        if queue_step.action != "created":
            steps.append(Step("updated", f"queue {queue_name} policy (S3 may send from {source_bucket})"))
    return queue, dlq, steps


def ensure_kms_key(kms: KMSClient, alias: str) -> tuple[str, Step]:
    """The ARN of the key behind ``alias``, creating key and alias if needed."""
    if not alias.startswith("alias/"):
        raise LocalSetupError(f"KMS alias must start with 'alias/', got {alias!r}")
    target: str | None = None
    for page in kms.get_paginator("list_aliases").paginate():
        for entry in page.get("Aliases", []):
            if entry.get("AliasName") == alias:
                target = entry.get("TargetKeyId")
    if target:
        meta = kms.describe_key(KeyId=target)["KeyMetadata"]
        if meta.get("KeyState") in {"Enabled"}:
            return meta["Arn"], Step("reused", f"KMS key {alias} ({meta['KeyId']})")
    meta = kms.create_key(
        Description="data-egress local stack (throwaway key for envelope encryption tests)",
        KeyUsage="ENCRYPT_DECRYPT",
        KeySpec="SYMMETRIC_DEFAULT",
        Tags=[{"TagKey": "purpose", "TagValue": "data-egress-local"}],
    )["KeyMetadata"]
    if target:
        # The alias points at a disabled or deleted key: move it to the new one.
        kms.update_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
        return meta["Arn"], Step("updated", f"KMS key {alias} → new key {meta['KeyId']} (old one unusable)")
    kms.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
    return meta["Arn"], Step("created", f"KMS key {alias} ({meta['KeyId']})")


def flag_notification(*, queue_arn: str, flag_name: str) -> dict[str, Any]:
    """The queue configuration sending ``ObjectCreated`` events of flags to the queue."""
    return {
        "Id": NOTIFICATION_ID,
        "QueueArn": queue_arn,
        "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": flag_name}]}},
    }


def _comparable(config: Mapping[str, Any]) -> tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]]:
    rules = config.get("Filter", {}).get("Key", {}).get("FilterRules", [])
    # S3 answers "Suffix" where it was sent "suffix".
    normalised = tuple(sorted((str(r["Name"]).lower(), str(r["Value"])) for r in rules))
    return str(config.get("QueueArn")), tuple(sorted(config.get("Events", []))), normalised


def ensure_flag_notification(s3: S3Client, bucket: str, *, queue_arn: str, flag_name: str) -> Step:
    """Add (or correct) our notification on the bucket, keeping any others it has."""
    wanted = flag_notification(queue_arn=queue_arn, flag_name=flag_name)
    current: dict[str, Any] = dict(s3.get_bucket_notification_configuration(Bucket=bucket))
    current.pop("ResponseMetadata", None)
    queues = list(current.get("QueueConfigurations", []))
    ours = [q for q in queues if q.get("Id") == NOTIFICATION_ID]
    if len(ours) == 1 and _comparable(ours[0]) == _comparable(wanted):
        return Step("reused", f"notification s3://{bucket} *{flag_name} → queue")
    current["QueueConfigurations"] = [q for q in queues if q.get("Id") != NOTIFICATION_ID] + [wanted]
    try:
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=current)  # type: ignore[arg-type]
    except ClientError as exc:
        raise LocalSetupError(f"notification on s3://{bucket}: {_describe(exc)}") from exc
    action = "updated" if ours else "created"
    return Step(action, f"notification s3://{bucket} ObjectCreated *{flag_name} → queue")


def apply_routes_file(
    clients: AwsClients, path: Path, *, routes_table: str, ledger_table: str
) -> tuple[Step, str]:
    """Apply a routes YAML file with ``egress routes apply FILE --yes``; returns its output too."""
    from egress.cli import CliContext, build_parser

    argv = [
        "--routes-table",
        routes_table,
        "--ledger-table",
        ledger_table,
        "routes",
        "apply",
        str(path),
        "--yes",
    ]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on a command it does not know
        raise LocalSetupError(f"`egress {' '.join(argv)}` is not available in this build") from exc
    output = io.StringIO()
    context = CliContext(
        aws_config=clients.config,
        routes_table=routes_table,
        ledger_table=ledger_table,
        out=output,
        err=output,
        _clients=clients,
    )
    code = args.handler(args, context)
    if code != 0:
        raise LocalSetupError(
            f"applying routes from {path} failed (exit {code}):\n{output.getvalue().rstrip()}"
        )
    return Step("applied", f"routes {path} → table {routes_table}"), output.getvalue()


def route_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a routes YAML file (``routes: [...]``), for checks and the agent config."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise LocalSetupError(f"cannot read routes file {path}: {exc}") from exc
    rows = loaded.get("routes", []) if isinstance(loaded, dict) else []
    return [row for row in rows if isinstance(row, dict)]


def _bucket_warnings(rows: Sequence[Mapping[str, Any]], *, source: str, destination: str) -> list[str]:
    warnings = []
    for row in rows:
        name = f"{row.get('source_prefix')} / {row.get('pipeline_name')}"
        if row.get("source_bucket") not in (None, source):
            warnings.append(f"route {name} reads bucket {row['source_bucket']!r}, bootstrap made {source!r}")
        wanted = row.get("destination_bucket")
        if str(row.get("transfer_type", "")).upper() == "S3" and wanted not in (None, destination):
            warnings.append(f"route {name} writes bucket {wanted!r}, bootstrap made {destination!r}")
    return warnings


def bootstrap(
    clients: AwsClients,
    *,
    source_bucket: str = DEFAULT_SOURCE_BUCKET,
    destination_bucket: str = DEFAULT_DESTINATION_BUCKET,
    queue_name: str = DEFAULT_QUEUE,
    routes_table: str = "data-egress",
    ledger_table: str = "data-egress-ledger",
    kms_alias: str = DEFAULT_KMS_ALIAS,
    flag_name: str = DEFAULT_FLAG_NAME,
    routes_file: Path | None = None,
    report: Callable[[str], None] = lambda _line: None,
) -> LocalResources:
    """Create (or reuse) every resource of the local stack; safe to run again.

    ``report`` receives one human line per step. Raises :class:`LocalSetupError`.
    """
    try:
        from egress.ledger import create_ledger_table
        from egress.routing import create_routes_table
    except ImportError as exc:
        raise LocalSetupError(f"this build of egress cannot create the tables: {exc}") from exc

    steps: list[Step] = []

    def done(step: Step) -> None:
        steps.append(step)
        report(str(step))

    region = clients.config.region
    try:
        for bucket in (source_bucket, destination_bucket):
            done(ensure_bucket(clients.s3, bucket, region=region))
        queue, dlq, queue_steps = ensure_queues(
            clients.sqs, queue_name, dlq_name=f"{queue_name}-dlq", source_bucket=source_bucket
        )
        for step in queue_steps:
            done(step)
        create_routes_table(clients.dynamodb, routes_table)
        done(Step("ensured", f"routes table {routes_table}"))
        create_ledger_table(clients.dynamodb, ledger_table)
        done(Step("ensured", f"ledger table {ledger_table}"))
        key_arn, key_step = ensure_kms_key(clients.kms, kms_alias)
        done(key_step)
        done(ensure_flag_notification(clients.s3, source_bucket, queue_arn=queue.arn, flag_name=flag_name))
        if routes_file is not None:
            for warning in _bucket_warnings(
                route_rows(routes_file), source=source_bucket, destination=destination_bucket
            ):
                report(f" warning  {warning}")
            step, output = apply_routes_file(
                clients, routes_file, routes_table=routes_table, ledger_table=ledger_table
            )
            done(step)
            for line in output.rstrip().splitlines():
                report(f"          {line}")
    except (ClientError, BotoCoreError) as exc:
        raise LocalSetupError(f"bootstrap failed: {_describe(exc)}") from exc
    return LocalResources(
        region=region,
        endpoint_url=clients.config.endpoint_url,
        source_bucket=source_bucket,
        destination_bucket=destination_bucket,
        queue_url=queue.url,
        queue_arn=queue.arn,
        dlq_url=dlq.url,
        dlq_arn=dlq.arn,
        routes_table=routes_table,
        ledger_table=ledger_table,
        kms_alias=kms_alias,
        kms_key_arn=key_arn,
        flag_name=flag_name,
        steps=tuple(steps),
    )


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Write ``KEY=value`` lines (docker ``--env-file`` and ``set -a; . file`` both read it)."""
    for key, value in values.items():
        if "\n" in value or " " in value:
            raise LocalSetupError(f"{key} holds whitespace; cannot write it to an env file")
    _write_atomically(path, "".join(f"{key}={value}\n" for key, value in values.items()))


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', '?')}: {error.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------
# publish


@dataclass(frozen=True)
class S3Uri:
    """A bucket and a key prefix ('' or ending in '/')."""

    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_s3_uri(uri: str) -> S3Uri:
    """Parse ``s3://bucket/prefix/``; a prefix without its trailing ``/`` gets one."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI (expected s3://bucket/prefix/)")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise ValueError(f"{uri!r}: {bucket!r} is not a valid bucket name")
    if prefix.startswith("/") or "//" in prefix:
        raise ValueError(f"{uri!r}: the prefix must not start with '/' nor hold '//'")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return S3Uri(bucket=bucket, prefix=prefix)


@dataclass(frozen=True)
class LocalFile:
    """A file to publish and the key suffix it gets (its path relative to the folder)."""

    path: Path
    relative: str
    size: int


def files_to_publish(directory: Path, *, flag_name: str, warn: Callable[[str], None]) -> list[LocalFile]:
    """Every regular file under ``directory``, sorted; a flag file inside it is skipped."""
    if not directory.is_dir():
        raise LocalSetupError(f"{directory} is not a folder")
    found = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            path = Path(root, name)
            relative = path.relative_to(directory).as_posix()
            if not path.is_file():
                warn(f"skipping {relative}: not a regular file")
            elif name == flag_name:
                warn(f"skipping {relative}: the flag is written last by publish itself")
            else:
                found.append(LocalFile(path=path, relative=relative, size=path.stat().st_size))
    if not found:
        raise LocalSetupError(f"{directory} holds no files to publish")
    return found


class Progress:
    """One aggregated progress line on a stream; thread-safe, throttled."""

    def __init__(
        self, *, total: int, files: int, stream: TextIO, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total = total
        self.files = files
        self._stream = stream
        self._clock = clock
        self._lock = threading.Lock()
        self._done = 0
        self._files_done = 0
        self._started = clock()
        self._last = 0.0
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._interval = 0.2 if self._tty else 5.0

    def add(self, nbytes: int) -> None:
        """Count bytes sent (a transfer callback)."""
        with self._lock:
            self._done += nbytes
            now = self._clock()
            if now - self._last >= self._interval:
                self._last = now
                self._show(final=False)

    def file_done(self) -> None:
        """Count one finished file."""
        with self._lock:
            self._files_done += 1

    def finish(self) -> None:
        """Print the last line."""
        with self._lock:
            self._show(final=True)

    def _show(self, *, final: bool) -> None:
        elapsed = max(self._clock() - self._started, 1e-6)
        percent = 100.0 * self._done / self.total if self.total else 100.0
        line = (
            f"uploaded {self._done / MIB:,.1f}/{self.total / MIB:,.1f} MiB ({percent:5.1f}%) "
            f"{self._files_done}/{self.files} files {self._done / MIB / elapsed:,.1f} MiB/s"
        )
        if self._tty:
            self._stream.write("\r" + line + ("\n" if final else ""))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


class _ProgressSubscriber(BaseSubscriber):
    """Feeds s3transfer's progress and completion events into :class:`Progress`."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        if self._progress is not None:
            self._progress.add(bytes_transferred)

    def on_done(self, future: Any, **kwargs: Any) -> None:
        if self._progress is not None:
            self._progress.file_done()


class _EncryptedFile(ChunkReader):
    """Ciphertext chunks as a non-seekable file object; closing it closes the plaintext file."""

    def __init__(self, chunks: Iterator[bytes], *, source: IO[bytes]) -> None:
        super().__init__(chunks)
        self._source = source

    def close(self) -> None:
        self._source.close()
        super().close()


@dataclass(frozen=True)
class PublishResult:
    """What publish uploaded: data keys in order, then the flag key."""

    keys: tuple[str, ...]
    bytes: int
    flag_key: str
    seconds: float


def _read_chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(READ_CHUNK):
        yield chunk


def publish(
    s3: S3Client,
    directory: Path,
    *,
    target: S3Uri,
    flag_name: str = DEFAULT_FLAG_NAME,
    kms: KMSClient | None = None,
    kms_key_id: str | None = None,
    jobs: int = 4,
    progress_stream: TextIO | None = None,
    warn: Callable[[str], None] = lambda _line: None,
) -> PublishResult:
    """Upload every file under ``directory`` below ``target``, then — last — the empty flag.

    With ``kms_key_id`` each file is envelope-encrypted while streaming and stored as
    ``<key>.enc`` with the envelope metadata. Uploads use boto3's managed transfer
    (multipart from 16 MiB); memory is ``jobs`` × part size at most. Nothing of the flag
    is written if any file failed.
    """
    files = files_to_publish(directory, flag_name=flag_name, warn=warn)
    total = sum(f.size for f in files)
    progress = (
        Progress(total=total, files=len(files), stream=progress_stream)
        if progress_stream is not None and total >= PROGRESS_THRESHOLD
        else None
    )
    if kms_key_id is not None:
        if kms is None:
            raise LocalSetupError("encryption needs a KMS client")
        from egress.transforms.encrypt import envelope_encrypt
    jobs = max(1, jobs)
    config = TransferConfig(
        multipart_threshold=PART_SIZE,
        multipart_chunksize=PART_SIZE,
        max_concurrency=jobs,
        use_threads=True,
    )
    # Parts of a non-seekable (encrypted) stream are read into memory: bound them.
    config.max_in_memory_upload_chunks = jobs
    started = time.monotonic()
    keys: list[str] = []
    window: deque[tuple[str, TransferFuture, io.BufferedReader | None]] = deque()

    def wait_oldest() -> None:
        name, future, opened = window.popleft()
        try:
            future.result()
        except (ClientError, BotoCoreError, OSError, ValueError) as exc:
            raise LocalSetupError(
                f"uploading {name} failed: {_describe(exc)}; the flag was NOT written"
            ) from exc
        finally:
            if opened is not None:
                opened.close()

    subscriber = _ProgressSubscriber(progress)
    try:
        with create_transfer_manager(s3, config) as manager:
            for item in files:
                key = target.prefix + item.relative
                source: Any = str(item.path)  # s3transfer opens (and closes) it when it gets to it
                opened: io.BufferedReader | None = None
                extra: dict[str, Any] = {}
                if kms is not None and kms_key_id is not None:
                    key += ".enc"
                    handle = item.path.open("rb")
                    try:
                        metadata, ciphertext = envelope_encrypt(
                            kms, key_id=kms_key_id, chunks=_read_chunks(handle)
                        )
                    except BaseException:
                        handle.close()
                        raise
                    # Buffered: s3transfer reads a part with one read(), which must not come back short.
                    source = opened = io.BufferedReader(_EncryptedFile(ciphertext, source=handle), READ_CHUNK)
                    extra["Metadata"] = metadata
                # A bounded window of open files and uploads in flight, whatever the folder holds.
                if len(window) >= jobs:
                    wait_oldest()
                window.append(
                    (item.relative, manager.upload(source, target.bucket, key, extra, [subscriber]), opened)
                )
                keys.append(key)
            while window:
                wait_oldest()
    except (ClientError, BotoCoreError) as exc:
        raise LocalSetupError(
            f"publishing to {target} failed: {_describe(exc)}; the flag was NOT written"
        ) from exc
    finally:
        for _name, _future, opened_file in window:
            if opened_file is not None:
                opened_file.close()
    if progress is not None:
        progress.finish()
    flag_key = target.prefix + flag_name
    try:
        s3.put_object(Bucket=target.bucket, Key=flag_key, Body=b"")
    except (ClientError, BotoCoreError) as exc:
        raise LocalSetupError(f"writing the flag s3://{target.bucket}/{flag_key}: {_describe(exc)}") from exc
    return PublishResult(keys=tuple(keys), bytes=total, flag_key=flag_key, seconds=time.monotonic() - started)


# ---------------------------------------------------------------------------------------
# up


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (same socket options as werkzeug)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on ``host``."""
    return "127.0.0.1" if host in {"", "0.0.0.0", "::"} else host  # noqa: S104 - compared, not bound


def pick_port(host: str, preferred: int, *, avoid: Sequence[int] = ()) -> int:
    """``preferred`` if free, else any free port; never one in ``avoid`` (already handed out)."""
    if preferred not in avoid and port_is_free(host, preferred):
        return preferred
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port


def egress_command() -> str:
    """How a second shell runs this ``egress``: its name if PATH finds this one, else its path.

    ``make run`` starts from ``.venv/bin`` without activating it, so a newcomer's next shell
    would not find a bare ``egress``.
    """
    script = Path(sys.executable).with_name("egress")
    found = shutil.which("egress")
    if not script.exists() or (found is not None and Path(found).resolve() == script.resolve()):
        return "egress"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)


def log_tail(path: Path, *, lines: int = 20) -> str:
    """The last lines of a log file, indented, for error messages."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return "    (no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) if tail else "    (log is empty)"


def http_ok(url: str, *, timeout: float = 1.0) -> bool:
    """Whether ``url`` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own loopback URLs
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def tls_handshake_ok(
    host: str, port: int, *, server_name: str, ca: Path, cert: Path, key: Path, timeout: float = 1.0
) -> bool:
    """Whether ``host:port`` completes a mutual-TLS handshake with these certificates.

    A bare TCP probe would do for "is it listening", but the receiver logs each one as a
    failed handshake; this one also proves the certificates fit.
    """
    try:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=server_name),
        ):
            return True
    except OSError:  # ssl.SSLError included
        return False


@dataclass
class Child:
    """A daemon ``up`` runs: how to start it, how to tell it answers, where it logs."""

    name: str
    argv: list[str]
    log_path: Path
    ready: Callable[[], bool]
    where: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process in its own session (Ctrl-C reaches ``up`` only), logging to a file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def exit_code(self) -> int | None:
        """None while running (or not started)."""
        return None if self.process is None else self.process.poll()

    def signal(self, signum: int) -> None:
        """Signal the child's whole process group, if it still runs."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)


def wait_until_ready(
    children: Sequence[Child],
    *,
    deadline: float,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Wait until every child answers (True) or ``stop`` is set (False).

    Raises :class:`LocalSetupError` naming the first child that exited or did not answer.
    """
    pending = list(children)
    while pending:
        if stop is not None and stop.is_set():
            return False
        for child in list(pending):
            code = child.exit_code()
            if code is not None:
                raise LocalSetupError(
                    f"{child.name} exited with code {code} before it answered ({child.where}).\n"
                    f"Last lines of {child.log_path}:\n{log_tail(child.log_path)}"
                )
            if child.ready():
                pending.remove(child)
        if not pending:
            return True
        if clock() > deadline:
            child = pending[0]
            raise LocalSetupError(
                f"{child.name} did not answer on {child.where} in time.\n"
                f"Last lines of {child.log_path}:\n{log_tail(child.log_path)}"
            )
        time.sleep(0.2)
    return True


def stop_children(children: Sequence[Child], *, grace: float, report: Callable[[str], None]) -> None:
    """SIGTERM every child, wait up to ``grace`` seconds, then SIGKILL what is left."""
    running = [c for c in children if c.process is not None and c.process.poll() is None]
    for child in running:
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in running:
        assert child.process is not None
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            report(f"{child.name} did not stop within {grace:.0f}s: killing it")
            child.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=5)


_PIDS_FILE = "pids.json"


# Every child carries this variable; a recorded pid is only ours if its environment has it.
STATE_DIR_MARKER = "EGRESS_LOCAL_STATE_DIR"


def stop_leftovers(state_dir: Path, *, report: Callable[[str], None]) -> None:
    """Stop children a previous ``up`` (killed with SIGKILL) left running for this state dir.

    A recorded pid counts only if its environment still names this state dir, so a
    reused pid of an unrelated process is never touched.
    """
    path = state_dir / _PIDS_FILE
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    marker = f"{STATE_DIR_MARKER}={state_dir}".encode()
    for name, pid in dict(recorded).items():
        try:
            environ = Path(f"/proc/{int(pid)}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if marker in environ:
            report(f"stopping {name} (pid {pid}) left over from an earlier run")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGTERM)
    with contextlib.suppress(OSError):
        path.unlink()


def child_env(extra: Mapping[str, str], *, base: Mapping[str, str]) -> dict[str, str]:
    """An explicit environment: the caller's, minus any AWS/egress/agent settings, plus ``extra``.

    Dropping the caller's ``AWS_*`` keeps real credentials away from the local stack.
    """
    dropped = ("AWS_", "EGRESS_", "SFT_AGENT_", "SFT_CLIENT_", "SFT_CA_")
    env = {k: v for k, v in base.items() if k == STATE_DIR_MARKER or not k.startswith(dropped)}
    env.update(
        AWS_ACCESS_KEY_ID=EMULATOR_CREDENTIALS["aws_access_key_id"],
        AWS_SECRET_ACCESS_KEY=EMULATOR_CREDENTIALS["aws_secret_access_key"],
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


# File names `sft-agent dev-certs --out DIR` writes.
CA_CERT = "ca.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"
CLIENT_CERT = "client.pem"
CLIENT_KEY = "client-key.pem"


def agent_config(
    *,
    sft_root: Path,
    folders: Sequence[str],
    receiver_url: str,
    certs: Path,
    metrics_port: int,
    metrics_host: str = "127.0.0.1",
    ledger_table: str | None = None,
) -> dict[str, Any]:
    """The SFT agent's YAML for the local stack: each folder pushed to the receiver.

    With ``ledger_table`` the agent records each file's fate there (sent, parked), so
    ``egress history --files`` shows it.
    """
    ledger = (
        {"ledger": {"table": ledger_table, "sft_root": str(sft_root), "unsent_check_interval": "10s"}}
        if ledger_table
        else {}
    )
    return ledger | {
        "tls": {
            "client_cert": str(certs / CLIENT_CERT),
            "client_key": str(certs / CLIENT_KEY),
            "ca_bundle": str(certs / CA_CERT),
            "verify_hostname": True,
            "min_version": "TLSv1.2",
        },
        "defaults": {
            "poll_interval": "1s",
            "min_age": "2s",
            "threads": 3,
            "retry": {"max_attempts": 5, "initial_delay": "2s", "max_delay": "30s", "multiplier": 2},
        },
        "metrics": {"host": metrics_host, "port": metrics_port},
        "logging": {"format": "console", "level": "info"},
        "shutdown_grace": "10s",
        "routes": [
            {
                "name": folder,
                "source": f"{sft_root / folder}/",
                # The worker keeps the producer's sub-folders (orders/part-0.csv): send them too.
                "recursive": True,
                "filename_regex": ".*",
                "actions": [{"http": {"url": f"{receiver_url}/{folder}", "method": "POST"}}],
                "delete_on_send": True,
                "error_folder": str(sft_root / "error" / folder),
            }
            for folder in folders
        ],
    }


def sft_folders(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Top-level SFT folders the routes write to (``warehouse`` if none)."""
    folders = []
    for row in rows:
        if str(row.get("transfer_type", "")).upper() != "SFT":
            continue
        first = str(row.get("destination_prefix", "")).strip("/").split("/", 1)[0]
        if first and "$" not in first and first not in folders and first not in {".", ".."}:
            folders.append(first)
    return folders or ["warehouse"]


def publish_prefix(rows: Sequence[Mapping[str, Any]], *, source_bucket: str) -> str:
    """A prefix the sample routes deliver from, for the banner's publish command."""
    for row in rows:
        prefix = str(row.get("source_prefix", ""))
        if row.get("source_bucket") in (None, source_bucket) and prefix and not re.search(r"[$*]", prefix):
            return prefix if prefix.endswith("/") else prefix + "/"
    return DEFAULT_PUBLISH_PREFIX


def find_repo_path(relative: Path) -> Path | None:
    """``relative`` from the current folder, else from the source checkout this module is in."""
    if relative.exists():
        return relative
    candidate = Path(__file__).resolve().parents[1] / relative
    return candidate if candidate.exists() else None


@dataclass
class UpOptions:
    """The knobs of ``egress local up``."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    state_dir: Path = DEFAULT_STATE_DIR
    routes_file: Path | None = None
    routes_table: str = "data-egress"
    ledger_table: str = "data-egress-ledger"
    region: str = "eu-west-2"
    worker: bool = True
    agent: bool = True
    ready_file: Path | None = None
    timeout: float = 60.0
    stop_grace: float = 15.0
    # None: the usual port (8091, 9090, 9091) if free, else any free one.
    receiver_port: int | None = None
    worker_port: int | None = None
    agent_port: int | None = None


class _Stop(Exception):  # noqa: N818 - a request, not a failure
    """Raised in the main thread when a signal asks ``up`` to stop."""


class LocalStack:
    """``egress local up``: moto in-process, bootstrap, then the three daemons."""

    def __init__(self, options: UpOptions, *, out: TextIO, err: TextIO) -> None:
        self.options = options
        self.out = out
        self.err = err
        self.state_dir = options.state_dir.resolve()
        self.children: list[Child] = []
        self._server: Any = None
        self._request_log: logging.Handler | None = None
        self._signals = 0
        self._stop = threading.Event()

    def say(self, line: str) -> None:
        """A progress line on stderr (stdout holds only the banner)."""
        print(f"[local] {line}", file=self.err, flush=True)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        self._stop.set()
        if self._signals > 1:
            # A second Ctrl-C: no more patience.
            for child in self.children:
                child.signal(signal.SIGKILL)

    def run(self) -> int:
        """Bring the stack up, print the banner, wait for a signal, tear everything down."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            try:
                resources, info = self._up()
            except LocalSetupError as exc:
                print(f"egress local up: {exc}", file=self.err, flush=True)
                return 1
            except _Stop:
                self.say("stopped while starting")
                return 0
            self._banner(resources, info)
            return self._watch()
        finally:
            self._down()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        """Ask a running :meth:`run` to tear down (what SIGTERM does)."""
        self._stop.set()

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stop

    def _up(self) -> tuple[LocalResources, dict[str, Any]]:
        options = self.options
        state = self.state_dir
        if not port_is_free(options.host, options.port):
            raise LocalSetupError(
                f"port {options.host}:{options.port} is taken (LocalStack or another `egress local up`?). "
                "Stop it, or pass --port to use another."
            )
        state.mkdir(parents=True, exist_ok=True)
        stop_leftovers(state, report=self.say)
        # Before anything starts, so a port asked for and taken fails fast.
        receiver_port, worker_port, agent_port = self._child_ports()
        if options.ready_file is not None:
            with contextlib.suppress(OSError):
                options.ready_file.unlink()
        logs = state / "logs"
        sft_root = state / "data-egress"
        received = state / "received"
        certs = state / "certs"
        for path in (logs, sft_root, received):
            path.mkdir(parents=True, exist_ok=True)

        endpoint = self._start_moto(logs / "moto.log")
        clients = build_clients(
            AwsConfig(region=options.region, endpoint_url=endpoint),
            session=emulator_session(options.region),
        )
        self.say(f"bootstrapping {endpoint}")
        routes_file = options.routes_file
        rows = route_rows(routes_file) if routes_file is not None else []
        resources = bootstrap(
            clients,
            routes_table=options.routes_table,
            ledger_table=options.ledger_table,
            routes_file=routes_file,
            report=self.say,
        )
        self._check_stop()
        folders = sft_folders(rows)
        for folder in folders:
            (sft_root / folder).mkdir(parents=True, exist_ok=True)

        self.say("generating throwaway certificates")
        self._dev_certs(certs, logs / "dev-certs.log")

        python = sys.executable
        near = _client_host(options.host)
        receiver_url = f"https://localhost:{receiver_port}"
        base = dict(os.environ) | {STATE_DIR_MARKER: str(state)}
        self.children.append(
            Child(
                name="receiver",
                argv=[
                    python,
                    "-m",
                    "sft_agent.cli",
                    "receiver",
                    "--listen",
                    f"{options.host}:{receiver_port}",
                    "--cert",
                    str(certs / SERVER_CERT),
                    "--key",
                    str(certs / SERVER_KEY),
                    "--ca",
                    str(certs / CA_CERT),
                    "--out",
                    str(received),
                ],
                log_path=logs / "receiver.log",
                ready=lambda: tls_handshake_ok(
                    near,
                    receiver_port,
                    server_name="localhost",
                    ca=certs / CA_CERT,
                    cert=certs / CLIENT_CERT,
                    key=certs / CLIENT_KEY,
                ),
                where=f"{near}:{receiver_port} (TLS)",
                env=child_env({}, base=base),
            )
        )
        if options.worker:
            worker_env = resources.worker_env() | {
                "AWS_ENDPOINT_URL": endpoint,
                "EGRESS_SFT_ROOT": str(sft_root),
                "EGRESS_METRICS_HOST": options.host,
                "EGRESS_METRICS_PORT": str(worker_port),
                "EGRESS_LOG_FORMAT": "console",
                "EGRESS_SHUTDOWN_GRACE_SECONDS": str(max(1.0, options.stop_grace - 5)),
                "EGRESS_WAIT_TIME_SECONDS": "5",
            }
            self.children.append(
                Child(
                    name="worker",
                    argv=[python, "-m", "egress.cli", "run"],
                    log_path=logs / "worker.log",
                    ready=lambda: http_ok(f"http://{near}:{worker_port}/healthz"),
                    where=f"http://{near}:{worker_port}/healthz",
                    env=child_env(worker_env, base=base),
                )
            )
        agent_config_path = state / "sft-agent.yaml"
        if options.agent:
            config = agent_config(
                sft_root=sft_root,
                folders=folders,
                receiver_url=receiver_url,
                certs=certs,
                metrics_port=agent_port,
                metrics_host=options.host,
                ledger_table=resources.ledger_table,
            )
            _write_atomically(agent_config_path, yaml.safe_dump(config, sort_keys=False))
            self.children.append(
                Child(
                    name="sft-agent",
                    argv=[python, "-m", "sft_agent.cli", "run", "--config", str(agent_config_path)],
                    log_path=logs / "sft-agent.log",
                    ready=lambda: http_ok(f"http://{near}:{agent_port}/healthz"),
                    where=f"http://{near}:{agent_port}/healthz",
                    env=child_env(
                        {
                            "SFT_AGENT_CONFIG": str(agent_config_path),
                            "AWS_ENDPOINT_URL": endpoint,
                            "AWS_REGION": resources.region,
                        },
                        base=base,
                    ),
                )
            )
        for child in self.children:
            self._check_stop()
            self.say(f"starting {child.name} (log {child.log_path})")
            child.start()
        self._record_pids()
        if not wait_until_ready(self.children, deadline=time.monotonic() + options.timeout, stop=self._stop):
            raise _Stop
        sample_dir = find_repo_path(DEFAULT_SAMPLE_DIR)
        info = {
            "endpoint_url": endpoint,
            "region": options.region,
            "state_dir": str(state),
            "sft_root": str(sft_root),
            "received_dir": str(received),
            "receiver_url": receiver_url,
            "worker_url": f"http://{near}:{worker_port}" if options.worker else None,
            "agent_url": f"http://{near}:{agent_port}" if options.agent else None,
            "agent_config": str(agent_config_path) if options.agent else None,
            "certs_dir": str(certs),
            "logs": {child.name: str(child.log_path) for child in self.children},
            "publish_prefix": publish_prefix(rows, source_bucket=resources.source_bucket),
            "sample_dir": str(sample_dir) if sample_dir is not None else None,
            "pid": os.getpid(),
        }
        return resources, info

    def _child_ports(self) -> tuple[int, int, int]:
        """The receiver's, worker's and agent's ports: as asked (refused if taken), else picked."""
        options = self.options
        chosen: list[int] = [options.port]
        for flag, asked, usual in (
            ("--receiver-port", options.receiver_port, 8091),
            ("--worker-port", options.worker_port, 9090),
            ("--agent-port", options.agent_port, 9091),
        ):
            if asked is None:
                chosen.append(pick_port(options.host, usual, avoid=chosen))
            elif not 0 < asked < 65536:
                raise LocalSetupError(f"{flag} {asked} is not a TCP port (1-65535)")
            elif asked in chosen or not port_is_free(options.host, asked):
                raise LocalSetupError(f"port {options.host}:{asked} ({flag}) is taken; pass another")
            else:
                chosen.append(asked)
        _moto, receiver, worker, agent = chosen
        return receiver, worker, agent

    def _start_moto(self, log_path: Path) -> str:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise LocalSetupError(
                "the embedded AWS needs moto's server: pip install 'data-egress[local]'"
            ) from exc

        options = self.options
        self.say(f"starting the moto server on {options.host}:{options.port} (requests logged to {log_path})")
        # werkzeug logs every request to stderr unless its logger has a handler: give it a file.
        requests = logging.getLogger("werkzeug")
        handler = logging.FileHandler(log_path, encoding="utf-8")
        handler.setLevel(logging.INFO)
        requests.addHandler(handler)
        requests.setLevel(logging.INFO)
        requests.propagate = False
        self._request_log = handler
        from egress.emulator import make_moto_dynamodb_writes_atomic

        make_moto_dynamodb_writes_atomic()
        server = ThreadedMotoServer(ip_address=options.host, port=options.port, verbose=False)
        # start() waits forever if the server thread dies on bind: run it with a deadline.
        starter = threading.Thread(target=server.start, name="moto-start", daemon=True)
        starter.start()
        starter.join(timeout=15)
        if starter.is_alive():
            raise LocalSetupError(f"the moto server did not start on {options.host}:{options.port}")
        self._server = server
        endpoint = f"http://{_client_host(options.host)}:{options.port}"
        deadline = time.monotonic() + 10
        while not http_ok(f"{endpoint}/moto-api/data.json"):
            if time.monotonic() > deadline:
                raise LocalSetupError(f"the moto server on {endpoint} does not answer")
            time.sleep(0.1)
        return endpoint

    def _dev_certs(self, certs: Path, log_path: Path) -> None:
        hosts = ["localhost", "127.0.0.1"]
        if self.options.host not in hosts:
            hosts.append(self.options.host)
        argv = [sys.executable, "-m", "sft_agent.cli", "dev-certs", "--out", str(certs), "--hosts", *hosts]
        with log_path.open("wb") as log:
            try:
                code = subprocess.run(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=60,
                    check=False,
                    env=child_env({}, base=os.environ),
                ).returncode
            except subprocess.TimeoutExpired as exc:
                raise LocalSetupError("sft-agent dev-certs did not finish within 60 s") from exc
        missing = [
            n for n in (CA_CERT, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY) if not (certs / n).exists()
        ]
        if code != 0 or missing:
            raise LocalSetupError(
                f"sft-agent dev-certs failed (exit {code}; missing {', '.join(missing) or 'nothing'}).\n"
                f"Last lines of {log_path}:\n{log_tail(log_path)}"
            )

    def _record_pids(self) -> None:
        pids = {c.name: c.process.pid for c in self.children if c.process is not None}
        _write_atomically(self.state_dir / _PIDS_FILE, json.dumps(pids))

    def _banner(self, resources: LocalResources, info: dict[str, Any]) -> None:
        endpoint = info["endpoint_url"]
        sample: str = info["sample_dir"] or "<DIR>"
        with contextlib.suppress(ValueError):
            sample = str(Path(sample).resolve().relative_to(Path.cwd()))
        prefix = info["publish_prefix"]
        logs = info["logs"]
        rows = [
            ("AWS endpoint", f"{endpoint}  (moto server, region {resources.region}, any credentials)"),
            ("source bucket", f"s3://{resources.source_bucket}  (flag: {resources.flag_name})"),
            ("destination", f"s3://{resources.destination_bucket}"),
            ("queue", f"{resources.queue_url}  (DLQ {resources.dlq_url})"),
            ("tables", f"{resources.routes_table} (routes), {resources.ledger_table} (ledger)"),
            ("KMS key", f"{resources.kms_alias}  {resources.kms_key_arn}"),
            ("SFT root", info["sft_root"]),
            ("receiver", f"{info['receiver_url']} → {info['received_dir']}"),
            (
                "worker",
                f"{info['worker_url']}/metrics" if info["worker_url"] else "not started (--no-worker)",
            ),
            (
                "sft-agent",
                f"{info['agent_url']}/metrics" if info["agent_url"] else "not started (--no-agent)",
            ),
        ]
        rows += [(f"log {name}", path) for name, path in logs.items()]
        rule = "─" * 78
        egress = egress_command()
        lines = [rule, " data-egress local stack is up", rule]
        lines += [f"  {label:<15} {value}" for label, value in rows]
        lines += [
            rule,
            " Publish the sample data (files first, the flag last), in another terminal:",
            f"   {egress} local publish --endpoint-url {endpoint} {sample} s3://{resources.source_bucket}/{prefix}",
            " Results appear in:",
            f"   s3://{resources.destination_bucket}/  (S3 routes)",
            f"   {info['received_dir']}/  (SFT routes, via the agent and the receiver)",
            f"   {egress} --endpoint-url {endpoint} history  (the ledger)",
            " Ctrl-C stops everything.",
            rule,
        ]
        print("\n".join(lines), file=self.out, flush=True)
        if self.options.ready_file is not None:
            ready = {**resources.as_dict(), **info}
            _write_atomically(self.options.ready_file, json.dumps(ready, indent=2))

    def _watch(self) -> int:
        while not self._stop.wait(0.5):
            for child in self.children:
                code = child.exit_code()
                if code is not None:
                    print(
                        f"egress local up: {child.name} exited with code {code}; stopping the stack.\n"
                        f"Last lines of {child.log_path}:\n{log_tail(child.log_path)}",
                        file=self.err,
                        flush=True,
                    )
                    return 1
        self.say("stopping")
        return 0

    def _down(self) -> None:
        stop_children(self.children, grace=self.options.stop_grace, report=self.say)
        if self.children:
            with contextlib.suppress(OSError):
                (self.state_dir / _PIDS_FILE).unlink()
        if self.options.ready_file is not None:
            with contextlib.suppress(OSError):
                self.options.ready_file.unlink()
        if self._server is not None:
            stopper = threading.Thread(target=self._server.stop, name="moto-stop", daemon=True)
            stopper.start()
            stopper.join(timeout=5)
            self._server = None
        if self._request_log is not None:
            logging.getLogger("werkzeug").removeHandler(self._request_log)
            self._request_log.close()
            self._request_log = None


# ---------------------------------------------------------------------------------------
# command line


def _add_endpoint_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS keeps the global option's value when these are not given here.
    parser.add_argument(
        "--endpoint-url", default=argparse.SUPPRESS, help="AWS endpoint (overrides the global one)"
    )
    parser.add_argument("--region", default=argparse.SUPPRESS, help="AWS region (overrides the global one)")


def configure(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``egress local up | bootstrap | publish``."""
    local = commands.add_parser("local", help="the local stack: up, bootstrap, publish")
    actions = local.add_subparsers(dest="local_command", required=True, metavar="ACTION")
    flag_default = os.environ.get("EGRESS_FLAG_NAME") or DEFAULT_FLAG_NAME

    boot = actions.add_parser(
        "bootstrap",
        help="create buckets, queue + DLQ, tables, KMS key, notification; apply the routes (idempotent)",
    )
    _add_endpoint_options(boot)
    boot.add_argument("--source-bucket", default=DEFAULT_SOURCE_BUCKET)
    boot.add_argument("--destination-bucket", default=DEFAULT_DESTINATION_BUCKET)
    boot.add_argument("--queue", default=DEFAULT_QUEUE, help="queue name; the DLQ is <queue>-dlq")
    boot.add_argument("--kms-alias", default=DEFAULT_KMS_ALIAS)
    boot.add_argument("--flag-name", default=flag_default)
    boot.add_argument("--routes", type=Path, default=DEFAULT_ROUTES_FILE, help="routes YAML to apply")
    boot.add_argument("--no-routes", action="store_true", help="do not apply a routes file")
    boot.add_argument("--env-file", type=Path, help="write EGRESS_*/AWS_* variables for the worker here")
    boot.add_argument(
        "--worker-config", type=Path, help="write a worker YAML settings file here (EGRESS_CONFIG)"
    )
    boot.add_argument("--json", action="store_true", help="print the resources as JSON on stdout")
    boot.set_defaults(handler=_bootstrap_command)

    pub = actions.add_parser("publish", help="upload a folder's files, then the flag, like a producer")
    _add_endpoint_options(pub)
    pub.add_argument("directory", type=Path, metavar="DIR")
    pub.add_argument("target", metavar="s3://bucket/prefix/")
    pub.add_argument("--flag-name", default=flag_default)
    pub.add_argument("--encrypt", action="store_true", help="envelope-encrypt each file (key gets .enc)")
    pub.add_argument("--kms-key-id", default=DEFAULT_KMS_ALIAS, help="KMS key for --encrypt")
    pub.add_argument("--jobs", type=int, default=4, help="files and parts uploaded at once")
    pub.set_defaults(handler=_publish_command)

    up = actions.add_parser("up", help="moto server + bootstrap + receiver, worker and agent, until Ctrl-C")
    up.add_argument("--host", default="127.0.0.1", help="address everything listens on")
    up.add_argument("--port", type=int, default=DEFAULT_PORT, help="moto server port")
    up.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="logs, certs, SFT root, received"
    )
    up.add_argument("--routes", type=Path, default=DEFAULT_ROUTES_FILE, help="routes YAML to apply")
    up.add_argument("--no-worker", action="store_true", help="do not start the worker (run your own)")
    up.add_argument("--no-agent", action="store_true", help="do not start the SFT agent")
    up.add_argument("--ready-file", type=Path, help="write the endpoints as JSON here once up")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the daemons to answer")
    up.add_argument("--receiver-port", type=int, help="receiver's TLS port (default 8091, else any free)")
    up.add_argument("--worker-port", type=int, help="worker's metrics port (default 9090, else any free)")
    up.add_argument("--agent-port", type=int, help="agent's metrics port (default 9091, else any free)")
    up.set_defaults(handler=_up_command)


def _bootstrap_command(args: argparse.Namespace, ctx: CliContext) -> int:
    routes: Path | None = None if args.no_routes else args.routes
    if routes is not None and not routes.is_file():
        print(
            f"egress local bootstrap: routes file {routes} not found (pass --routes FILE or --no-routes)",
            file=ctx.err,
        )
        return 2
    target = ctx.aws_config.endpoint_url or f"AWS (region {ctx.aws_config.region}, no endpoint URL)"
    report_stream = ctx.err if args.json else ctx.out
    print(f"bootstrapping {target}", file=report_stream)
    try:
        resources = bootstrap(
            ctx.clients,
            source_bucket=args.source_bucket,
            destination_bucket=args.destination_bucket,
            queue_name=args.queue,
            routes_table=ctx.routes_table,
            ledger_table=ctx.ledger_table,
            kms_alias=args.kms_alias,
            flag_name=args.flag_name,
            routes_file=routes,
            report=lambda line: print(line, file=report_stream),
        )
        if args.env_file is not None:
            write_env_file(args.env_file, resources.worker_env())
            print(f"wrote {args.env_file}", file=report_stream)
        if args.worker_config is not None:
            _write_atomically(args.worker_config, yaml.safe_dump(resources.worker_config(), sort_keys=False))
            print(f"wrote {args.worker_config}", file=report_stream)
    except LocalSetupError as exc:
        print(f"egress local bootstrap: {exc}", file=ctx.err)
        return 1
    if args.json:
        print(json.dumps(resources.as_dict(), indent=2), file=ctx.out)
    else:
        for key, value in resources.worker_env().items():
            print(f"  {key}={value}", file=ctx.out)
    return 0


def _publish_command(args: argparse.Namespace, ctx: CliContext) -> int:
    try:
        target = parse_s3_uri(args.target)
    except ValueError as exc:
        print(f"egress local publish: {exc}", file=ctx.err)
        return 2
    if args.jobs < 1:
        print("egress local publish: --jobs must be at least 1", file=ctx.err)
        return 2
    clients = ctx.clients
    try:
        result = publish(
            clients.s3,
            args.directory,
            target=target,
            flag_name=args.flag_name,
            kms=clients.kms if args.encrypt else None,
            kms_key_id=args.kms_key_id if args.encrypt else None,
            jobs=args.jobs,
            progress_stream=ctx.err,
            warn=lambda line: print(f"egress local publish: {line}", file=ctx.err),
        )
    except LocalSetupError as exc:
        print(f"egress local publish: {exc}", file=ctx.err)
        return 1
    for key in result.keys:
        print(f"  s3://{target.bucket}/{key}", file=ctx.out)
    print(
        f"published {len(result.keys)} files ({result.bytes:,} bytes{', encrypted' if args.encrypt else ''}) "
        f"in {result.seconds:.1f}s, then the flag s3://{target.bucket}/{result.flag_key}",
        file=ctx.out,
    )
    return 0


def _up_command(args: argparse.Namespace, ctx: CliContext) -> int:
    routes = find_repo_path(args.routes) if args.routes == DEFAULT_ROUTES_FILE else args.routes
    if routes is None or not routes.is_file():
        print(f"egress local up: routes file {args.routes} not found (pass --routes FILE)", file=ctx.err)
        return 2
    options = UpOptions(
        host=args.host,
        port=args.port,
        state_dir=args.state_dir,
        routes_file=routes,
        routes_table=ctx.routes_table,
        ledger_table=ctx.ledger_table,
        region=ctx.aws_config.region,
        worker=not args.no_worker,
        agent=not args.no_agent,
        ready_file=args.ready_file.resolve() if args.ready_file else None,
        timeout=args.timeout,
        receiver_port=args.receiver_port,
        worker_port=args.worker_port,
        agent_port=args.agent_port,
    )
    return LocalStack(options, out=ctx.out, err=ctx.err).run()
