"""``egress local bootstrap``: create, idempotently, what the worker needs on an AWS endpoint.

On the moto server, LocalStack or a sandbox account: the source and destination buckets,
the queue and its DLQ, the routes and ledger tables, a KMS key, the S3 → SQS notification
for the flag, and the routes of a routes file; then the worker's environment or YAML.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from botocore.exceptions import BotoCoreError, ClientError

from egress.aws import AwsClients
from egress.devstack.errors import LocalSetupError, describe
from egress.errors import EgressError, PermanentError, error_code
from egress.kernel.fsutil import write_atomically
from egress.ledger_table import create_ledger_table
from egress.routes_apply import RoutesFileRefused, plan_routes_file, read_yaml_file
from egress.routing import create_routes_table

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

DEFAULT_SOURCE_BUCKET = "egress-source"
DEFAULT_DESTINATION_BUCKET = "egress-destination"
DEFAULT_QUEUE = "data-egress"
DEFAULT_ROUTES_TABLE = "data-egress"
DEFAULT_LEDGER_TABLE = "data-egress-ledger"
DEFAULT_KMS_ALIAS = "alias/data-egress-local"
DEFAULT_FLAG_NAME = "pipeline_success.flag"
DEFAULT_EVENTS_TOPIC = "data-egress-events"  # completion events; <topic>-tap is a queue subscribed to it
DEFAULT_ROUTES_FILE = Path("config/routes.local.yaml")

MAX_RECEIVE_COUNT = 5
VISIBILITY_TIMEOUT_SECONDS = 120
DLQ_RETENTION_SECONDS = 14 * 24 * 3600
NOTIFICATION_ID = "data-egress-flag"

_MISSING_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


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
    events_topic_arn: str = ""  # completion events (EGRESS_EVENTS_TOPIC_ARN); "" for none
    events_queue_url: str = ""  # the tap queue subscribed to it, which `egress local events` reads
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
        if self.events_topic_arn:
            env["EGRESS_EVENTS_TOPIC_ARN"] = self.events_topic_arn
        if self.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.endpoint_url
        return env

    def worker_config(self) -> dict[str, Any]:
        """The same as a YAML settings mapping (``EGRESS_CONFIG`` / ``egress run --config``)."""
        aws: dict[str, Any] = {"region": self.region}
        if self.endpoint_url:
            aws["endpoint_url"] = self.endpoint_url
        config: dict[str, Any] = {
            "queue_url": self.queue_url,
            "dlq_url": self.dlq_url,
            "routes_table": self.routes_table,
            "ledger_table": self.ledger_table,
            "flag_name": self.flag_name,
            "kms_key_arns": [self.kms_key_arn],
            "aws": aws,
        }
        if self.events_topic_arn:
            config["events_topic_arn"] = self.events_topic_arn
        return config

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
            raise LocalSetupError(f"bucket {name}: {describe(exc)}") from exc
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
        raise LocalSetupError(f"creating bucket {name}: {describe(exc)}") from exc
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
        raise LocalSetupError(f"queue {name}: {describe(exc)}") from exc


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


def ensure_events_topic(sns: SNSClient, sqs: SQSClient, name: str) -> tuple[str, QueueRef, list[Step]]:
    """The completion-events topic, and a tap queue subscribed to it with raw delivery.

    The tap is what ``egress local events`` reads: the events as subscribers get them.
    """
    topic_arn = sns.create_topic(Name=name)["TopicArn"]  # idempotent: the same ARN again
    tap, tap_step = _ensure_queue(sqs, f"{name}-tap", attributes={"MessageRetentionPeriod": "86400"})
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AllowCompletionEventsFromTheTopic",
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": tap.arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=tap.url, Attributes={"Policy": json.dumps(policy)})
    steps = [Step("ensured", f"events topic {name}"), tap_step]
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic_arn).get("Subscriptions", [])
    if not any(sub.get("Endpoint") == tap.arn for sub in subscriptions):
        sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=tap.arn,
            Attributes={"RawMessageDelivery": "true"},
            ReturnSubscriptionArn=True,
        )
        steps.append(Step("created", f"subscription of {tap.url.rsplit('/', 1)[-1]} to {name}"))
    return topic_arn, tap, steps


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
        raise LocalSetupError(f"notification on s3://{bucket}: {describe(exc)}") from exc
    action = "updated" if ours else "created"
    return Step(action, f"notification s3://{bucket} ObjectCreated *{flag_name} → queue")


def apply_routes_file(clients: AwsClients, path: Path, *, routes_table: str) -> tuple[Step, list[str]]:
    """Make the routes table match a routes file, as ``egress routes apply FILE --yes`` does.

    Returns the step and the plan's lines (the diff, the counts, the outcome).
    """
    try:
        plan = plan_routes_file(clients.dynamodb, path, table=routes_table)
    except RoutesFileRefused as exc:
        problems = "".join(f"\n{line}" for line in exc.problems)
        raise LocalSetupError(f"applying routes from {path} failed: {exc.detail}{problems}") from exc
    except EgressError as exc:
        raise LocalSetupError(f"applying routes from {path} failed: {exc.reason}: {exc.detail}") from exc
    lines = [*plan.diff_lines(), plan.summary()]
    if plan.has_changes:
        plan.apply(clients.dynamodb)
        lines.append(f"applied to {routes_table}")
    else:
        lines.append("no changes")
    return Step("applied", f"routes {path} → table {routes_table}"), lines


def route_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a routes YAML file (``routes: [...]``) as written, for checks and the agent config."""
    try:
        loaded = read_yaml_file(path) or {}
    except PermanentError as exc:
        raise LocalSetupError(exc.detail) from exc
    rows = loaded.get("routes", []) if isinstance(loaded, dict) else []
    return [row for row in rows if isinstance(row, dict)]


