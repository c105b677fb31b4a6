"""``egress routes …``: operators' tools for the routes table, validating every write."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from botocore.exceptions import BotoCoreError, ClientError

from egress.cli_context import CliContext, Handler
from egress.errors import EgressError, PermanentError, translate_client_error
from egress.kernel.s3uri import parse_s3_uri
from egress.kernel.timefmt import parse_iso8601
from egress.messages import FlagEvent
from egress.route_edits import RouteEditRefused, approve, caller_identity, now_iso, set_enabled, stamped
from egress.route_policy import RECORD_COLUMNS, approval_state
from egress.routes_apply import (
    RoutesFileRefused,
    all_routes,
    plan_routes_file,
    read_yaml_file,
)
from egress.routes_report import any_undeliverable, explain_entries, print_entry_details, route_summary
from egress.routing import DEFAULT_SFT_ROOT, Route, RouteTable, delete_route, get_route, put_route

if TYPE_CHECKING:
    pass

TABLE_COLUMNS = (
    "source_prefix",
    "pipeline_name",
    "transfer_type",
    "recipient_name",
    "destination",
    "flags",
    "approval",
)
# The columns `routes put` takes as options: text ones, then the on/off ones.
PUT_TEXT_COLUMNS = (
    "source_prefix",
    "pipeline_name",
    "recipient_name",
    "transfer_type",
    "source_bucket",
    "destination_bucket",
    "destination_prefix",
    "compress_fmt",
    "role_arn",
    "destination_kms_key_id",
    "manifest_file_name",
    "manifest_file_encryption",
    "control_file_prefix",
    "encrypting_key_ssm_parm_name",
)
PUT_FLAG_COLUMNS = ("decrypt", "compress", "timestamp_files", "rewrap_datakey", "approval_required")
PUT_LIST_COLUMNS = ("include", "exclude")


def configure(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``routes`` and its subcommands to the ``egress`` command."""
    routes = commands.add_parser("routes", help="list, change, validate and explain routes")
    sub = routes.add_subparsers(dest="routes_command", required=True, metavar="COMMAND")

    listing = sub.add_parser("list", help="every row, as a table or for scripts")
    _output(listing)
    listing.set_defaults(handler=_list)

    get = sub.add_parser("get", help="one row")
    get.add_argument("source_prefix")
    get.add_argument("pipeline_name")
    _output(get, default="yaml")
    add_sft_root_option(get)
    get.set_defaults(handler=_get)

    put = sub.add_parser("put", help="write one row (validated first)")
    put.add_argument("--file", type=Path, help="YAML file with the row's columns")
    for column in PUT_TEXT_COLUMNS:
        put.add_argument(f"--{column.replace('_', '-')}", dest=column)
    for flag in PUT_FLAG_COLUMNS:
        put.add_argument(f"--{flag.replace('_', '-')}", dest=flag, action=argparse.BooleanOptionalAction)
    for column in PUT_LIST_COLUMNS:
        put.add_argument(
            f"--{column}",
            action="append",
            dest=column,
            metavar="GLOB",
            help=f"{column} objects whose path below the flag's folder matches (gitignore-style; repeatable)",
        )
    put.add_argument("--disabled", action="store_true", help="keep the row but deliver nothing")
    add_sft_root_option(put)
    put.set_defaults(handler=_put)

    for name, helptext, handler in (
        ("approve", "approve a row that requires approval (as the caller; not its last editor)", _approve),
        ("enable", "switch a row on (its approval stays)", _enable),
        (
            "disable",
            "switch a row off: flags matching only disabled rows are deleted, not delivered",
            _disable,
        ),
    ):
        action = sub.add_parser(name, help=helptext)
        action.add_argument("source_prefix")
        action.add_argument("pipeline_name")
        add_sft_root_option(action)
        action.set_defaults(handler=handler)

    delete = sub.add_parser("delete", help="delete one row")
    delete.add_argument("source_prefix")
    delete.add_argument("pipeline_name")
    delete.set_defaults(handler=_delete)

    validate = sub.add_parser(
        "validate", help="check every row; exit 1 if any is invalid (warnings alone do not fail)"
    )
    _output(validate)
    add_sft_root_option(validate)
    validate.set_defaults(handler=_validate)

    explain = sub.add_parser("explain", help="which rows match a flag and what each object would be named")
    explain.add_argument("flag_uri", metavar="S3_URI_OF_FLAG")
    explain.add_argument("--date", help="event time (YYYY-MM-DD or ISO); default now")
    explain.add_argument("--flag-name", default="pipeline_success.flag")
    explain.add_argument("--limit", type=int, default=200, help="objects listed per route at most")
    _output(explain)
    add_sft_root_option(explain)
    explain.set_defaults(handler=_explain)

    export = sub.add_parser("export", help="every row as YAML (what apply reads)")
    export.add_argument("--file", type=Path, help="write here instead of standard output")
    export.set_defaults(handler=_export)

    apply = sub.add_parser("apply", help="make the table match a YAML file: diff, confirm, write")
    apply.add_argument("file", type=Path)
    apply.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    apply.add_argument("--prune", action="store_true", help="delete rows that are not in the file")
    add_sft_root_option(apply)
    apply.set_defaults(handler=_apply)


