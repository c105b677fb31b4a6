"""``egress replay`` against a real worker: delivered again, dated as the first time, one route or all."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote_plus

from tests.conftest import REGION
from tests.e2e.conftest import FLAG, Stack, WorkerProcess

ROOT = Path(__file__).resolve().parents[2]


def egress_cli(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m egress.cli`` as an operator runs it; the global options both before and after."""
    command = [sys.executable, "-m", "egress.cli", "--endpoint-url", stack.endpoint, *argv]
    command += [
        "--region",
        REGION,
        "--routes-table",
        stack.routes_table,
        "--ledger-table",
        stack.ledger_table,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


def test_replay_delivers_again_with_the_first_date_and_pipeline_narrows_it(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    yesterday = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    day, stamp = yesterday.strftime("%Y-%m-%d"), yesterday.strftime("%Y%m%d")
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    # The flag's event is the one sent below, from yesterday: no notification of today's upload.
    stack.aws.s3.put_bucket_notification_configuration(
        Bucket=stack.source_bucket, NotificationConfiguration={}
    )
    for pipeline, folder in (("Daily", "daily"), ("Daily#copy", "copy")):
        stack.put_route(
            source_prefix="daily/$TODAYS_DATE/",
            pipeline_name=pipeline,
            transfer_type="S3",
            destination_bucket=stack.destination_bucket,
            destination_prefix=f"{folder}/$TODAYS_DATE/",
            timestamp_files=True,
        )
    flag_key = f"daily/{day}/{FLAG}"
    stack.upload(f"daily/{day}/part-0.csv", b"a,b\n1,2\n")
    stack.upload(flag_key)
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": yesterday.isoformat().replace("+00:00", "Z"),
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": stack.source_bucket},
            "object": {"key": quote_plus(flag_key, safe="/"), "size": 0, "sequencer": "0A1B2C3D"},
        },
    }
    stack.aws.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps({"Records": [record]}))
    worker = start_worker()
    worker.wait_for(lambda line: line.get("event") == "message_done", timeout=90)

    uri = f"s3://{stack.source_bucket}/{flag_key}"
    replayed = egress_cli(stack, "replay", uri, "--queue-url", stack.queue_url)
    assert replayed.returncode == 0, replayed.stderr
    assert "from the ledger" in replayed.stdout and f"event time {day}T" in replayed.stdout
    worker.wait_for(lambda line: line.get("event") == "message_done", count=2, timeout=90)
    narrowed = egress_cli(stack, "replay", uri, "--queue-url", stack.queue_url, "--pipeline", "Daily#copy")
    assert narrowed.returncode == 0, narrowed.stderr
    worker.wait_for(lambda line: line.get("event") == "message_done", count=3, timeout=90)

    # Dated as the first time: yesterday's folders and file names, nothing of today.
    assert sorted(stack.destination_keys()) == [
        f"copy/{day}/part-0.{stamp}.csv",
        f"daily/{day}/part-0.{stamp}.csv",
    ]
    assert not any(today in key for key in stack.destination_keys())
    rows = stack.ledger_rows()
    by_pipeline = sorted(row["pipeline_name"]["S"] for row in rows)
    assert by_pipeline == [
        "Daily",
        "Daily",
        "Daily#copy",
        "Daily#copy",
        "Daily#copy",
    ]  # each replay: a new copy
    assert {row["status"]["S"] for row in rows} == {"delivered"}
    assert {row["event_time"]["S"] for row in rows} == {yesterday.isoformat()}

    # A message for a pipeline the flag has no route of (the CLI refuses it) is dead-lettered.
    stack.aws.sqs.send_message(
        QueueUrl=stack.queue_url,
        MessageBody=json.dumps({"Records": [record], "egress": {"pipeline_name": "Weekly"}}),
    )
    (dead,) = stack.dlq_messages(wait=60)
    assert dead["MessageAttributes"]["reason"]["StringValue"] == "no_route"
    assert "'Weekly'" in dead["MessageAttributes"]["detail"]["StringValue"]
    assert worker.stop() == 0
