"""The agent announces ``received`` once every file of a delivered SFT route was sent (a real
moto server, a real mTLS push, an SNS topic subscribed by an SQS queue).

The route row and object rows are written as the worker writes them (docs/exactly-once.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from boto3.dynamodb.types import TypeSerializer
from sft_helpers import AgentProc, ReceiverProc, drop, route, wait_for
from test_sft_ledger import read_row, write_object_row

from egress.aws import AwsClients
from egress.ledger_table import create_ledger_table

_serialize = TypeSerializer().serialize


def subscribed_queue(aws: AwsClients, topic_arn: str, name: str) -> str:
    queue_url = aws.sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = aws.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    aws.sns.subscribe(
        TopicArn=topic_arn, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"}
    )
    return queue_url


def received_messages(aws: AwsClients, queue_url: str) -> list[dict[str, Any]]:
    """What the queue holds now (left there: the test reads it again later)."""
    response = aws.sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=1,
        VisibilityTimeout=0,
        MessageAttributeNames=["All"],
    )
    return response.get("Messages", [])


def test_received_is_published_once_when_the_last_file_of_a_delivery_is_sent(
    tmp_path: Path,
    aws: AwsClients,
    moto_endpoint: str,
    unique: str,
    start_receiver: Callable[..., ReceiverProc],
    start_agent: Callable[..., AgentProc],
) -> None:
    table = f"ledger-{unique}"
    create_ledger_table(aws.dynamodb, table)
    topic_arn = aws.sns.create_topic(Name=f"events-{unique}")["TopicArn"]
    queue_url = subscribed_queue(aws, topic_arn, f"events-{unique}")
    sft_root = tmp_path / "data-egress"
    folder = sft_root / "warehouse" / "run1"
    files = {"a.csv": b"id\n1\n" * 100, "b.csv": b"id\n2\n" * 50}
    delivery_id = write_object_row(aws, table, sft_path="warehouse/run1/a.csv", body=files["a.csv"])
    write_object_row(
        aws, table, sft_path="warehouse/run1/b.csv", body=files["b.csv"], delivery_id=delivery_id
    )
    route_row = {
        "delivery_id": delivery_id,
        "record": "route",
        "status": "delivered",
        "transfer_type": "SFT",
        "flag_bucket": "src",
        "flag_key": "exports/opsmi/pipeline_success.flag",
        "source_prefix": "exports/opsmi/",
        "pipeline_name": "OpsMI#sft",
        "recipient_name": "warehouse",
        "objects": 2,
        "bytes_delivered": sum(len(body) for body in files.values()),
        "manifest": "warehouse/run1/manifest.json",
    }
    aws.dynamodb.put_item(TableName=table, Item={k: _serialize(v) for k, v in route_row.items()})
    receiver = start_receiver()
    agent = start_agent(
        [route("warehouse", sft_root / "warehouse", [{"http": {"url": f"{receiver.url}/DA"}}],
               error_folder=sft_root / "error", recursive=True)],
        env={"AWS_ENDPOINT_URL": moto_endpoint, "AWS_REGION": "eu-west-2"},
        ledger={"table": table, "sft_root": str(sft_root), "events_topic_arn": topic_arn},
    )  # fmt: skip

    # One file of two sent: the delivery is not received yet.
    drop(folder, "a.csv", files["a.csv"])
    wait_for(
        lambda: read_row(aws, table, delivery_id, "warehouse/run1/a.csv")["status"] == "sent",
        timeout=20,
        what="a.csv recorded sent",
    )
    time.sleep(0.5)  # the writer thread has looked at the delivery by now
    assert received_messages(aws, queue_url) == []
    assert agent.metric("sft_agent_events_published_total", outcome="received") == 0

    # The last one: received, published once.
    drop(folder, "b.csv", files["b.csv"])
    (message,) = wait_for(lambda: received_messages(aws, queue_url), timeout=20, what="the received event")
    body = json.loads(message["Body"])
    assert body == {
        "type": "egress.route",
        "outcome": "received",
        "flag": "s3://src/exports/opsmi/pipeline_success.flag",
        "source_prefix": "exports/opsmi/",
        "pipeline_name": "OpsMI#sft",
        "recipient_name": "warehouse",
        "transfer_type": "SFT",
        "objects": 2,
        "bytes": route_row["bytes_delivered"],
        "manifest": "warehouse/run1/manifest.json",
        "reason": None,
        "detail": body["detail"],
        "at": body["at"],
    }
    assert message["MessageAttributes"]["outcome"]["StringValue"] == "received"
    assert message["MessageAttributes"]["pipeline_name"]["StringValue"] == "OpsMI#sft"
    route_after = aws.dynamodb.get_item(
        TableName=table,
        Key={"delivery_id": {"S": delivery_id}, "record": {"S": "route"}},
        ConsistentRead=True,
    )["Item"]
    assert route_after["received_at"]["S"].startswith("20")
    assert [e["delivery_id"] for e in agent.events("delivery_received")] == [delivery_id]

    # The same file sent again (a producer re-drop): its row is final, nothing is announced again.
    drop(folder, "a.csv", files["a.csv"])
    wait_for(lambda: len(agent.events("file_sent")) == 3, timeout=20, what="a.csv sent again")
    time.sleep(1.0)
    assert len(received_messages(aws, queue_url)) == 1
    assert agent.metric("sft_agent_events_published_total", outcome="received") == 1
    assert agent.metric("sft_agent_event_publish_failures_total", outcome="received") == 0
    assert agent.metric("sft_agent_ledger_errors_total", operation="receipt") == 0
