"""SQS message bodies → flag events.

Accepted bodies: an S3 event notification (keys URL-encoded, ``+`` is a space), the
same wrapped in an SNS envelope, and an EventBridge "Object Created" event (keys not
encoded). Test events and keys that are not the flag are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus


@dataclass(frozen=True)
class FlagEvent:
    """One upload of a flag object, as told by a notification."""

    bucket: str
    key: str
    event_time: datetime  # timezone-aware UTC; placeholders resolve from it
    sequencer: str | None = None
    version_id: str | None = None
    size: int | None = None

    @property
    def prefix(self) -> str:
        """The flag's folder: its key minus the last segment, keeping the trailing ``/``."""
        head, sep, _ = self.key.rpartition("/")
        return head + sep

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class MalformedMessage(Exception):
    """The body is not one of the accepted shapes; the detail says what is wrong."""


@dataclass(frozen=True)
class Ignored:
    """A message to delete without work (test events, keys that are not the flag)."""

    why: str


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str) or not value:
        raise MalformedMessage("event time missing")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise MalformedMessage(f"event time {value[:40]!r} is not ISO 8601") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _require_str(mapping: Mapping[str, Any], name: str, where: str) -> str:
    value = mapping.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedMessage(f"{where}.{name} missing or not a string")
    return value


def _from_s3_record(record: object, index: int) -> FlagEvent:
    where = f"Records[{index}]"
    if not isinstance(record, dict):
        raise MalformedMessage(f"{where} is not an object")
    s3 = record.get("s3")
    if (
        not isinstance(s3, dict)
        or not isinstance(s3.get("bucket"), dict)
        or not isinstance(s3.get("object"), dict)
    ):
        raise MalformedMessage(f"{where}.s3.bucket/object missing")
    bucket = _require_str(s3["bucket"], "name", f"{where}.s3.bucket")
    obj = s3["object"]
    raw_key = _require_str(obj, "key", f"{where}.s3.object")
    # S3 URL-encodes keys in notifications, '+' standing for a space; moto also
    # encodes '/' as %2F. unquote_plus handles both.
    key = unquote_plus(raw_key)
    size = obj.get("size")
    return FlagEvent(
        bucket=bucket,
        key=key,
        event_time=_parse_time(record.get("eventTime")),
        sequencer=obj.get("sequencer") if isinstance(obj.get("sequencer"), str) else None,
        version_id=obj.get("versionId") if isinstance(obj.get("versionId"), str) else None,
        size=size if isinstance(size, int) else None,
    )


def _from_eventbridge(body: Mapping[str, Any]) -> FlagEvent:
    detail = body.get("detail")
    if not isinstance(detail, dict):
        raise MalformedMessage("EventBridge event without detail")
    bucket_info = detail.get("bucket")
    obj = detail.get("object")
    if not isinstance(bucket_info, dict) or not isinstance(obj, dict):
        raise MalformedMessage("EventBridge detail.bucket/object missing")
    size = obj.get("size")
    return FlagEvent(
        bucket=_require_str(bucket_info, "name", "detail.bucket"),
        key=_require_str(obj, "key", "detail.object"),  # EventBridge keys are not encoded
        event_time=_parse_time(body.get("time")),
        sequencer=obj.get("sequencer") if isinstance(obj.get("sequencer"), str) else None,
        version_id=obj.get("version-id") if isinstance(obj.get("version-id"), str) else None,
        size=size if isinstance(size, int) else None,
    )


def parse_body(body: str, *, flag_name: str) -> list[FlagEvent] | Ignored:
    """Turn one SQS body into the flag uploads it announces.

    Returns :class:`Ignored` for test events and for bodies whose keys are none of them
    the flag; raises :class:`MalformedMessage` for anything that is not an accepted shape.
    """
    try:
        parsed = json.loads(body)
    except (ValueError, TypeError) as exc:
        raise MalformedMessage(f"body is not JSON ({exc.__class__.__name__})") from exc
    if not isinstance(parsed, dict):
        raise MalformedMessage("body is not a JSON object")
    if parsed.get("Type") == "Notification" and "Message" in parsed:
        inner = parsed["Message"]
        if not isinstance(inner, str):
            raise MalformedMessage("SNS envelope Message is not a string")
        return parse_body(inner, flag_name=flag_name)
    if parsed.get("Event") == "s3:TestEvent":
        return Ignored("s3:TestEvent")
    events: list[FlagEvent]
    if "Records" in parsed:
        records = parsed["Records"]
        if not isinstance(records, list) or not records:
            raise MalformedMessage("Records is empty or not a list")
        events = []
        for index, record in enumerate(records):
            name = record.get("eventName", "") if isinstance(record, dict) else ""
            if isinstance(name, str) and name and not name.startswith("ObjectCreated"):
                continue  # deletions, restores, ... announce nothing to deliver
            events.append(_from_s3_record(record, index))
    elif parsed.get("source") == "aws.s3" and "detail" in parsed:
        if parsed.get("detail-type") not in (None, "Object Created"):
            return Ignored(f"EventBridge {parsed.get('detail-type')!r} event")
        events = [_from_eventbridge(parsed)]
    else:
        raise MalformedMessage("neither an S3 notification, an SNS envelope nor an EventBridge event")
    flags = [event for event in events if event.key.rsplit("/", 1)[-1] == flag_name]
    if not flags:
        keys = ", ".join(repr(event.key[:80]) for event in events[:3]) or "no ObjectCreated record"
        return Ignored(f"not a {flag_name}: {keys}")
    return flags
