"""SQS message bodies → flag events.

Accepted bodies: an S3 event notification (keys URL-encoded, ``+`` is a space), the
same wrapped in an SNS envelope, and an EventBridge "Object Created" event (keys not
encoded). Test events and keys that are not the flag are ignored. Our own key beside
the records, ``"egress": {"pipeline_name": …}`` (``egress replay --pipeline``), restricts
the delivery to that route.

Bodies come from whoever can send to the queue, so parsing is bounded: a body over SQS's
size limit, nested deeper than any accepted shape needs, not valid UTF-8 or of the
wrong shape is a :class:`MalformedMessage` (dead-lettered at once), never another
exception (which the worker would retry as an internal error).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote_plus

from egress.kernel.timefmt import parse_iso8601

MAX_BODY_BYTES: Final = 256 * 1024
"""SQS's limit for one message; a longer body did not come through SQS as sent."""
MAX_DEPTH: Final = 32
"""Deepest JSON nesting accepted; the accepted shapes need five levels."""
EGRESS_KEY: Final = "egress"
"""A top-level key of ours beside ``Records`` (``egress replay``): ``{"pipeline_name": …}``."""


@dataclass(frozen=True)
class FlagEvent:
    """One upload of a flag object, as told by a notification."""

    bucket: str
    key: str
    event_time: datetime  # timezone-aware UTC; placeholders resolve from it
    sequencer: str | None = None
    version_id: str | None = None
    size: int | None = None
    # Deliver only the route of this pipeline_name (``egress replay --pipeline``); None: every route.
    only_pipeline: str | None = None

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
        return parse_iso8601(value)
    except ValueError as exc:
        raise MalformedMessage(f"event time {value[:40]!r} is not ISO 8601") from exc


def _require_str(mapping: Mapping[str, Any], name: str, where: str) -> str:
    value = mapping.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedMessage(f"{where}.{name} missing or not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a \ud800 escape
        raise MalformedMessage(f"{where}.{name} is not valid Unicode") from exc
    return value


def _optional_str(mapping: Mapping[str, Any], name: str) -> str | None:
    value = mapping.get(name)
    return value if isinstance(value, str) else None


def _optional_size(mapping: Mapping[str, Any]) -> int | None:
    value = mapping.get("size")
    # bool is an int to Python, not a size to S3
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


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
    # encodes '/' as %2F. unquote_plus handles both. S3 keys are UTF-8, so escapes that
    # decode to anything else are malformed, not replaced by U+FFFD (another key).
    try:
        key = unquote_plus(raw_key, errors="strict")
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"{where}.s3.object.key decodes to bytes that are not UTF-8") from exc
    return FlagEvent(
        bucket=bucket,
        key=key,
        event_time=_parse_time(record.get("eventTime")),
        sequencer=_optional_str(obj, "sequencer"),
        version_id=_optional_str(obj, "versionId"),
        size=_optional_size(obj),
    )


def _from_eventbridge(body: Mapping[str, Any]) -> FlagEvent:
    detail = body.get("detail")
    if not isinstance(detail, dict):
        raise MalformedMessage("EventBridge event without detail")
    bucket_info = detail.get("bucket")
    obj = detail.get("object")
    if not isinstance(bucket_info, dict) or not isinstance(obj, dict):
        raise MalformedMessage("EventBridge detail.bucket/object missing")
    return FlagEvent(
        bucket=_require_str(bucket_info, "name", "detail.bucket"),
        key=_require_str(obj, "key", "detail.object"),  # EventBridge keys are not encoded
        event_time=_parse_time(body.get("time")),
        sequencer=_optional_str(obj, "sequencer"),
        version_id=_optional_str(obj, "version-id"),
        size=_optional_size(obj),
    )


