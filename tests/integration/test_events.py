"""Completion events against a real moto server: the publisher, subscriptions and receipts.

An SNS topic is subscribed by SQS queues (raw delivery, so the SNS message attributes
arrive as SQS message attributes), one of them through the filter policy docs/events.md
shows. Receipts run on a ledger table with the schema of docs/exactly-once.md.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from boto3.dynamodb.types import TypeSerializer
from prometheus_client import CollectorRegistry, Counter

from egress.aws import AwsClients
from egress.delivery import RouteResult
from egress.errors import PermanentError, Reason
from egress.events import EventPublisher, RouteAnnouncer, failed_event
from egress.ledger_table import create_ledger_table
from egress.messages import FlagEvent
from egress.queue import FlagQueue, Message
from egress.receipts import Receipts
from egress.routing import Route, RouteMatch

FIELDS = {
    "type", "outcome", "flag", "source_prefix", "pipeline_name", "recipient_name", "transfer_type",
    "objects", "bytes", "manifest", "reason", "detail", "at",
}  # fmt: skip
_serialize = TypeSerializer().serialize


def counters() -> dict[str, Counter]:
    registry = CollectorRegistry()
    return {
        name: Counter(name, f"events {name}", ["outcome"], registry=registry)
        for name in ("published", "failures", "dropped")
    }


def count(counter: Counter, outcome: str) -> float:
    return counter.labels(outcome=outcome)._value.get()


def subscribed_queue(
    aws: AwsClients, topic_arn: str, name: str, *, filter_policy: dict[str, Any] | None = None
) -> str:
    queue_url = aws.sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = aws.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    attributes = {"RawMessageDelivery": "true"}
    if filter_policy is not None:
        attributes["FilterPolicy"] = json.dumps(filter_policy)
    aws.sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn, Attributes=attributes)
    return queue_url


def drain(aws: AwsClients, queue_url: str, *, expect: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every message in the queue once ``expect`` arrived (and a short wait for any extra)."""
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = aws.sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames=["All"]
        )
        for message in response.get("Messages", []):
            found[message["MessageId"]] = message
            aws.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        if len(found) >= expect and not response.get("Messages"):
            break
    return list(found.values())


def s3_match(bucket: str) -> RouteMatch:
    route = Route(
        source_prefix="exports/opsmi/",
        pipeline_name="OpsMI",
        recipient_name="warehouse",
        transfer_type="S3",
        source_bucket="src",
        destination_bucket=bucket,
        destination_prefix="opsmi/",
        manifest_file_name="manifest.json",
    )
    return RouteMatch(route, (), "exports/opsmi/", "exports/opsmi/", "opsmi/", "manifest.json")


FLAG = FlagEvent(bucket="src", key="exports/opsmi/pipeline_success.flag", event_time=datetime.now(UTC))


def test_events_reach_subscribers_with_their_fields_and_attributes_and_a_missing_topic_is_counted(
    aws: AwsClients, unique: str
) -> None:
    topic_arn = aws.sns.create_topic(Name=f"events-{unique}")["TopicArn"]
    everything = subscribed_queue(aws, topic_arn, f"all-{unique}")
    failures_only = subscribed_queue(
        aws, topic_arn, f"failed-{unique}", filter_policy={"outcome": ["failed"]}
    )
    counted = counters()
    published, failures = counted["published"], counted["failures"]
    publisher = EventPublisher(aws.sns, topic_arn, **counted)
    match = s3_match("their-bucket")

    result = RouteResult(
        match=match, objects=3, size=1234, manifest_name="opsmi/manifest.json", delivery_id="d1"
    )
    RouteAnnouncer(publisher).delivered(FLAG, result)
    RouteAnnouncer(publisher).delivered(FLAG, RouteResult(match=match, skipped=True))  # a duplicate: nothing
    error = PermanentError(
        Reason.ACCESS_DENIED, "writing s3://their-bucket/opsmi/a.csv: access denied (AccessDenied)"
    )
    failure = failed_event(FLAG, match, error)
    announcer = RouteAnnouncer(publisher)
    announcer.settle([failure], final=False)  # the message will be received again: not yet
    announcer.settle([failure], final=True)

    messages = drain(aws, everything, expect=2)
    bodies = {json.loads(m["Body"])["outcome"]: (json.loads(m["Body"]), m) for m in messages}
    assert sorted(bodies) == ["delivered", "failed"] and len(messages) == 2
    delivered, raw = bodies["delivered"]
    assert set(delivered) == FIELDS
    assert delivered == {
        **delivered,
        "type": "egress.route",
        "flag": "s3://src/exports/opsmi/pipeline_success.flag",
        "source_prefix": "exports/opsmi/",
        "pipeline_name": "OpsMI",
        "recipient_name": "warehouse",
        "transfer_type": "S3",
        "objects": 3,
        "bytes": 1234,
        "manifest": "s3://their-bucket/opsmi/manifest.json",
        "reason": None,
    }
    assert datetime.fromisoformat(delivered["at"]).tzinfo is not None
    attributes = raw["MessageAttributes"]
    assert attributes["outcome"] == {"DataType": "String", "StringValue": "delivered"}
    assert attributes["pipeline_name"] == {"DataType": "String", "StringValue": "OpsMI"}
    failed, _ = bodies["failed"]
    assert set(failed) == FIELDS
    assert failed["reason"] == "access_denied" and "access denied" in failed["detail"]
    assert failed["objects"] == 0 and failed["manifest"] is None
    # The filter policy of docs/events.md lets the failure through, alone.
    filtered = drain(aws, failures_only, expect=1)
    assert [json.loads(m["Body"])["outcome"] for m in filtered] == ["failed"]
    assert count(published, "delivered") == 1 and count(published, "failed") == 1

    # A topic that does not exist: the publish returns, logged and counted, never raised.
    missing = EventPublisher(aws.sns, topic_arn.rsplit(":", 1)[0] + f":gone-{unique}", **counted)
    assert missing.publish(failure) is False
    assert count(failures, "failed") == 1 and count(published, "failed") == 1
    # Nor does an unreachable endpoint raise (botocore's retries end, the failure is counted).
    offline = EventPublisher(build_unreachable_sns(aws), topic_arn, **counted)
    assert offline.publish(failure) is False
    assert count(failures, "failed") == 2
    # What is still held when the process stops is given up, logged and counted.
    missing.close(timeout=0.1)
    offline.close(timeout=0.1)
    assert count(counted["dropped"], "failed") == 2 and missing.held == offline.held == 0


