"""Operators' commands around the flow: ``egress history`` and ``egress dlq``."""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import BotoCoreError, ClientError

from egress.cli_context import CliContext
from egress.errors import EgressError, translate_client_error
from egress.kernel.durations import parse_duration
from egress.kernel.timefmt import parse_iso8601
from egress.ledger import Ledger
from egress.ledger_table import DELIVERED, DONE, PARKED, RECEIVED, RETRY, SENDING, SENT, UPLOADING
from egress.queue import FlagQueue


def configure(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``history`` and ``dlq`` to the ``egress`` command."""
    history = commands.add_parser("history", help="deliveries recorded in the ledger, newest first")
    history.add_argument("--prefix", help="only flags whose key starts with this")
    history.add_argument("--pipeline", help="only this pipeline_name")
    history.add_argument("--since", help="ISO time or a duration such as 30m, 6h, 7d")
    history.add_argument("--status", choices=["delivered", "received", "in_progress", "failed"])
    history.add_argument(
        "--files", action="store_true", help="each file of each delivery: written, then sent or parked"
    )
    history.add_argument("--limit", type=int, default=50)
    history.add_argument("--output", choices=["table", "json"], default="table")
    history.set_defaults(handler=_history)

    dlq = commands.add_parser("dlq", help="inspect, redrive and delete dead-lettered messages")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    for name, helptext, handler in (
        ("list", "messages in the DLQ with their reasons", _dlq_list),
        ("redrive", "move messages back to the flag queue", _dlq_redrive),
        ("delete", "delete one message, after showing it and asking", _dlq_delete),
    ):
        sub = dlq_commands.add_parser(name, help=helptext)
        sub.add_argument("--queue-url", default=os.environ.get("EGRESS_QUEUE_URL"))
        sub.add_argument("--dlq-url", default=os.environ.get("EGRESS_DLQ_URL"))
        sub.add_argument("--max", type=int, default=100, help="look at most at this many messages")
        if name == "list":
            sub.add_argument("--output", choices=["table", "json"], default="table")
        elif name == "redrive":
            which = sub.add_mutually_exclusive_group(required=True)
            which.add_argument("--id", action="append", dest="ids", help="DLQ message id (repeatable)")
            which.add_argument("--all", action="store_true")
        else:
            sub.add_argument("--id", required=True, dest="message_id", help="the DLQ message id")
            sub.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        sub.set_defaults(handler=handler)


def _parse_since(value: str | None) -> datetime | None:
    """An ISO time, or a duration (``30m``, ``6h``, ``7d``) back from now; ``ValueError`` otherwise."""
    if not value:
        return None
    try:
        return parse_iso8601(value)
    except ValueError:
        seconds = parse_duration(value)
    return datetime.now(UTC) - timedelta(seconds=seconds)


def _history(args: argparse.Namespace, ctx: CliContext) -> int:
    try:
        since = _parse_since(args.since)
    except ValueError:
        print(
            f"egress history: --since {args.since!r} is neither ISO time nor a duration like 6h", file=ctx.err
        )
        return 2
    ledger = Ledger(ctx.clients.dynamodb, ctx.ledger_table, owner="cli")
    rows: list[dict[str, Any]] = []
    try:
        for row in ledger.history(limit=1_000_000):
            if args.prefix and not str(row.get("flag_key", "")).startswith(args.prefix):
                continue
            if args.pipeline and row.get("pipeline_name") != args.pipeline:
                continue
            stored = DELIVERED if args.status == RECEIVED else args.status
            if args.status and row.get("status") != stored:
                continue
            if since and parse_iso8601(str(row.get("started_at", "1970-01-01T00:00:00+00:00"))) < since:
                continue
            rows.append(row)
    except (ClientError, BotoCoreError) as exc:
        print(f"egress history: {translate_client_error(exc, doing='reading the ledger')}", file=ctx.err)
        return 1
    rows.sort(key=lambda row: str(row.get("started_at", "")), reverse=True)
    try:
        rows = _with_receipts(ledger, rows, files=args.files, status=args.status, limit=args.limit)
    except EgressError as exc:
        print(f"egress history: {exc}", file=ctx.err)
        return 1
    if args.output == "json":
        print(json.dumps(rows, default=str, indent=2), file=ctx.out)
        return 0
    header = (
        "started_at",
        "status",
        "pipeline_name",
        "recipient_name",
        "objects",
        "bytes_delivered",
        "flag_key",
        "last_reason",
    )
    print("  ".join(header), file=ctx.out)
    for row in rows:
        print("  ".join(str(row.get(column, "-")) for column in header), file=ctx.out)
        for file in row.get("files", []):
            print(f"    {_file_line(file)}", file=ctx.out)
    if not rows:
        print("(no deliveries match)", file=ctx.out)
    return 0


def _with_receipts(
    ledger: Ledger, rows: list[dict[str, Any]], *, files: bool, status: str | None, limit: int
) -> list[dict[str, Any]]:
    """Rows with SFT deliveries' derived state (``received`` once the agent sent every file).

    The status filter was applied to the stored state; ``received`` is a delivered SFT
    row whose files were all sent, so it is decided here.
    """
    kept: list[dict[str, Any]] = []
    for row in rows:
        wanted_received = status == "received"
        if wanted_received and not (row.get("transfer_type") == "SFT" and row.get("status") == DELIVERED):
            continue
        needs_files = files or (row.get("transfer_type") == "SFT" and row.get("status") == DELIVERED)
        objects = list(ledger.object_rows(str(row["delivery_id"]))) if needs_files else []
        objects.sort(key=lambda item: str(item.get("name", "")))
        if row.get("transfer_type") == "SFT" and row.get("status") == DELIVERED:
            sent = sum(1 for item in objects if item.get("status") == SENT)
            row["files_sent"] = sent
            if objects and sent == len(objects):
                row["status"] = RECEIVED
        if status == "delivered" and row.get("status") != "delivered":
            continue
        if wanted_received and row.get("status") != RECEIVED:
            continue
        if files:
            row["files"] = objects
        kept.append(row)
        if len(kept) >= limit:
            break
    return kept


def _file_line(file: dict[str, Any]) -> str:
    """One file's story: ``name  size  written <time> → sent <time> (HTTP 201)`` and the like."""
    parts = [
        str(file.get("name", "?")),
        f"{file.get('size', '-')} B",
        f"written {file.get('written_at', '-')}",
    ]
    state = file.get("status")
    if state == SENT:
        parts.append(
            f"→ sent {file.get('sent_at', '-')} (HTTP {file.get('http_status', '-')}, "
            f"{file.get('bytes_sent', '-')} B)"
        )
    elif state == PARKED:
        parts.append(f"→ parked {file.get('parked_at', '-')} ({file.get('parked_reason', '-')})")
    elif state == RETRY:
        parts.append(
            f"→ failed, will retry ({file.get('last_reason', '-')}; attempts {file.get('attempts', '-')})"
        )
    elif state == SENDING:
        parts.append(f"→ sending since {file.get('sending_at', '-')}")
    elif state == UPLOADING:
        parts.append("→ upload open")
    elif state == DONE:
        parts.append("→ done")
    return "  ".join(parts)


def _queues(args: argparse.Namespace, ctx: CliContext) -> FlagQueue | None:
    if not args.queue_url:
        print("egress dlq: give --queue-url or set EGRESS_QUEUE_URL", file=ctx.err)
        return None
    return FlagQueue.discover(ctx.clients.sqs, queue_url=args.queue_url, dlq_url=args.dlq_url)


def _receive_dlq(
    ctx: CliContext, dlq_url: str, *, limit: int, looking_for: str | None = None
) -> list[dict[str, Any]]:
    """Receive up to ``limit`` DLQ messages (fewer once ``looking_for`` is among them); they
    stay invisible until released or deleted."""
    seen: dict[str, dict[str, Any]] = {}
    while len(seen) < limit and looking_for not in seen:
        response = ctx.clients.sqs.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=min(10, limit - len(seen)),
            WaitTimeSeconds=1,
            VisibilityTimeout=60,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        messages = response.get("Messages", [])
        if not messages:
            break
        for message in messages:
            seen.setdefault(message["MessageId"], dict(message))
    return list(seen.values())


def _release(ctx: CliContext, dlq_url: str, *, messages: list[dict[str, Any]]) -> None:
    for message in messages:
        try:
            ctx.clients.sqs.change_message_visibility(
                QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
        except ClientError:
            continue  # already visible again or gone: nothing to give back


def _describe(message: dict[str, Any]) -> dict[str, str]:
    attributes = message.get("MessageAttributes", {})
    flag = "-"
    try:
        record = json.loads(message["Body"])["Records"][0]
        flag = f"s3://{record['s3']['bucket']['name']}/{unquote_plus(record['s3']['object']['key'])}"
    except (ValueError, KeyError, TypeError, IndexError):
        pass
    return {
        "id": message["MessageId"],
        "reason": attributes.get("reason", {}).get("StringValue", "max_receives"),
        "detail": attributes.get("detail", {}).get("StringValue", "moved by the queue's redrive policy"),
        "flag": flag,
    }


def _dlq_list(args: argparse.Namespace, ctx: CliContext) -> int:
    queues = _queues(args, ctx)
    if queues is None:
        return 2
    messages = _receive_dlq(ctx, queues.dlq_url, limit=args.max)
    _release(ctx, queues.dlq_url, messages=messages)
    described = [_describe(message) for message in messages]
    if args.output == "json":
        print(json.dumps(described, indent=2), file=ctx.out)
    else:
        for entry in described:
            print(
                f"{entry['id']}  {entry['reason']:<22} {entry['flag']}\n    {entry['detail']}", file=ctx.out
            )
        print(f"{len(described)} message(s) in {queues.dlq_url}", file=ctx.out)
    return 0


def _dlq_redrive(args: argparse.Namespace, ctx: CliContext) -> int:
    queues = _queues(args, ctx)
    if queues is None:
        return 2
    messages = _receive_dlq(ctx, queues.dlq_url, limit=args.max)
    wanted = set(args.ids or [])
    chosen = [m for m in messages if args.all or m["MessageId"] in wanted]
    _release(ctx, queues.dlq_url, messages=[m for m in messages if m not in chosen])
    for message in chosen:
        # Send first, then delete: a failure in between leaves a copy in both, never none.
        ctx.clients.sqs.send_message(QueueUrl=queues.queue_url, MessageBody=message["Body"])
        ctx.clients.sqs.delete_message(QueueUrl=queues.dlq_url, ReceiptHandle=message["ReceiptHandle"])
        print(f"redriven {message['MessageId']} ({_describe(message)['reason']})", file=ctx.out)
    missing = wanted - {m["MessageId"] for m in chosen}
    for message_id in sorted(missing):
        print(f"not found in the DLQ: {message_id}", file=ctx.err)
    return 1 if missing else 0


def _dlq_delete(args: argparse.Namespace, ctx: CliContext) -> int:
    queues = _queues(args, ctx)
    if queues is None:
        return 2
    messages = _receive_dlq(ctx, queues.dlq_url, limit=args.max, looking_for=args.message_id)
    chosen = next((m for m in messages if m["MessageId"] == args.message_id), None)
    _release(ctx, queues.dlq_url, messages=[m for m in messages if m is not chosen])
    if chosen is None:
        print(
            f"egress dlq delete: no message {args.message_id} in {queues.dlq_url} "
            f"(looked at {len(messages)}; --max to look further)",
            file=ctx.err,
        )
        return 1
    entry = _describe(chosen)
    for field in ("id", "reason", "flag", "detail"):
        print(f"{field:<8}{entry[field]}", file=ctx.out)
    if not args.yes and not _confirmed(ctx, "delete this message? [y/N] "):
        _release(ctx, queues.dlq_url, messages=[chosen])
        print("nothing deleted", file=ctx.out)
        return 1
    ctx.clients.sqs.delete_message(QueueUrl=queues.dlq_url, ReceiptHandle=chosen["ReceiptHandle"])
    print(f"deleted {chosen['MessageId']}", file=ctx.out)
    return 0


def _confirmed(ctx: CliContext, question: str) -> bool:
    """Whether the operator answered y or yes; end of input (no terminal, CI) is no."""
    print(question, end="", file=ctx.out, flush=True)
    answer = ctx.stdin.readline()
    if not answer:
        print("", file=ctx.out)  # end of input: finish the question's line
    return answer.strip().lower() in {"y", "yes"}