def bucket_warnings(rows: Sequence[Mapping[str, Any]], *, source: str, destination: str) -> list[str]:
    """One line per route that names a bucket other than the ones bootstrap made."""
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
    routes_table: str = DEFAULT_ROUTES_TABLE,
    ledger_table: str = DEFAULT_LEDGER_TABLE,
    kms_alias: str = DEFAULT_KMS_ALIAS,
    flag_name: str = DEFAULT_FLAG_NAME,
    events_topic: str | None = DEFAULT_EVENTS_TOPIC,
    routes_file: Path | None = None,
    report: Callable[[str], None] = lambda _line: None,
) -> LocalResources:
    """Create (or reuse) every resource of the local stack; safe to run again.

    ``report`` receives one human line per step; ``events_topic`` None makes no events
    topic. Raises :class:`LocalSetupError`.
    """
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
        events_arn, events_url = "", ""
        if events_topic is not None:
            events_arn, tap, event_steps = ensure_events_topic(clients.sns, clients.sqs, events_topic)
            events_url = tap.url
            for step in event_steps:
                done(step)
        if routes_file is not None:
            for warning in bucket_warnings(
                route_rows(routes_file), source=source_bucket, destination=destination_bucket
            ):
                report(f" warning  {warning}")
            step, lines = apply_routes_file(clients, routes_file, routes_table=routes_table)
            done(step)
            for line in lines:
                report(f"          {line}")
    except (ClientError, BotoCoreError) as exc:
        raise LocalSetupError(f"bootstrap failed: {describe(exc)}") from exc
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
        events_topic_arn=events_arn,
        events_queue_url=events_url,
        steps=tuple(steps),
    )


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Write ``KEY=value`` lines (docker ``--env-file`` and ``set -a; . file`` both read it)."""
    for key, value in values.items():
        if "\n" in value or " " in value:
            raise LocalSetupError(f"{key} holds whitespace; cannot write it to an env file")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, "".join(f"{key}={value}\n" for key, value in values.items()))


def write_worker_config(path: Path, resources: LocalResources) -> None:
    """Write the worker's YAML settings for ``resources`` (``EGRESS_CONFIG``, ``egress run --config``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, yaml.safe_dump(resources.worker_config(), sort_keys=False))
