"""Completion events from the worker as a real process: one per route outcome, none for a
duplicate, and a topic SNS no longer has never costs a delivery (docs/events.md).

One worker serves the whole test: a flag with three routes (delivered, a destination
bucket that does not exist, an invalid row), a duplicate notification of a delivered
flag, then the topic is deleted under the running worker and a flag is delivered again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from tests.e2e.conftest import FLAG, Stack, WorkerProcess


def subscribed_queue(stack: Stack, topic_arn: str, name: str) -> str:
    sqs = stack.aws.sqs
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    stack.aws.sns.subscribe(
        TopicArn=topic_arn, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"}
    )
    return queue_url


def take_events(stack: Stack, queue_url: str, *, expect: int, settle: float = 1.0) -> list[dict[str, Any]]:
    """The events that arrived (waits for ``expect``, then ``settle`` seconds more for extras)."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    quiet_until = None
    while time.monotonic() < deadline:
        response = stack.aws.sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, MessageAttributeNames=["All"]
        )
        for message in response.get("Messages", []):
            body = json.loads(message["Body"])
            body["_attributes"] = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
            found.append(body)
            stack.aws.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        if len(found) >= expect:
            quiet_until = quiet_until or time.monotonic() + settle
            if time.monotonic() >= quiet_until:
                break
        time.sleep(0.1)
    return found


def notification(stack: Stack, key: str, *, sequencer: str) -> str:
    """An S3 event notification of one flag upload, as S3 sends it."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": "2026-11-22T10:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": stack.source_bucket},
            "object": {"key": key, "size": 0, "sequencer": sequencer},
        },
    }
    return json.dumps({"Records": [record]})


def metric(worker: WorkerProcess, line_start: str) -> float:
    _, text = worker.get("/metrics")
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return values[0] if values else 0.0


def test_each_route_outcome_is_published_once_and_a_missing_topic_costs_no_delivery(
    stack: Stack, start_worker: Callable[..., WorkerProcess], unique: str
) -> None:
    topic_arn = stack.aws.sns.create_topic(Name=f"events-{unique}")["TopicArn"]
    subscriber = subscribed_queue(stack, topic_arn, f"subscriber-{unique}")
    mixed, clean = "exports/mixed/", "exports/clean/"
    stack.put_route(
        source_prefix=mixed,
        pipeline_name="OpsMI",
        transfer_type="S3",
        destination_bucket=stack.destination_bucket,
        destination_prefix="opsmi/",
        manifest_file_name="manifest.json",
    )
    stack.put_route(
        source_prefix=mixed,
        pipeline_name="OpsMI#gone",
        transfer_type="S3",
        destination_bucket=f"no-such-bucket-{unique}",
        destination_prefix="x/",
    )
    stack.put_route(source_prefix=mixed, pipeline_name="OpsMI#ftp", transfer_type="FTP")
    stack.put_route(
        source_prefix=clean,
        pipeline_name="Clean",
        transfer_type="S3",
        destination_bucket=stack.destination_bucket,
        destination_prefix="clean/",
    )
    worker = start_worker(EGRESS_EVENTS_TOPIC_ARN=topic_arn)

    # 1. One flag, three routes: one delivered, two failing permanently (dead-lettered at once).
    data = {"a.csv": b"a,b\n1,2\n" * 10, "sub/b.csv": b"x\n" * 7}
    for name, body in data.items():
        stack.upload(mixed + name, body)
    stack.upload(mixed + FLAG)
    worker.wait_for(lambda line: line.get("event") == "message_dead_lettered", timeout=60)
    events = take_events(stack, subscriber, expect=3)
    by_pipeline = {event["pipeline_name"]: event for event in events}
    assert len(events) == 3 and set(by_pipeline) == {"OpsMI", "OpsMI#gone", "OpsMI#ftp"}, events
    delivered = by_pipeline["OpsMI"]
    assert delivered["outcome"] == "delivered" and delivered["_attributes"] == {
        "outcome": "delivered",
        "pipeline_name": "OpsMI",
    }
    assert delivered["flag"] == f"s3://{stack.source_bucket}/{mixed}{FLAG}"
    assert (delivered["objects"], delivered["bytes"]) == (2, sum(len(b) for b in data.values()))
    assert delivered["manifest"] == f"s3://{stack.destination_bucket}/opsmi/manifest.json"
    assert delivered["reason"] is None and delivered["transfer_type"] == "S3"
    assert "opsmi/manifest.json" in stack.destination_keys()
    gone, ftp = by_pipeline["OpsMI#gone"], by_pipeline["OpsMI#ftp"]
    assert gone["outcome"] == ftp["outcome"] == "failed"
    assert gone["_attributes"]["outcome"] == "failed"
    assert gone["reason"] == "destination_missing" and f"no-such-bucket-{unique}" in gone["detail"]
    assert ftp["reason"] == "invalid_route" and "transfer_type" in ftp["detail"]
    assert gone["objects"] == 0 and gone["manifest"] is None
    (dead,) = stack.dlq_messages(wait=5)
    assert dead["MessageAttributes"]["reason"]["StringValue"] in {"destination_missing", "invalid_route"}

    # 2. A duplicate notification of a delivered flag: delivered once, announced once.
    stack.upload(clean + "c.csv", b"clean\n")
    body = notification(stack, clean + FLAG, sequencer="0A1B2C3D4E5F60718")
    for count in (1, 2):
        stack.aws.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=body)
        worker.wait_for(lambda line: line.get("event") == "message_done", count=count, timeout=60)
    assert any(line.get("event") == "route_already_delivered" for line in worker.events())
    events = take_events(stack, subscriber, expect=1)
    assert [(e["outcome"], e["pipeline_name"]) for e in events] == [("delivered", "Clean")]
    assert metric(worker, 'egress_events_published_total{outcome="delivered"}') == 2
    assert metric(worker, 'egress_events_published_total{outcome="failed"}') == 2

    # 3. The topic is gone: the flag is still delivered (no DLQ), the failure logged and counted.
    stack.aws.sns.delete_topic(TopicArn=topic_arn)
    stack.upload(clean + FLAG)  # a new upload of the flag: delivered again
    worker.wait_for(lambda line: line.get("event") == "message_done", count=3, timeout=60)
    failures = [line for line in worker.events() if line.get("event") == "event_publish_failed"]
    assert len(failures) == 1 and failures[0]["outcome"] == "delivered" and failures[0]["pipeline"] == "Clean"
    assert metric(worker, 'egress_event_publish_failures_total{outcome="delivered"}') == 1
    assert len(stack.dlq_messages()) == 1, "only the first flag is in the DLQ"
    assert stack.queue_counts() == (0, 0)
    assert worker.stop() == 0
