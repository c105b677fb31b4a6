"""The SQS side: receiving flag messages, extending, releasing, deleting, dead-lettering.

Each call is made once here and translated where it is made; botocore's standard retry
mode (:mod:`egress.aws`) retries it on throttling, 5xx and connection errors. Nothing
here retries on top: a second layer would multiply the attempts of one call, and retrying
a send-then-delete whose delete failed would send the message twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from egress.errors import error_code, translate_client_error

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

MAX_VISIBILITY = 12 * 3600


@dataclass(frozen=True)
class Message:
    """One received SQS message."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_timestamp_ms: int | None
    requeues: int = 0  # times it was put back while another worker held its delivery


class ReceiptGone(Exception):  # noqa: N818 - a state, not a failure of ours
    """The receipt handle is no longer valid (the message was deleted or re-received)."""


class FlagQueue:
    """Thin, translated operations on the flag queue and its DLQ."""

    def __init__(
        self, sqs: SQSClient, *, queue_url: str, dlq_url: str, max_receive_count: int | None = None
    ) -> None:
        self._sqs = sqs
        self.queue_url = queue_url
        self.dlq_url = dlq_url
        # The redrive policy's limit: a message received this many times goes to the DLQ
        # at its next receive. None when unknown (no policy, or it could not be read).
        self.max_receive_count = max_receive_count

    def is_last_receive(self, message: Message) -> bool:
        """Whether the redrive policy moves ``message`` to the DLQ instead of delivering it again."""
        return self.max_receive_count is not None and message.receive_count >= self.max_receive_count

    @classmethod
    def discover(cls, sqs: SQSClient, *, queue_url: str, dlq_url: str | None) -> FlagQueue:
        """Read the queue's redrive policy: its receive limit, and the DLQ unless it is given."""
        doing = f"reading the redrive policy of {queue_url}"
        try:
            attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
        except (ClientError, BotoCoreError) as exc:
            if dlq_url:
                return cls(sqs, queue_url=queue_url, dlq_url=dlq_url)  # the limit stays unknown
            raise translate_client_error(exc, doing=doing) from exc
        policy = _redrive_policy(attributes.get("Attributes", {}).get("RedrivePolicy", "{}"))
        limit = _receive_limit(policy)
        if dlq_url:
            return cls(sqs, queue_url=queue_url, dlq_url=dlq_url, max_receive_count=limit)
        arn = str(policy.get("deadLetterTargetArn", ""))
        if not arn:
            raise ValueError(f"queue {queue_url} has no redrive policy; set EGRESS_DLQ_URL or add a DLQ")
        _, _, _, _, account, name = arn.split(":", 5)
        try:
            found = sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, doing=doing) from exc
        return cls(sqs, queue_url=queue_url, dlq_url=found, max_receive_count=limit)

    def receive(self, *, max_messages: int, wait_seconds: int, visibility_timeout: int) -> list[Message]:
        """Long-poll for up to ``max_messages`` messages."""
        try:
            response = self._sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=max(1, min(10, max_messages)),
                WaitTimeSeconds=wait_seconds,
                VisibilityTimeout=visibility_timeout,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                MessageAttributeNames=["All"],
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, doing="receiving from the flag queue") from exc
        messages = []
        for raw in response.get("Messages", []):
            attributes = raw.get("Attributes", {})
            sent = attributes.get("SentTimestamp")
            requeue_attribute = raw.get("MessageAttributes", {}).get("requeues")
            requeues = str(requeue_attribute.get("StringValue", "0")) if requeue_attribute else "0"
            messages.append(
                Message(
                    message_id=raw["MessageId"],
                    receipt_handle=raw["ReceiptHandle"],
                    body=raw.get("Body", ""),
                    receive_count=int(attributes.get("ApproximateReceiveCount", "1")),
                    sent_timestamp_ms=int(sent) if sent else None,
                    requeues=int(requeues) if requeues.isdigit() else 0,
                )
            )
        return messages

    def delete(self, message: Message) -> None:
        """Delete a handled message."""
        try:
            self._sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message.receipt_handle)
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, doing=f"deleting message {message.message_id}") from exc

    def set_visibility(self, message: Message, seconds: int) -> None:
        """Extend (heartbeat) or release (0 / backoff) a message's visibility."""
        try:
            self._sqs.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=message.receipt_handle,
                VisibilityTimeout=max(0, min(MAX_VISIBILITY, int(seconds))),
            )
        except ClientError as exc:
            if error_code(exc) in {"ReceiptHandleIsInvalid", "MessageNotInflight", "InvalidParameterValue"}:
                raise ReceiptGone(message.message_id) from exc
            raise translate_client_error(exc, doing=f"changing visibility of {message.message_id}") from exc
        except BotoCoreError as exc:
            raise translate_client_error(exc, doing=f"changing visibility of {message.message_id}") from exc

    def requeue(self, message: Message, *, delay_seconds: int) -> None:
        """Put the message back as a new message visible in ``delay_seconds`` (at most 900), then delete it.

        Unlike a visibility change this resets the receive count, so a message that
        waits on another worker's delivery never reaches the redrive policy's limit.
        Send first, delete second: a crash in between leaves a duplicate (the ledger
        delivers nothing twice), never a loss.
        """
        try:
            self._sqs.send_message(
                QueueUrl=self.queue_url,
                MessageBody=message.body,
                DelaySeconds=max(0, min(900, int(delay_seconds))),
                MessageAttributes={
                    "requeued_from": {"DataType": "String", "StringValue": message.message_id},
                    "requeues": {"DataType": "Number", "StringValue": str(message.requeues + 1)},
                },
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, doing=f"requeueing {message.message_id}") from exc
        self.delete(message)

    def dead_letter(self, message: Message, *, reason: str, detail: str) -> None:
        """Move a message to the DLQ now, with ``reason``/``detail`` attributes, then delete it.

        Send first, delete second: a crash in between duplicates the message in the DLQ
        (harmless, the ledger dedupes a redrive) but never loses it.
        """
        try:
            self._sqs.send_message(
                QueueUrl=self.dlq_url,
                MessageBody=message.body,
                MessageAttributes={
                    "reason": {"DataType": "String", "StringValue": reason},
                    "detail": {"DataType": "String", "StringValue": detail[:1000] or reason},
                    "source_message_id": {"DataType": "String", "StringValue": message.message_id},
                    "receive_count": {"DataType": "Number", "StringValue": str(message.receive_count)},
                },
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate_client_error(exc, doing=f"sending {message.message_id} to the DLQ") from exc
        self.delete(message)


def _redrive_policy(text: str) -> dict[str, Any]:
    try:
        policy = json.loads(text)
    except ValueError:
        return {}
    return policy if isinstance(policy, dict) else {}


def _receive_limit(policy: Mapping[str, Any]) -> int | None:
    """``maxReceiveCount`` (SQS gives it as a number or a string), None if absent."""
    value = str(policy.get("maxReceiveCount", ""))
    return int(value) if value.isdigit() and int(value) > 0 else None
