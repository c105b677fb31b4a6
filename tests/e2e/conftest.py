"""End-to-end fixtures: fresh AWS resources on the moto server and the worker as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from egress.aws import AwsClients
from egress.ledger_table import create_ledger_table
from egress.routing import create_routes_table
from tests.conftest import REGION
from tests.support.ports import free_port

FLAG = "pipeline_success.flag"


@dataclass
class Stack:
    """One test's resources: buckets, queue + DLQ with redrive, tables, a KMS key."""

    aws: AwsClients
    endpoint: str
    source_bucket: str
    destination_bucket: str
    queue_url: str
    dlq_url: str
    routes_table: str
    ledger_table: str
    kms_key_arn: str
    sft_root: Path

    def put_route(self, **columns: Any) -> None:
        item: dict[str, Any] = {}
        for name, value in columns.items():
            if isinstance(value, bool):
                item[name] = {"BOOL": value}
            elif isinstance(value, (list, tuple)):
                item[name] = {"L": [{"S": str(entry)} for entry in value]}
            elif value is not None:
                item[name] = {"S": str(value)}
        item.setdefault("source_bucket", {"S": self.source_bucket})
        item.setdefault("recipient_name", {"S": "team"})
        self.aws.dynamodb.put_item(TableName=self.routes_table, Item=item)

    def upload(self, key: str, body: bytes = b"", **extra: Any) -> None:
        self.aws.s3.put_object(Bucket=self.source_bucket, Key=key, Body=body, **extra)

    def dlq_messages(self, *, wait: float = 0.0) -> list[dict[str, Any]]:
        """Every message now in the DLQ (received and then made visible again)."""
        deadline = time.monotonic() + wait
        found: dict[str, dict[str, Any]] = {}
        while True:
            response = self.aws.sqs.receive_message(
                QueueUrl=self.dlq_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=0,
                MessageAttributeNames=["All"],
                VisibilityTimeout=1,
            )
            for message in response.get("Messages", []):
                found[message["MessageId"]] = message
            if not response.get("Messages") and (found or time.monotonic() >= deadline):
                return list(found.values())
            if not response.get("Messages"):
                time.sleep(0.2)

    def queue_counts(self) -> tuple[int, int]:
        attributes = self.aws.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]), int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    def destination_keys(self) -> list[str]:
        paginator = self.aws.s3.get_paginator("list_objects_v2")
        return [
            item["Key"]
            for page in paginator.paginate(Bucket=self.destination_bucket)
            for item in page.get("Contents", [])
        ]

    def ledger_rows(self) -> list[dict[str, Any]]:
        """The deliveries (route rows) in the ledger."""
        return [item for item in self._ledger_items() if item["record"]["S"] == "route"]

    def object_rows(self) -> list[dict[str, Any]]:
        """The per-object progress rows in the ledger."""
        return [item for item in self._ledger_items() if item["record"]["S"].startswith("obj#")]

    def _ledger_items(self) -> list[dict[str, Any]]:
        paginator = self.aws.dynamodb.get_paginator("scan")
        return [item for page in paginator.paginate(TableName=self.ledger_table) for item in page["Items"]]


def make_stack(
    aws: AwsClients,
    endpoint: str,
    tmp: Path,
    unique: str,
    *,
    visibility: int = 30,
    max_receive_count: int = 3,
) -> Stack:
    source = f"src-{unique}"
    destination = f"dst-{unique}"
    for bucket in (source, destination):
        aws.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    dlq_url = aws.sqs.create_queue(QueueName=f"dlq-{unique}")["QueueUrl"]
    dlq_arn = aws.sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue_url = aws.sqs.create_queue(
        QueueName=f"flags-{unique}",
        Attributes={
            "VisibilityTimeout": str(visibility),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}
            ),
        },
    )["QueueUrl"]
    queue_arn = aws.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    aws.s3.put_bucket_notification_configuration(
        Bucket=source,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": FLAG}]}},
                }
            ]
        },
    )
    # The notification set-up sends an s3:TestEvent: leave it, the worker must ignore it.
    routes_table = f"routes-{unique}"
    ledger_table = f"ledger-{unique}"
    create_routes_table(aws.dynamodb, routes_table)
    create_ledger_table(aws.dynamodb, ledger_table)
    key_arn = aws.kms.create_key(Description=f"e2e {unique}")["KeyMetadata"]["Arn"]
    sft_root = tmp / "sft"
    sft_root.mkdir()
    return Stack(
        aws, endpoint, source, destination, queue_url, dlq_url, routes_table, ledger_table, key_arn, sft_root
    )


@pytest.fixture()
def stack(aws: AwsClients, moto_endpoint: str, tmp_path: Path, unique: str) -> Stack:
    return make_stack(aws, moto_endpoint, tmp_path, unique)


@dataclass
class WorkerProcess:
    """``egress run`` as a real child process, with its JSON log lines."""

    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int
    _lines: list[dict[str, Any]] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"event": raw, "raw": True})
        return lines

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 60.0, count: int = 1
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            matches = [line for line in self.events() if predicate(line)]
            if len(matches) >= count:
                return matches
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited {self.process.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for log lines; tail:\n{self.tail()}")
            time.sleep(0.2)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 40.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


@pytest.fixture()
def start_worker(stack: Stack, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(**overrides: str) -> WorkerProcess:
        port = free_port()
        log_path = tmp_path / f"worker-{len(started)}.log"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("EGRESS_")},
            "AWS_ENDPOINT_URL": stack.endpoint,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "EGRESS_QUEUE_URL": stack.queue_url,
            "EGRESS_ROUTES_TABLE": stack.routes_table,
            "EGRESS_LEDGER_TABLE": stack.ledger_table,
            "EGRESS_SFT_ROOT": str(stack.sft_root),
            "EGRESS_KMS_KEY_ARNS": stack.kms_key_arn,
            "EGRESS_METRICS_PORT": str(port),
            "EGRESS_METRICS_HOST": "127.0.0.1",
            "EGRESS_LOG_FORMAT": "json",
            "EGRESS_WAIT_TIME_SECONDS": "1",
            "EGRESS_BACKOFF_BASE_SECONDS": "1",
            "EGRESS_BACKOFF_MAX_SECONDS": "2",
            "EGRESS_RETRY_ATTEMPTS": "2",
            "EGRESS_ROUTE_CACHE_SECONDS": "1",
            "EGRESS_PART_SIZE_MB": "5",
            "EGRESS_FREE_SPACE_MARGIN_MB": "1",
            # moto reads a whole object on every ranged GET (the local stack sets the same).
            "EGRESS_GET_STRATEGY": "single",
            **overrides,
        }
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "egress.cli", "run"],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parents[2],
            )
        worker = WorkerProcess(process, log_path, port)
        started.append(worker)
        worker.wait_for(lambda line: line.get("event") == "worker_started", timeout=30)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()