def _output(parser: argparse.ArgumentParser, *, default: str = "table") -> None:
    parser.add_argument("--output", "-o", choices=["table", "json", "yaml"], default=default)


def add_sft_root_option(parser: argparse.ArgumentParser) -> None:
    """``--sft-root``: the workers' SFT volume root, which checking and resolving SFT rows needs."""
    # Absolute SFT folders are valid only under the workers' SFT root, so checking a row
    # needs it: the same variable the worker reads, or its default.
    parser.add_argument(
        "--sft-root",
        type=Path,
        default=Path(os.environ.get("EGRESS_SFT_ROOT") or DEFAULT_SFT_ROOT),
        help="the workers' SFT volume root (default: EGRESS_SFT_ROOT or /data-egress)",
    )


def _print_rows(rows: Sequence[dict[str, Any]], ctx: CliContext, *, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2, default=str, ensure_ascii=False), file=ctx.out)
    elif fmt == "yaml":
        print(yaml.safe_dump(rows, sort_keys=False, allow_unicode=True).rstrip(), file=ctx.out)


def _table(rows: Iterable[dict[str, str]], ctx: CliContext, *, columns: Sequence[str]) -> None:
    rows = list(rows)
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip(), file=ctx.out)
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip(), file=ctx.out)


def _all_routes(ctx: CliContext) -> list[Route]:
    return all_routes(ctx.clients.dynamodb, ctx.routes_table)


def _fail(ctx: CliContext, message: str, *, code: int = 1) -> int:
    print(f"egress routes: {message}", file=ctx.err)
    return code


def _row_key(args: argparse.Namespace) -> dict[str, str]:
    """The table key a ``get``/``delete`` names on the command line."""
    return {"source_prefix": args.source_prefix, "pipeline_name": args.pipeline_name}


def _no_row(args: argparse.Namespace, ctx: CliContext) -> int:
    return _fail(ctx, f"no row ({args.source_prefix!r}, {args.pipeline_name!r}) in {ctx.routes_table}")


def _guard(handler: Callable[[argparse.Namespace, CliContext], int]) -> Handler:
    """The handler with the project's errors and AWS's printed as one line and exit code 1."""

    def wrapped(args: argparse.Namespace, ctx: CliContext) -> int:
        try:
            return int(handler(args, ctx))
        except EgressError as exc:
            return _fail(ctx, f"{exc.reason}: {exc.detail}")
        except (ClientError, BotoCoreError) as exc:
            error = translate_client_error(exc, doing=f"using table {ctx.routes_table}")
            return _fail(ctx, f"{error.reason}: {error.detail}")

    wrapped.__doc__ = handler.__doc__
    return wrapped


@_guard
def _list(args: argparse.Namespace, ctx: CliContext) -> int:
    routes = _all_routes(ctx)
    if args.output == "table":
        _table((route_summary(r) for r in routes), ctx, columns=TABLE_COLUMNS)
        print(f"{len(routes)} route(s) in {ctx.routes_table}", file=ctx.out)
    else:
        _print_rows([r.to_plain() for r in routes], ctx, fmt=args.output)
    return 0


@_guard
def _get(args: argparse.Namespace, ctx: CliContext) -> int:
    route = get_route(ctx.clients.dynamodb, ctx.routes_table, **_row_key(args))
    if route is None:
        return _no_row(args, ctx)
    if args.output == "table":
        for column, value in route.to_plain().items():
            print(f"{column:<24}{value}", file=ctx.out)
    else:
        _print_rows([route.to_plain()], ctx, fmt=args.output)
    problems = route.problems(sft_root=args.sft_root)
    for problem in problems:
        print(f"INVALID: {problem}", file=ctx.err)
    for warning in route.warnings():
        print(f"WARNING: {warning}", file=ctx.err)
    approval = approval_state(route)
    if approval.state != "not_required":
        print(f"approval: {approval.state}: {approval.detail}", file=ctx.err)
    return 1 if problems else 0