def test_a_refused_event_is_held_and_published_once_sns_takes_it(aws: AwsClients, unique: str) -> None:
    """An SNS outage (here: the topic not there yet) delays an event; it is not lost."""
    topic_name = f"late-{unique}"
    account_arn = aws.sns.create_topic(Name=f"probe-{unique}")["TopicArn"].rsplit(":", 1)[0]
    counted = counters()
    publisher = EventPublisher(aws.sns, f"{account_arn}:{topic_name}", **counted)
    failure = failed_event(FLAG, s3_match("their-bucket"), PermanentError(Reason.ACCESS_DENIED, "denied"))
    assert publisher.publish(failure) is False and publisher.held == 1
    topic_arn = aws.sns.create_topic(Name=topic_name)["TopicArn"]
    queue_url = subscribed_queue(aws, topic_arn, f"late-q-{unique}")
    (message,) = drain(aws, queue_url, expect=1, timeout=15)
    assert json.loads(message["Body"])["outcome"] == "failed"
    assert publisher.held == 0 and count(counted["published"], "failed") == 1
    publisher.close(timeout=1)
    assert count(counted["dropped"], "failed") == 0


def build_unreachable_sns(aws: AwsClients) -> Any:
    from botocore.config import Config

    from tests.support.ports import free_port

    config = Config(
        region_name="eu-west-2", retries={"mode": "standard", "max_attempts": 2}, connect_timeout=1
    )
    return aws.session.client("sns", endpoint_url=f"http://127.0.0.1:{free_port()}", config=config)


# ---- receipts ----------------------------------------------------------------------------------


def put(aws: AwsClients, table: str, **row: Any) -> None:
    aws.dynamodb.put_item(TableName=table, Item={k: _serialize(v) for k, v in row.items()})


def set_status(aws: AwsClients, table: str, delivery_id: str, record: str, status: str) -> None:
    aws.dynamodb.update_item(
        TableName=table,
        Key={"delivery_id": {"S": delivery_id}, "record": {"S": record}},
        UpdateExpression="SET #s = :s",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":s": {"S": status}},
    )


