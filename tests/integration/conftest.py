"""Fixtures of the integration tier (the session's moto server and clients are in tests/conftest.py)."""

from __future__ import annotations

import json

import pytest

from egress.aws import AwsClients


@pytest.fixture()
def queues(aws: AwsClients, unique: str) -> tuple[str, str]:
    """A flag queue and its DLQ (redrive after 3 receives): ``(queue_url, dlq_url)``."""
    dlq = aws.sqs.create_queue(QueueName=f"dlq-{unique}")["QueueUrl"]
    arn = aws.sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = aws.sqs.create_queue(
        QueueName=f"q-{unique}",
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "3"})},
    )["QueueUrl"]
    return queue, dlq