def _load_object(body: str | bytes, *, what: str) -> dict[str, Any]:
    """``body`` parsed as one JSON object, within the size and nesting limits."""
    # Every character is at least one byte: an over-long str needs no encoding to be refused.
    if isinstance(body, bytes) or len(body) > MAX_BODY_BYTES:
        size = len(body)
    else:
        try:
            size = len(body.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise MalformedMessage(f"{what} holds a lone surrogate (not valid Unicode)") from exc
    if size > MAX_BODY_BYTES:
        raise MalformedMessage(
            f"{what} is {size} bytes, over the {MAX_BODY_BYTES}-byte limit of an SQS message"
        )
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage(f"{what} is not valid UTF-8 (byte {exc.start})") from exc
    too_deep = f"{what} nests JSON deeper than {MAX_DEPTH} levels"
    try:
        parsed = json.loads(body)
    except RecursionError as exc:  # the C decoder stops at the interpreter's recursion limit
        raise MalformedMessage(too_deep) from exc
    except (ValueError, TypeError) as exc:
        raise MalformedMessage(f"{what} is not JSON ({exc.__class__.__name__})") from exc
    if not isinstance(parsed, dict):
        raise MalformedMessage(f"{what} is not a JSON object")
    # Nesting cannot exceed the number of brackets: ordinary events skip the walk.
    if body.count("[") + body.count("{") > MAX_DEPTH and _deeper_than(parsed, MAX_DEPTH):
        raise MalformedMessage(too_deep)
    return parsed


def _deeper_than(value: object, limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels in ``value``; a loop, not recursion."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_body(body: str | bytes, *, flag_name: str) -> list[FlagEvent] | Ignored:
    """Turn one SQS body into the flag uploads it announces.

    Returns :class:`Ignored` for test events and for bodies whose keys are none of them
    the flag; raises :class:`MalformedMessage` — and nothing else — for anything that is
    not an accepted shape, including bodies over :data:`MAX_BODY_BYTES`, nested deeper
    than :data:`MAX_DEPTH` or not valid UTF-8.
    """
    parsed = _load_object(body, what="body")
    if parsed.get("Type") == "Notification" and "Message" in parsed:
        inner = parsed["Message"]
        if not isinstance(inner, str):
            raise MalformedMessage("SNS envelope Message is not a string")
        # One envelope only: S3 → SNS → SQS never wraps twice.
        parsed = _load_object(inner, what="SNS envelope Message")
        if parsed.get("Type") == "Notification":
            raise MalformedMessage("SNS envelope Message is itself an SNS envelope")
    return _events(parsed, flag_name=flag_name)


def _events(parsed: dict[str, Any], *, flag_name: str) -> list[FlagEvent] | Ignored:
    if parsed.get("Event") == "s3:TestEvent":
        return Ignored("s3:TestEvent")
    pipeline = _only_pipeline(parsed)
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
            return Ignored(f"EventBridge {str(parsed.get('detail-type'))[:80]!r} event")
        events = [_from_eventbridge(parsed)]
    else:
        raise MalformedMessage("neither an S3 notification, an SNS envelope nor an EventBridge event")
    flags = [event for event in events if event.key.rsplit("/", 1)[-1] == flag_name]
    if not flags:
        keys = ", ".join(repr(event.key[:80]) for event in events[:3]) or "no ObjectCreated record"
        return Ignored(f"not a {flag_name}: {keys}")
    return [replace(event, only_pipeline=pipeline) for event in flags] if pipeline else flags


def _only_pipeline(parsed: Mapping[str, Any]) -> str | None:
    """The pipeline a replay is restricted to (``{"egress": {"pipeline_name": …}}``), or None.

    The key is ours, so anything in it we do not know is a mistake, not something to skip:
    a body that asked for a restriction must never be delivered to every route.
    """
    if EGRESS_KEY not in parsed:
        return None
    options = parsed[EGRESS_KEY]
    if not isinstance(options, dict):
        raise MalformedMessage(f"{EGRESS_KEY} is not an object")
    unknown = sorted(str(name)[:40] for name in options if name != "pipeline_name")
    if unknown:
        raise MalformedMessage(f"{EGRESS_KEY} holds unknown keys: {', '.join(unknown[:5])}")
    return _require_str(options, "pipeline_name", EGRESS_KEY)