def test_a_delivery_is_received_once_when_every_file_was_sent(aws: AwsClients, unique: str) -> None:
    table = f"ledger-{unique}"
    create_ledger_table(aws.dynamodb, table)
    delivery_id = f"d-{unique}"
    route_row = {
        "delivery_id": delivery_id,
        "record": "route",
        "status": "in_progress",
        "transfer_type": "SFT",
        "flag_bucket": "src",
        "flag_key": "exports/opsmi/pipeline_success.flag",
        "source_prefix": "exports/opsmi/",
        "pipeline_name": "OpsMI#sft",
        "recipient_name": "warehouse",
    }
    put(aws, table, **route_row)
    names = [f"warehouse/part-{i:03d}.csv" for i in range(5)]
    for name in names:
        put(aws, table, delivery_id=delivery_id, record=f"obj#{name}", name=name, status="sent")
    receipts, other = Receipts(aws.dynamodb, table), Receipts(aws.dynamodb, table)
    assert receipts.claim(delivery_id) is None, "every file sent, but the worker has not finished"

    put(aws, table, **{**route_row, "status": "delivered", "objects": 5, "bytes_delivered": 50,
                       "manifest": "warehouse/manifest.json"})  # fmt: skip
    set_status(aws, table, delivery_id, f"obj#{names[3]}", "sending")
    assert receipts.claim(delivery_id) is None, "a file is still being sent"
    set_status(aws, table, delivery_id, f"obj#{names[3]}", "sent")
    row = receipts.claim(delivery_id)
    assert row is not None and row["received_at"].startswith("20")
    assert row["pipeline_name"] == "OpsMI#sft" and row["objects"] == 5
    assert other.claim(delivery_id) is None and receipts.claim(delivery_id) is None, "announced once"

    # A delivery with no file is never received (as `egress history` derives it).
    put(aws, table, **{**route_row, "delivery_id": f"empty-{unique}", "status": "delivered"})
    assert receipts.claim(f"empty-{unique}") is None


class Recorded:
    """A publisher that keeps what it is given (the Publisher protocol; SNS is tested above)."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def publish(self, event: Any) -> bool:
        self.events.append(event)
        return True


def test_the_worker_announces_received_when_the_agent_was_quicker(aws: AwsClients, unique: str) -> None:
    table = f"ledger-{unique}"
    create_ledger_table(aws.dynamodb, table)
    delivery_id = f"d-{unique}"
    put(aws, table, delivery_id=delivery_id, record="route", status="delivered", transfer_type="SFT",
        flag_bucket="src", flag_key="exports/opsmi/pipeline_success.flag", source_prefix="exports/opsmi/",
        pipeline_name="OpsMI#sft", recipient_name="warehouse", objects=1, bytes_delivered=7)  # fmt: skip
    put(
        aws,
        table,
        delivery_id=delivery_id,
        record="obj#warehouse/a.csv",
        name="warehouse/a.csv",
        status="sent",
    )
    route = Route(source_prefix="exports/opsmi/", pipeline_name="OpsMI#sft", recipient_name="warehouse",
                  transfer_type="SFT", destination_prefix="warehouse")  # fmt: skip
    match = RouteMatch(route, (), "exports/opsmi/", "exports/opsmi/", "warehouse/")
    recorded = Recorded()
    announcer = RouteAnnouncer(recorded, receipts=Receipts(aws.dynamodb, table))
    announcer.delivered(FLAG, RouteResult(match=match, objects=1, size=7, delivery_id=delivery_id))
    assert [e.outcome for e in recorded.events] == ["delivered", "received"]
    received = recorded.events[1].body()
    assert received["flag"] == "s3://src/exports/opsmi/pipeline_success.flag"
    assert (received["objects"], received["bytes"], received["manifest"]) == (1, 7, None)
    assert received["transfer_type"] == "SFT" and received["reason"] is None
    announcer.delivered(FLAG, RouteResult(match=match, objects=1, size=7, delivery_id=delivery_id))
    assert [e.outcome for e in recorded.events] == ["delivered", "received", "delivered"], "received once"


def test_the_queue_knows_the_receive_that_is_a_messages_last(aws: AwsClients, unique: str) -> None:
    """A failure retried on its message's last receive is final: the redrive policy's limit tells it."""
    dlq_url = aws.sqs.create_queue(QueueName=f"dlq-{unique}")["QueueUrl"]
    dlq_arn = aws.sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})
    queue_url = aws.sqs.create_queue(QueueName=f"flags-{unique}", Attributes={"RedrivePolicy": policy})[
        "QueueUrl"
    ]
    found = FlagQueue.discover(aws.sqs, queue_url=queue_url, dlq_url=None)
    given = FlagQueue.discover(aws.sqs, queue_url=queue_url, dlq_url=dlq_url)
    assert found.dlq_url == dlq_url and found.max_receive_count == given.max_receive_count == 3

    def message(receives: int) -> Message:
        return Message("m", "r", "{}", receive_count=receives, sent_timestamp_ms=None)

    assert [found.is_last_receive(message(n)) for n in (1, 2, 3)] == [False, False, True]
    plain_url = aws.sqs.create_queue(QueueName=f"plain-{unique}")["QueueUrl"]
    plain = FlagQueue.discover(aws.sqs, queue_url=plain_url, dlq_url=dlq_url)
    assert plain.max_receive_count is None and not plain.is_last_receive(message(100))