@_guard
def _put(args: argparse.Namespace, ctx: CliContext) -> int:
    row: dict[str, Any] = {}
    if args.file:
        loaded = read_yaml_file(args.file)
        if not isinstance(loaded, dict):
            return _fail(ctx, f"{args.file} must hold one row (a mapping of columns)")
        row.update(loaded)
    for column in (*PUT_TEXT_COLUMNS, *PUT_FLAG_COLUMNS, *PUT_LIST_COLUMNS):
        value = getattr(args, column)
        if value is not None:
            row[column] = value
    if args.disabled:
        row["enabled"] = False
    ignored = [column for column in RECORD_COLUMNS if row.pop(column, None)]
    if ignored:
        print(f"warning: {', '.join(ignored)} ignored: the CLI records edits and approvals", file=ctx.err)
    route = Route.from_plain(row)
    problems = route.problems(sft_root=args.sft_root)
    if problems:
        for problem in problems:
            print(f"refused: {problem}", file=ctx.err)
        return _fail(
            ctx,
            f"row ({route.source_prefix!r}, {route.pipeline_name!r}) not written: {len(problems)} problem(s)",
        )
    dynamodb = ctx.clients.dynamodb
    current = get_route(
        dynamodb, ctx.routes_table, source_prefix=route.source_prefix, pipeline_name=route.pipeline_name
    )
    route = stamped(route, current=current, editor=caller_identity(ctx.clients.sts), at=now_iso())
    put_route(dynamodb, ctx.routes_table, route)
    print(f"written ({route.source_prefix!r}, {route.pipeline_name!r}) to {ctx.routes_table}", file=ctx.out)
    if current is not None and current.approved_by and not route.approved_by:
        print(f"approval by {current.approved_by} dropped: the row now delivers differently", file=ctx.out)
    if route.approval_required and not approval_state(route).delivers:
        print(
            "the row delivers nothing until someone other than its editor runs "
            f"`egress routes approve {route.source_prefix} {route.pipeline_name}`",
            file=ctx.out,
        )
    for warning in route.warnings():
        print(f"warning: {warning}", file=ctx.err)
    return 0


def _refusal(
    handler: Callable[[argparse.Namespace, CliContext], int],
) -> Callable[[argparse.Namespace, CliContext], int]:
    """The handler with a refused edit printed as one line and exit code 1."""

    def wrapped(args: argparse.Namespace, ctx: CliContext) -> int:
        try:
            return handler(args, ctx)
        except RouteEditRefused as exc:
            return _fail(ctx, f"refused: {exc}")

    wrapped.__doc__ = handler.__doc__
    return wrapped


@_guard
@_refusal
def _approve(args: argparse.Namespace, ctx: CliContext) -> int:
    approver = caller_identity(ctx.clients.sts)
    route = approve(
        ctx.clients.dynamodb, ctx.routes_table, **_row_key(args), approver=approver, sft_root=args.sft_root
    )
    print(
        f"approved ({route.source_prefix!r}, {route.pipeline_name!r}) as {approver} "
        f"(last edited by {route.updated_by or 'unknown'}); flags in the DLQ as route_not_approved "
        "can be redriven now (egress dlq redrive)",
        file=ctx.out,
    )
    return 0


def _switch(args: argparse.Namespace, ctx: CliContext, *, enabled: bool) -> int:
    was = set_enabled(
        ctx.clients.dynamodb,
        ctx.routes_table,
        **_row_key(args),
        enabled=enabled,
        editor=caller_identity(ctx.clients.sts),
    )
    state = "enabled" if enabled else "disabled"
    note = " (it already was)" if was == enabled else ""
    print(f"{state} ({args.source_prefix!r}, {args.pipeline_name!r}){note}", file=ctx.out)
    return 0


@_guard
@_refusal
def _enable(args: argparse.Namespace, ctx: CliContext) -> int:
    return _switch(args, ctx, enabled=True)


@_guard
@_refusal
def _disable(args: argparse.Namespace, ctx: CliContext) -> int:
    return _switch(args, ctx, enabled=False)


@_guard
def _delete(args: argparse.Namespace, ctx: CliContext) -> int:
    if not delete_route(ctx.clients.dynamodb, ctx.routes_table, **_row_key(args)):
        return _no_row(args, ctx)
    print(f"deleted ({args.source_prefix!r}, {args.pipeline_name!r})", file=ctx.out)
    return 0


