"""Make the routes table match a routes file: read and check the file, plan the changes, apply them.

``egress routes apply`` and ``egress local bootstrap`` both call :func:`plan_routes_file`
and then :meth:`RoutesPlan.apply`; each prints the plan its own way. Nothing is written
unless every row of the file is valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from botocore.exceptions import BotoCoreError, ClientError

from egress.errors import PermanentError, Reason, translate_client_error
from egress.route_edits import now_iso, stamped, without_records
from egress.routing import DEFAULT_SFT_ROOT, Route, delete_route, put_route, scan_routes

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


class RoutesFileRefused(PermanentError):
    """A routes file that cannot be applied as a whole; ``problems`` holds one line per bad row."""

    def __init__(self, detail: str, *, problems: Sequence[str] = ()) -> None:
        super().__init__(Reason.BAD_FILE, detail)
        self.problems = tuple(problems)


def read_yaml_file(path: Path) -> Any:
    """The YAML document in ``path``; a file that cannot be read or parsed is a ``bad_file``."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PermanentError(Reason.BAD_FILE, f"cannot read {path}: {exc}") from exc


def read_routes_file(path: Path, *, sft_root: Path = DEFAULT_SFT_ROOT) -> list[Route]:
    """The rows of a routes file (``routes:`` and a list of rows), each valid and each key once.

    ``sft_root`` is the workers' SFT root (absolute SFT folders must be under it). Raises
    :class:`RoutesFileRefused` naming every bad row, or ``PermanentError`` if the file
    cannot be read.
    """
    loaded = read_yaml_file(path)
    rows = loaded.get("routes") if isinstance(loaded, dict) else None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise RoutesFileRefused(f"{path} must hold `routes:` followed by a list of rows")
    wanted = [without_records(Route.from_plain(row)) for row in rows]
    refused = [(route, problems) for route in wanted if (problems := route.problems(sft_root=sft_root))]
    keys = [(r.source_prefix, r.pipeline_name) for r in wanted]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if refused or duplicates:
        lines = [
            f"refused {route.source_prefix} / {route.pipeline_name}: {problem}"
            for route, problems in refused
            for problem in problems
        ]
        lines += [
            f"refused: ({prefix!r}, {pipeline!r}) appears more than once" for prefix, pipeline in duplicates
        ]
        raise RoutesFileRefused(
            f"nothing applied: {len(refused) + len(duplicates)} bad row(s) in {path}", problems=lines
        )
    return wanted


def all_routes(dynamodb: DynamoDBClient, table: str) -> list[Route]:
    """Every row of the table, sorted by key (operators' tools only: this scans)."""
    try:
        routes = list(scan_routes(dynamodb, table))
    except (ClientError, BotoCoreError) as exc:
        raise translate_client_error(exc, doing=f"reading table {table}") from exc
    return sorted(routes, key=lambda r: (r.source_prefix, r.pipeline_name))


def route_destination(route: Route) -> str:
    """Where a row delivers, for people: ``s3://bucket/prefix`` or ``sft:folder``."""
    if route.transfer_type == "S3":
        # A leading '/' is dropped from S3 keys ("/" is the bucket's root): shown as delivered.
        return f"s3://{route.destination_bucket}/{route.destination_prefix.lstrip('/')}"
    return f"sft:{route.destination_prefix}"


def column_changes(old: Route, new: Route) -> list[str]:
    """One ``column: 'before' -> 'after'`` line per column that differs."""
    before, after = old.to_plain(), new.to_plain()
    return [
        f"{column}: {before.get(column, '(unset)')!r} -> {after.get(column, '(unset)')!r}"
        for column in sorted(set(before) | set(after))
        if before.get(column) != after.get(column)
    ]


@dataclass(frozen=True)
class RoutesPlan:
    """What applying a file would change in a table, and how to do it."""

    table: str
    added: tuple[Route, ...]
    changed: tuple[tuple[Route, Route], ...]  # (in the table, in the file)
    removed: tuple[Route, ...]
    unchanged: int
    kept: int  # rows in the table only, kept because pruning was not asked for
    warnings: tuple[str, ...] = ()  # one line per warning of a wanted row (they do not stop it)

    @property
    def has_changes(self) -> bool:
        """Whether applying would write anything."""
        return bool(self.added or self.changed or self.removed)

    def diff_lines(self) -> list[str]:
        """``+`` added, ``~`` changed (with each column's change), ``-`` deleted rows."""
        lines = [f"+ {r.source_prefix} / {r.pipeline_name} -> {route_destination(r)}" for r in self.added]
        for old, new in self.changed:
            lines.append(f"~ {new.source_prefix} / {new.pipeline_name}")
            lines += [f"    {change}" for change in column_changes(old, new)]
        lines += [f"- {r.source_prefix} / {r.pipeline_name}" for r in self.removed]
        return lines

    def summary(self) -> str:
        """One line of counts."""
        text = (
            f"{len(self.added)} to add, {len(self.changed)} to change, {len(self.removed)} to delete, "
            f"{self.unchanged} unchanged"
        )
        if self.kept:
            text += f" ({self.kept} row(s) not in the file kept; --prune deletes them)"
        return text

    def apply(self, dynamodb: DynamoDBClient, *, editor: str = "") -> None:
        """Write the added and changed rows, then delete the removed ones.

        Each written row records ``editor`` (the caller's STS identity) as its last editor,
        and a changed row loses its approval when what it delivers changed
        (:func:`egress.route_edits.stamped`).
        """
        at = now_iso()
        for current, route in (*((None, new) for new in self.added), *self.changed):
            put_route(dynamodb, self.table, stamped(route, current=current, editor=editor, at=at))
        for route in self.removed:
            delete_route(
                dynamodb, self.table, source_prefix=route.source_prefix, pipeline_name=route.pipeline_name
            )


def plan_routes(
    dynamodb: DynamoDBClient, wanted: Sequence[Route], *, table: str, prune: bool = False
) -> RoutesPlan:
    """Compare ``wanted`` rows with the table; with ``prune``, rows not wanted are deleted."""
    current = {(r.source_prefix, r.pipeline_name): r for r in all_routes(dynamodb, table)}
    wanted_keys = {(r.source_prefix, r.pipeline_name) for r in wanted}
    added = tuple(r for r in wanted if (r.source_prefix, r.pipeline_name) not in current)
    changed = tuple(
        (current[key], r)
        for r in wanted
        if (key := (r.source_prefix, r.pipeline_name)) in current and current[key] != r
    )
    removed = tuple(r for key, r in current.items() if key not in wanted_keys) if prune else ()
    return RoutesPlan(
        table=table,
        added=added,
        changed=changed,
        removed=removed,
        unchanged=len(wanted) - len(added) - len(changed),
        kept=len(current) - len(wanted_keys & set(current)) - len(removed),
        warnings=tuple(
            f"warning: {r.source_prefix} / {r.pipeline_name}: {warning}"
            for r in wanted
            for warning in r.warnings()
        ),
    )


def plan_routes_file(
    dynamodb: DynamoDBClient,
    path: Path,
    *,
    table: str,
    prune: bool = False,
    sft_root: Path = DEFAULT_SFT_ROOT,
) -> RoutesPlan:
    """Read and check a routes file, then plan making ``table`` match it (nothing written yet)."""
    return plan_routes(dynamodb, read_routes_file(path, sft_root=sft_root), table=table, prune=prune)
