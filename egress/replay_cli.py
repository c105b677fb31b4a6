"""``egress replay``: queue a flag again, dated as the first time, for every route or one.

A replay is a new upload for the ledger (a fresh sequencer), so it delivers again; its
event time is the original one, so placeholders and dated file names resolve as they did
the first time. That time is, in order: ``--event-time``; the one the ledger recorded for
the flag's most recent delivery; the flag object's LastModified.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

from botocore.exceptions import BotoCoreError, ClientError

from egress.cli_context import CliContext
from egress.errors import EgressError, PermanentError, translate_client_error
from egress.kernel.s3uri import S3Uri, parse_s3_uri
from egress.kernel.timefmt import parse_iso8601
from egress.ledger import Ledger
from egress.messages import EGRESS_KEY, FlagEvent
from egress.routes_cli import add_sft_root_option
from egress.routes_report import any_undeliverable, explain_entries, print_entry_details
from egress.routing import RouteMatch, RouteTable

DRY_RUN_OBJECTS = 200
"""Objects listed per route by ``--dry-run`` at most."""


def configure(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``replay`` to the ``egress`` command."""
    replay = commands.add_parser(
        "replay", help="queue a flag again: its routes are delivered again, dated as the first time"
    )
    replay.add_argument("flag_uri", metavar="S3_URI_OF_FLAG")
    replay.add_argument("--queue-url", default=os.environ.get("EGRESS_QUEUE_URL"))
    replay.add_argument(
        "--event-time",
        metavar="ISO",
        help="the time placeholders and dated names resolve from (default: the one the ledger "
        "recorded for the flag's latest delivery, else the flag's LastModified)",
    )
    replay.add_argument("--pipeline", metavar="NAME", help="deliver only the route of this pipeline_name")
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="send nothing: show the event time and what each route would do",
    )
    add_sft_root_option(replay)
    replay.set_defaults(handler=_replay)


@dataclass(frozen=True)
class EventTime:
    """The time a replay resolves its dates from, and where it was found (for people)."""

    when: datetime
    source: str


class ReplayRefused(Exception):
    """The replay cannot go ahead; ``code`` is the exit code (2: the command line, 1: the world)."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


def _replay(args: argparse.Namespace, ctx: CliContext) -> int:
    try:
        return _replay_or_refuse(args, ctx)
    except ReplayRefused as exc:
        print(f"egress replay: {exc}", file=ctx.err)
        return exc.code


def _replay_or_refuse(args: argparse.Namespace, ctx: CliContext) -> int:
    try:
        flag = parse_s3_uri(args.flag_uri)
    except ValueError as exc:
        raise ReplayRefused(str(exc), code=2) from exc
    if not args.dry_run and not args.queue_url:
        raise ReplayRefused("give --queue-url or set EGRESS_QUEUE_URL", code=2)
    given: datetime | None = None
    if args.event_time:
        try:
            given = parse_iso8601(args.event_time)
        except ValueError as exc:
            raise ReplayRefused(f"--event-time {args.event_time!r} is not an ISO 8601 time", code=2) from exc
    try:
        head = ctx.clients.s3.head_object(Bucket=flag.bucket, Key=flag.key)
    except (ClientError, BotoCoreError) as exc:
        raise ReplayRefused(str(translate_client_error(exc, doing=f"reading {flag}")), code=1) from exc
    time = EventTime(given, "--event-time") if given else _recorded_time(ctx, flag, head)
    if args.dry_run:
        print(f"flag        {flag}", file=ctx.out)
        print(f"event time  {_iso(time.when)} (from {time.source})", file=ctx.out)
        return _show(ctx, flag, time, _routes(args, ctx, flag, time))
    if args.pipeline:
        _routes(args, ctx, flag, time)  # refuses a pipeline that is not among the flag's routes
    body = replay_body(flag, event_time=time.when, pipeline=args.pipeline)
    try:
        sent = ctx.clients.sqs.send_message(QueueUrl=args.queue_url, MessageBody=json.dumps(body))
    except (ClientError, BotoCoreError) as exc:
        raise ReplayRefused(str(translate_client_error(exc, doing="queueing the replay")), code=1) from exc
    only = f", pipeline {args.pipeline} only" if args.pipeline else ""
    print(f"queued {flag} again as message {sent['MessageId']}{only}", file=ctx.out)
    print(f"event time {_iso(time.when)} (from {time.source})", file=ctx.out)
    return 0


def _recorded_time(ctx: CliContext, flag: S3Uri, head: Any) -> EventTime:
    """The event time of the flag's most recent delivery in the ledger, else its LastModified."""
    ledger = Ledger(ctx.clients.dynamodb, ctx.ledger_table, owner="cli")
    try:
        rows = list(ledger.flag_deliveries(flag.bucket, flag.key))
    except EgressError as exc:
        raise ReplayRefused(f"{exc.reason}: {exc.detail} (or give --event-time)", code=1) from exc
    if rows:
        latest = max(rows, key=lambda row: str(row.get("started_at", "")))
        try:
            when = parse_iso8601(str(latest["event_time"]))
        except (KeyError, ValueError):
            pass  # recorded before the ledger kept event times: the flag's own time is next best
        else:
            return EventTime(
                when,
                f"the ledger: the flag's latest delivery, {latest.get('pipeline_name', '?')} "
                f"started {latest.get('started_at', '?')}",
            )
    modified: datetime = head["LastModified"]
    return EventTime(modified.astimezone(UTC), "the flag's LastModified (no event time in the ledger)")


