"""``egress history``, ``egress replay`` and ``egress dlq`` against the moto server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from egress.aws import AwsClients
from egress.cli import main
from egress.ledger import Claim, DeliveryKey, Ledger
from egress.ledger_table import create_ledger_table
from egress.messages import parse_body
from egress.queue import FlagQueue, Message
from tests.conftest import REGION


def run(capsys: pytest.CaptureFixture[str], endpoint: str, *argv: str) -> tuple[int, str, str]:
    code = main(["--endpoint-url", endpoint, "--region", REGION, *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_history_lists_and_filters_ledger_rows(
    aws: AwsClients, moto_endpoint: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    table = f"ledger-{unique}"
    create_ledger_table(aws.dynamodb, table)
    ledger = Ledger(aws.dynamodb, table, owner="test")
    for pipeline, prefix in (("OpsMI", "exports/opsmi/"), ("Fin", "exports/fin/")):
        key = DeliveryKey("src", prefix + "pipeline_success.flag", "seq:1", prefix, pipeline)
        assert ledger.begin(key, recipient="team", transfer_type="S3").claim is Claim.ACQUIRED
        ledger.finish(key, objects=3, size=42)
    code, out, _ = run(capsys, moto_endpoint, "--ledger-table", table, "history", "--output", "json")
    assert code == 0
    rows = json.loads(out)
    assert {row["pipeline_name"] for row in rows} == {"OpsMI", "Fin"}
    assert all(row["status"] == "delivered" and row["objects"] == 3 for row in rows)
    code, out, _ = run(
        capsys,
        moto_endpoint,
        "--ledger-table",
        table,
        "history",
        "--pipeline",
        "Fin",
        "--since",
        "1h",
        "--output",
        "json",
    )
    assert [row["pipeline_name"] for row in json.loads(out)] == ["Fin"]
    code, out, _ = run(
        capsys, moto_endpoint, "--ledger-table", table, "history", "--prefix", "exports/opsmi/"
    )
    assert code == 0 and "OpsMI" in out and "Fin" not in out
    code, _, err = run(capsys, moto_endpoint, "--ledger-table", table, "history", "--since", "yesterday")
    assert code == 2 and "--since" in err


def test_replay_queues_a_new_upload_of_the_flag(
    aws: AwsClients,
    moto_endpoint: str,
    unique: str,
    queues: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    queue, _ = queues
    bucket = f"b-{unique}"
    aws.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    aws.s3.put_object(Bucket=bucket, Key="a b/pipeline_success.flag", Body=b"")
    ledger = f"ledger-{unique}"
    create_ledger_table(aws.dynamodb, ledger)  # no delivery recorded: the flag's LastModified dates it
    for _ in range(2):
        code, out, _ = run(
            capsys,
            moto_endpoint,
            "--ledger-table",
            ledger,
            "replay",
            f"s3://{bucket}/a b/pipeline_success.flag",
            "--queue-url",
            queue,
        )
        assert code == 0 and "queued" in out and "LastModified" in out
    messages = aws.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    events = [parse_body(m["Body"], flag_name="pipeline_success.flag")[0] for m in messages]  # type: ignore[index]
    assert {event.key for event in events} == {"a b/pipeline_success.flag"}
    assert len({event.sequencer for event in events}) == 2  # each replay delivers again
    code, _, err = run(
        capsys, moto_endpoint, "replay", f"s3://{bucket}/missing/pipeline_success.flag", "--queue-url", queue
    )
    assert code == 1 and "not found" in err
    code, _, err = run(capsys, moto_endpoint, "replay", "not-a-uri", "--queue-url", queue)
    assert code == 2 and "s3://bucket/key" in err


def test_dlq_list_and_redrive(
    aws: AwsClients, moto_endpoint: str, queues: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    queue_url, dlq_url = queues
    queue = FlagQueue.discover(aws.sqs, queue_url=queue_url, dlq_url=None)
    assert queue.dlq_url.endswith(dlq_url.rsplit("/", 1)[-1])
    for index in range(3):
        aws.sqs.send_message(QueueUrl=queue_url, MessageBody=f'{{"n": {index}}}')
    received = aws.sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["ApproximateReceiveCount"]
    )["Messages"]
    assert len(received) == 3
    for raw in received:
        message = Message(raw["MessageId"], raw["ReceiptHandle"], raw["Body"], 1, None)
        queue.dead_letter(message, reason="no_route", detail=f"no route for {raw['Body']}")
    code, out, _ = run(capsys, moto_endpoint, "dlq", "list", "--queue-url", queue_url, "--output", "json")
    listed = json.loads(out)
    assert code == 0 and len(listed) == 3 and {entry["reason"] for entry in listed} == {"no_route"}
    # redrive one by id, then the rest
    code, out, _ = run(
        capsys, moto_endpoint, "dlq", "redrive", "--queue-url", queue_url, "--id", listed[0]["id"]
    )
    assert code == 0 and listed[0]["id"] in out
    code, _, err = run(capsys, moto_endpoint, "dlq", "redrive", "--queue-url", queue_url, "--id", "nope")
    assert code == 1 and "nope" in err
    code, out, _ = run(capsys, moto_endpoint, "dlq", "redrive", "--queue-url", queue_url, "--all")
    assert code == 0 and out.count("redriven") == 2
    bodies = []
    for _ in range(5):
        bodies += [
            m["Body"]
            for m in aws.sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            ).get("Messages", [])
        ]
        if len(bodies) == 3:
            break
    assert sorted(bodies) == ['{"n": 0}', '{"n": 1}', '{"n": 2}']
    code, out, _ = run(capsys, moto_endpoint, "dlq", "list", "--queue-url", queue_url, "--output", "json")
    assert json.loads(out) == []


def test_operators_commands_need_no_credentials_against_an_emulator(
    aws: AwsClients, moto_endpoint: str, unique: str, tmp_path: Path
) -> None:
    """The banner of `make run` tells a newcomer to run these with only --endpoint-url."""
    import os
    import subprocess
    import sys

    table = f"ledger-{unique}"
    create_ledger_table(aws.dynamodb, table)
    # A newcomer's shell: no AWS variables, no ~/.aws.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {"HOME": str(tmp_path)}
    argv = [
        sys.executable,
        "-m",
        "egress.cli",
        "--endpoint-url",
        moto_endpoint,
        "--region",
        REGION,
        "--ledger-table",
        table,
        "history",
        "--output",
        "json",
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    # Without an endpoint the credential chain stays as it is: no emulator credentials for AWS.
    argv_aws = [arg for arg in argv if arg not in ("--endpoint-url", moto_endpoint)]
    done = subprocess.run(
        argv_aws, env=env | {"AWS_EC2_METADATA_DISABLED": "true"}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and "credentials" in done.stderr.lower(), done.stderr