@_guard
def _validate(args: argparse.Namespace, ctx: CliContext) -> int:
    routes = _all_routes(ctx)
    checked = [(route, route.problems(sft_root=args.sft_root), route.warnings()) for route in routes]
    reported = [(route, problems, warnings) for route, problems, warnings in checked if problems or warnings]
    invalid = sum(1 for _, problems, _ in reported if problems)
    if args.output in ("json", "yaml"):
        _print_rows(
            [
                {
                    "source_prefix": r.source_prefix,
                    "pipeline_name": r.pipeline_name,
                    "problems": problems,
                    "warnings": warnings,
                }
                for r, problems, warnings in reported
            ],
            ctx,
            fmt=args.output,
        )
    else:
        for route, problems, warnings in reported:
            print(f"{route.source_prefix} / {route.pipeline_name}:", file=ctx.out)
            for problem in problems:
                print(f"  - {problem}", file=ctx.out)
            for warning in warnings:
                print(f"  warning: {warning}", file=ctx.out)
        warned = sum(1 for _, problems, warnings in reported if warnings and not problems)
        print(
            f"{len(routes) - invalid} valid ({warned} with warnings), {invalid} invalid row(s) "
            f"in {ctx.routes_table}",
            file=ctx.out,
        )
    return 1 if invalid else 0


@_guard
def _explain(args: argparse.Namespace, ctx: CliContext) -> int:
    try:
        flag = parse_s3_uri(args.flag_uri)
    except ValueError as exc:
        return _fail(ctx, str(exc), code=2)
    bucket, key = flag.bucket, flag.key
    try:
        when = parse_iso8601(args.date) if args.date else datetime.now(UTC)
    except ValueError:
        return _fail(ctx, f"--date {args.date!r} is not a date or ISO time", code=2)
    event = FlagEvent(bucket=bucket, key=key, event_time=when)
    if key.rsplit("/", 1)[-1] != args.flag_name:
        print(f"note: {key!r} is not a {args.flag_name}; the worker would ignore it", file=ctx.out)
    try:
        matches = RouteTable(
            ctx.clients.dynamodb, ctx.routes_table, cache_seconds=0, sft_root=args.sft_root
        ).find(event)
    except PermanentError as exc:
        print(f"{exc.reason}: {exc.detail}", file=ctx.out)
        return 1
    if not matches:
        print(
            f"{event.uri}: every matching row is disabled; the worker deletes the flag unsent", file=ctx.out
        )
        return 0
    report = explain_entries(ctx.clients.s3, event, matches, flag_name=args.flag_name, limit=args.limit)
    if args.output != "table":
        _print_rows(report, ctx, fmt=args.output)
    else:
        print(
            f"{event.uri} (event date {when.date().isoformat()}): {len(report)} matching row(s)", file=ctx.out
        )
        for entry in report:
            print(
                f"\n{entry['source_prefix']} / {entry['pipeline_name']} -> {entry['destination']} "
                f"[{entry['flags']}]",
                file=ctx.out,
            )
            print_entry_details(entry, out=ctx.out)
    return 1 if any_undeliverable(report) else 0


def _export_text(routes: Sequence[Route]) -> str:
    return yaml.safe_dump({"routes": [r.to_plain() for r in routes]}, sort_keys=False, allow_unicode=True)


@_guard
def _export(args: argparse.Namespace, ctx: CliContext) -> int:
    text = _export_text(_all_routes(ctx))
    if args.file:
        args.file.write_text(text, encoding="utf-8")
        print(f"exported to {args.file}", file=ctx.out)
    else:
        print(text.rstrip(), file=ctx.out)
    return 0


@_guard
def _apply(args: argparse.Namespace, ctx: CliContext) -> int:
    try:
        plan = plan_routes_file(
            ctx.clients.dynamodb, args.file, table=ctx.routes_table, prune=args.prune, sft_root=args.sft_root
        )
    except RoutesFileRefused as exc:
        for problem in exc.problems:
            print(problem, file=ctx.err)
        return _fail(ctx, exc.detail)
    for line in plan.diff_lines():
        print(line, file=ctx.out)
    for warning in plan.warnings:
        print(warning, file=ctx.err)
    print(plan.summary(), file=ctx.out)
    if not plan.has_changes:
        print("no changes", file=ctx.out)
        return 0
    if not args.yes:
        stdin = ctx.stdin
        if not stdin.isatty() and stdin is sys.stdin:
            return _fail(ctx, "refusing to apply without confirmation: no terminal; pass --yes")
        print("Apply these changes? [y/N] ", end="", file=ctx.out, flush=True)
        answer = stdin.readline().strip().lower()
        if answer not in {"y", "yes"}:
            print("nothing applied", file=ctx.out)
            return 1
    plan.apply(ctx.clients.dynamodb, editor=caller_identity(ctx.clients.sts))
    print(f"applied to {ctx.routes_table}", file=ctx.out)
    return 0