def _routes(args: argparse.Namespace, ctx: CliContext, flag: S3Uri, time: EventTime) -> list[RouteMatch]:
    """The routes the worker would deliver for the replay (only ``--pipeline``'s, if given)."""
    event = FlagEvent(bucket=flag.bucket, key=flag.key, event_time=time.when)
    try:
        table = RouteTable(ctx.clients.dynamodb, ctx.routes_table, cache_seconds=0, sft_root=args.sft_root)
        matches = table.find(event)
    except ValueError as exc:
        raise ReplayRefused(str(exc), code=2) from exc
    except PermanentError as exc:
        if args.pipeline:
            raise ReplayRefused(
                f"pipeline {args.pipeline!r} is not a route of {flag}: {exc.detail}", code=2
            ) from exc
        raise ReplayRefused(f"{exc.reason}: {exc.detail}", code=1) from exc
    except EgressError as exc:
        raise ReplayRefused(f"{exc.reason}: {exc.detail}", code=1) from exc
    if not args.pipeline:
        return matches
    chosen = [match for match in matches if match.route.pipeline_name == args.pipeline]
    if not chosen:
        names = ", ".join(repr(match.route.pipeline_name) for match in matches) or "none enabled"
        raise ReplayRefused(
            f"pipeline {args.pipeline!r} is not among the routes of {flag} (event date "
            f"{time.when.date().isoformat()}): {names}",
            code=2,
        )
    return chosen


def _show(ctx: CliContext, flag: S3Uri, time: EventTime, matches: list[RouteMatch]) -> int:
    """``--dry-run``: what each route would deliver (the flag and its event time are printed)."""
    if not matches:
        print("every matching route is disabled: a replay would deliver nothing", file=ctx.out)
        return 0
    event = FlagEvent(bucket=flag.bucket, key=flag.key, event_time=time.when)
    entries = explain_entries(
        ctx.clients.s3, event, matches, flag_name=flag.key.rsplit("/", 1)[-1], limit=DRY_RUN_OBJECTS
    )
    print(f"dry run, nothing queued: a replay would deliver {len(entries)} route(s)", file=ctx.out)
    for entry in entries:
        print(
            f"\n{entry['pipeline_name']}  recipient {entry['recipient_name']}  {entry['transfer_type']}  "
            f"->  {entry['delivers_to']}  [{entry['flags']}]",
            file=ctx.out,
        )
        print_entry_details(entry, out=ctx.out)
    # An invalid or unapproved route would be dead-lettered: the replay would not deliver it.
    return 1 if any_undeliverable(entries) else 0


def replay_body(flag: S3Uri, *, event_time: datetime, pipeline: str | None) -> dict[str, Any]:
    """The S3 notification a replay queues: the original event time, a fresh sequencer.

    The fresh sequencer makes it a new upload for the ledger (replay means deliver again);
    ``pipeline`` travels beside the records, restricting the delivery to that route.
    """
    body: dict[str, Any] = {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventTime": _iso(event_time),
                "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "egress-replay"},
                "s3": {
                    "bucket": {"name": flag.bucket},
                    "object": {
                        "key": quote_plus(flag.key, safe="/"),
                        "size": 0,
                        "sequencer": f"replay-{uuid.uuid4().hex}",
                    },
                },
            }
        ]
    }
    if pipeline:
        body[EGRESS_KEY] = {"pipeline_name": pipeline}
    return body


def _iso(when: datetime) -> str:
    """An S3 notification's time: UTC, milliseconds, ``Z``."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
